//! The focal and dice terms of the mask loss as one backend operation with its own
//! backward pass.
//!
//! Composed, the two terms are about twenty element-wise operations over the
//! `[N, M, 256, 256]` mask logits, with libm's scalar `expf` and `log1pf`, and autodiff
//! records each for a backward pass of as many more: a sixth of a ViT-B decoder training
//! step. Here flex computes each mask's terms in one vectorised pass, and their gradient
//! in two (the dice sums, then the gradient). Other backends compose the same formulas
//! from their own operations.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    backend_extension, Autodiff, AutodiffBackend, Backend, DType, Dispatch, Flex, TensorMetadata,
};
use burn::tensor::{Shape, Slice, Tensor};
use rayon::prelude::*;

use crate::model::kernels::{exp, f32_values, sums_of, vectorised, zeroed_f32};

/// Per-mask focal loss (mean over pixels) and dice loss of `logits [N, M, P]` against
/// `targets [N, P]` (0/1, or soft), the same target for each of a prompt's `M` masks:
/// `[N, M, 2]`, focal then dice. The targets get no gradient.
pub fn focal_and_dice(logits: Tensor<3>, targets: Tensor<2>, alpha: f64, gamma: f64) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as MaskLossBackend>::focal_and_dice(
        logits.into_dispatch(),
        targets.into_dispatch(),
        alpha,
        gamma,
    ))
}

/// The focal and dice terms and their gradient as backend operations.
#[backend_extension(Flex, Autodiff, Cube: cfg(any(feature = "cuda", feature = "wgpu")))]
pub trait MaskLossBackend: Backend {
    /// See [`focal_and_dice`].
    fn focal_and_dice(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        alpha: f64,
        gamma: f64,
    ) -> FloatTensor<Self> {
        composed_focal_and_dice::<Self>(logits, targets, alpha, gamma)
    }

    /// The gradient of the logits `[N, M, P]` from the gradient `grad [N, M, 2]` of
    /// [`MaskLossBackend::focal_and_dice`].
    fn focal_and_dice_backward(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        alpha: f64,
        gamma: f64,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed_backward::<Self>(logits, targets, alpha, gamma, grad)
    }
}

/// The per-pixel quantities both terms and their gradient need, as backend tensors
/// `[N, M, P]`: probability, cross-entropy, focal weight `alpha_t` and `1 - p_t`.
struct ComposedPixels<B: Backend> {
    targets: FloatTensor<B>,
    p: FloatTensor<B>,
    ce: FloatTensor<B>,
    alpha_t: FloatTensor<B>,
    one_minus_p_t: FloatTensor<B>,
}

fn one_minus<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    B::float_add_scalar(B::float_neg(x), 1.0f32.into())
}

impl<B: Backend> ComposedPixels<B> {
    fn new(logits: FloatTensor<B>, targets: FloatTensor<B>, alpha: f64) -> Self {
        let shape = logits.shape();
        let t = B::float_expand(
            B::float_reshape(targets, Shape::new([shape[0], 1, shape[2]])),
            shape,
        );
        let p = B::sigmoid(logits.clone());
        // -(t log p + (1 - t) log(1 - p)), stable through log-sigmoid
        let ce = B::float_neg(B::float_add(
            B::float_mul(t.clone(), B::log_sigmoid(logits.clone())),
            B::float_mul(
                one_minus::<B>(t.clone()),
                B::log_sigmoid(B::float_neg(logits)),
            ),
        ));
        let p_t = B::float_add(
            B::float_mul(p.clone(), t.clone()),
            B::float_mul(one_minus::<B>(p.clone()), one_minus::<B>(t.clone())),
        );
        // alpha t + (1 - alpha)(1 - t)
        let alpha_t = B::float_add_scalar(
            B::float_mul_scalar(t.clone(), (2.0 * alpha - 1.0).into()),
            (1.0 - alpha).into(),
        );
        Self {
            targets: t,
            p,
            ce,
            alpha_t,
            one_minus_p_t: one_minus::<B>(p_t),
        }
    }

