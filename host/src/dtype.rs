//! Element types of the tensors the kernels take (a module of its own, so that the error type
//! and the float64 reference name it without reaching the device runtime).

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bf16,
    F16,
    F32,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::Bf16 | Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
            Dtype::F32 => "f32",
        }
    }

    /// Parses "bf16", "f16"/"fp16", "f32"/"fp32".
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bf16" => Some(Dtype::Bf16),
            "f16" | "fp16" => Some(Dtype::F16),
            "f32" | "fp32" => Some(Dtype::F32),
            _ => None,
        }
    }
}
