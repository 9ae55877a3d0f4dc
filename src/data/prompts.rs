//! Prompts sampled from ground-truth masks: jittered boxes, points inside and outside the
//! object, and correction clicks from a prediction's error region.

use rand::Rng;

use serde::{Deserialize, Serialize};

use super::mask::BinaryMask;
use crate::error::{bail, check_setting, check_weights, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptConfig {
    /// Probability of a box prompt alone.
    pub box_prob: f64,
    /// Probability of point prompts alone.
    pub points_prob: f64,
    /// Probability of a box plus points (the three probabilities are normalised).
    pub box_and_points_prob: f64,
    /// Box jitter: each edge moves by up to this fraction of the box side...
    pub box_jitter: f64,
    /// ... and at most this many pixels.
    pub box_jitter_max_px: f64,
    /// Foreground points sampled inside the object.
    pub positive_points: usize,
    /// Background points sampled outside it.
    pub negative_points: usize,
    /// Extra correction clicks from the error region, each fed back with the previous
    /// low-res mask (the SAM paper's interactive training); 0 disables.
    pub refine_clicks: usize,
    /// When the decoder predicts three masks (and the best one is trained and scored):
    /// `ambiguous` (a lone point, the SAM paper's rule: other prompts use and train the
    /// single-mask output), `always` or `never`; `true`/`false` mean always/never.
    #[serde(deserialize_with = "multimask_or_bool")]
    pub multimask: Multimask,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Multimask {
    #[default]
    Ambiguous,
    Always,
    Never,
}

impl Multimask {
    /// Whether prompts like these get three masks: under `Ambiguous`, when every one is a
    /// single point (padding aside) without a box.
    pub fn for_prompts(self, prompts: &[ObjectPrompt]) -> bool {
        match self {
            Multimask::Always => true,
            Multimask::Never => false,
            Multimask::Ambiguous => prompts.iter().all(|p| {
                p.bbox.is_none() && p.points.iter().filter(|(_, label)| *label >= 0).count() == 1
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Multimask::Ambiguous => "ambiguous",
            Multimask::Always => "always",
            Multimask::Never => "never",
        }
    }
}

impl std::str::FromStr for Multimask {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ambiguous" => Ok(Self::Ambiguous),
            "always" | "true" => Ok(Self::Always),
            "never" | "false" => Ok(Self::Never),
            _ => Err(format!(
                "multimask '{s}': expected ambiguous, always or never"
            )),
        }
    }
}

fn multimask_or_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Multimask, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Name(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bool(true) => Ok(Multimask::Always),
        Raw::Bool(false) => Ok(Multimask::Never),
        Raw::Name(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// The prompts of an evaluation: one kind for every object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PromptMode {
    /// The object's bounding box.
    Box,
    /// Points inside (and outside) the object.
    Points,
    /// Both.
    BoxPoints,
}

impl PromptConfig {
    /// Evaluation prompts: always of `mode`, without box jitter (evaluation is seeded and
    /// fixed).
    pub fn for_evaluation(
        mode: PromptMode,
        positive_points: usize,
        negative_points: usize,
        multimask: Multimask,
    ) -> Self {
        let (box_prob, points_prob, box_and_points_prob) = match mode {
            PromptMode::Box => (1.0, 0.0, 0.0),
            PromptMode::Points => (0.0, 1.0, 0.0),
            PromptMode::BoxPoints => (0.0, 0.0, 1.0),
        };
        Self {
            box_prob,
            points_prob,
            box_and_points_prob,
            box_jitter: 0.0,
            positive_points,
            negative_points,
            multimask,
            ..Self::default()
        }
    }

    /// Every setting against its valid range.
    pub fn validate(&self) -> Result<()> {
        check_weights(
            &[
                ("prompts.box_prob", self.box_prob),
                ("prompts.points_prob", self.points_prob),
                ("prompts.box_and_points_prob", self.box_and_points_prob),
            ],
            "no prompt could be drawn",
        )?;
        check_setting(
            "prompts.box_jitter",
            self.box_jitter,
            (0.0..=1.0).contains(&self.box_jitter),
            "in [0, 1]",
        )?;
        check_setting(
            "prompts.box_jitter_max_px",
            self.box_jitter_max_px,
            self.box_jitter_max_px >= 0.0 && self.box_jitter_max_px.is_finite(),
            ">= 0",
        )?;
        check_setting(
            "prompts.refine_clicks",
            self.refine_clicks,
            self.refine_clicks <= 32,
            "in [0, 32]",
        )?;
        if self.points_prob + self.box_and_points_prob > 0.0
            && self.positive_points + self.negative_points == 0
        {
            bail!("point prompts are enabled but prompts.positive_points + negative_points is 0");
        }
        Ok(())
    }

    /// How reports name these settings.
    pub fn describe(&self) -> String {
        format!(
            "box {:.2} / points {:.2} / box+points {:.2} ({} positive, {} negative points), multimask: {}",
            self.box_prob,
            self.points_prob,
            self.box_and_points_prob,
            self.positive_points,
            self.negative_points,
            self.multimask.name()
        )
    }
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            box_prob: 0.5,
            points_prob: 0.25,
            box_and_points_prob: 0.25,
            box_jitter: 0.1,
            box_jitter_max_px: 20.0,
            positive_points: 1,
            negative_points: 0,
            refine_clicks: 0,
            multimask: Multimask::Ambiguous,
        }
    }
}

/// What a prompt set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptKind {
    Box,
    Points,
    BoxAndPoints,
}

