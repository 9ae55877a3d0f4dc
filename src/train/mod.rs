//! Fine-tuning: configuration, losses, schedule, optimizer, examples, the step, the loop
//! and what it writes (checkpoints, resume state, log, end-of-run report).

pub mod checkpoints;
pub mod config;
pub mod examples;
pub mod log;
pub mod loss;
pub mod loss_kernel;
pub mod optim;
pub mod report;
pub mod run;
pub mod schedule;
pub mod step;
pub mod trainer;

pub use config::TrainConfig;
pub use trainer::{train, TrainOutcome};
