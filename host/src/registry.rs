//! The kernel variants by name, as tests, benches and the command line refer to them.
use crate::error::{Error, Result};
use crate::variant::Variant;

/// A registered forward kernel family.
#[derive(Clone, Copy, Debug)]
pub struct KernelEntry {
    pub name: &'static str,
    pub variant: Variant,
    pub description: &'static str,
}

/// Every registered variant.
pub const KERNELS: &[KernelEntry] = &[
    KernelEntry {
        name: "chunkwise--tfla-exp",
        variant: Variant::Exp,
        description: "mLSTMexp: exponential input gate, max-state stabilizer, normalizer",
    },
    KernelEntry {
        name: "chunkwise--tfla-sig",
        variant: Variant::Sig { normalize: true },
        description: "mLSTMsig: sigmoid input gate, normalized",
    },
    KernelEntry {
        name: "chunkwise--tfla-sig-nonorm",
        variant: Variant::Sig { normalize: false },
        description: "mLSTMsig without the normalizer: h = Cᵀq̂",
    },
];

/// The entry named `name`, or an error listing the registered names.
pub fn lookup(name: &str) -> Result<&'static KernelEntry> {
    KERNELS
        .iter()
        .find(|k| k.name == name)
        .ok_or_else(|| Error::UnknownKernel {
            name: name.to_string(),
            registered: KERNELS
                .iter()
                .map(|k| k.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_lists_names_on_error() {
        assert_eq!(
            lookup("chunkwise--tfla-sig").unwrap().variant,
            Variant::Sig { normalize: true }
        );
        let err = lookup("chunkwise--nope").unwrap_err().to_string();
        assert!(
            err.contains("chunkwise--nope") && err.contains("chunkwise--tfla-exp"),
            "{err}"
        );
    }
}
