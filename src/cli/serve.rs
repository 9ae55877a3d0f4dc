//! `samtune serve`: the annotation and review page on a local web server.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::annotate::{AmgArgs, Preset};
use super::{open_device, EncoderArgs};
use crate::device::DeviceSpec;
use crate::predict::image::IntensityScaling;
use crate::predict::CacheConfig;
use crate::serve::{start, ServeConfig};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A checkpoint to annotate with; repeat it to switch between several in the page
    /// (e.g. the zero-shot and a fine-tuned one).
    #[arg(long, required = true)]
    pub checkpoint: Vec<PathBuf>,
    /// The folder of images to annotate.
    #[arg(long)]
    pub images: PathBuf,
    /// The COCO file accepted objects are saved to (default: annotations.json beside
    /// the image folder); an existing one is added to.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// An `eval --out` folder or a training run to review; repeatable.
    #[arg(long)]
    pub review: Vec<PathBuf>,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The address to listen on: this machine only by default.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Where encoded images are kept (shared with training runs of the checkpoint).
    #[arg(long, default_value = "cache/embeddings")]
    pub cache_dir: PathBuf,
    /// Encode every image again instead of using the embedding cache.
    #[arg(long)]
    pub no_cache: bool,
    #[arg(long, default_value = "auto")]
    pub intensity: IntensityScaling,
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    #[command(flatten)]
    pub encoder: EncoderArgs,
    #[command(flatten)]
    pub amg: AmgArgs,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let annotations = args.data.clone().unwrap_or_else(|| {
        let parent = args.images.parent().unwrap_or(std::path::Path::new("."));
        parent.join("annotations.json")
    });
    let config = ServeConfig {
        checkpoints: args.checkpoint.clone(),
        images: args.images.clone(),
        annotations: annotations.clone(),
        reviews: args.review.clone(),
        cache: (!args.no_cache).then(|| CacheConfig {
            dir: args.cache_dir.clone(),
            ..CacheConfig::default()
        }),
        intensity: args.intensity,
        encoder_precision: args.encoder.precision,
        amg: args.amg.settings(Preset::Reference)?,
        address: SocketAddr::new(args.host, args.port),
    };
    let device = open_device(args.device)?;
    let server = start(&config, device)?;
    eprintln!("annotations are saved to {}", annotations.display());
    eprintln!(
        "train on them with [data] format = \"coco\", annotations = \"{}\", images = \"{}\"",
        annotations.display(),
        args.images.display()
    );
    println!("serving on http://{} (Ctrl-C stops)", server.address);
    server.wait()?;
    Ok(())
}
