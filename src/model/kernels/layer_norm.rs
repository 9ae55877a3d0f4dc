//! LayerNorm over the last axis as one backend operation with its own backward pass.
//!
//! Under autodiff burn composes `layer_norm` from about ten element-wise operations and
//! records each for the backward pass, which is then about fifteen more passes over
//! memory; a ViT-B decoder step normalises three `[8, 4096, 256]`-sized tensors that way.
//! Here the forward is flex's fused kernel and the backward one pass per row, in place
//! over the incoming gradient. Other backends get the same derivative composed of their
//! own operations.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    backend_extension, Autodiff, Backend, DType, Dispatch, ExtensionType, Flex, TensorMetadata,
};
use burn::tensor::{Shape, Tensor};
use rayon::prelude::*;

use super::{sum_of, values_mut, vectorised, CHUNK};

/// `(x - mean) / sqrt(var + epsilon) * gamma + beta` over the last axis of `x`.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as LayerNormBackend>::fused_layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    ))
}

/// Gradients of [`LayerNormBackend::fused_layer_norm`] with respect to its inputs.
#[derive(ExtensionType)]
pub struct LayerNormGrads<B: Backend> {
    pub input: FloatTensor<B>,
    pub gamma: FloatTensor<B>,
    pub beta: FloatTensor<B>,
}

/// LayerNorm over the last axis and its backward pass as backend operations.
#[backend_extension(Flex, Autodiff, Cube: cfg(any(feature = "cuda", feature = "wgpu")))]
pub trait LayerNormBackend: Backend {
    /// `input [..., d]`, `gamma` and `beta` `[d]` -> `[..., d]`.
    fn fused_layer_norm(
        input: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        Self::layer_norm(input, gamma, Some(beta), epsilon)
    }

    /// The gradients for the output gradient `grad [..., d]`.
    fn fused_layer_norm_backward(
        input: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> LayerNormGrads<Self> {
        composed_backward::<Self>(input, gamma, grad, epsilon)
    }
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl LayerNormBackend for burn::backend::Cube {}

impl LayerNormBackend for Flex {
    fn fused_layer_norm_backward(
        input: FlexTensor,
        gamma: FlexTensor,
        mut grad: FlexTensor,
        epsilon: f64,
    ) -> LayerNormGrads<Self> {
        let all_f32 = [&input, &gamma, &grad]
            .iter()
            .all(|t| t.dtype() == DType::F32);
        if !all_f32 || input.shape() != grad.shape() {
            return composed_backward::<Self>(input, gamma, grad, epsilon);
        }
        let (input, gamma) = (input.to_contiguous(), gamma.to_contiguous());
        let x = input.as_slice::<f32>().expect("contiguous");
        let gamma_values = gamma.as_slice::<f32>().expect("contiguous");
        let d = gamma_values.len();
        let rows_per_task = (CHUNK / d).max(1);
        // Each task sums its rows' gamma and beta gradients in f32 (a few hundred rows);
        // the tasks' sums are added in f64.
        let (gamma_grad, beta_grad) = values_mut(&mut grad)
            .par_chunks_mut(rows_per_task * d)
            .zip(x.par_chunks(rows_per_task * d))
            .map(|(grad_rows, x_rows)| {
                let (mut gamma_grad, mut beta_grad) = (vec![0.0f32; d], vec![0.0f32; d]);
                vectorised::run(BackwardRows {
                    x: x_rows,
                    grad: grad_rows,
                    gamma: gamma_values,
                    epsilon: epsilon as f32,
                    gamma_grad: &mut gamma_grad,
                    beta_grad: &mut beta_grad,
                });
                (widen(gamma_grad), widen(beta_grad))
            })
            .reduce(
                || (vec![0.0f64; d], vec![0.0f64; d]),
                |(a, b), (c, e)| (add(a, c), add(b, e)),
            );
        let vector = |values: Vec<f64>| {
            let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
            FlexTensor::from_data(burn::tensor::TensorData::new(values, [d]))
        };
        LayerNormGrads {
            input: grad,
            gamma: vector(gamma_grad),
            beta: vector(beta_grad),
        }
    }
}

fn widen(values: Vec<f32>) -> Vec<f64> {
    values.into_iter().map(f64::from).collect()
}

fn add(mut a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    a
}

/// Rows of `x` and of the output gradient (overwritten with the input gradient), `d` =
/// `gamma.len()` values each; adds each row's share of the gamma and beta gradients.
///
/// With `x̂ = (x - mean) * rstd` and `h = grad * gamma`:
/// `dx = rstd * (h - mean(h) - x̂ * mean(h * x̂))`, `dgamma = Σ grad * x̂`, `dbeta = Σ grad`.
struct BackwardRows<'a> {
    x: &'a [f32],
    grad: &'a mut [f32],
    gamma: &'a [f32],
    epsilon: f32,
    gamma_grad: &'a mut [f32],
    beta_grad: &'a mut [f32],
}

impl vectorised::Loop for BackwardRows<'_> {
    #[inline(always)]
    fn run(self) {
        let BackwardRows {
            x,
            grad,
            gamma,
            epsilon,
            gamma_grad,
            beta_grad,
        } = self;
        let d = gamma.len();
        let inv_d = 1.0 / d as f32;
        for (x, grad) in x.chunks_exact(d).zip(grad.chunks_exact_mut(d)) {
            let mean = sum_of(d, |i| x[i]) * inv_d;
            let variance = sum_of(d, |i| (x[i] - mean) * (x[i] - mean)) * inv_d;
            let rstd = 1.0 / (variance + epsilon).sqrt();
            let mean_h = sum_of(d, |i| grad[i] * gamma[i]) * inv_d;
            let mean_h_xhat = sum_of(d, |i| grad[i] * gamma[i] * ((x[i] - mean) * rstd)) * inv_d;
            for i in 0..d {
                let xhat = (x[i] - mean) * rstd;
                gamma_grad[i] += grad[i] * xhat;
                beta_grad[i] += grad[i];
                grad[i] = rstd * (grad[i] * gamma[i] - mean_h - xhat * mean_h_xhat);
            }
        }
    }
}

