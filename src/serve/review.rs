//! The evaluation and training runs `samtune serve --review` opens: each image's scores
//! from the run's `review.jsonl` (indexed once, the masks left on disk) and, when an
//! image is looked at, its ground truth and each model's masks drawn as the reports draw
//! them.

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::data::dataset::Object;
use crate::data::prompts::ObjectPrompt;
use crate::data::Rle;
use crate::error::{bail, Context, Result};
use crate::eval::report::comparison_overlay;
use crate::eval::review::{read_review_index, read_review_line, ReviewEntry, ReviewImage};
use crate::predict::image::{load_rgb, IntensityScaling};
use crate::predict::BinaryMask;

/// One run to review.
pub struct ReviewRun {
    /// The run's folder name.
    pub name: String,
    pub file: PathBuf,
    pub models: Vec<String>,
    pub entries: Vec<ReviewEntry>,
}

impl ReviewRun {
    /// `dir` is an `eval --out` folder, a training run (its `report/` is read) or a
    /// `review.jsonl` itself.
    pub fn open(dir: &Path) -> Result<Self> {
        let candidates = [
            dir.to_path_buf(),
            dir.join("review.jsonl"),
            dir.join("report").join("review.jsonl"),
        ];
        let Some(file) = candidates.into_iter().find(|p| p.is_file()) else {
            bail!(
                "{}: no review.jsonl (an `eval --out` folder or a training run written by this \
                 samtune version has one)",
                dir.display()
            );
        };
        let (models, entries) = read_review_index(&file)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        Ok(Self {
            name,
            file,
            models,
            entries,
        })
    }

    /// Entry indices, worst first by the last model's mean IoU (the fine-tuned one of a
    /// training run).
    pub fn worst_first(&self) -> Vec<usize> {
        let last = self.models.len().saturating_sub(1);
        let mut order: Vec<usize> = (0..self.entries.len()).collect();
        order.sort_by(|&a, &b| {
            self.entries[a].mean_iou[last].total_cmp(&self.entries[b].mean_iou[last])
        });
        order
    }

    /// Entry `index`'s line.
    pub fn image(&self, index: usize) -> Result<ReviewImage> {
        let Some(entry) = self.entries.get(index) else {
            bail!(
                "{}: no image {index} ({} reviewed)",
                self.name,
                self.entries.len()
            );
        };
        read_review_line(&self.file, entry.offset)
    }

    /// Entry `index` with model `model`'s masks filled and the ground truth outlined.
    pub fn picture(
        &self,
        index: usize,
        model: usize,
        intensity: IntensityScaling,
    ) -> Result<RgbImage> {
        let reviewed = self.image(index)?;
        if model >= reviewed.models.len() {
            bail!(
                "{}: no model {model} ({} compared)",
                self.name,
                reviewed.models.len()
            );
        }
        let [height, width] = reviewed.size;
        let decode = |rle: &str| -> Result<BinaryMask> {
            Rle::from_compressed(rle, height, width)?
                .decode()
                .with_context(|| format!("{}: {}", self.file.display(), reviewed.image))
        };
        let mut truth = Vec::new();
        let mut predicted = Vec::new();
        let mut prompts = Vec::new();
        for object in &reviewed.objects {
            truth.push(Object {
                mask: decode(&object.truth)?,
                category: object.category.clone(),
            });
            predicted.push(decode(&object.predicted[model])?);
            prompts.push(ObjectPrompt {
                bbox: object.bbox,
                points: object
                    .points
                    .iter()
                    .map(|p| ([p[0], p[1]], p[2] as i64))
                    .collect(),
            });
        }
        let image = load_rgb(&reviewed.path, intensity)?;
        Ok(comparison_overlay(&image, &truth, &predicted, &prompts))
    }
}
