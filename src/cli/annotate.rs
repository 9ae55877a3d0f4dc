//! `samtune annotate`: automatic mask generation over a folder of images, written as a
//! COCO file (compressed RLE) with an overlay picture per image.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use super::{open_device, EncoderArgs};
use crate::annotate::coco_output::{CocoImage, CocoWriter};
use crate::annotate::{AmgSettings, MaskGenerator};
use crate::data::dataset::list_images;
use crate::device::DeviceSpec;
use crate::fsutil::{save_png, write_bytes_atomic};
use crate::predict::image::{load_rgb, IntensityScaling};
use crate::predict::overlay::overlay_masks;
use crate::predict::Predictor;
use crate::progress::count_bar;
use crate::weights::{load_sam, VariantChoice};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// The official `SamAutomaticMaskGenerator` defaults.
    Official,
    /// The reference document's auto-annotation settings (32 points, 0.86, 0.92).
    Reference,
}

/// The automatic mask generator's settings, shared by `annotate` and `serve`.
#[derive(Debug, Args)]
pub struct AmgArgs {
    /// The settings to start from when no `--settings` file is given (annotate:
    /// official, serve: reference); the flags below change either.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// A TOML file with any of the generator's settings (see configs/README.md).
    #[arg(long)]
    pub settings: Option<PathBuf>,
    #[arg(long)]
    pub points_per_side: Option<usize>,
    #[arg(long)]
    pub points_per_batch: Option<usize>,
    #[arg(long)]
    pub pred_iou_thresh: Option<f64>,
    #[arg(long)]
    pub stability_score_thresh: Option<f64>,
    #[arg(long)]
    pub box_nms_thresh: Option<f64>,
    #[arg(long)]
    pub crop_n_layers: Option<usize>,
    #[arg(long)]
    pub min_mask_region_area: Option<usize>,
}

#[derive(Debug, Args)]
pub struct AnnotateArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, default_value = "auto")]
    pub variant: VariantChoice,
    /// A folder of images (not recursive) or one image file.
    #[arg(long)]
    pub images: PathBuf,
    #[command(flatten)]
    pub amg: AmgArgs,
    #[arg(long, default_value = "auto")]
    pub intensity: IntensityScaling,
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    #[command(flatten)]
    pub encoder: EncoderArgs,
    /// Gets `annotations.json` and `overlays/`.
    #[arg(long)]
    pub out: PathBuf,
}

impl AmgArgs {
    /// The settings file or `preset` (when none is given on the command line), with the
    /// flags applied.
    pub fn settings(&self, preset: Preset) -> Result<AmgSettings> {
        let mut s = match &self.settings {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => match self.preset.unwrap_or(preset) {
                Preset::Official => AmgSettings::default(),
                Preset::Reference => AmgSettings::reference_document(),
            },
        };
        if let Some(v) = self.points_per_side {
            s.points_per_side = Some(v);
            s.point_grids = None;
        }
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = self.$field { s.$field = v; })* };
        }
        set!(
            points_per_batch,
            pred_iou_thresh,
            stability_score_thresh,
            box_nms_thresh,
            crop_n_layers,
            min_mask_region_area
        );
        Ok(s)
    }
}

/// The images to annotate and the folder their COCO `file_name`s are relative to.
fn image_list(path: &Path) -> Result<(Vec<PathBuf>, PathBuf)> {
    if path.is_file() {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        return Ok((vec![path.to_path_buf()], dir));
    }
    let files = list_images(path)?;
    Ok((files, path.to_path_buf()))
}

pub fn run(args: AnnotateArgs) -> Result<()> {
    let settings = args.amg.settings(Preset::Official)?;
    let (files, root) = image_list(&args.images)?;
    let device = open_device(args.device)?;
    let (model, _) = load_sam(&args.checkpoint, args.variant, &device)?;
    let model = args.encoder.apply(model, &device)?;
    let generator = MaskGenerator::new(Predictor::new(&model), settings)?;
    std::fs::create_dir_all(args.out.join("overlays"))
        .with_context(|| format!("creating {}", args.out.display()))?;
    let bar = count_bar("annotate", files.len(), "images", true);
    let mut coco = CocoWriter::new();
    for (i, file) in files.iter().enumerate() {
        let image = load_rgb(file, args.intensity)?;
        let masks = generator
            .generate(&image)
            .with_context(|| format!("annotating {}", file.display()))?;
        let gray: Vec<image::GrayImage> = masks
            .iter()
            .map(|m| m.rle.decode().map(|b| b.to_gray_image()))
            .collect::<Result<_, _>>()?;
        let stem = file.file_stem().unwrap_or_default().to_string_lossy();
        save_png(
            &args.out.join("overlays").join(format!("{stem}.png")),
            &overlay_masks(&image, &gray),
        )?;
        let file_name = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .to_string_lossy()
            .into_owned();
        coco.add(
            CocoImage {
                id: i as u64 + 1,
                file_name,
                height: image.height() as usize,
                width: image.width() as usize,
            },
            &masks,
        );
        bar.set_message(format!("{} masks", coco.annotation_count()));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let json = args.out.join("annotations.json");
    write_bytes_atomic(&json, coco.to_json()?.as_bytes())?;
    println!(
        "{} masks in {} images: {} (overlays in {})",
        coco.annotation_count(),
        files.len(),
        json.display(),
        args.out.join("overlays").display()
    );
    println!(
        "train on them: data.format=\"coco\" data.annotations=\"{}\" data.images=\"{}\"",
        json.display(),
        root.display()
    );
    Ok(())
}
