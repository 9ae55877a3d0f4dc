//! Fine-tuning: configuration, losses, schedule, optimizer, embedding cache and the loop.

pub mod cache;
pub mod config;
pub mod loss;
pub mod loss_kernel;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use config::TrainConfig;
pub use trainer::{train, TrainOutcome};
