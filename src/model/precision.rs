//! The image encoder's arithmetic: `f32` (the official model's, the default) or `bf16`
//! (matrix products on bf16 operands with f32 sums, as `torch.autocast("cpu",
//! dtype=torch.bfloat16)` runs the official encoder), for encoding images into the
//! embedding cache and for annotation on CPUs with bf16 matrix hardware.

use std::fmt;
use std::str::FromStr;

use burn::backend::DispatchDevice;
use burn::tensor::Device;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::kernels;

/// How the image encoder multiplies matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum)]
pub enum Precision {
    /// f32 throughout: the official arithmetic.
    #[default]
    F32,
    /// The linear layers' and attention's products on bf16 operands (AMX or AVX512-BF16),
    /// summed in f32; everything else (layer norms, softmax, GELU, the rel-pos terms, the
    /// neck) in f32.
    Bf16,
}

/// Why a precision cannot be used here.
#[derive(Debug, thiserror::Error)]
pub enum PrecisionError {
    #[error(
        "encoder precision bf16 needs a CPU with bf16 matrix hardware: AMX (Intel Xeon 4th \
         generation, Sapphire Rapids, or later, on Linux) or AVX512-BF16 (AMD Zen 4 or \
         later); this one has neither: use f32"
    )]
    NoBf16Hardware,
    #[error("encoder precision bf16 runs on the CPU backend only; device {0:?} encodes in f32")]
    NotCpu(String),
}

impl Precision {
    /// Whether `self` can run on `device` on this machine.
    pub fn check(self, device: &Device) -> Result<(), PrecisionError> {
        match self {
            Precision::F32 => Ok(()),
            Precision::Bf16 if !matches!(device.as_dispatch(), DispatchDevice::Flex(_)) => {
                Err(PrecisionError::NotCpu(format!("{device:?}")))
            }
            Precision::Bf16 if !kernels::bf16::available() => Err(PrecisionError::NoBf16Hardware),
            Precision::Bf16 => Ok(()),
        }
    }

    /// `self` as reports name it: bf16 with the hardware that runs it on this CPU.
    pub fn described(self) -> String {
        match (self, kernels::bf16::engine()) {
            (Precision::Bf16, Some(engine)) => format!("bf16 on {}", engine.name()),
            _ => self.to_string(),
        }
    }

    /// Runs `f` with this thread's matrix products in `self`'s arithmetic (the previous
    /// setting restored after, also on a panic).
    pub fn scope<R>(self, f: impl FnOnce() -> R) -> R {
        kernels::with_product_precision(self, f)
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("encoder precision '{other}': expected f32 or bf16")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl Serialize for Precision {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Precision {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_print_back_and_bad_ones_are_named() {
        for precision in [Precision::F32, Precision::Bf16] {
            assert_eq!(precision.to_string().parse::<Precision>(), Ok(precision));
        }
        let error = "fp16".parse::<Precision>().unwrap_err();
        assert!(
            error.contains("'fp16'") && error.contains("bf16"),
            "{error}"
        );
    }

    #[test]
    fn bf16_is_refused_where_it_cannot_run() {
        assert!(Precision::F32.check(&Device::flex()).is_ok());
        assert_eq!(Precision::F32.described(), "f32");
        match Precision::Bf16.check(&Device::flex()) {
            Ok(()) => {
                assert!(kernels::bf16::available());
                let described = Precision::Bf16.described();
                assert!(["bf16 on AMX", "bf16 on AVX512-BF16"].contains(&described.as_str()));
            }
            Err(error) => {
                assert!(!kernels::bf16::available());
                assert!(error.to_string().contains("AMX"), "{error}");
            }
        }
    }

    #[test]
    fn a_scope_sets_and_restores_the_products_precision() {
        assert_eq!(kernels::product_precision(), Precision::F32);
        Precision::Bf16.scope(|| {
            assert_eq!(kernels::product_precision(), Precision::Bf16);
            Precision::F32.scope(|| assert_eq!(kernels::product_precision(), Precision::F32));
            assert_eq!(kernels::product_precision(), Precision::Bf16);
        });
        let _ = std::panic::catch_unwind(|| Precision::Bf16.scope(|| panic!("inside")));
        assert_eq!(kernels::product_precision(), Precision::F32);
    }
}