/// The prompt for one object, in original-image pixel coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectPrompt {
    pub bbox: Option<[f64; 4]>,
    /// `(x, y)` and label: 1 inside, 0 outside, -1 padding (no such point exists).
    pub points: Vec<([f64; 2], i64)>,
}

/// Draws the prompt kind by the configured probabilities.
pub fn sample_kind(config: &PromptConfig, rng: &mut impl Rng) -> PromptKind {
    let total = config.box_prob + config.points_prob + config.box_and_points_prob;
    let u = rng.random::<f64>() * total;
    if u < config.box_prob {
        PromptKind::Box
    } else if u < config.box_prob + config.points_prob {
        PromptKind::Points
    } else {
        PromptKind::BoxAndPoints
    }
}

/// A prompt of `kind` for `mask` (which must not be empty).
pub fn sample_prompt(
    mask: &BinaryMask,
    kind: PromptKind,
    config: &PromptConfig,
    rng: &mut impl Rng,
) -> ObjectPrompt {
    let bbox = matches!(kind, PromptKind::Box | PromptKind::BoxAndPoints).then(|| {
        let b = mask.bbox().expect("objects are never empty");
        jitter_box(b, mask.width, mask.height, config, rng)
    });
    let points = if kind == PromptKind::Box {
        Vec::new()
    } else {
        let mut points = sample_points(mask, true, config.positive_points, rng);
        points.extend(sample_points(mask, false, config.negative_points, rng));
        points
    };
    ObjectPrompt { bbox, points }
}

/// Moves each edge by up to `box_jitter` of the box side (at most `box_jitter_max_px`),
/// clipped to the image; the box stays at least one pixel wide.
pub fn jitter_box(
    b: [f64; 4],
    width: usize,
    height: usize,
    config: &PromptConfig,
    rng: &mut impl Rng,
) -> [f64; 4] {
    if config.box_jitter <= 0.0 {
        return b;
    }
    let w = b[2] - b[0] + 1.0;
    let h = b[3] - b[1] + 1.0;
    let mut shift = |side: f64| {
        let max = (side * config.box_jitter).min(config.box_jitter_max_px);
        if max <= 0.0 {
            0.0
        } else {
            rng.random_range(-max..=max)
        }
    };
    let (dx0, dy0, dx1, dy1) = (shift(w), shift(h), shift(w), shift(h));
    let (max_x, max_y) = ((width - 1) as f64, (height - 1) as f64);
    let x0 = (b[0] + dx0).clamp(0.0, max_x);
    let y0 = (b[1] + dy0).clamp(0.0, max_y);
    let x1 = (b[2] + dx1).clamp(x0, max_x);
    let y1 = (b[3] + dy1).clamp(y0, max_y);
    [x0, y0, x1, y1]
}

/// `n` distinct pixels inside (`inside`) or outside the mask, at pixel centres' integer
/// coordinates; padding points (label -1) when there are not enough.
pub fn sample_points(
    mask: &BinaryMask,
    inside: bool,
    n: usize,
    rng: &mut impl Rng,
) -> Vec<([f64; 2], i64)> {
    if n == 0 {
        return Vec::new();
    }
    let candidates: Vec<usize> = (0..mask.data.len())
        .filter(|&i| (mask.data[i] != 0) == inside)
        .collect();
    let label = inside as i64;
    let chosen = rand::seq::index::sample(rng, candidates.len(), n.min(candidates.len()));
    let mut points: Vec<([f64; 2], i64)> = chosen
        .iter()
        .map(|i| {
            let p = candidates[i];
            ([(p % mask.width) as f64, (p / mask.width) as f64], label)
        })
        .collect();
    points.resize(n, ([0.0, 0.0], -1));
    points
}

