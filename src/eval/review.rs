//! `review.jsonl`: one line per evaluated image with every object's ground truth, prompt
//! and each model's scored mask (COCO compressed RLE), so that a run's results can be
//! browsed image by image (`samtune serve --review`) exactly as they were scored.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::evaluate::ImageEval;
use super::metrics::iou_and_dice;
use crate::data::dataset::Sample;
use crate::data::mask::Rle;
use crate::error::{bail, Context, Result};

/// One object of a reviewed image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReviewObject {
    pub category: Option<String>,
    /// The ground truth, compressed RLE.
    pub truth: String,
    /// The prompt's box `[x0, y0, x1, y1]` (none for a semantic model).
    pub bbox: Option<[f64; 4]>,
    /// The prompt's points `(x, y, label)`, label 1 inside and 0 outside.
    pub points: Vec<[f64; 3]>,
    /// Each model's IoU with the ground truth, in the order of [`ReviewImage::models`].
    pub iou: Vec<f64>,
    /// Each model's scored mask, compressed RLE.
    pub predicted: Vec<String>,
}

/// One line of `review.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReviewImage {
    /// The image's file name (as the reports name it) and its path.
    pub image: String,
    pub path: PathBuf,
    /// `[height, width]`.
    pub size: [usize; 2],
    /// The models compared, e.g. `["zero-shot", "fine-tuned"]`.
    pub models: Vec<String>,
    pub objects: Vec<ReviewObject>,
}

impl ReviewImage {
    /// `sample` evaluated by each model (`evals` in the order of `models`, all of one
    /// kind: prompted, or semantic). A semantic image lists the classes some model
    /// scored (in its truth or its prediction); a class one model scored and another did
    /// not counts for both, an empty class against an empty prediction as IoU 1.
    pub fn new(sample: &Sample, models: &[&str], evals: &[&ImageEval]) -> Result<Self> {
        let Some(first) = evals.first() else {
            bail!("a reviewed image needs at least one model's evaluation");
        };
        let n = first.objects.len();
        if evals
            .iter()
            .any(|e| e.objects.len() != n || e.predicted.len() != n)
        {
            bail!("{}: the models evaluated other objects", sample.name());
        }
        // a semantic evaluation holds every class, scored where truth or prediction has it
        let scored = |i: usize| {
            evals
                .iter()
                .any(|e| e.objects[i].mask.area() > 0 || e.predicted[i].area() > 0)
        };
        let objects = first
            .objects
            .iter()
            .enumerate()
            .filter(|&(i, _)| scored(i))
            .map(|(i, object)| {
                let prompt = first.prompts.get(i);
                ReviewObject {
                    category: object.category.clone(),
                    truth: Rle::encode(&object.mask).to_compressed(),
                    bbox: prompt.and_then(|p| p.bbox),
                    points: prompt
                        .map(|p| {
                            p.points
                                .iter()
                                .filter(|(_, label)| *label >= 0)
                                .map(|(xy, label)| [xy[0], xy[1], *label as f64])
                                .collect()
                        })
                        .unwrap_or_default(),
                    // as the evaluation scored it
                    iou: evals
                        .iter()
                        .map(|e| iou_and_dice(&e.predicted[i], &object.mask).0)
                        .collect(),
                    predicted: evals
                        .iter()
                        .map(|e| Rle::encode(&e.predicted[i]).to_compressed())
                        .collect(),
                }
            })
            .collect();
        Ok(Self {
            image: sample.name(),
            path: std::path::absolute(&sample.image).unwrap_or_else(|_| sample.image.clone()),
            size: sample.size,
            models: models.iter().map(|m| m.to_string()).collect(),
            objects,
        })
    }

    /// Every object has a score and a mask for each of the models (`check` before use:
    /// the other methods index by model).
    pub fn check(&self) -> Result<()> {
        let models = self.models.len();
        if models == 0 {
            bail!("no models compared");
        }
        if let Some(o) = self
            .objects
            .iter()
            .find(|o| o.iou.len() != models || o.predicted.len() != models)
        {
            bail!(
                "an object has {} scores and {} masks for {models} models",
                o.iou.len(),
                o.predicted.len()
            );
        }
        Ok(())
    }

    /// Model `k`'s mean IoU over the image's objects (1 without objects).
    pub fn mean_iou(&self, k: usize) -> f64 {
        if self.objects.is_empty() {
            return 1.0;
        }
        self.objects.iter().map(|o| o.iou[k]).sum::<f64>() / self.objects.len() as f64
    }
}

