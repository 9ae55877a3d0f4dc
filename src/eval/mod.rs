//! Evaluation: metrics, seeded evaluation runs and reports.

pub mod evaluate;
pub mod metrics;
pub mod report;
