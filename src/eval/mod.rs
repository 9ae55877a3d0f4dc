//! Evaluation: metrics, seeded evaluation runs and reports.

pub mod charts;
pub mod evaluate;
pub mod metrics;
pub mod report;
pub mod surface;
pub mod train_report;
pub mod volumes;
