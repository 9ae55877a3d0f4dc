//! The data case of the benchmark (`samtune bench --case data`): what a dataset's size
//! costs. Generated sets of flat-shape images (only their masks and cached embeddings
//! matter) with label PNGs and a COCO file (compressed RLE) are indexed and trained on with
//! a warm embedding cache, each step of it in a process of its own (the command line
//! runs them), so that its peak memory is its own: time to index, peak resident memory,
//! step time and the share of it spent waiting for data. And a COCO file the size of COCO
//! train2017's instances, indexed.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use image::{ImageBuffer, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::peak_rss_mb;
use crate::data::mask::{BinaryMask, Rle};
use crate::data::{DataConfig, DataSource};
use crate::error::{bail, Error, Result};
use crate::fsutil::save_png;
use crate::train::TrainConfig;

/// The generated sets and the model they are trained with.
#[derive(Debug, Clone, clap::Args)]
pub struct DataSettings {
    /// Images of each generated set.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    pub data_sizes: Vec<usize>,
    /// Side of the generated images, in pixels.
    #[arg(long, default_value_t = 1024)]
    pub data_side: u32,
    /// Objects per generated image.
    #[arg(long, default_value_t = 10)]
    pub data_objects: usize,
    /// Timed training steps (2 images each) on each set.
    #[arg(long, default_value_t = 100)]
    pub data_steps: usize,
    /// Images and annotations of the large COCO file (COCO train2017: 118287 and 860001);
    /// 0 images skips it.
    #[arg(long, default_value_t = 118_287)]
    pub coco_images: usize,
    #[arg(long, default_value_t = 860_001)]
    pub coco_annotations: usize,
    /// Where the sets, their embedding cache and the runs are kept (reused next time).
    #[arg(long, default_value = "target/bench-data")]
    pub data_dir: PathBuf,
    /// The model the sets are trained with.
    #[arg(long, default_value = "checkpoints/sam_tiny_source.safetensors")]
    pub data_checkpoint: PathBuf,
}

/// One set's measurements.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataResult {
    pub set: String,
    pub images: usize,
    pub objects: usize,
    /// Indexing from nothing (label images: each mask read once).
    pub index_seconds: f64,
    pub peak_rss_mb: f64,
    /// Median over the timed epochs' mean step time; 0 when not trained.
    pub step_ms: f64,
    /// Data wait over training time of the timed epochs.
    pub data_wait_share: f64,
    pub file_mb: f64,
}

impl DataSettings {
    /// What the command line gives a step's child process to work on the same sets.
    pub fn args(&self) -> Vec<String> {
        let sizes: Vec<String> = self.data_sizes.iter().map(|n| n.to_string()).collect();
        vec![
            "--data-sizes".into(),
            sizes.join(","),
            "--data-side".into(),
            self.data_side.to_string(),
            "--data-objects".into(),
            self.data_objects.to_string(),
            "--data-steps".into(),
            self.data_steps.to_string(),
            "--coco-images".into(),
            self.coco_images.to_string(),
            "--coco-annotations".into(),
            self.coco_annotations.to_string(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--data-checkpoint".into(),
            self.data_checkpoint.display().to_string(),
        ]
    }
}

/// The data formats a generated set is trained from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetFormat {
    /// Label PNGs beside the images.
    Labels,
    /// A COCO file of compressed RLE masks.
    Coco,
}

impl SetFormat {
    pub const ALL: [SetFormat; 2] = [SetFormat::Labels, SetFormat::Coco];

    fn name(self) -> &'static str {
        match self {
            SetFormat::Labels => "labels",
            SetFormat::Coco => "coco",
        }
    }
}

/// One step of the data case, each run in a process of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStep {
    /// Generates the set of N images and fills its embedding cache (once; kept).
    Prepare(usize),
    /// Indexes the set of N images from nothing and trains on it.
    Train(SetFormat, usize),
    /// Writes the train2017-sized COCO file (once; kept).
    CocoPrepare,
    /// Indexes it.
    CocoIndex,
}