/// What the index of a `review.jsonl` keeps of a line: where it starts and its scores.
#[derive(Debug, Clone)]
pub struct ReviewEntry {
    /// Byte offset of the line.
    pub offset: u64,
    pub image: String,
    pub objects: usize,
    /// Each model's mean IoU over the image's objects.
    pub mean_iou: Vec<f64>,
}

/// The models a `review.jsonl` compares and an entry per line (masks are not kept: a
/// line is read again with [`read_review_line`] when it is looked at).
pub fn read_review_index(path: &Path) -> Result<(Vec<String>, Vec<ReviewEntry>)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let (mut models, mut entries) = (Vec::new(), Vec::new());
    let (mut offset, mut line, mut number) = (0u64, String::new(), 0usize);
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        number += 1;
        if !line.trim().is_empty() {
            let image: ReviewImage = serde_json::from_str(&line)
                .with_context(|| format!("{} line {number}", path.display()))?;
            image
                .check()
                .with_context(|| format!("{} line {number}", path.display()))?;
            if entries.is_empty() {
                models = image.models.clone();
            } else if image.models != models {
                bail!(
                    "{} line {number}: models {:?}, the first line has {models:?}",
                    path.display(),
                    image.models
                );
            }
            entries.push(ReviewEntry {
                offset,
                mean_iou: (0..models.len()).map(|k| image.mean_iou(k)).collect(),
                objects: image.objects.len(),
                image: image.image,
            });
        }
        offset += read as u64;
    }
    Ok((models, entries))
}

/// The line of `path` at `offset`.
pub fn read_review_line(path: &Path, offset: u64) -> Result<ReviewImage> {
    use std::io::Seek;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    file.seek(std::io::SeekFrom::Start(offset))
        .with_context(|| format!("reading {}", path.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(file)
        .read_line(&mut line)
        .with_context(|| format!("reading {}", path.display()))?;
    let image: ReviewImage = serde_json::from_str(&line)
        .with_context(|| format!("{} at byte {offset}", path.display()))?;
    image
        .check()
        .with_context(|| format!("{} at byte {offset}", path.display()))?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, ious: [f64; 2]) -> ReviewImage {
        ReviewImage {
            image: name.into(),
            path: name.into(),
            size: [2, 2],
            models: vec!["zero-shot".into(), "fine-tuned".into()],
            objects: vec![ReviewObject {
                category: None,
                truth: "04".into(),
                bbox: Some([0.0, 0.0, 1.0, 1.0]),
                points: Vec::new(),
                iou: ious.to_vec(),
                predicted: vec!["04".into(), "13".into()],
            }],
        }
    }

    #[test]
    fn lines_are_indexed_and_read_back_by_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("review.jsonl");
        let mut writer = crate::fsutil::JsonLines::create(&path).unwrap();
        writer.add(&image("a.png", [0.25, 0.5])).unwrap();
        writer.add(&image("b.png", [0.75, 1.0])).unwrap();
        assert!(!path.exists(), "written into place only when finished");
        writer.finish().unwrap();
        let (models, entries) = read_review_index(&path).unwrap();
        assert_eq!(models, ["zero-shot", "fine-tuned"]);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].mean_iou, [0.75, 1.0]);
        let b = read_review_line(&path, entries[1].offset).unwrap();
        assert_eq!(b.image, "b.png");
        assert_eq!(b.objects[0].predicted[1], "13");
    }

    #[test]
    fn a_line_comparing_other_models_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("review.jsonl");
        let mut other = image("b.png", [0.0, 0.0]);
        other.models = vec!["checkpoint".into()];
        let text = format!(
            "{}\n{}\n",
            serde_json::to_string(&image("a.png", [0.0, 0.0])).unwrap(),
            serde_json::to_string(&other).unwrap()
        );
        std::fs::write(&path, text).unwrap();
        let err = read_review_index(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        // an object without a score for every model
        let mut short = image("c.png", [0.0, 0.0]);
        short.objects[0].iou.pop();
        std::fs::write(&path, serde_json::to_string(&short).unwrap()).unwrap();
        let err = format!("{:#}", read_review_index(&path).unwrap_err());
        assert!(err.contains("line 1") && err.contains("1 scores"), "{err}");
    }
}
