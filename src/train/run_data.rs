//! The data of a training run: its train, validation and test images, indexed (no mask
//! decoded), with what was left out said in the run's log.

use super::config::TrainConfig;
use super::log::RunLog;
use crate::data::dataset::Sample;
use crate::error::{bail, Result};

/// The indexed train, validation and test images (no mask decoded).
pub struct RunData {
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub test: Vec<Sample>,
}

impl RunData {
    /// Indexes the dataset of `config`; small objects and images without objects are
    /// left out, and said.
    pub fn load(config: &TrainConfig, log: &mut RunLog) -> Result<Self> {
        let d = &config.data;
        let dataset = d.open()?;
        let split = dataset.split;
        if split.train.is_empty() {
            bail!(
                "no training images with objects of at least {} px",
                d.min_area
            );
        }
        let objects = |s: &[Sample]| s.iter().map(Sample::object_count).sum::<usize>();
        let test = if split.test.is_empty() {
            String::new()
        } else {
            format!(
                ", {} test images ({} objects)",
                split.test.len(),
                objects(&split.test)
            )
        };
        log.line(&format!(
            "data: {} train images ({} objects), {} val images ({} objects){test}; {} objects below {} px skipped, {} images without objects left out",
            split.train.len(),
            objects(&split.train),
            split.val.len(),
            objects(&split.val),
            dataset.filtered.small_objects,
            d.min_area,
            dataset.filtered.empty_images,
        ));
        Ok(Self {
            train: split.train,
            val: split.val,
            test: split.test,
        })
    }
}