impl DataStep {
    /// Every step of the case, in order.
    pub fn plan(settings: &DataSettings) -> Vec<DataStep> {
        let mut steps = Vec::new();
        for &n in &settings.data_sizes {
            steps.push(DataStep::Prepare(n));
            steps.extend(SetFormat::ALL.map(|format| DataStep::Train(format, n)));
        }
        if settings.coco_images > 0 {
            steps.extend([DataStep::CocoPrepare, DataStep::CocoIndex]);
        }
        steps
    }

    /// Does the step; its measurement, for the steps that measure.
    pub fn run(self, settings: &DataSettings) -> Result<Option<DataResult>> {
        Ok(match self {
            DataStep::Prepare(n) => {
                prepare_set(settings, n)?;
                None
            }
            DataStep::Train(format, n) => Some(train_set(settings, format, n)?),
            DataStep::CocoPrepare => {
                prepare_big_coco(settings)?;
                None
            }
            DataStep::CocoIndex => Some(index_big_coco(settings)?),
        })
    }

    /// What the step says while it runs.
    pub fn describe(self, settings: &DataSettings) -> String {
        match self {
            DataStep::Prepare(n) => format!("data: preparing the set of {n} images ..."),
            DataStep::Train(format, n) => format!("data: {}, {n} images ...", format.name()),
            DataStep::CocoPrepare => format!(
                "data: writing a COCO file of {} images, {} annotations ...",
                settings.coco_images, settings.coco_annotations
            ),
            DataStep::CocoIndex => "data: indexing it ...".to_string(),
        }
    }
}

/// As a child process's argument: `data-prepare:N`, `data-train:FORMAT:N`,
/// `data-coco-prepare`, `data-coco-index`.
impl fmt::Display for DataStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataStep::Prepare(n) => write!(f, "data-prepare:{n}"),
            DataStep::Train(format, n) => write!(f, "data-train:{}:{n}", format.name()),
            DataStep::CocoPrepare => f.write_str("data-coco-prepare"),
            DataStep::CocoIndex => f.write_str("data-coco-index"),
        }
    }
}

impl FromStr for DataStep {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let format_named = |name: &str| {
            SetFormat::ALL
                .into_iter()
                .find(|f| f.name() == name)
                .ok_or_else(|| Error::msg(format!("unknown data format {name}")))
        };
        Ok(match parts.as_slice() {
            ["data-prepare", n] => DataStep::Prepare(n.parse()?),
            ["data-train", f, n] => DataStep::Train(format_named(f)?, n.parse()?),
            ["data-coco-prepare"] => DataStep::CocoPrepare,
            ["data-coco-index"] => DataStep::CocoIndex,
            _ => bail!("unknown data step {s}"),
        })
    }
}

fn set_dir(args: &DataSettings, n: usize) -> PathBuf {
    args.data_dir.join(format!(
        "set-{n}-{}px-{}obj",
        args.data_side, args.data_objects
    ))
}

/// A flat-shape image and its instance labels: `objects` axis-aligned ellipses.
fn flat_image(
    side: u32,
    objects: usize,
    seed: u64,
) -> (RgbImage, ImageBuffer<Luma<u16>, Vec<u16>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut image = RgbImage::from_pixel(side, side, Rgb([40, 40, 48]));
    let mut labels = ImageBuffer::<Luma<u16>, Vec<u16>>::new(side, side);
    let s = side as f64;
    for label in 1..=objects as u16 {
        let (cx, cy) = (
            rng.random_range(0.1 * s..0.9 * s),
            rng.random_range(0.1 * s..0.9 * s),
        );
        let (rx, ry) = (
            rng.random_range(0.03 * s..0.09 * s),
            rng.random_range(0.03 * s..0.09 * s),
        );
        let colour = Rgb([rng.random(), rng.random(), rng.random()]);
        let (x0, x1) = ((cx - rx).max(0.0) as u32, ((cx + rx) as u32).min(side - 1));
        let (y0, y1) = ((cy - ry).max(0.0) as u32, ((cy + ry) as u32).min(side - 1));
        for y in y0..=y1 {
            for x in x0..=x1 {
                let (dx, dy) = ((x as f64 + 0.5 - cx) / rx, (y as f64 + 0.5 - cy) / ry);
                if dx * dx + dy * dy <= 1.0 {
                    image.put_pixel(x, y, colour);
                    labels.put_pixel(x, y, Luma([label]));
                }
            }
        }
    }
    (image, labels)
}

