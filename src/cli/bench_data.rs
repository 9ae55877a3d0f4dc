//! `samtune bench --case data`: what a dataset's size costs. Generated sets of flat-shape
//! images (only their masks and cached embeddings matter) with label PNGs and a COCO file
//! (compressed RLE) are indexed and trained on with a warm embedding cache, each in a
//! process of its own, so that its peak memory is its own: time to index, peak resident
//! memory, step time and the share of it spent waiting for data. And a COCO file the
//! size of COCO train2017's instances, indexed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use image::{ImageBuffer, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::bench::peak_rss_mb;
use crate::data::mask::{BinaryMask, Rle};
use crate::data::{DataConfig, DataSource};
use crate::fsutil::save_png;
use crate::predict::encode_image;
use crate::train::TrainConfig;

#[derive(Debug, Args, Clone)]
pub struct DataBenchArgs {
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

/// The data case: prepares each set (once), then measures each in a child process.
pub fn run(args: &DataBenchArgs, exe: &Path, threads: Option<usize>) -> Result<Vec<DataResult>> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let mut results = Vec::new();
    for &n in &args.data_sizes {
        child(exe, threads, args, &format!("data-prepare:{n}"))?;
        for format in ["labels", "coco"] {
            eprintln!("data: {format}, {n} images ...");
            let line = child(exe, threads, args, &format!("data-train:{format}:{n}"))?;
            results.push(serde_json::from_str(line.trim())?);
        }
    }
    if args.coco_images > 0 {
        eprintln!(
            "data: a COCO file of {} images, {} annotations ...",
            args.coco_images, args.coco_annotations
        );
        child(exe, threads, args, "data-coco-prepare")?;
        let line = child(exe, threads, args, "data-coco-index")?;
        results.push(serde_json::from_str(line.trim())?);
    }
    Ok(results)
}

/// Runs `samtune bench --child <case>` with the data options; its standard output.
fn child(exe: &Path, threads: Option<usize>, args: &DataBenchArgs, case: &str) -> Result<String> {
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "--child", case])
        .arg("--data-sizes")
        .arg(
            args.data_sizes
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
        .args(["--data-side", &args.data_side.to_string()])
        .args(["--data-objects", &args.data_objects.to_string()])
        .args(["--data-steps", &args.data_steps.to_string()])
        .args(["--coco-images", &args.coco_images.to_string()])
        .args(["--coco-annotations", &args.coco_annotations.to_string()])
        .arg("--data-dir")
        .arg(&args.data_dir)
        .arg("--data-checkpoint")
        .arg(&args.data_checkpoint);
    if let Some(threads) = threads {
        cmd.env("RAYON_NUM_THREADS", threads.to_string());
    }
    let output = cmd.output().with_context(|| format!("running {case}"))?;
    if !output.status.success() {
        bail!(
            "{case} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// One child's work: `data-prepare:N`, `data-train:FORMAT:N`, `data-coco-prepare`,
/// `data-coco-index`.
pub fn run_child(case: &str, args: &DataBenchArgs) -> Result<()> {
    let parts: Vec<&str> = case.split(':').collect();
    match parts.as_slice() {
        ["data-prepare", n] => prepare_set(args, n.parse()?),
        ["data-train", format, n] => {
            let result = train_set(args, format, n.parse()?)?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        ["data-coco-prepare"] => prepare_big_coco(args),
        ["data-coco-index"] => {
            let result = index_big_coco(args)?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        _ => bail!("unknown data case {case}"),
    }
}

fn set_dir(args: &DataBenchArgs, n: usize) -> PathBuf {
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
fn prepare_set(args: &DataBenchArgs, n: usize) -> Result<()> {
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
fn set_config(args: &DataBenchArgs, dir: &Path, format: &str, n: usize) -> Result<TrainConfig> {
    let source = match format {
        "labels" => DataSource::Folder {
            path: dir.to_path_buf(),
        },
        "coco" => DataSource::Coco {
            annotations: dir.join("annotations.json"),
            images: Some(dir.join("images")),
            val_annotations: None,
            categories: Vec::new(),
        },
        other => bail!("unknown data format {other}"),
    };
    let mut config = TrainConfig {
        name: format!("{format}-{n}"),
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
    Ok(config)
}

/// Every image of the set in the embedding cache (as `samtune embed` fills it).
fn fill_cache(args: &DataBenchArgs, dir: &Path) -> Result<()> {
    let config = set_config(args, dir, "labels", 0)?;
    let device = config.model.device.device()?;
    let (model, architecture) =
        crate::weights::load_sam(&config.model.checkpoint, config.model.variant, &device)?;
    let cache = crate::predict::EmbeddingCache::open(
        &config.cache,
        &config.model.checkpoint,
        &crate::fsutil::file_sha256(&config.model.checkpoint)?,
        &architecture,
        config.data.sample_intensity(),
    )?;
    for sample in config.data.open()?.split.train {
        encode_image(
            &model,
            &sample.image,
            Some(&cache),
            config.data.sample_intensity(),
            &device,
        )?;
    }
    Ok(())
}

/// Indexes a set and trains on it: the first epoch warms up, the next two are timed.
fn train_set(args: &DataBenchArgs, format: &str, n: usize) -> Result<DataResult> {
    let dir = set_dir(args, n);
    let config = set_config(args, &dir, format, n)?;
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
        "coco" => dir.join("annotations.json"),
        _ => dir.join(".samtune-index.json"),
    };
    Ok(DataResult {
        set: format!(
            "{format}, {}px, {} objects",
            args.data_side, args.data_objects
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

fn big_coco_dir(args: &DataBenchArgs) -> PathBuf {
    args.data_dir.join(format!(
        "coco-{}-{}",
        args.coco_images, args.coco_annotations
    ))
}

/// A COCO file shaped like train2017's instances: polygons of 12 to 36 points with two
/// decimals, an RLE crowd now and then, `area` and `bbox`; empty image files (indexing
/// only checks that they exist).
fn prepare_big_coco(args: &DataBenchArgs) -> Result<()> {
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

fn index_big_coco(args: &DataBenchArgs) -> Result<DataResult> {
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

/// The data table as printed.
pub fn print_table(results: &[DataResult]) {
    println!(
        "{:<34} {:>7} {:>8} {:>9} {:>8} {:>8} {:>10} {:>8}",
        "data set", "images", "objects", "index s", "peak MB", "step ms", "data wait", "file MB"
    );
    for r in results {
        println!(
            "{:<34} {:>7} {:>8} {:>9.2} {:>8.0} {:>8.1} {:>9.1}% {:>8.1}",
            r.set,
            r.images,
            r.objects,
            r.index_seconds,
            r.peak_rss_mb,
            r.step_ms,
            100.0 * r.data_wait_share,
            r.file_mb
        );
    }
}