/// The same gradients from the backend's own operations.
fn composed_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    grad: FloatTensor<B>,
    epsilon: f64,
) -> LayerNormGrads<B> {
    let shape = x.shape();
    let last = shape.num_dims() - 1;
    let d = shape[last];
    let rows = shape.num_elements() / d;
    let mut gamma_shape = vec![1; last + 1];
    gamma_shape[last] = d;

    let mean = B::float_mean_dim(x.clone(), last);
    let centred = B::float_sub(x, mean);
    let variance = B::float_mean_dim(B::float_mul(centred.clone(), centred.clone()), last);
    let rstd = B::float_recip(B::float_sqrt(B::float_add_scalar(variance, epsilon.into())));
    let xhat = B::float_mul(centred, rstd.clone());
    let h = B::float_mul(
        grad.clone(),
        B::float_reshape(gamma, Shape::from(gamma_shape)),
    );
    let mean_h = B::float_mean_dim(h.clone(), last);
    let mean_h_xhat = B::float_mean_dim(B::float_mul(h.clone(), xhat.clone()), last);
    let input = B::float_mul(
        B::float_sub(
            B::float_sub(h, mean_h),
            B::float_mul(xhat.clone(), mean_h_xhat),
        ),
        rstd,
    );
    let column_sum = |t: FloatTensor<B>| {
        let rows_by_d = B::float_reshape(t, Shape::new([rows, d]));
        B::float_reshape(B::float_sum_dim(rows_by_d, 0), Shape::new([d]))
    };
    LayerNormGrads {
        input,
        gamma: column_sum(B::float_mul(grad.clone(), xhat)),
        beta: column_sum(grad),
    }
}