/// The set of `n` images (label PNGs and a COCO file of the same masks), and every
/// image's embedding in the cache; done once, kept for later runs.
fn prepare_set(args: &DataSettings, n: usize) -> Result<()> {
    let dir = set_dir(args, n);
    let done = dir.join("ready");
    if done.is_file() {
        return Ok(());
    }
    for sub in ["images", "masks"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let records: Vec<(String, Vec<(String, usize)>)> = (0..n)
        .into_par_iter()
        .map(|i| -> Result<(String, Vec<(String, usize)>)> {
            let (image, labels) = flat_image(args.data_side, args.data_objects, i as u64);
            let name = format!("{i:05}.png");
            save_png(&dir.join("images").join(&name), &image)?;
            save_png(&dir.join("masks").join(&name), &labels)?;
            let rles = (1..=args.data_objects as u16)
                .map(|label| {
                    let mask = BinaryMask::from_fn(
                        labels.width() as usize,
                        labels.height() as usize,
                        |x, y| labels.get_pixel(x as u32, y as u32)[0] == label,
                    );
                    (Rle::encode(&mask).to_compressed(), mask.area())
                })
                .collect();
            Ok((name, rles))
        })
        .collect::<Result<_>>()?;
    write_set_coco(
        &dir.join("annotations.json"),
        &records,
        args.data_side as usize,
    )?;
    fill_cache(args, &dir)?;
    std::fs::write(&done, b"")?;
    Ok(())
}

fn write_set_coco(
    path: &Path,
    records: &[(String, Vec<(String, usize)>)],
    side: usize,
) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    write!(
        out,
        "{{\"categories\": [{{\"id\": 1, \"name\": \"object\"}}], \"images\": ["
    )?;
    for (i, (name, _)) in records.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        write!(out, "{sep}{{\"id\": {i}, \"file_name\": \"{name}\", \"height\": {side}, \"width\": {side}}}")?;
    }
    write!(out, "], \"annotations\": [")?;
    let mut id = 0;
    for (i, (_, rles)) in records.iter().enumerate() {
        for (counts, area) in rles {
            let sep = if id == 0 { "" } else { "," };
            let counts = serde_json::to_string(counts)?;
            write!(out, "{sep}{{\"id\": {id}, \"image_id\": {i}, \"category_id\": 1, \"iscrowd\": 0, \"area\": {area}, \"segmentation\": {{\"size\": [{side}, {side}], \"counts\": {counts}}}}}")?;
            id += 1;
        }
    }
    write!(out, "]}}")?;
    out.flush()?;
    Ok(())
}

/// The training config of a set in `format` (`labels` or `coco`): no validation,
/// `data_steps` batches an epoch.
fn set_config(args: &DataSettings, dir: &Path, format: SetFormat, n: usize) -> TrainConfig {
    let source = match format {
        SetFormat::Labels => DataSource::Folder {
            path: dir.to_path_buf(),
        },
        SetFormat::Coco => DataSource::Coco {
            annotations: dir.join("annotations.json"),
            images: Some(dir.join("images")),
            val_annotations: None,
            categories: Vec::new(),
        },
    };
    let mut config = TrainConfig {
        name: format!("{}-{n}", format.name()),
        runs_dir: args.data_dir.join("runs"),
        data: DataConfig {
            source,
            val_ratio: 0.0,
            ..DataConfig::default()
        },
        ..TrainConfig::default()
    };
    config.model.checkpoint = args.data_checkpoint.clone();
    config.cache.dir = args.data_dir.join("cache");
    config.train.epochs = 3;
    config.train.batches_per_epoch = args.data_steps;
    config.train.images_per_batch = 2;
    config.report.zero_shot = false;
    config.report.overlays_per_epoch = 0;
    config
}

