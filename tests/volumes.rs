//! Medical volumes: the NIfTI reader against volumes written (and read back) by nibabel,
//! and CT-like scans end to end: sliced for training, then evaluated in 3D with the
//! predicted label volumes written back as NIfTI.

mod common;

use std::path::Path;

use common::{fixtures_dir, samtune};
use samtune::data::nifti::read_nifti;
use serde_json::Value;

#[test]
fn nifti_volumes_read_as_nibabel_reads_them() {
    let dir = fixtures_dir().join("nifti");
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let cases = expected.as_object().unwrap();
    assert!(cases.len() >= 6);
    for (name, case) in cases {
        let volume = read_nifti(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let dims: Vec<usize> = case["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(volume.dims.to_vec(), dims, "{name}");
        for (a, b) in volume
            .spacing
            .iter()
            .zip(case["spacing"].as_array().unwrap())
        {
            assert!((a - b.as_f64().unwrap()).abs() < 1e-6, "{name}: spacing");
        }
        let values = case["values"].as_array().unwrap();
        assert_eq!(volume.data.len(), values.len(), "{name}");
        for (i, (a, b)) in volume.data.iter().zip(values).enumerate() {
            let b = b.as_f64().unwrap();
            assert!(
                (*a as f64 - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{name} voxel {i}: {a} vs nibabel {b}"
            );
        }
    }
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

#[test]
fn ct_scans_train_slice_by_slice_and_evaluate_in_3d() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ct");
    let out = samtune([
        "sample-data",
        "--domain",
        "ct",
        "--count",
        "3",
        "--size",
        "64",
        "--seed",
        "9",
        "--out",
        data.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checkpoint =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints/sam_tiny_source.safetensors");
    let config = dir.path().join("ct.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"ct\"\nruns_dir = \"{runs}\"\n[model]\ncheckpoint = \"{ckpt}\"\n\
             [data]\nformat = \"nifti\"\npath = \"{data}\"\nval_ratio = 0.34\n\
             intensity = {{ kind = \"ct_soft_tissue\" }}\nslice_dir = \"{slices}\"\n\
             label_names = {{ 1 = \"liver\", 2 = \"kidney\" }}\n\
             [prompts]\nbox_prob = 1.0\npoints_prob = 0.0\nbox_and_points_prob = 0.0\n\
             [train]\nepochs = 1\n[cache]\ndir = \"{cache}\"\n",
            runs = dir.path().join("runs").display(),
            ckpt = checkpoint.display(),
            data = data.display(),
            slices = dir.path().join("slices").display(),
            cache = dir.path().join("cache").display(),
        ),
    )
    .unwrap();
    let out = samtune(["train", "--config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&dir.path().join("runs/ct/report/report.json"));
    // validation holds every foreground slice of one scan, named by label
    let categories: Vec<&String> = report["fine_tuned"]["per_category"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(categories, vec!["kidney", "liver"]);

    let eval = dir.path().join("eval3d");
    let best = dir.path().join("runs/ct/checkpoints/best.safetensors");
    let out = samtune([
        "eval-volumes",
        "--checkpoint",
        best.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--intensity",
        "ct-soft-tissue",
        "--label",
        "1=liver",
        "--label",
        "2=kidney",
        "--tolerance-mm",
        "2",
        "--out",
        eval.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&eval.join("report.json"));
    assert_eq!(report["volumes"], 3);
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 6, "two labels in each of three scans");
    for r in results {
        for key in ["iou", "dice", "nsd"] {
            let v = r[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{key} {v}");
        }
        let (iou, dice) = (r["iou"].as_f64().unwrap(), r["dice"].as_f64().unwrap());
        assert!(
            (dice - 2.0 * iou / (1.0 + iou)).abs() < 1e-9,
            "Dice and IoU of one overlap"
        );
    }
    assert!(report["per_label"]["liver"]["count"] == 3);
    for i in 0..3 {
        let name = format!("ct_{i:03}.nii.gz");
        let predicted = read_nifti(&eval.join("predictions").join(&name)).unwrap();
        let truth = read_nifti(&data.join("labels").join(&name)).unwrap();
        assert_eq!(predicted.dims, truth.dims);
        assert_eq!(predicted.spacing, truth.spacing);
        assert!(predicted.data.iter().all(|v| [0.0, 1.0, 2.0].contains(v)));
        // what is reported is what is written: each label's Dice from the written volume
        for r in results
            .iter()
            .filter(|r| r["volume"] == format!("ct_{i:03}"))
        {
            let label = r["label"].as_f64().unwrap() as f32;
            let (mut both, mut p, mut t) = (0usize, 0usize, 0usize);
            for (&a, &b) in predicted.data.iter().zip(&truth.data) {
                both += (a == label && b == label) as usize;
                p += (a == label) as usize;
                t += (b == label) as usize;
            }
            let dice = if p + t == 0 {
                1.0
            } else {
                2.0 * both as f64 / (p + t) as f64
            };
            let reported = r["dice"].as_f64().unwrap();
            assert!((dice - reported).abs() < 1e-12, "{r}: written Dice {dice}");
        }
    }
    assert_eq!(std::fs::read_dir(eval.join("pictures")).unwrap().count(), 3);
    assert!(!eval.join(".slices").exists(), "working slices are removed");
    let md = std::fs::read_to_string(eval.join("report.md")).unwrap();
    assert!(md.contains("| liver |") && md.contains("NSD"));
}
