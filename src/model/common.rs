//! Building blocks shared by the encoder, prompt encoder and decoder
//! (`segment_anything/modeling/common.py` and the decoder's `MLP`).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::kernels;

/// The activations SAM uses; GELU is the exact (erf) form, as in `nn.GELU()`.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Activation {
    Gelu,
    Relu,
}

impl Activation {
    pub fn apply<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Gelu => kernels::gelu::exact_gelu(x),
            Activation::Relu => relu(x),
        }
    }
}

/// Two-layer feed-forward block (`MLPBlock`): `lin2(act(lin1(x)))`.
#[derive(Config, Debug)]
pub struct MlpBlockConfig {
    pub embedding_dim: usize,
    pub mlp_dim: usize,
    #[config(default = "Activation::Gelu")]
    pub activation: Activation,
}

#[derive(Module, Debug)]
pub struct MlpBlock {
    pub lin1: Linear,
    pub lin2: Linear,
    #[module(skip)]
    pub activation: Activation,
}

impl MlpBlockConfig {
    pub fn init(&self, device: &Device) -> MlpBlock {
        MlpBlock {
            lin1: LinearConfig::new(self.embedding_dim, self.mlp_dim).init(device),
            lin2: LinearConfig::new(self.mlp_dim, self.embedding_dim).init(device),
            activation: self.activation,
        }
    }
}

impl MlpBlock {
    /// `[..., embedding_dim] -> [..., embedding_dim]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let hidden = self.activation.apply(linear_rows(&self.lin1, x));
        linear_rows(&self.lin2, hidden)
    }
}

/// `linear` over the last axis of `x` `[..., d_in] -> [..., d_out]`, as one matrix product
/// over every row ([`kernels::matmul::matmul`]). Burn runs a `[B, H, W, C]` input as
/// `B*H` products of `W` rows when `W` is a multiple of 32, and flex packs the weight again
/// for each: a seventh of the ViT-B encoder's time went to that packing.
pub fn linear_rows<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    let mut dims = x.dims();
    let rows = dims[..D - 1].iter().product();
    let out = kernels::matmul::matmul(x.reshape([rows, dims[D - 1]]), linear.weight.val());
    let out = match &linear.bias {
        Some(bias) => kernels::broadcast_add::broadcast_add(out, bias.val().unsqueeze_dim(0)),
        None => out,
    };
    dims[D - 1] = out.dims()[1];
    out.reshape(dims)
}

/// `nn.LayerNorm` over the last axis, computed by the fused [`kernels::layer_norm`] operation.
///
/// Named and laid out like burn's `LayerNorm` (`gamma`, `beta`), which the checkpoint
/// adapters map to PyTorch's `weight`/`bias` by the struct's name.
#[derive(Config, Debug)]
pub struct LayerNormConfig {
    pub d_model: usize,
    /// PyTorch's default.
    #[config(default = 1e-5)]
    pub epsilon: f64,
}

#[derive(Module, Debug)]
pub struct LayerNorm {
    pub gamma: Param<Tensor<1>>,
    pub beta: Param<Tensor<1>>,
    pub epsilon: f64,
}

impl LayerNormConfig {
    pub fn init(&self, device: &Device) -> LayerNorm {
        LayerNorm {
            gamma: Initializer::Ones.init([self.d_model], device),
            beta: Initializer::Zeros.init([self.d_model], device),
            epsilon: self.epsilon,
        }
    }
}

impl LayerNorm {
    /// `[..., d_model] -> [..., d_model]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        kernels::layer_norm::layer_norm(x, self.gamma.val(), self.beta.val(), self.epsilon)
    }
}

/// Channel-wise LayerNorm on NCHW tensors (ConvNeXt's `LayerNorm2d`).
///
/// Named `weight`/`bias` as in the official state_dict; burn's own `LayerNorm`
/// works on the last axis and would be applied to the wrong one.
#[derive(Config, Debug)]
pub struct LayerNorm2dConfig {
    pub num_channels: usize,
    #[config(default = 1e-6)]
    pub eps: f64,
}

#[derive(Module, Debug)]
pub struct LayerNorm2d {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub eps: f64,
}

impl LayerNorm2dConfig {
    pub fn init(&self, device: &Device) -> LayerNorm2d {
        LayerNorm2d {
            weight: Initializer::Ones.init([self.num_channels], device),
            bias: Initializer::Zeros.init([self.num_channels], device),
            eps: self.eps,
        }
    }
}

impl LayerNorm2d {
    /// `[B, C, H, W] -> [B, C, H, W]`, normalised over C.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let channels = self.weight.dims()[0];
        let u = x.clone().mean_dim(1);
        let centred = x - u;
        let s = centred.clone().square().mean_dim(1);
        let normed = centred / (s + self.eps).sqrt();
        let weight = self.weight.val().reshape([1, channels, 1, 1]);
        let bias = self.bias.val().reshape([1, channels, 1, 1]);
        normed * weight + bias
    }
}

/// The mask decoder's multi-layer perceptron (`MLP`): ReLU between layers.
#[derive(Config, Debug)]
pub struct MlpConfig {
    pub input_dim: usize,
    pub hidden_dim: usize,
    pub output_dim: usize,
    pub num_layers: usize,
    #[config(default = false)]
    pub sigmoid_output: bool,
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
    pub sigmoid_output: bool,
}

impl MlpConfig {
    pub fn init(&self, device: &Device) -> Mlp {
        let layers = (0..self.num_layers)
            .map(|i| {
                let d_in = if i == 0 {
                    self.input_dim
                } else {
                    self.hidden_dim
                };
                let d_out = if i + 1 == self.num_layers {
                    self.output_dim
                } else {
                    self.hidden_dim
                };
                LinearConfig::new(d_in, d_out).init(device)
            })
            .collect();
        Mlp {
            layers,
            sigmoid_output: self.sigmoid_output,
        }
    }
}

impl Mlp {
    /// `[..., input_dim] -> [..., output_dim]`
    pub fn forward<const D: usize>(&self, mut x: Tensor<D>) -> Tensor<D> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        if self.sigmoid_output {
            x = burn::tensor::activation::sigmoid(x);
        }
        x
    }
}