    /// The dice sums `Σ p t` and `Σ p + Σ t`, `[N, M, 1]` each.
    fn dice_sums(&self) -> [FloatTensor<B>; 2] {
        let sum = |t| B::float_sum_dim(t, 2);
        [
            sum(B::float_mul(self.p.clone(), self.targets.clone())),
            B::float_add(sum(self.p.clone()), sum(self.targets.clone())),
        ]
    }
}

/// The terms from the backend's own operations.
fn composed_focal_and_dice<B: Backend>(
    logits: FloatTensor<B>,
    targets: FloatTensor<B>,
    alpha: f64,
    gamma: f64,
) -> FloatTensor<B> {
    let pixels = ComposedPixels::<B>::new(logits, targets, alpha);
    let [intersection, total] = pixels.dice_sums();
    let modulation = B::float_powf_scalar(pixels.one_minus_p_t, gamma.into());
    let focal = B::float_mean_dim(
        B::float_mul(B::float_mul(pixels.alpha_t, pixels.ce), modulation),
        2,
    );
    let dice = one_minus::<B>(B::float_div(
        B::float_add_scalar(
            B::float_mul_scalar(intersection, 2.0f32.into()),
            1.0f32.into(),
        ),
        B::float_add_scalar(total, 1.0f32.into()),
    ));
    B::float_cat(vec![focal, dice], 2)
}

/// The gradient from the backend's own operations:
/// - focal, per pixel: `alpha_t ((p - t) m(a) - ce m'(a) (2t - 1) p (1 - p)) / P`, with
///   `a = 1 - p_t` and `m(a) = a^gamma`;
/// - dice: `p (1 - p) ((2I + 1) / (S + 1)^2 - 2t / (S + 1))`, with `I = Σ p t` and
///   `S = Σ p + Σ t`.
fn composed_backward<B: Backend>(
    logits: FloatTensor<B>,
    targets: FloatTensor<B>,
    alpha: f64,
    gamma: f64,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let [n, m, count] = logits.shape().dims();
    let column = |c: usize| {
        B::float_slice(
            grad.clone(),
            &[Slice::from(0..n), Slice::from(0..m), Slice::from(c..c + 1)],
        )
    };
    let (focal_grad, dice_grad) = (column(0), column(1));
    let pixels = ComposedPixels::<B>::new(logits, targets, alpha);
    let [intersection, total] = pixels.dice_sums();
    let t = pixels.targets;
    let spread = B::float_mul(pixels.p.clone(), one_minus::<B>(pixels.p.clone()));

    let a = pixels.one_minus_p_t;
    let modulation = B::float_powf_scalar(a.clone(), gamma.into());
    let mut focal = B::float_mul(B::float_sub(pixels.p, t.clone()), modulation);
    if gamma != 0.0 {
        let derivative =
            B::float_mul_scalar(B::float_powf_scalar(a, (gamma - 1.0).into()), gamma.into());
        let sign = B::float_add_scalar(
            B::float_mul_scalar(t.clone(), 2.0f32.into()),
            (-1.0f32).into(),
        );
        let through_modulation = B::float_mul(
            B::float_mul(pixels.ce, derivative),
            B::float_mul(sign, spread.clone()),
        );
        focal = B::float_sub(focal, through_modulation);
    }
    let focal = B::float_mul(
        B::float_mul(pixels.alpha_t, focal),
        B::float_div_scalar(focal_grad, (count as f32).into()),
    );

    let denominator = B::float_add_scalar(total, 1.0f32.into());
    let numerator = B::float_add_scalar(
        B::float_mul_scalar(intersection, 2.0f32.into()),
        1.0f32.into(),
    );
    let constant = B::float_div(
        numerator,
        B::float_mul(denominator.clone(), denominator.clone()),
    );
    let per_target = B::float_mul_scalar(B::float_recip(denominator), 2.0f32.into());
    let dice = B::float_mul(
        B::float_mul(spread, B::float_sub(constant, B::float_mul(t, per_target))),
        dice_grad,
    );
    B::float_add(focal, dice)
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl MaskLossBackend for burn::backend::Cube {}

/// `m(a)` of the focal modulation and its derivative.
trait Modulation: Copy + Send + Sync {
    fn value(self, a: f32) -> f32;
    fn derivative(self, a: f32) -> f32;
}

/// `a^2`, the usual gamma, without a call to `powf`: the loops vectorise.
#[derive(Clone, Copy)]
struct Square;

impl Modulation for Square {
    #[inline(always)]
    fn value(self, a: f32) -> f32 {
        a * a
    }

    #[inline(always)]
    fn derivative(self, a: f32) -> f32 {
        2.0 * a
    }
}

/// `a^gamma` for any other gamma.
#[derive(Clone, Copy)]
struct Power(f32);

impl Modulation for Power {
    #[inline(always)]
    fn value(self, a: f32) -> f32 {
        a.powf(self.0)
    }

    #[inline(always)]
    fn derivative(self, a: f32) -> f32 {
        // gamma 0: a constant weight, whose derivative is 0 even where a = 0
        if self.0 == 0.0 {
            0.0
        } else {
            self.0 * a.powf(self.0 - 1.0)
        }
    }
}

/// The per-pixel quantities at logit `x` and target `t`.
struct Pixel {
    p: f32,
    ce: f32,
    alpha_t: f32,
    one_minus_p_t: f32,
}

#[inline(always)]
fn pixel(x: f32, t: f32, alpha: f32) -> Pixel {
    // sigmoid and softplus from e^-|x|, which cannot overflow
    let e = exp(-x.abs());
    let inverse = 1.0 / (1.0 + e);
    let p = if x >= 0.0 { inverse } else { e * inverse };
    // -(t log p + (1 - t) log(1 - p)) = softplus(x) - t x
    let ce = x.max(0.0) + ln_1p_unit(e) - t * x;
    let p_t = p * t + (1.0 - p) * (1.0 - t);
    Pixel {
        p,
        ce,
        alpha_t: alpha * t + (1.0 - alpha) * (1.0 - t),
        one_minus_p_t: 1.0 - p_t,
    }
}

/// ln(1 + u) for u in [0, 1]: 2 atanh(s) with s = u / (2 + u) <= 1/3, its series to s^13
/// (truncation error below 2e-8; with f32 rounding, within 4e-7 relative), branch-free so
/// the loops vectorise.
#[inline(always)]
fn ln_1p_unit(u: f32) -> f32 {
    let s = u / (2.0 + u);
    let s2 = s * s;
    let series = 1.0
        + s2 * (1.0 / 3.0
            + s2 * (1.0 / 5.0
                + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0 + s2 * (1.0 / 11.0 + s2 * (1.0 / 13.0))))));
    2.0 * s * series
}