/// Every image of the set in the embedding cache, as `samtune embed` fills it.
fn fill_cache(args: &DataSettings, dir: &Path) -> Result<()> {
    let config = set_config(args, dir, SetFormat::Labels, 0);
    let device = config.model.device.device()?;
    crate::train::embed::fill_cache(&config, &device, (0, 1), false)?;
    Ok(())
}

/// Indexes a set and trains on it: the first epoch warms up, the next two are timed.
fn train_set(args: &DataSettings, format: SetFormat, n: usize) -> Result<DataResult> {
    let dir = set_dir(args, n);
    let config = set_config(args, &dir, format, n);
    // cold: the label counts are not kept yet (the run below reads them back)
    let _ = std::fs::remove_file(dir.join(".samtune-index.json"));
    let started = Instant::now();
    let dataset = config.data.open()?;
    let index_seconds = started.elapsed().as_secs_f64();
    let objects = dataset.split.train.iter().map(|s| s.object_count()).sum();
    drop(dataset);
    let _ = std::fs::remove_dir_all(config.run_dir());
    let outcome = crate::train::train(&config, false, &AtomicBool::new(false))?;
    let timed = &outcome.state.history[1..];
    let batches = args
        .data_steps
        .min(n.div_ceil(config.train.images_per_batch));
    let mut steps: Vec<f64> = timed
        .iter()
        .map(|r| r.seconds / batches as f64 * 1e3)
        .collect();
    steps.sort_by(f64::total_cmp);
    let wait: f64 = timed.iter().map(|r| r.data_wait_seconds).sum();
    let total: f64 = timed.iter().map(|r| r.seconds).sum();
    let file = match format {
        SetFormat::Coco => dir.join("annotations.json"),
        SetFormat::Labels => dir.join(".samtune-index.json"),
    };
    Ok(DataResult {
        set: format!(
            "{}, {}px, {} objects",
            format.name(),
            args.data_side,
            args.data_objects
        ),
        images: n,
        objects,
        index_seconds,
        peak_rss_mb: peak_rss_mb(),
        step_ms: steps[steps.len() / 2],
        data_wait_share: wait / total.max(1e-9),
        file_mb: std::fs::metadata(file).map_or(0.0, |m| m.len() as f64 / 1e6),
    })
}

fn big_coco_dir(args: &DataSettings) -> PathBuf {
    args.data_dir.join(format!(
        "coco-{}-{}",
        args.coco_images, args.coco_annotations
    ))
}

