//! `samtune predict`: masks for box and point prompts on one image.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use image::{GrayImage, ImageBuffer, Luma, RgbImage};
use serde::Serialize;

use super::{open_device, EncoderArgs};
use crate::device::DeviceSpec;
use crate::fsutil::{save_png, write_atomic};
use crate::model::Sam;
use crate::predict::image::{load_rgb, IntensityScaling};
use crate::predict::overlay::{draw_box, draw_point, overlay_masks};
use crate::predict::semantic::{checkpoint_classes, predict_label_map, Classes};
use crate::predict::{tensor_values, Predictor, PromptBatch};
use crate::weights::{load_sam_at, write_safetensors, RawTensor, VariantChoice};

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Checkpoint: official `.pth`, safetensors or burnpack.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// `auto` infers the architecture from the checkpoint; vit_b/vit_l/vit_h insist on one.
    #[arg(long, default_value = "auto")]
    pub variant: VariantChoice,
    /// Run the model at this encoder input size (a multiple of the patch size): the
    /// checkpoint's own by default.
    #[arg(long)]
    pub img_size: Option<usize>,
    #[arg(long)]
    pub image: PathBuf,
    /// A box prompt `x0,y0,x1,y1` in image pixels; several boxes are a batch.
    #[arg(long = "box", value_parser = parse_box)]
    pub boxes: Vec<[f64; 4]>,
    /// A point prompt `x,y,label` (label 1 foreground, 0 background); shared by every box.
    #[arg(long = "point", value_parser = parse_point)]
    pub points: Vec<([f64; 2], i64)>,
    /// Three masks per prompt instead of one.
    #[arg(long)]
    pub multimask: bool,
    /// Segment every class of a semantic checkpoint (`task = "semantic"`), no prompts:
    /// writes `labels.png` (16-bit, each pixel its class's label value), `overlay.png`
    /// and `classes.json`.
    #[arg(long, conflicts_with_all = ["boxes", "points", "multimask"])]
    pub semantic: bool,
    /// Also write `logits.safetensors` (low-res logits, IoU predictions, image embedding).
    #[arg(long)]
    pub save_logits: bool,
    /// How 16-bit and float images become 8-bit: auto, minmax, full or window:LOW,HIGH.
    #[arg(long, default_value = "auto")]
    pub intensity: IntensityScaling,
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    #[command(flatten)]
    pub encoder: EncoderArgs,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn parse_box(s: &str) -> Result<[f64; 4], String> {
    let v = parse_numbers(s, 4, "a box must be x0,y0,x1,y1")?;
    if v[2] < v[0] || v[3] < v[1] {
        return Err(format!("box '{s}': x1 must be >= x0 and y1 >= y0"));
    }
    Ok([v[0], v[1], v[2], v[3]])
}

pub fn parse_point(s: &str) -> Result<([f64; 2], i64), String> {
    let v = parse_numbers(s, 3, "a point must be x,y,label")?;
    if v[2] != 0.0 && v[2] != 1.0 {
        return Err(format!(
            "point '{s}': label must be 1 (foreground) or 0 (background)"
        ));
    }
    Ok(([v[0], v[1]], v[2] as i64))
}

fn parse_numbers(s: &str, n: usize, what: &str) -> Result<Vec<f64>, String> {
    let v: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("'{s}': {what}, numbers separated by commas"))?;
    if v.len() != n || v.iter().any(|x| !x.is_finite()) {
        return Err(format!("'{s}': {what}"));
    }
    Ok(v)
}

#[derive(Serialize)]
struct MaskRecord {
    file: String,
    prompt_index: usize,
    mask_index: usize,
    predicted_iou: f32,
    area: usize,
}

#[derive(Serialize)]
struct PredictionReport {
    image: String,
    width: usize,
    height: usize,
    checkpoint: String,
    variant: String,
    multimask: bool,
    boxes: Vec<[f64; 4]>,
    points: Vec<([f64; 2], i64)>,
    masks: Vec<MaskRecord>,
    timings_ms: BTreeMap<&'static str, f64>,
}