/// The loop of [`mask_sums`].
struct MaskSums<'a, M> {
    logits: &'a [f32],
    targets: &'a [f32],
    alpha: f32,
    modulation: M,
    sums: &'a mut [f32; 3],
}

impl<M: Modulation> vectorised::Loop for MaskSums<'_, M> {
    #[inline(always)]
    fn run(self) {
        // equal lengths, stated once, so the loop has no bounds checks and vectorises
        let x = self.logits;
        let t = &self.targets[..x.len()];
        *self.sums = sums_of(x.len(), |i| {
            let px = pixel(x[i], t[i], self.alpha);
            [
                px.alpha_t * px.ce * self.modulation.value(px.one_minus_p_t),
                px.p * t[i],
                px.p + t[i],
            ]
        });
    }
}

/// The loop of [`mask_gradient`] (the formulas of [`composed_backward`]).
struct MaskGradient<'a, M> {
    logits: &'a [f32],
    targets: &'a [f32],
    alpha: f32,
    modulation: M,
    /// The gradients of the mask's focal and dice terms.
    term_grads: [f32; 2],
    grad: &'a mut [f32],
}

impl<M: Modulation> vectorised::Loop for MaskGradient<'_, M> {
    #[inline(always)]
    fn run(self) {
        let (x, alpha) = (self.logits, self.alpha);
        // equal lengths, stated once, so the loops have no bounds checks and vectorise
        let t = &self.targets[..x.len()];
        let grad = &mut self.grad[..x.len()];
        let [intersection, total] = sums_of(x.len(), |i| {
            let p = pixel(x[i], t[i], alpha).p;
            [p * t[i], p + t[i]]
        });
        let focal_scale = self.term_grads[0] / x.len() as f32;
        let dice_scale = self.term_grads[1];
        let denominator = total + 1.0;
        let constant = (2.0 * intersection + 1.0) / (denominator * denominator);
        let per_target = 2.0 / denominator;
        for (i, grad) in grad.iter_mut().enumerate() {
            let px = pixel(x[i], t[i], alpha);
            let spread = px.p * (1.0 - px.p);
            let a = px.one_minus_p_t;
            let focal = px.alpha_t
                * ((px.p - t[i]) * self.modulation.value(a)
                    - px.ce * self.modulation.derivative(a) * (2.0 * t[i] - 1.0) * spread);
            let dice = spread * (constant - t[i] * per_target);
            *grad = focal_scale * focal + dice_scale * dice;
        }
    }
}

