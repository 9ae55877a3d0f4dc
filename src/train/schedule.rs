//! Learning rate: linear warm-up, then cosine decay to `lr * min_lr_ratio`. A pure
//! function of the step, so resuming needs only the step counter.

/// The learning rate at optimizer step `step` (0-based) of `total`.
pub fn lr_at(step: usize, total: usize, peak: f64, warmup_fraction: f64, min_lr_ratio: f64) -> f64 {
    let warmup = ((total as f64) * warmup_fraction).round() as usize;
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / decay_steps as f64).min(1.0);
    let floor = peak * min_lr_ratio;
    floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_to_the_floor() {
        let lr = |s| lr_at(s, 100, 1e-3, 0.1, 0.01);
        assert!((lr(0) - 1e-4).abs() < 1e-12);
        assert!((lr(9) - 1e-3).abs() < 1e-12);
        assert!((lr(10) - 1e-3).abs() < 1e-12, "cosine starts at the peak");
        assert!(lr(55) < lr(30) && lr(30) < lr(10));
        assert!((lr(100) - 1e-5).abs() < 1e-12);
        assert!(lr(99) > 1e-5);
    }

    #[test]
    fn no_warmup_starts_at_the_peak() {
        assert_eq!(lr_at(0, 10, 0.5, 0.0, 0.0), 0.5);
    }
}