/// A correction click: a pixel of the larger error region, positive where the object was
/// missed, negative where the prediction spilled over; `None` when the prediction is exact.
pub fn correction_click(
    target: &BinaryMask,
    predicted: &BinaryMask,
    rng: &mut impl Rng,
) -> Option<([f64; 2], i64)> {
    let missed: Vec<usize> = (0..target.data.len())
        .filter(|&i| target.data[i] != 0 && predicted.data[i] == 0)
        .collect();
    let spilled: Vec<usize> = (0..target.data.len())
        .filter(|&i| target.data[i] == 0 && predicted.data[i] != 0)
        .collect();
    let (region, label) = if missed.len() >= spilled.len() {
        (missed, 1)
    } else {
        (spilled, 0)
    };
    if region.is_empty() {
        return None;
    }
    let p = region[rng.random_range(0..region.len())];
    Some((
        [(p % target.width) as f64, (p / target.width) as f64],
        label,
    ))
}

/// The prompts of one image's objects as a batch (they share a kind, so they have the same
/// number of points and all or none have a box).
pub fn to_prompt_batch(prompts: &[ObjectPrompt]) -> crate::predict::PromptBatch {
    crate::predict::PromptBatch {
        points: if prompts.iter().all(|p| p.points.is_empty()) {
            Vec::new()
        } else {
            prompts.iter().map(|p| p.points.clone()).collect()
        },
        boxes: prompts.iter().filter_map(|p| p.bbox).collect(),
        mask_input: None,
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn ring() -> BinaryMask {
        BinaryMask::from_fn(40, 30, |x, y| {
            let d = (x as f64 - 20.0).powi(2) + (y as f64 - 15.0).powi(2);
            (25.0..100.0).contains(&d)
        })
    }

    #[test]
    fn points_fall_on_the_right_side_of_the_mask() {
        let mask = ring();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..50 {
            for (p, label) in sample_points(&mask, true, 3, &mut rng) {
                assert_eq!(label, 1);
                assert!(mask.get(p[0] as usize, p[1] as usize));
            }
            for (p, label) in sample_points(&mask, false, 2, &mut rng) {
                assert_eq!(label, 0);
                assert!(!mask.get(p[0] as usize, p[1] as usize));
            }
        }
    }

    #[test]
    fn unjittered_boxes_contain_the_object_and_jitter_stays_bounded() {
        let mask = ring();
        let exact = mask.bbox().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let no_jitter = PromptConfig {
            box_jitter: 0.0,
            ..PromptConfig::default()
        };
        let prompt = sample_prompt(&mask, PromptKind::Box, &no_jitter, &mut rng);
        let b = prompt.bbox.unwrap();
        for y in 0..mask.height {
            for x in 0..mask.width {
                if mask.get(x, y) {
                    assert!(
                        b[0] <= x as f64
                            && x as f64 <= b[2]
                            && b[1] <= y as f64
                            && y as f64 <= b[3]
                    );
                }
            }
        }
        let config = PromptConfig::default();
        for _ in 0..100 {
            let j = jitter_box(exact, 40, 30, &config, &mut rng);
            let side = [exact[2] - exact[0] + 1.0, exact[3] - exact[1] + 1.0];
            for i in 0..4 {
                assert!((j[i] - exact[i]).abs() <= side[i % 2] * config.box_jitter + 1e-9);
            }
            assert!(j[0] <= j[2] && j[1] <= j[3] && j[2] <= 39.0 && j[3] <= 29.0);
        }
    }

    #[test]
    fn a_mask_covering_everything_gets_padding_instead_of_negatives() {
        let full = BinaryMask::from_fn(4, 4, |_, _| true);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        assert_eq!(
            sample_points(&full, false, 2, &mut rng),
            vec![([0.0, 0.0], -1); 2]
        );
    }

    #[test]
    fn correction_clicks_target_the_larger_error() {
        let target = BinaryMask::from_fn(10, 10, |x, _| x < 6);
        let predicted = BinaryMask::from_fn(10, 10, |x, _| x < 2);
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let (p, label) = correction_click(&target, &predicted, &mut rng).unwrap();
        assert_eq!(label, 1);
        assert!((2.0..6.0).contains(&p[0]));
        assert_eq!(correction_click(&target, &target, &mut rng), None);
    }
}
