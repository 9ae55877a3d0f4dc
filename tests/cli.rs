//! The `samtune` binary: predict outputs, inspect/variants/select, and error paths.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use serde_json::Value;

fn fixture(name: &str) -> String {
    fixtures_dir().join(name).display().to_string()
}

#[track_caller]
fn assert_fails_naming(output: &Output, needles: &[&str]) {
    assert!(!output.status.success(), "expected failure, got success");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr lacks '{needle}':\n{stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "panicked:\n{stderr}");
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "samtune failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn predict_writes_masks_json_overlay_and_logits_matching_the_reference() {
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().join("pred");
    // The prompts of the fixture's `boxes_batch` case, so outputs compare to PyTorch's.
    let meta: Value =
        serde_json::from_slice(&std::fs::read(fixtures_dir().join("tiny_meta.json")).unwrap())
            .unwrap();
    let case = meta["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "boxes_batch")
        .unwrap();
    let boxes: Vec<String> = case["boxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            b.as_array()
                .unwrap()
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let checkpoint = fixture("tiny_sam.pth");
    let image = fixture("scene.png");
    let mut args = vec![
        "predict",
        "--checkpoint",
        &checkpoint,
        "--image",
        &image,
        "--save-logits",
        "--multimask",
        "--out",
        out_dir.to_str().unwrap(),
    ];
    for b in &boxes {
        args.extend(["--box", b.as_str()]);
    }
    let output = samtune(&args);
    stdout(&output);
    let report: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("prediction.json")).unwrap()).unwrap();
    let masks = report["masks"].as_array().unwrap();
    assert_eq!(masks.len(), 3 * boxes.len(), "3 masks per box");
    assert_eq!(
        (report["width"].as_u64(), report["height"].as_u64()),
        (Some(300), Some(200))
    );
    for (i, m) in masks.iter().enumerate() {
        assert_eq!(m["file"], format!("mask_{i}.png"));
        let mask = image::open(out_dir.join(format!("mask_{i}.png"))).unwrap();
        assert_eq!(mask.color(), image::ColorType::L8);
        let mask = mask.to_luma8();
        assert_eq!(mask.dimensions(), (300, 200));
        assert!(mask.pixels().all(|p| p[0] == 0 || p[0] == 255));
        let area = mask.pixels().filter(|p| p[0] == 255).count() as u64;
        assert_eq!(m["area"].as_u64().unwrap(), area);
    }
    let overlay = image::open(out_dir.join("overlay.png")).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (300, 200));

    let expected = load_expected("tiny_expected.safetensors");
    let logits = load_expected_from(&out_dir.join("logits.safetensors"));
    assert_eq!(logits["low_res_logits"].shape, vec![9, 80, 80]);
    assert_eq!(logits["iou_predictions"].shape, vec![9]);
    assert_eq!(logits["image_embeddings"].shape, vec![64, 20, 20]);
    assert!(
        relative_error(
            &logits["low_res_logits"].values,
            &expected["boxes_batch.low_res_logits"].values
        ) < 1e-4
    );
    assert!(
        relative_error(
            &logits["image_embeddings"].values,
            &expected["image_embedding"].values
        ) < 1e-4
    );
    for (i, m) in masks.iter().enumerate() {
        let reference = expected["boxes_batch.iou_predictions"].values[i];
        assert!((m["predicted_iou"].as_f64().unwrap() as f32 - reference).abs() < 1e-4);
    }
}