impl<B: LayerNormBackend, C: CheckpointStrategy> LayerNormBackend for Autodiff<B, C> {
    fn fused_layer_norm(
        input: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FusedLayerNorm;

        impl<B: LayerNormBackend> Backward<B, 3> for FusedLayerNorm {
            /// Input, gamma and epsilon, for the backward pass.
            type State = (FloatTensor<B>, FloatTensor<B>, f64);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [input_node, gamma_node, beta_node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (input, gamma, epsilon) = ops.state;
                let computed = B::fused_layer_norm_backward(input, gamma, grad, epsilon);
                for (node, grad) in [
                    (input_node, computed.input),
                    (gamma_node, computed.gamma),
                    (beta_node, computed.beta),
                ] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        let (input, input_node) = input.into_parts();
        let (gamma, gamma_node) = gamma.into_parts();
        let (beta, beta_node) = beta.into_parts();
        match FusedLayerNorm
            .prepare::<C>([input_node, gamma_node, beta_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (input.clone(), gamma.clone(), epsilon);
                prep.finish(state, B::fused_layer_norm(input, gamma, beta, epsilon))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_layer_norm(input, gamma, beta, epsilon))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    /// Values and gradients (input, gamma, beta) equal burn's composed LayerNorm's.
    #[test]
    fn values_and_gradients_match_burns_layer_norm() {
        let device = Device::flex().autodiff();
        for d in [64, 100] {
            let random = |shape: [usize; 3]| {
                Tensor::<3>::random(shape, Distribution::Normal(0.5, 2.0), &device)
            };
            let (x, weights) = (random([3, 150, d]), random([3, 150, d]));
            let gamma = Tensor::<1>::random([d], Distribution::Normal(1.0, 0.5), &device);
            let beta = Tensor::<1>::random([d], Distribution::Normal(0.0, 0.5), &device);
            let run = |norm: fn(Tensor<3>, Tensor<1>, Tensor<1>) -> Tensor<3>| {
                let leaf = |t: &Tensor<3>| t.clone().detach().require_grad();
                let (x, gamma, beta) = (
                    leaf(&x),
                    gamma.clone().detach().require_grad(),
                    beta.clone().detach().require_grad(),
                );
                let y = norm(x.clone(), gamma.clone(), beta.clone());
                let grads = (y.clone() * weights.clone()).sum().backward();
                let grad_of = |t: Option<Tensor<3>>| t.expect("gradient").into_data();
                (
                    y.into_data(),
                    grad_of(x.grad(&grads)),
                    gamma.grad(&grads).expect("gradient").into_data(),
                    beta.grad(&grads).expect("gradient").into_data(),
                )
            };
            let ours = run(|x, g, b| layer_norm(x, g, b, 1e-5));
            let burns = run(|x, g, b| burn::tensor::module::layer_norm(x, g, Some(b), 1e-5));
            let tolerance = Tolerance::absolute(2e-5);
            ours.0.assert_approx_eq::<f32>(&burns.0, tolerance);
            ours.1.assert_approx_eq::<f32>(&burns.1, tolerance);
            ours.2
                .assert_approx_eq::<f32>(&burns.2, Tolerance::absolute(1e-3));
            ours.3
                .assert_approx_eq::<f32>(&burns.3, Tolerance::absolute(1e-3));
        }
    }

    /// The composed backward (the GPU backends' path) agrees with flex's kernel.
    #[test]
    fn composed_backward_matches_the_kernel() {
        let device = Device::flex();
        let tensor = |shape: Vec<usize>| {
            let t = Tensor::<2>::random(
                [shape[0], shape[1]],
                Distribution::Normal(0.0, 1.5),
                &device,
            );
            FlexTensor::from_data(t.into_data())
        };
        let (x, gamma, grad) = (
            tensor(vec![40, 96]),
            tensor(vec![1, 96]),
            tensor(vec![40, 96]),
        );
        let gamma = gamma.reshape(Shape::new([96]));
        let kernel = Flex::fused_layer_norm_backward(x.clone(), gamma.clone(), grad.clone(), 1e-6);
        let composed = composed_backward::<Flex>(x, gamma, grad, 1e-6);
        let tolerance = Tolerance::absolute(1e-4);
        for (a, b) in [
            (kernel.input, composed.input),
            (kernel.gamma, composed.gamma),
            (kernel.beta, composed.beta),
        ] {
            a.into_data()
                .assert_approx_eq::<f32>(&b.into_data(), tolerance);
        }
    }
}