/// `[N, M, P]` logits and `[N, P]` targets as contiguous f32 values, or `None` for other
/// dtypes and shapes (the composed path takes those).
fn f32_inputs(
    logits: &FlexTensor,
    targets: &FlexTensor,
) -> Option<([usize; 3], FlexTensor, FlexTensor)> {
    let (shape, target_shape) = (logits.shape(), targets.shape());
    let f32s = logits.dtype() == DType::F32 && targets.dtype() == DType::F32;
    let shapes_fit = shape.num_dims() == 3
        && target_shape.num_dims() == 2
        && target_shape[0] == shape[0]
        && target_shape[1] == shape[2];
    if !f32s || !shapes_fit {
        return None;
    }
    Some((
        shape.dims(),
        logits.clone().to_contiguous(),
        targets.clone().to_contiguous(),
    ))
}

/// The modulation for `gamma`: squaring for the usual 2 (no `powf`, so the loops vectorise).
#[derive(Clone, Copy)]
enum Gamma {
    Two,
    Other(Power),
}

impl Gamma {
    fn new(gamma: f64) -> Self {
        if gamma == 2.0 {
            Self::Two
        } else {
            Self::Other(Power(gamma as f32))
        }
    }
}

/// One mask's `[focal sum, Σ p t, Σ p + Σ t]`.
fn mask_sums(logits: &[f32], targets: &[f32], alpha: f32, gamma: Gamma) -> [f32; 3] {
    let mut sums = [0.0; 3];
    match gamma {
        Gamma::Two => vectorised::run(MaskSums {
            logits,
            targets,
            alpha,
            modulation: Square,
            sums: &mut sums,
        }),
        Gamma::Other(modulation) => vectorised::run(MaskSums {
            logits,
            targets,
            alpha,
            modulation,
            sums: &mut sums,
        }),
    }
    sums
}

/// One mask's logit gradient, written to `grad`.
fn mask_gradient(
    logits: &[f32],
    targets: &[f32],
    alpha: f32,
    gamma: Gamma,
    term_grads: [f32; 2],
    grad: &mut [f32],
) {
    match gamma {
        Gamma::Two => vectorised::run(MaskGradient {
            logits,
            targets,
            alpha,
            modulation: Square,
            term_grads,
            grad,
        }),
        Gamma::Other(modulation) => vectorised::run(MaskGradient {
            logits,
            targets,
            alpha,
            modulation,
            term_grads,
            grad,
        }),
    }
}

impl MaskLossBackend for Flex {
    fn focal_and_dice(
        logits: FlexTensor,
        targets: FlexTensor,
        alpha: f64,
        gamma: f64,
    ) -> FlexTensor {
        let Some(([n, m, count], x, t)) = f32_inputs(&logits, &targets) else {
            return composed_focal_and_dice::<Self>(logits, targets, alpha, gamma);
        };
        let (x, t, alpha) = (f32_values(&x), f32_values(&t), alpha as f32);
        let gamma = Gamma::new(gamma);
        let sums: Vec<[f32; 3]> = (0..n * m)
            .into_par_iter()
            .map(|mask| {
                let logits = &x[mask * count..][..count];
                mask_sums(logits, &t[mask / m * count..][..count], alpha, gamma)
            })
            .collect();
        let terms: Vec<f32> = sums
            .iter()
            .flat_map(|&[focal, intersection, total]| {
                [
                    focal / count as f32,
                    1.0 - (2.0 * intersection + 1.0) / (total + 1.0),
                ]
            })
            .collect();
        FlexTensor::from_data(burn::tensor::TensorData::new(terms, [n, m, 2]))
    }