#[test]
fn predict_checks_its_arguments() {
    let out = tempfile::tempdir().unwrap();
    let base = [
        "predict",
        "--checkpoint",
        &fixture("tiny_sam.pth"),
        "--image",
        &fixture("scene.png"),
        "--out",
        out.path().to_str().unwrap(),
    ];
    let with = |extra: &[&str]| samtune([&base[..], extra].concat());
    assert_fails_naming(&with(&["--box", "10,10,5"]), &["10,10,5", "x0,y0,x1,y1"]);
    assert_fails_naming(&with(&["--box", "50,50,10,10"]), &["x1 must be >= x0"]);
    assert_fails_naming(&with(&["--point", "10,10,2"]), &["label must be 1"]);
    assert_fails_naming(&with(&[]), &["--box or --point"]);
    assert_fails_naming(
        &with(&["--point", "1,1,1", "--variant", "vit_q"]),
        &["vit_q"],
    );
    let missing = samtune([
        "predict",
        "--checkpoint",
        &fixture("tiny_sam.pth"),
        "--image",
        "no/such.png",
        "--point",
        "1,1,1",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert_fails_naming(&missing, &["no/such.png"]);
}

#[test]
fn bad_checkpoints_are_errors_that_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let image = fixture("scene.png");
    let run = |checkpoint: &Path, variant: &str| {
        samtune([
            "predict",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--variant",
            variant,
            "--image",
            &image,
            "--point",
            "5,5,1",
            "--out",
            dir.path().join("o").to_str().unwrap(),
        ])
    };

    let original = std::fs::read(fixtures_dir().join("tiny_sam.pth")).unwrap();
    let truncated = dir.path().join("truncated.pth");
    std::fs::write(&truncated, &original[..original.len() / 2]).unwrap();
    assert_fails_naming(&run(&truncated, "auto"), &["truncated.pth"]);

    let text = dir.path().join("notes.pth");
    std::fs::write(&text, "these are not weights").unwrap();
    assert_fails_naming(&run(&text, "auto"), &["notes.pth", "not a checkpoint"]);

    let missing = dir.path().join("absent.pth");
    assert_fails_naming(&run(&missing, "auto"), &["absent.pth"]);

    assert_fails_naming(
        &run(&fixtures_dir().join("tiny_sam.pth"), "vit_b"),
        &["tiny_sam.pth", "vit_b"],
    );
}

#[test]
fn missing_unexpected_and_misshapen_tensors_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint =
        samtune::weights::Checkpoint::open(fixtures_dir().join("tiny_sam.pth")).unwrap();
    let mut tensors: Vec<samtune::weights::RawTensor> = Vec::new();
    for (name, t) in &checkpoint.tensors {
        let bytes = t.to_bytes().unwrap();
        let mut shape = t.shape.to_vec();
        let mut values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if name == "mask_decoder.output_hypernetworks_mlps.1.layers.2.bias" {
            continue; // missing
        }
        if name == "mask_decoder.transformer.norm_final_attn.weight" {
            shape[0] -= 1; // wrong shape
            values.truncate(shape.iter().product());
        }
        if name == "prompt_encoder.no_mask_embed.weight" {
            tensors.push(samtune::weights::RawTensor::f32(
                "prompt_encoder.extra_head.weight",
                vec![2],
                &[1.0, 2.0],
            ));
        }
        tensors.push(samtune::weights::RawTensor::f32(name, shape, &values));
    }
    let path = dir.path().join("edited.safetensors");
    samtune::weights::write_safetensors(&path, &tensors, Default::default()).unwrap();
    let expected = [
        "edited.safetensors",
        "mask_decoder.output_hypernetworks_mlps.1.layers.2.bias",
        "prompt_encoder.extra_head.weight",
        "mask_decoder.transformer.norm_final_attn.weight",
    ];
    // inspect does not report a file the model cannot load as fine
    assert_fails_naming(&samtune(["inspect", path.to_str().unwrap()]), &expected);
    let predict = samtune([
        "predict",
        "--checkpoint",
        path.to_str().unwrap(),
        "--image",
        &fixture("scene.png"),
        "--point",
        "5,5,1",
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert_fails_naming(&predict, &expected);
}

#[test]
fn inspect_variants_and_select() {
    let json: Value = serde_json::from_str(&stdout(&samtune([
        "inspect",
        "--json",
        &fixture("tiny_sam.pth"),
    ])))
    .unwrap();
    let meta: Value =
        serde_json::from_slice(&std::fs::read(fixtures_dir().join("tiny_meta.json")).unwrap())
            .unwrap();
    assert_eq!(json["parameters"]["total"], meta["num_parameters"]);
    assert_eq!(json["format"], "PyTorch");
    assert_eq!(
        json["config"]["image_encoder"]["depth"],
        meta["config"]["depth"]
    );
    let text = stdout(&samtune(["inspect", &fixture("tiny_sam.pth")]));
    assert!(text.contains("custom SAM"), "{text}");

    let variants = stdout(&samtune(["variants"]));
    for needle in [
        "sam_vit_b_01ec64.pth",
        "sam_vit_l_0b3195.pth",
        "sam_vit_h_4b8939.pth",
        "93,735,472",
        "641,090,608",
    ] {
        assert!(
            variants.contains(needle),
            "{needle} missing from:\n{variants}"
        );
    }
    let select = |gb: &str| {
        stdout(&samtune(["select", "--memory-gb", gb]))
            .trim()
            .to_string()
    };
    assert_eq!(select("4"), "vit_b");
    assert_eq!(select("8"), "vit_l");
    assert_eq!(select("24"), "vit_h");
    assert_fails_naming(&samtune(["select", "--memory-gb", "-3"]), &["-3"]);

    // without --memory-gb: the CPU's available RAM, as /proc/meminfo says it now (no
    // GPU here; the variant thresholds are 6 and 12 GB, far from a test's RAM changes)
    let out = samtune(["select", "--device", "cpu"]);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let available_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let gb = available_kib * 1024.0 / 1e9;
    let expected = if gb >= 12.0 {
        "vit_h"
    } else if gb >= 6.0 {
        "vit_l"
    } else {
        "vit_b"
    };
    assert_eq!(stdout(&out).trim(), expected);
    assert!(String::from_utf8_lossy(&out.stderr).contains("MemAvailable"));
    assert_fails_naming(&samtune(["select", "--device", "wgpu"]), &["--memory-gb"]);

    // --task: the reference figure beside samtune's measured peaks, each variant a line
    let out = samtune(["select", "--memory-gb", "4", "--task", "finetune"]);
    assert_eq!(stdout(&out).trim(), "vit_b");
    let table = String::from_utf8_lossy(&out.stderr);
    let line = |variant: &str| {
        table
            .lines()
            .find(|l| l.starts_with(variant))
            .unwrap_or_else(|| panic!("no {variant} line in:\n{table}"))
            .to_string()
    };
    assert!(
        line("vit_b").contains("8 GB (12+ GB recommended)"),
        "{table}"
    );
    assert!(
        line("vit_b").contains("1.03 GB (bench --case finetune"),
        "{table}"
    );
    assert!(
        line("vit_h").contains("3.09 GB (bench --case finetune"),
        "{table}"
    );
    assert!(line("vit_h").contains("not measured"), "{table}");
    assert_fails_naming(&samtune(["select", "--task", "train"]), &["train"]);
}
