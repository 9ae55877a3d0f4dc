//! The README's quickstart end to end: the bundled tiny SAM (pre-trained on the source
//! domain) fine-tuned on the bundled target-domain data with configs/quickstart.toml, at
//! smaller settings. The report must exist, parse, agree with itself and show a gain.

use std::path::Path;

use serde_json::Value;

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn quickstart_fine_tuning_beats_zero_shot_in_the_report() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let cache = dir.path().join("cache");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_samtune"))
        .current_dir(root)
        .args([
            "train",
            "--config",
            "configs/quickstart.toml",
            &format!("runs_dir={}", runs.display()),
            &format!("cache.dir={}", cache.display()),
            "train.epochs=4",
        ])
        .output()
        .expect("running samtune");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report_dir = runs.join("quickstart").join("report");
    assert!(
        stdout.contains(&report_dir.join("report.html").display().to_string()),
        "the run prints where the report is: {stdout}"
    );

    let report = read_json(&report_dir.join("report.json"));
    let zero = report["zero_shot"]["overall"]["mean_iou"].as_f64().unwrap();
    let tuned = report["fine_tuned"]["overall"]["mean_iou"]
        .as_f64()
        .unwrap();
    assert!(
        tuned > zero + 0.05,
        "fine-tuning must raise the validation mIoU visibly: {zero:.4} -> {tuned:.4}"
    );
    // the bundled model segments: zero-shot is poor on the shifted domain but not nothing
    assert!(zero > 0.05 && tuned <= 1.0, "{zero} {tuned}");
    assert_eq!(report["val_images"], 16);
    assert_eq!(
        report["zero_shot"]["overall"]["objects"],
        report["fine_tuned"]["overall"]["objects"]
    );

    // the training loop's own validation of the best epoch agrees with the report
    let validation = read_json(&report_dir.join("validation.json"));
    let best_epoch_miou = validation["fine_tuned"]["overall"]["mean_iou"]
        .as_f64()
        .unwrap();
    assert!(
        (best_epoch_miou - tuned).abs() < 1e-6,
        "{best_epoch_miou} vs {tuned}"
    );
    let zero_in_loop = validation["zero_shot"]["mean_iou"].as_f64().unwrap();
    assert!(
        (zero_in_loop - zero).abs() < 1e-6,
        "{zero_in_loop} vs {zero}"
    );

    // review.jsonl (what `serve --review` opens): every validation image, both models,
    // their scores those of the report
    let (models, entries) =
        samtune::eval::review::read_review_index(&report_dir.join("review.jsonl")).unwrap();
    assert_eq!(models, ["zero-shot", "fine-tuned"]);
    assert_eq!(entries.len(), 16);
    let objects: usize = entries.iter().map(|e| e.objects).sum();
    assert_eq!(
        objects as u64,
        report["fine_tuned"]["overall"]["objects"].as_u64().unwrap()
    );
    let weighted = |k: usize| {
        entries
            .iter()
            .map(|e| e.mean_iou[k] * e.objects as f64)
            .sum::<f64>()
            / objects as f64
    };
    assert!(
        (weighted(0) - zero).abs() < 1e-9,
        "{} vs {zero}",
        weighted(0)
    );
    assert!(
        (weighted(1) - tuned).abs() < 1e-9,
        "{} vs {tuned}",
        weighted(1)
    );

    // pictures: both curves, and every side-by-side image exists and holds two panels
    for svg in ["loss.svg", "val_iou.svg"] {
        let text = std::fs::read_to_string(report_dir.join(svg)).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("<polyline"),
            "{svg}"
        );
    }
    let pictures: Vec<&Value> = report["most_improved"]
        .as_array()
        .unwrap()
        .iter()
        .chain(report["weakest"].as_array().unwrap())
        .collect();
    assert_eq!(pictures.len(), 8);
    for p in &pictures {
        let image = image::open(report_dir.join(p["file"].as_str().unwrap())).unwrap();
        assert!(
            image.width() > 2 * image.height(),
            "zero-shot and fine-tuned side by side"
        );
    }
    let first = &report["most_improved"][0];
    assert!(first["fine_tuned_iou"].as_f64().unwrap() > first["zero_shot_iou"].as_f64().unwrap());

    let html = std::fs::read_to_string(report_dir.join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 2, "curves inline in the page");
    assert!(html.contains(&format!("{zero:.3} &rarr; {tuned:.3}")));
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(md.contains(&format!("val mIoU {zero:.4} -> {tuned:.4}")));
}
