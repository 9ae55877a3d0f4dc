//! Evaluation: metrics, seeded evaluation runs and reports.

pub(crate) mod charts;
pub mod evaluate;
pub mod metrics;
pub mod report;
pub mod review;
pub mod set;
pub mod surface;
pub mod volumes;
