//! The SAM paper's mask loss: focal + dice on mask logits, plus MSE between the predicted
//! and the actual IoU; with several masks per prompt, only the best one is trained.

use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use super::loss_kernel::focal_and_dice;
use crate::error::{bail, check_setting, Result};

/// Loss weights and focal parameters (`[train.loss]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Weight of the focal term (SAM paper: 20).
    pub focal_weight: f64,
    /// Weight of the dice term (SAM paper: 1).
    pub dice_weight: f64,
    /// Weight of the IoU-prediction MSE (SAM paper: 1).
    pub iou_weight: f64,
    /// Focal alpha: weight of the positive class (0.25 as in RetinaNet/torchvision).
    pub focal_alpha: f64,
    /// Focal gamma (2.0).
    pub focal_gamma: f64,
    /// Compute the mask terms on logits upsampled to the original image size instead of
    /// the decoder's 256x256 output against the downsampled ground truth.
    pub full_size: bool,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            focal_weight: 20.0,
            dice_weight: 1.0,
            iou_weight: 1.0,
            focal_alpha: 0.25,
            focal_gamma: 2.0,
            full_size: false,
        }
    }
}

impl LossConfig {
    /// Every setting against its valid range.
    pub fn validate(&self) -> Result<()> {
        let weights = [
            ("loss.focal_weight", self.focal_weight),
            ("loss.dice_weight", self.dice_weight),
            ("loss.iou_weight", self.iou_weight),
        ];
        for (key, value) in weights {
            check_setting(key, value, value >= 0.0 && value.is_finite(), ">= 0")?;
        }
        if weights.iter().all(|(_, v)| *v == 0.0) {
            bail!(
                "loss.focal_weight, dice_weight and iou_weight are all 0: nothing would be learned"
            );
        }
        check_setting(
            "loss.focal_alpha",
            self.focal_alpha,
            (0.0..=1.0).contains(&self.focal_alpha),
            "in [0, 1]",
        )?;
        check_setting(
            "loss.focal_gamma",
            self.focal_gamma,
            self.focal_gamma >= 0.0 && self.focal_gamma.is_finite(),
            ">= 0",
        )
    }
}

/// The loss of a batch and its terms (means over prompts).
#[derive(Debug, Clone)]
pub struct LossTerms {
    /// Scalar `[1]` to differentiate.
    pub total: Tensor<1>,
    pub focal: Tensor<1>,
    pub dice: Tensor<1>,
    pub iou: Tensor<1>,
    /// `[N]` the actual IoU of the trained mask of each prompt (no gradient).
    pub actual_iou: Tensor<1>,
}

/// IoU of the binarised masks (logit > 0) with the targets: `[N, M]`, no gradient.
pub fn mask_iou(logits: Tensor<4>, targets: Tensor<4>) -> Tensor<2> {
    let [n, m, h, w] = logits.dims();
    let pred = logits
        .detach()
        .greater_elem(0.0)
        .float()
        .reshape([n, m, h * w]);
    let t = targets.detach().expand([n, m, h, w]).reshape([n, m, h * w]);
    let intersection = (pred.clone() * t.clone()).sum_dim(2);
    let union = (pred + t).clamp_max(1.0).sum_dim(2);
    // both empty: a perfect prediction
    let empty = union.clone().equal_elem(0.0).float();
    ((intersection + empty.clone()) / (union + empty)).reshape([n, m])
}

/// Loss of `N` prompts with `M` candidate masks each against their `[N, 1, H, W]` targets
/// (0/1). The mask with the lowest focal+dice loss is the one trained (the SAM paper's
/// rule for ambiguous prompts).
pub fn sam_loss(
    logits: Tensor<4>,
    iou_predictions: Tensor<2>,
    targets: Tensor<4>,
    config: &LossConfig,
) -> LossTerms {
    let [n, m, h, w] = logits.dims();
    let terms = focal_and_dice(
        logits.clone().reshape([n, m, h * w]),
        targets.clone().reshape([n, h * w]),
        config.focal_alpha,
        config.focal_gamma,
    );
    let term = |index: usize| {
        terms
            .clone()
            .slice([0..n, 0..m, index..index + 1])
            .reshape([n, m])
    };
    let (focal, dice) = (term(0), term(1));
    let actual = mask_iou(logits, targets);
    let mask_loss = focal.clone() * config.focal_weight + dice.clone() * config.dice_weight;
    let best: Tensor<2, Int> = if m == 1 {
        Tensor::zeros([n, 1], &mask_loss.device())
    } else {
        mask_loss.clone().detach().argmin(1)
    };
    let pick = |t: Tensor<2>| t.gather(1, best.clone()).reshape([n]);
    let focal = pick(focal);
    let dice = pick(dice);
    let actual_iou = pick(actual);
    let predicted = pick(iou_predictions);
    let iou = (predicted - actual_iou.clone()).square();
    let total = focal.clone() * config.focal_weight
        + dice.clone() * config.dice_weight
        + iou.clone() * config.iou_weight;
    LossTerms {
        total: total.mean(),
        focal: focal.mean(),
        dice: dice.mean(),
        iou: iou.mean(),
        actual_iou,
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;

    fn t4(values: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
        Tensor::from_data(TensorData::new(values, shape), &Device::default())
    }

    fn scalar<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn iou_counts_empty_against_empty_as_perfect() {
        let logits = t4(
            vec![5.0, -5.0, -5.0, -5.0, -1.0, -1.0, -1.0, -1.0],
            [1, 2, 2, 2],
        );
        let targets = t4(vec![1.0, 1.0, 0.0, 0.0], [1, 1, 2, 2]);
        assert_eq!(scalar(mask_iou(logits, targets)), vec![0.5, 0.0]);
        let nothing = t4(vec![-1.0; 4], [1, 1, 2, 2]);
        assert_eq!(
            scalar(mask_iou(nothing, t4(vec![0.0; 4], [1, 1, 2, 2]))),
            vec![1.0]
        );
    }

    #[test]
    fn the_best_of_several_masks_is_the_one_trained() {
        // mask 0 is wrong, mask 1 is right: the loss is mask 1's
        let targets = t4(vec![1.0, 0.0, 1.0, 0.0], [1, 1, 2, 2]);
        let logits = t4(
            vec![-9.0, 9.0, -9.0, 9.0, 9.0, -9.0, 9.0, -9.0],
            [1, 2, 2, 2],
        );
        let iou_pred = Tensor::<2>::from_data(
            TensorData::new(vec![0.0f32, 1.0], [1, 2]),
            &Device::default(),
        );
        let terms = sam_loss(logits, iou_pred, targets, &LossConfig::default());
        assert_eq!(scalar(terms.actual_iou), vec![1.0]);
        assert!(scalar(terms.total)[0] < 0.01);
    }
}
