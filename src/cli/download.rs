//! `samtune download vit_b|vit_l|vit_h`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::model::SamVariant;
use crate::weights::catalog::official;
use crate::weights::download::{download_official, DownloadOutcome};

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// vit_b, vit_l or vit_h.
    pub variant: SamVariant,
    #[arg(long, default_value = "checkpoints")]
    pub dir: PathBuf,
    /// Another server holding the official file names (default: Meta's, or $SAMTUNE_DOWNLOAD_URL).
    #[arg(long)]
    pub base_url: Option<String>,
}

pub fn run(args: DownloadArgs) -> Result<()> {
    let entry = official(args.variant);
    eprintln!(
        "{} ({}) -> {}",
        entry.file_name,
        entry.download_size,
        args.dir.display()
    );
    match download_official(args.variant, &args.dir, args.base_url.as_deref(), true)? {
        DownloadOutcome::AlreadyPresent(path) => {
            println!(
                "{} is already here and loads as {}",
                path.display(),
                args.variant
            )
        }
        DownloadOutcome::Downloaded { path, resumed_from } => {
            if resumed_from > 0 {
                eprintln!("resumed after {resumed_from} bytes");
            }
            println!(
                "{} downloaded and verified as {}",
                path.display(),
                args.variant
            )
        }
    }
    Ok(())
}