    fn focal_and_dice_backward(
        logits: FlexTensor,
        targets: FlexTensor,
        alpha: f64,
        gamma: f64,
        grad: FlexTensor,
    ) -> FlexTensor {
        let inputs = f32_inputs(&logits, &targets).filter(|_| grad.dtype() == DType::F32);
        let Some(([n, m, count], x, t)) = inputs else {
            return composed_backward::<Self>(logits, targets, alpha, gamma, grad);
        };
        let term_grads = grad.to_contiguous();
        let term_grads = f32_values(&term_grads);
        let (x, t, alpha, gamma) = (
            f32_values(&x),
            f32_values(&t),
            alpha as f32,
            Gamma::new(gamma),
        );
        let mut out = zeroed_f32(Shape::new([n, m, count]));
        out.storage_mut::<f32>()
            .par_chunks_mut(count)
            .enumerate()
            .for_each(|(mask, grad)| {
                let logits = &x[mask * count..][..count];
                let targets = &t[mask / m * count..][..count];
                let term_grads = [term_grads[2 * mask], term_grads[2 * mask + 1]];
                mask_gradient(logits, targets, alpha, gamma, term_grads, grad);
            });
        out
    }
}

impl<B: MaskLossBackend, C: CheckpointStrategy> MaskLossBackend for Autodiff<B, C> {
    fn focal_and_dice(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        alpha: f64,
        gamma: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FocalAndDice {
            alpha: f64,
            gamma: f64,
        }

        impl<B: MaskLossBackend> Backward<B, 1> for FocalAndDice {
            /// Logits and targets, for the gradient.
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let (logits, targets) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::focal_and_dice_backward(logits, targets, self.alpha, self.gamma, grad)
                });
            }
        }

        let (logits, node) = logits.into_parts();
        let targets = Self::inner(targets);
        match (FocalAndDice { alpha, gamma })
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let terms = B::focal_and_dice(logits.clone(), targets.clone(), alpha, gamma);
                prep.finish((logits, targets), terms)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::focal_and_dice(logits, targets, alpha, gamma))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, TensorData, Tolerance};

    fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    fn values_of<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 values")
    }

    /// [`focal_and_dice`] through the backend's own operations, differentiable by autodiff.
    fn composed(logits: Tensor<3>, targets: Tensor<2>, alpha: f64, gamma: f64) -> Tensor<3> {
        Tensor::from_dispatch(composed_focal_and_dice::<Dispatch>(
            logits.into_dispatch(),
            targets.into_dispatch(),
            alpha,
            gamma,
        ))
    }

    #[test]
    fn terms_match_hand_computed_values() {
        let device = Device::flex();
        // logits 0 and 2 against targets 1 and 0, alpha 0.25, gamma 2
        let logits = tensor(vec![0.0, 2.0], [1, 1, 2], &device);
        let targets = tensor(vec![1.0, 0.0], [1, 2], &device);
        // pixel 1: p = 0.5, ce = ln 2, p_t = 0.5, alpha_t = 0.25 -> 0.25 * ln2 * 0.25
        let a = 0.25 * std::f64::consts::LN_2 * 0.25;
        // pixel 2: p = sigmoid(2), ce = -ln(1 - p), p_t = 1 - p, alpha_t = 0.75 -> 0.75 * ce * p^2
        let p = 1.0 / (1.0 + (-2.0f64).exp());
        let b = 0.75 * -(1.0 - p).ln() * p * p;
        // dice: intersection 0.5, |P| 0.5 + p, |T| 1
        let dice = 1.0 - (2.0 * 0.5 + 1.0) / (0.5 + p + 1.0 + 1.0);
        for (path, terms) in [
            (
                "kernel",
                focal_and_dice(logits.clone(), targets.clone(), 0.25, 2.0),
            ),
            (
                "composed",
                composed(logits.clone(), targets.clone(), 0.25, 2.0),
            ),
        ] {
            let got = values_of(terms);
            assert!(
                (got[0] as f64 - (a + b) / 2.0).abs() < 1e-6,
                "{path}: focal {got:?}"
            );
            assert!((got[1] as f64 - dice).abs() < 1e-6, "{path}: dice {got:?}");
        }
    }

    #[test]
    fn dice_of_half_probabilities_matches_hand_computed_value() {
        // probabilities 0.5 (logit 0) on 4 pixels, 2 of them foreground:
        // intersection 1, |P| 2, |T| 2 -> 1 - (2 + 1) / (4 + 1) = 0.4
        let device = Device::flex();
        let logits = tensor(vec![0.0; 4], [1, 1, 4], &device);
        let targets = tensor(vec![1.0, 1.0, 0.0, 0.0], [1, 4], &device);
        let dice = values_of(focal_and_dice(logits, targets, 0.25, 2.0))[1];
        assert!((dice - 0.4).abs() < 1e-6, "{dice}");
    }

    /// The kernel's values and gradients equal autodiff's through the composed formulas,
    /// for the usual gamma, another one and none, with hard and soft targets and logits
    /// far into both tails.
    #[test]
    fn values_and_gradients_match_autodiff_of_the_composed_terms() {
        let device = Device::flex().autodiff();
        let [n, m, count] = [2, 3, 1000];
        let logits = Tensor::<3>::random([n, m, count], Distribution::Normal(0.0, 6.0), &device);
        let weights = Tensor::<3>::random([n, m, 2], Distribution::Normal(1.0, 1.0), &device);
        let hard = Tensor::<2>::random([n, count], Distribution::Bernoulli(0.3), &device);
        let soft = Tensor::<2>::random([n, count], Distribution::Uniform(0.0, 1.0), &device);
        for (gamma, targets) in [(2.0, &hard), (1.5, &soft), (0.0, &hard), (2.0, &soft)] {
            let run = |terms: fn(Tensor<3>, Tensor<2>, f64, f64) -> Tensor<3>| {
                let x = logits.clone().detach().require_grad();
                let y = terms(x.clone(), targets.clone(), 0.25, gamma);
                let grads = (y.clone() * weights.clone()).sum().backward();
                (y.into_data(), x.grad(&grads).expect("gradient").into_data())
            };
            let (values, grad) = run(focal_and_dice);
            let (want_values, want_grad) = run(composed);
            values.assert_approx_eq::<f32>(&want_values, Tolerance::relative(1e-5));
            // gradients are O(1/count)
            grad.assert_approx_eq::<f32>(&want_grad, Tolerance::absolute(1e-7));
        }
    }

    /// The composed gradient (the GPU backends' path) agrees with flex's kernel.
    #[test]
    fn composed_backward_matches_the_kernel() {
        let device = Device::flex();
        let flex = |t: Tensor<3>| FlexTensor::from_data(t.into_data());
        let logits = flex(Tensor::random(
            [3, 2, 700],
            Distribution::Normal(0.0, 4.0),
            &device,
        ));
        let targets = Tensor::<2>::random([3, 700], Distribution::Bernoulli(0.5), &device);
        let targets = FlexTensor::from_data(targets.into_data());
        let grad = flex(Tensor::random(
            [3, 2, 2],
            Distribution::Normal(0.0, 1.0),
            &device,
        ));
        for gamma in [2.0, 3.0, 0.0] {
            let kernel = Flex::focal_and_dice_backward(
                logits.clone(),
                targets.clone(),
                0.3,
                gamma,
                grad.clone(),
            );
            let composed = composed_backward::<Flex>(
                logits.clone(),
                targets.clone(),
                0.3,
                gamma,
                grad.clone(),
            );
            kernel
                .into_data()
                .assert_approx_eq::<f32>(&composed.into_data(), Tolerance::absolute(1e-7));
        }
    }

    #[test]
    fn ln_1p_is_accurate_on_the_unit_interval() {
        for i in 0..=100_000 {
            let u = i as f32 * 1e-5;
            let want = (u as f64).ln_1p();
            let got = ln_1p_unit(u) as f64;
            assert!(
                (got - want).abs() <= 4e-7 * want.abs().max(1e-30),
                "ln_1p({u}) = {got}, want {want}"
            );
        }
    }
}
