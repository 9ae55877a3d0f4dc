//! `samtune init`: a randomly initialised SAM (the official initialisation: PyTorch's
//! default layer init, zero positional embeddings), the starting point of pre-training.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::Device;
use clap::Args;

use crate::model::architecture::resolve_architecture;
use crate::weights::save_checkpoint;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// `vit_b`, `vit_l`, `vit_h` or an architecture TOML file (see configs/README.md).
    #[arg(long)]
    pub arch: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output checkpoint (.safetensors or .bpk).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: InitArgs) -> Result<()> {
    let config = resolve_architecture(&args.arch)?;
    let device = Device::flex();
    device.seed(args.seed);
    let model = config.init(&device);
    let metadata = BTreeMap::from([
        ("samtune_init_arch".to_string(), args.arch.clone()),
        ("samtune_init_seed".to_string(), args.seed.to_string()),
    ]);
    save_checkpoint(&model, &config, &args.out, &metadata, &|_| true)?;
    println!("{}\nwrote {}", config.describe(), args.out.display());
    Ok(())
}