pub fn run(args: PredictArgs) -> Result<()> {
    let device = open_device(args.device)?;
    let start = Instant::now();
    let mut timings = BTreeMap::new();
    let (model, config) = load_sam_at(&args.checkpoint, args.variant, args.img_size, &device)?;
    let model = args.encoder.apply(model, &device)?;
    timings.insert("load", ms(start));
    let image = load_rgb(&args.image, args.intensity)?;
    if args.semantic {
        let classes = checkpoint_classes(&args.checkpoint, &config)?.with_context(|| {
            format!(
                "{} has no semantic head (train one with task = \"semantic\"); give --box/--point prompts instead",
                args.checkpoint.display()
            )
        })?;
        return predict_classes(&args, &model, &classes, &image);
    }
    let (w, h) = (image.width() as usize, image.height() as usize);
    let prompts = PromptBatch::from_boxes_and_points(args.boxes.clone(), args.points.clone());
    if args.boxes.is_empty() && args.points.is_empty() {
        bail!("give at least one --box or --point prompt");
    }
    let predictor = Predictor::new(&model);
    let t = Instant::now();
    let encoded = predictor.encode(&image);
    let embedding = tensor_values(encoded.embedding.clone())?;
    timings.insert("encode", ms(t));
    let t = Instant::now();
    let prediction = predictor.predict(&encoded, &prompts, args.multimask)?;
    let logits = tensor_values(prediction.logits.clone())?;
    timings.insert("decode", ms(t));
    let iou = tensor_values(prediction.iou_predictions.clone())?;
    let [batch, per_prompt, _, _] = prediction.logits.dims();

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating output folder {}", args.out.display()))?;
    let mut records = Vec::new();
    let mut masks = Vec::new();
    for (i, plane) in logits.chunks(w * h).enumerate() {
        let mask = GrayImage::from_fn(w as u32, h as u32, |x, y| {
            image::Luma([if plane[y as usize * w + x as usize] > 0.0 {
                255
            } else {
                0
            }])
        });
        let file = format!("mask_{i}.png");
        save_png(&args.out.join(&file), &mask)?;
        records.push(MaskRecord {
            file,
            prompt_index: i / per_prompt,
            mask_index: i % per_prompt,
            predicted_iou: iou[i],
            area: plane.iter().filter(|&&v| v > 0.0).count(),
        });
        masks.push(mask);
    }
    let mut overlay = overlay_masks(&image, &masks);
    for b in &args.boxes {
        draw_box(&mut overlay, *b, [255, 255, 255]);
    }
    for (p, label) in &args.points {
        draw_point(&mut overlay, *p, *label);
    }
    save_png(&args.out.join("overlay.png"), &overlay)?;

    if args.save_logits {
        let low_res = prediction.low_res_logits.clone();
        let [_, _, lh, lw] = low_res.dims();
        let [_, c, eh, ew] = encoded.embedding.dims();
        let tensors = [
            RawTensor::f32(
                "low_res_logits",
                vec![batch * per_prompt, lh, lw],
                &tensor_values(low_res)?,
            ),
            RawTensor::f32("iou_predictions", vec![batch * per_prompt], &iou),
            RawTensor::f32("image_embeddings", vec![c, eh, ew], &embedding),
        ];
        write_safetensors(
            &args.out.join("logits.safetensors"),
            &tensors,
            BTreeMap::new(),
        )?;
    }
    timings.insert("total", ms(start));
    let report = PredictionReport {
        image: args.image.display().to_string(),
        width: w,
        height: h,
        checkpoint: args.checkpoint.display().to_string(),
        variant: config.describe(),
        multimask: args.multimask,
        boxes: args.boxes,
        points: args.points,
        masks: records,
        timings_ms: timings,
    };
    let json = serde_json::to_string_pretty(&report)?;
    write_atomic(&args.out.join("prediction.json"), |f| {
        use std::io::Write;
        Ok(f.write_all(json.as_bytes())?)
    })?;
    for r in &report.masks {
        println!(
            "{}  prompt {} mask {}  predicted IoU {:.3}  area {} px",
            args.out.join(&r.file).display(),
            r.prompt_index,
            r.mask_index,
            r.predicted_iou,
            r.area
        );
    }
    println!(
        "overlay: {}  (encode {:.0} ms, decode {:.0} ms)",
        args.out.join("overlay.png").display(),
        report.timings_ms["encode"],
        report.timings_ms["decode"]
    );
    Ok(())
}

/// One class of a semantic prediction, as `classes.json` lists it.
#[derive(Serialize)]
struct ClassRecord {
    name: String,
    value: u16,
    colour: [u8; 3],
    area: usize,
}

/// `--semantic`: the label map of the whole image, its overlay and per-class areas.
fn predict_classes(
    args: &PredictArgs,
    model: &Sam,
    classes: &Classes,
    image: &RgbImage,
) -> Result<()> {
    let t = Instant::now();
    let encoded = Predictor::new(model).encode(image);
    let map = predict_label_map(model, &encoded)?;
    let elapsed = ms(t);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating output folder {}", args.out.display()))?;
    let labels: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_raw(map.width as u32, map.height as u32, map.values(classes))
            .context("label map size")?;
    save_png(&args.out.join("labels.png"), &labels)?;
    let masks: Vec<GrayImage> = (1..=classes.len())
        .map(|k| {
            GrayImage::from_fn(map.width as u32, map.height as u32, |x, y| {
                let c = map.classes[y as usize * map.width + x as usize] as usize;
                image::Luma([if c == k { 255 } else { 0 }])
            })
        })
        .collect();
    save_png(&args.out.join("overlay.png"), &overlay_masks(image, &masks))?;
    let records: Vec<ClassRecord> = (1..=classes.len())
        .map(|k| ClassRecord {
            name: classes.name(k).to_string(),
            value: classes.value(k),
            colour: Classes::colour(k),
            area: map.classes.iter().filter(|&&c| c as usize == k).count(),
        })
        .collect();
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "image": args.image.display().to_string(),
        "checkpoint": args.checkpoint.display().to_string(),
        "width": map.width,
        "height": map.height,
        "classes": records,
        "milliseconds": elapsed,
    }))?;
    write_atomic(&args.out.join("classes.json"), |f| {
        use std::io::Write;
        Ok(f.write_all(json.as_bytes())?)
    })?;
    for r in &records {
        println!("{:<20} label {:>5}  {} px", r.name, r.value, r.area);
    }
    println!(
        "labels: {}  overlay: {}  ({elapsed:.0} ms)",
        args.out.join("labels.png").display(),
        args.out.join("overlay.png").display()
    );
    Ok(())
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
