//! `samtune eval` writes a complete, consistent report.

mod common;

use std::path::Path;
use std::process::Output;

use common::{fixtures_dir, samtune};
use samtune::data::synthetic::{write_dataset, Domain};

/// `samtune eval` of the tiny fixture checkpoint on `data`, into `out`.
fn eval(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let checkpoint = fixtures_dir().join("tiny_sam.pth");
    let mut args = vec![
        "eval",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    samtune(args)
}

#[test]
fn eval_writes_json_markdown_html_and_overlays() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, Domain::Target, 3, 64, 5).unwrap();
    let out = dir.path().join("eval");
    let output = eval(&data, &out, &["--prompts", "box-points", "--overlays", "1"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let objects = report["aggregate"]["overall"]["objects"].as_u64().unwrap();
    let lines = std::fs::read_to_string(out.join("objects.jsonl")).unwrap();
    assert_eq!(lines.lines().count() as u64, objects);
    let mean: f64 = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["iou"]
                .as_f64()
                .unwrap()
        })
        .sum::<f64>()
        / objects as f64;
    let reported = report["aggregate"]["overall"]["mean_iou"].as_f64().unwrap();
    assert!((mean - reported).abs() < 1e-9 && (0.0..=1.0).contains(&reported));
    assert_eq!(
        report["overlays"].as_array().unwrap().len(),
        2,
        "one best and one worst"
    );
    for overlay in report["overlays"].as_array().unwrap() {
        let picture = image::open(out.join(overlay[0].as_str().unwrap())).unwrap();
        assert!(picture.width() >= 256, "small images are enlarged");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("mIoU") && html.contains("<img"));
    assert!(std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .contains("both empty"));
}

#[test]
fn images_encoded_in_batches_score_as_one_at_a_time() {
    // 5 images in batches of 2 (a last one of 1): every object's result, to the last bit
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, Domain::Target, 5, 64, 7).unwrap();
    let batched_eval = |name: &str, batch: &str| {
        let out = dir.path().join(name);
        (eval(&data, &out, &["--encode-batch", batch]), out)
    };
    let (single, one) = batched_eval("single", "1");
    let (batched, two) = batched_eval("batched", "2");
    for output in [&single, &batched] {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let objects =
        |out: &std::path::Path| std::fs::read_to_string(out.join("objects.jsonl")).unwrap();
    assert!(objects(&one).lines().count() >= 5);
    assert_eq!(objects(&one), objects(&two));
    let (refused, _) = batched_eval("refused", "0");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--encode-batch"), "{stderr}");
}
