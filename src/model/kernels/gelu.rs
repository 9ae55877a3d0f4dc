//! The exact (erf) GELU of `nn.GELU()` as one vectorised pass over memory, forward and
//! backward.
//!
//! Burn's CPU backend evaluates erf with one scalar libm call per element: that was about
//! a tenth of a ViT-B decoder training step (the upscaled masks are 16 M values per
//! step) and a few percent of the encoder. Here `erfc` is a Chebyshev fit with relative
//! error below 1.2e-7 (Numerical Recipes' `erfcc`) and `exp` a range-reduced polynomial,
//! both branch-free, so the compiler vectorises the loops. Other backends and dtypes run
//! burn's GELU forward and the exact derivative composed of their erf and exp.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ActivationOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::TensorMetadata;
use burn::backend::{backend_extension, Autodiff, Backend, DType, Dispatch, Flex};
use burn::tensor::Tensor;

use super::{exp, map_elements, map_elements_with};

/// `x * Φ(x)`, with Φ the standard normal CDF (the exact GELU), on any backend.
pub fn exact_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as GeluBackend>::exact_gelu(x.into_dispatch()))
}

/// The exact GELU and its derivative as backend operations.
#[backend_extension(Flex, Autodiff, Cube: cfg(any(feature = "cuda", feature = "wgpu")))]
pub trait GeluBackend: Backend {
    /// `x * Φ(x)`.
    fn exact_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu(x)
    }

    /// `grad * (Φ(x) + x φ(x))`, the gradient of [`GeluBackend::exact_gelu`] at `x`.
    fn exact_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_gelu_backward::<Self>(x, grad)
    }
}

/// The exact derivative from the backend's own erf and exp. Burn's default
/// `gelu_backward` (used by the GPU backends) is the derivative of the tanh approximation
/// instead, which would train a slightly different function than the forward pass runs.
fn composed_gelu_backward<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let scaled = B::float_mul_scalar(x.clone(), FRAC_1_SQRT_2.into());
    let cdf = B::float_mul_scalar(
        B::float_add_scalar(B::float_erf(scaled), 1.0f32.into()),
        0.5f32.into(),
    );
    let square = B::float_mul(x.clone(), x.clone());
    let pdf = B::float_mul_scalar(
        B::float_exp(B::float_mul_scalar(square, (-0.5f32).into())),
        FRAC_1_SQRT_2PI.into(),
    );
    let derivative = B::float_add(cdf, B::float_mul(x, pdf));
    B::float_mul(grad, derivative)
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl GeluBackend for burn::backend::Cube {}

impl GeluBackend for Flex {
    fn exact_gelu(x: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 {
            return Self::gelu(x);
        }
        map_elements(x, gelu)
    }

    fn exact_gelu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 || x.shape() != grad.shape() {
            return Self::gelu_backward(x, grad);
        }
        let x = x.to_contiguous();
        let input = x.as_slice::<f32>().expect("contiguous after to_contiguous");
        map_elements_with(grad, Some(input), gelu_backward)
    }
}

impl<B: GeluBackend, C: CheckpointStrategy> GeluBackend for Autodiff<B, C> {
    fn exact_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct ExactGelu;

        impl<B: GeluBackend> Backward<B, 1> for ExactGelu {
            /// The input, for the derivative.
            type State = FloatTensor<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let input = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::exact_gelu_backward(input, grad)
                });
            }
        }

        let (input, node) = x.into_parts();
        match ExactGelu.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(input.clone(), B::exact_gelu(input)),
            OpsKind::UnTracked(prep) => prep.finish(B::exact_gelu(input)),
        }
    }
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi), the standard normal density at 0.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `x * Φ(x)`.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    x * normal_cdf(x)
}

/// `grad * gelu'(x)`.
#[inline(always)]
fn gelu_backward(grad: f32, x: f32) -> f32 {
    grad * gelu_derivative(x)
}

/// `Φ(x) + x φ(x)`.
#[inline(always)]
fn gelu_derivative(x: f32) -> f32 {
    normal_cdf(x) + x * FRAC_1_SQRT_2PI * exp(-0.5 * x * x)
}

/// Φ(x) = erfc(-x / sqrt 2) / 2, from the tail that keeps its relative accuracy.
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    let half_tail = 0.5 * erfc_nonnegative(x.abs() * FRAC_1_SQRT_2);
    if x < 0.0 {
        half_tail
    } else {
        1.0 - half_tail
    }
}

