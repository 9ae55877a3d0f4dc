//! AdamW set up as PyTorch fine-tuning scripts do (no weight decay on norms and biases,
//! epsilon 1e-8) and global gradient-norm clipping (`clip_grad_norm_`).

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;

use super::config::OptimConfig;

/// Rank-1 parameters: biases and norm scales/shifts.
#[derive(Default)]
struct RankOneParams(Vec<ParamId>);

impl ModuleVisitor for RankOneParams {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if D == 1 {
            self.0.push(param.id);
        }
    }
}

/// AdamW over `module`'s trainable parameters; build it after loading weights (loading
/// may replace parameter ids).
pub fn adamw<M: Module>(module: &M, config: &OptimConfig) -> ModuleOptimizer {
    let base = || {
        AdamWConfig::new()
            .with_beta_1(config.beta1 as f32)
            .with_beta_2(config.beta2 as f32)
            .with_epsilon(config.epsilon as f32)
    };
    let mut no_decay = RankOneParams::default();
    module.visit(&mut no_decay);
    base()
        .with_weight_decay(config.weight_decay as f32)
        .init()
        .with_group(
            ParamGroup::from_ids(no_decay.0),
            base().with_weight_decay(0.0).build(),
            None,
        )
}

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    /// `[1]`, on the gradients' device.
    factor: Tensor<1>,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let factor = self.factor.clone().reshape([1; D]);
            self.grads.register::<D>(param.id, g * factor);
        }
    }
}

/// PyTorch's `clip_grad_norm_`: every gradient times `min(1, max_norm / (norm + 1e-6))`,
/// `norm` the global L2 norm of all of them (when `max_norm > 0`). The factor is computed
/// on the device, as PyTorch does, so that no value is read back in a training step.
/// Returns the norm before clipping, `[1]` on the device (`None` without gradients).
pub fn clip_global_norm<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> Option<Tensor<1>> {
    let mut visitor = SquaredNorm { grads, sum: None };
    module.visit(&mut visitor);
    let norm = visitor.sum?.sqrt();
    if max_norm > 0.0 {
        let factor = norm
            .clone()
            .add_scalar(1e-6)
            .recip()
            .mul_scalar(max_norm)
            .clamp_max(1.0);
        module.visit(&mut Scale { grads, factor });
    }
    Some(norm)
}
