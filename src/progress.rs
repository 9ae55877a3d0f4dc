//! Progress bars: every long job shows the same line (what it does, a bar, the count of
//! its units, a message, the rate and the time left).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` `unit`s labelled `label` (for example `eval`, `epoch 2/5`), drawn
/// when `visible` and hidden otherwise (a bar that is never drawn still counts).
pub fn count_bar(label: &str, len: usize, unit: &str, visible: bool) -> ProgressBar {
    let bar = if visible {
        ProgressBar::new(len as u64)
    } else {
        ProgressBar::hidden()
    };
    // a unit is a plain word: it cannot hold a template's braces
    let template =
        format!("{{prefix}} {{bar:30}} {{pos}}/{{len}} {unit}  {{msg}}  {{per_sec}} ETA {{eta}}");
    bar.set_style(ProgressStyle::with_template(&template).expect("a valid template"));
    bar.set_prefix(label.to_string());
    bar
}
