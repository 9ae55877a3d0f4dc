//! Low-rank adapters (LoRA) on a SAM's linear layers, with burn's own `Lora`
//! (`Module::apply_lora`): each adapted weight `W` `[d_in, d_out]` gains factors
//! `A` `[d_in, r]` (normal, std 1/r) and `B` `[r, d_out]` (zeros), and is used as
//! `W + alpha/r * A B`; the base weights are frozen. burn composes the dense weight in
//! every forward, so the backward computes a weight-shaped gradient for each adapted layer
//! before it reaches `A` and `B` (a hand-written `x A B` branch would not): the price of
//! using burn's implementation, which keeps adapters, their records and their merge in one
//! place.

use burn::module::{Lora, Module, ModuleMapper, ModuleVisitor, Param, ParamGroup};
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use super::architecture::ArchitectureError;
use super::sam::Sam;

/// `[lora]` of a training config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// Rank of the factors.
    pub rank: usize,
    /// The update is scaled by `alpha / rank`.
    pub alpha: f64,
    /// Regular expressions over parameter paths (the official key names, e.g.
    /// `image_encoder.blocks.3.attn.qkv.weight`); empty: the attention projections of
    /// the parts `model.trainable` adapts.
    pub targets: Vec<String>,
    /// With the default targets, the MLPs' linear layers too.
    pub mlp: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 4,
            alpha: 4.0,
            targets: Vec::new(),
            mlp: false,
        }
    }
}

/// Where adapters go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraPlace {
    ImageEncoder,
    MaskDecoder,
}

/// The weights adapted by default: each place's attention projections (and MLPs).
fn default_targets(place: LoraPlace, mlp: bool) -> Vec<String> {
    let mut targets = match place {
        LoraPlace::ImageEncoder => vec![r"^image_encoder\.blocks\.\d+\.attn\.(qkv|proj)\.weight$"],
        LoraPlace::MaskDecoder => vec![
            r"^mask_decoder\.transformer\.(layers\.\d+\.)?(self_attn|cross_attn_token_to_image|cross_attn_image_to_token|final_attn_token_to_image)\.(q_proj|k_proj|v_proj|out_proj)\.weight$",
        ],
    };
    if mlp {
        targets.push(match place {
            LoraPlace::ImageEncoder => r"^image_encoder\.blocks\.\d+\.mlp\.(lin1|lin2)\.weight$",
            LoraPlace::MaskDecoder => {
                r"^mask_decoder\.transformer\.layers\.\d+\.mlp\.(lin1|lin2)\.weight$"
            }
        });
    }
    targets.into_iter().map(str::to_string).collect()
}

impl LoraConfig {
    /// The patterns of the weights to adapt at `places`.
    pub fn patterns(&self, places: &[LoraPlace]) -> Vec<String> {
        if self.targets.is_empty() {
            places
                .iter()
                .flat_map(|&p| default_targets(p, self.mlp))
                .collect()
        } else {
            self.targets.clone()
        }
    }

    /// `model` with adapters on the weights `patterns` match; every other parameter is
    /// frozen (unfreeze what else trains). An error when nothing matches. The `A` factors
    /// start as burn's (`N(0, 1/rank)`, `B = 0`), drawn again from a generator of our own
    /// seeded with `seed`: burn draws from the device's one generator, which every other
    /// random tensor of the process (another model's init, another thread) also advances,
    /// so seeding it would not reproduce (or resume) a run exactly.
    pub fn apply(
        &self,
        model: Sam,
        patterns: &[String],
        seed: u64,
    ) -> Result<Sam, ArchitectureError> {
        if self.rank == 0 || !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(ArchitectureError(format!(
                "lora.rank {} must be >= 1 and lora.alpha {} > 0",
                self.rank, self.alpha
            )));
        }
        let group = ParamGroup::from_any_regexes(patterns.to_vec())
            .map_err(|e| ArchitectureError(format!("lora.targets: {e:?}")))?;
        let model = model.apply_lora(Lora::new(self.rank, self.alpha).set_param_group(group));
        let model = model.map(&mut SeededFactors::new(seed, 1.0 / self.rank as f64));
        let adapted = adapted_weights(&model);
        if adapted.is_empty() {
            return Err(ArchitectureError(format!(
                "lora.targets {patterns:?} match no linear weight"
            )));
        }
        Ok(model)
    }
}

/// The paths of the adapted weights (`….weight`, whose factors are `….weight.lora.a`/`.b`).
pub fn adapted_weights(model: &Sam) -> Vec<String> {
    let mut visitor = Paths::default();
    model.visit(&mut visitor);
    visitor
        .paths
        .iter()
        .filter_map(|p| p.strip_suffix(".lora.a").map(str::to_string))
        .collect()
}

/// The adapter factors' parameter group (what LoRA training changes).
pub fn adapter_group() -> ParamGroup {
    ParamGroup::from_predicate(".lora.")
}

/// The model with its adapters folded into the base weights (`W + alpha/r A B`): an
/// ordinary SAM under the official keys. Call on a model without autodiff.
pub fn merged(model: Sam) -> Sam {
    model.materialize()
}

/// Redraws every `A` factor (`….lora.a`), in module order, from one generator.
struct SeededFactors {
    rng: ChaCha8Rng,
    normal: Normal<f64>,
    stack: Vec<String>,
}

impl SeededFactors {
    fn new(seed: u64, std: f64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            normal: Normal::new(0.0, std).expect("a positive, finite std"),
            stack: Vec::new(),
        }
    }
}

impl ModuleMapper for SeededFactors {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let is_factor_a = self.stack.ends_with(&["lora".to_string(), "a".to_string()]);
        if !is_factor_a {
            return param;
        }
        param.map(|factor| {
            let (shape, device, dtype) = (factor.shape(), factor.device(), factor.dtype());
            let values: Vec<f32> = (0..shape.num_elements())
                .map(|_| self.normal.sample(&mut self.rng) as f32)
                .collect();
            let drawn = Tensor::<D>::from_data(TensorData::new(values, shape), (&device, dtype));
            if factor.is_require_grad() {
                drawn.require_grad()
            } else {
                drawn
            }
        })
    }
}

/// Every float parameter's path.
#[derive(Default)]
struct Paths {
    stack: Vec<String>,
    paths: Vec<String>,
}

impl ModuleVisitor for Paths {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<D>>) {
        self.paths.push(self.stack.join("."));
    }
}