/// A COCO file shaped like train2017's instances: polygons of 12 to 36 points with two
/// decimals, an RLE crowd now and then, `area` and `bbox`; empty image files (indexing
/// only checks that they exist).
fn prepare_big_coco(args: &DataSettings) -> Result<()> {
    let dir = big_coco_dir(args);
    let path = dir.join("instances.json");
    if path.is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(dir.join("images"))?;
    let mut rng = ChaCha8Rng::seed_from_u64(2017);
    let tmp = dir.join("instances.json.part");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    write!(
        out,
        "{{\"info\": {{\"description\": \"samtune bench\"}}, \"images\": ["
    )?;
    for i in 0..args.coco_images {
        let name = format!("{i:012}.jpg");
        std::fs::File::create(dir.join("images").join(&name))?;
        let sep = if i == 0 { "" } else { "," };
        write!(out, "{sep}{{\"id\": {i}, \"file_name\": \"{name}\", \"height\": 480, \"width\": 640, \"license\": 1}}")?;
    }
    write!(out, "], \"annotations\": [")?;
    for id in 0..args.coco_annotations {
        let sep = if id == 0 { "" } else { "," };
        let image = rng.random_range(0..args.coco_images);
        let (cx, cy, r) = (
            rng.random_range(40.0..600.0),
            rng.random_range(40.0..440.0),
            rng.random_range(5.0..40.0),
        );
        if rng.random_bool(0.01) {
            let counts: Vec<u32> = vec![2000, 300, 180, 300, 480 * 640 - 2780];
            write!(out, "{sep}{{\"id\": {id}, \"image_id\": {image}, \"category_id\": 1, \"iscrowd\": 1, \"area\": 600.0, \"bbox\": [4.0, 160.0, 2.0, 300.0], \"segmentation\": {{\"size\": [480, 640], \"counts\": {counts:?}}}}}")?;
            continue;
        }
        let points = rng.random_range(12..=36);
        let polygon: Vec<String> = (0..points)
            .flat_map(|k| {
                let a = k as f64 / points as f64 * std::f64::consts::TAU;
                let rr = r * rng.random_range(0.7..1.0);
                [
                    format!("{:.2}", cx + rr * a.cos()),
                    format!("{:.2}", cy + rr * a.sin()),
                ]
            })
            .collect();
        write!(out, "{sep}{{\"segmentation\": [[{}]], \"area\": {:.2}, \"iscrowd\": 0, \"image_id\": {image}, \"bbox\": [{:.2}, {:.2}, {:.2}, {:.2}], \"category_id\": {}, \"id\": {id}}}",
            polygon.join(","), std::f64::consts::PI * r * r * 0.7, cx - r, cy - r, 2.0 * r, 2.0 * r, rng.random_range(1..=80))?;
    }
    write!(out, "], \"categories\": [")?;
    for c in 1..=80 {
        let sep = if c == 1 { "" } else { "," };
        write!(
            out,
            "{sep}{{\"supercategory\": \"thing\", \"id\": {c}, \"name\": \"class{c}\"}}"
        )?;
    }
    write!(out, "]}}")?;
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

fn index_big_coco(args: &DataSettings) -> Result<DataResult> {
    let dir = big_coco_dir(args);
    let path = dir.join("instances.json");
    crate::alloc::release_free_memory();
    let started = Instant::now();
    let samples = crate::data::coco::load_coco(&path, &dir.join("images"), &[])?;
    let index_seconds = started.elapsed().as_secs_f64();
    let objects = samples.iter().map(|s| s.object_count()).sum();
    Ok(DataResult {
        set: "COCO, train2017-sized".into(),
        images: samples.len(),
        objects,
        index_seconds,
        peak_rss_mb: peak_rss_mb(),
        step_ms: 0.0,
        data_wait_share: 0.0,
        file_mb: std::fs::metadata(&path)?.len() as f64 / 1e6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings a command line gives (after `samtune bench`).
    fn parsed<S: Into<String>>(args: impl IntoIterator<Item = S>) -> DataSettings {
        #[derive(clap::Parser)]
        struct Parsed {
            #[command(flatten)]
            data: DataSettings,
        }
        let args = std::iter::once("bench".to_string()).chain(args.into_iter().map(Into::into));
        <Parsed as clap::Parser>::parse_from(args).data
    }

    fn settings() -> DataSettings {
        parsed(["--data-sizes", "6,20", "--coco-images", "3"])
    }

    #[test]
    fn the_plan_prepares_each_set_before_training_on_it_in_both_formats() {
        let plan = DataStep::plan(&settings());
        use DataStep::*;
        use SetFormat::*;
        assert_eq!(
            plan,
            [
                Prepare(6),
                Train(Labels, 6),
                Train(Coco, 6),
                Prepare(20),
                Train(Labels, 20),
                Train(Coco, 20),
                CocoPrepare,
                CocoIndex
            ]
        );
        for step in plan {
            assert_eq!(step.to_string().parse::<DataStep>().unwrap(), step);
        }
        assert!("data-train:json:6".parse::<DataStep>().is_err());
    }

    #[test]
    fn a_child_reads_the_settings_it_is_given() {
        let given = settings();
        let read = parsed(given.args());
        assert_eq!(format!("{read:?}"), format!("{given:?}"));
    }
}
