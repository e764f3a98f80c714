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
