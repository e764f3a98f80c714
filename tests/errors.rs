//! Errors that need no GPU: a machine without one gets a typed `NoDevice`, never a panic.
use tfla::{Error, Runtime};

#[test]
fn runtime_without_gpu_is_a_typed_error() {
    match Runtime::new() {
        Ok(rt) => eprintln!(
            "a GPU is present ({}); the no-device path is not exercised here",
            rt.device_name().unwrap()
        ),
        Err(Error::NoDevice(msg)) => assert!(!msg.is_empty()),
        Err(e) => panic!("expected Ok or Error::NoDevice, got {e:?}"),
    }
}

#[test]
fn registry_names_every_variant() {
    for k in tfla::registry::KERNELS {
        assert_eq!(tfla::registry::lookup(k.name).unwrap().variant, k.variant);
    }
    assert!(matches!(
        tfla::registry::lookup("triton"),
        Err(Error::UnknownKernel { .. })
    ));
}

#[test]
fn grad_mode_defaults_to_exact_and_parses_the_command_line_names() {
    use tfla::GradMode;
    assert_eq!(GradMode::default(), GradMode::Exact);
    for mode in [GradMode::Exact, GradMode::DetachedNormalizer] {
        assert_eq!(GradMode::parse(mode.name()), Some(mode));
    }
    assert_eq!(GradMode::parse("approx"), None);
    // The reference takes the same type.
    let _: tfla::reference::GradMode = GradMode::DetachedNormalizer;
}

#[test]
fn state_pool_slots_are_checked_on_the_host() {
    use tfla::check_slots;
    // B = 3 rows in a pool of 7 slots.
    check_slots(&[5, 0, 3], 3, 7).unwrap();
    check_slots(&[6], 1, 7).unwrap();
    // One slot per row.
    match check_slots(&[5, 0], 3, 7) {
        Err(Error::Shape {
            arg: "slots",
            expected,
            got,
        }) => assert_eq!((expected, got), (vec![3], vec![2])),
        r => panic!("expected a shape error for `slots`, got {r:?}"),
    }
    // Out of range: names the row and the value.
    match check_slots(&[5, 7, 3], 3, 7) {
        Err(e @ Error::Invalid { arg: "slots", .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("slots[1] = 7"), "{msg}");
        }
        r => panic!("expected an out-of-range error for `slots`, got {r:?}"),
    }
    match check_slots(&[u32::MAX], 1, 7) {
        Err(Error::Invalid { arg: "slots", .. }) => {}
        r => panic!("expected an out-of-range error for `slots`, got {r:?}"),
    }
    // Two rows writing one slot: names both rows and the slot.
    match check_slots(&[5, 0, 3, 0], 4, 7) {
        Err(e @ Error::Invalid { arg: "slots", .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("slots[1] = slots[3] = 0"), "{msg}");
        }
        r => panic!("expected a duplicate-slot error, got {r:?}"),
    }
    // The first offending row is reported: row 1 (a duplicate) before row 2 (out of range).
    match check_slots(&[1, 1, 9], 3, 7) {
        Err(e @ Error::Invalid { arg: "slots", .. }) => {
            assert!(e.to_string().contains("slots[0] = slots[1] = 1"), "{e}");
        }
        r => panic!("expected a duplicate-slot error, got {r:?}"),
    }
}
