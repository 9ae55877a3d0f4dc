//! Fine-tuning: configuration, losses, schedule, optimizer, examples, the step, the loop
//! and what it writes (checkpoints, resume state, log, end-of-run report).

pub(crate) mod checkpoints;
pub mod config;
pub mod embed;
pub(crate) mod epoch_training;
pub(crate) mod examples;
pub(crate) mod log;
pub mod loss;
pub(crate) mod loss_kernel;
pub(crate) mod model_setup;
pub mod optim;
pub mod report;
pub(crate) mod run;
pub(crate) mod run_data;
pub mod schedule;
pub(crate) mod step;
pub mod trainer;

pub use checkpoints::{EpochRecord, TrainState};
pub use config::TrainConfig;
pub use trainer::{train, TrainOutcome};
