//! The fine-tuning loop: frozen (cached) image encoder, trained mask decoder, AdamW with
//! warm-up and cosine decay, validation every epoch, best/last checkpoints, resume.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use super::checkpoints::TrainState;
use super::config::TrainConfig;
use super::report::TrainReport;
use super::run::{Ending, Run};
use crate::error::Result;

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub run_dir: PathBuf,
    pub state: TrainState,
    pub interrupted: bool,
    pub stopped_early: bool,
    /// The end-of-run report (absent when interrupted or without validation images).
    pub report: Option<TrainReport>,
}

/// Runs (or resumes) the training described by `config`. `interrupt` (set by Ctrl-C) makes
/// it save a resumable checkpoint after the current step and return.
pub fn train(config: &TrainConfig, resume: bool, interrupt: &AtomicBool) -> Result<TrainOutcome> {
    // every device opens (or fails) before any work
    let devices = config.model.open_devices()?;
    let mut run = Run::start(config, resume, devices)?;
    run.encode_ahead()?;
    run.zero_shot()?;
    let ending = run.epochs(interrupt)?;
    let report = run.finish(ending)?;
    Ok(TrainOutcome {
        run_dir: run.dirs.run.clone(),
        state: run.state.clone(),
        interrupted: ending == Ending::Interrupted,
        stopped_early: ending == Ending::StoppedEarly,
        report,
    })
}