/// erfc(z) for z >= 0, relative error below 1.2e-7 (Numerical Recipes, `erfcc`).
#[inline(always)]
fn erfc_nonnegative(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_2 + t * 0.170_872_77))))))));
    t * exp(poly - z * z)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    /// Φ(x) in f64 through erfc, which keeps the left tail accurate.
    fn normal_cdf_f64(x: f64) -> f64 {
        0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
    }

    fn exact_gelu_f64(x: f64) -> f64 {
        x * normal_cdf_f64(x)
    }

    fn exact_derivative_f64(x: f64) -> f64 {
        let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        normal_cdf_f64(x) + x * pdf
    }

    /// Within a few f32 ulps of the exact values, and relatively accurate in the left
    /// tail where GELU is tiny (a formula through `1 + erf` loses it there).
    #[test]
    fn gelu_and_its_derivative_match_the_exact_functions() {
        let mut worst = (0.0f64, 0.0f64);
        for i in -1_200_000..=1_200_000 {
            let x = i as f32 * 1e-5;
            let (want, got) = (exact_gelu_f64(x as f64), gelu(x) as f64);
            let error = (got - want).abs() / want.abs().max(1.0);
            let tail_error = if want.abs() > 1e-30 {
                (got - want).abs() / want.abs()
            } else {
                0.0
            };
            assert!(error < 4e-7, "gelu({x}) = {got}, exact {want}");
            // f32 rounding of the exponent -x^2/2 grows with x^2
            let tail_tolerance = 1e-6 * (1.0 + (x * x) as f64);
            assert!(
                tail_error < tail_tolerance,
                "gelu({x}) = {got}, exact {want}"
            );
            let (want, got) = (exact_derivative_f64(x as f64), gelu_derivative(x) as f64);
            assert!(
                (got - want).abs() < 4e-7,
                "gelu'({x}) = {got}, exact {want}"
            );
            worst.0 = worst.0.max(error);
            worst.1 = worst.1.max((got - want).abs());
        }
        assert!(worst.0 > 0.0 && worst.1 > 0.0, "compared nothing");
        assert_eq!(gelu(0.0), 0.0);
        assert_eq!(gelu(100.0), 100.0);
        assert!(gelu(-100.0).abs() < 1e-30);
    }

    /// The derivative the GPU backends use, composed of backend operations.
    #[test]
    fn composed_derivative_matches_the_exact_one() {
        let xs: Vec<f32> = (-800..=800).map(|i| i as f32 * 0.01).collect();
        let grads: Vec<f32> = xs.iter().map(|x| 1.0 + 0.1 * x).collect();
        let tensor =
            |v: &[f32]| FlexTensor::from_data(burn::tensor::TensorData::new(v.to_vec(), [v.len()]));
        let out = composed_gelu_backward::<Flex>(tensor(&xs), tensor(&grads)).into_data();
        for ((x, g), got) in xs
            .iter()
            .zip(&grads)
            .zip(out.as_slice::<f32>().expect("f32"))
        {
            let want = *g as f64 * exact_derivative_f64(*x as f64);
            assert!(
                (*got as f64 - want).abs() < 1e-6,
                "gelu'({x}) = {got}, exact {want}"
            );
        }
    }

    /// The backend operation and its gradient agree with burn's GELU (libm erf).
    #[test]
    fn backend_gelu_and_gradient_match_burn() {
        let device = Device::flex().autodiff();
        let values = Tensor::<3>::random([3, 70, 700], Distribution::Normal(0.0, 3.0), &device);
        let weights = Tensor::<3>::random([3, 700, 70], Distribution::Default, &device);
        // a strided view exercises the copy to contiguous memory
        let run = |gelu: fn(Tensor<3>) -> Tensor<3>| {
            let x = values.clone().detach().require_grad();
            let y = gelu(x.clone().swap_dims(1, 2));
            let grads = (y.clone() * weights.clone()).sum().backward();
            (y.into_data(), x.grad(&grads).expect("gradient").into_data())
        };
        let (ours, our_grad) = run(exact_gelu);
        let (burns, burn_grad) = run(burn::tensor::activation::gelu);
        ours.assert_approx_eq::<f32>(&burns, Tolerance::absolute(1e-6));
        our_grad.assert_approx_eq::<f32>(&burn_grad, Tolerance::absolute(1e-6));
    }
}
