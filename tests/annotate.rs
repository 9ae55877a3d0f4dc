//! `samtune annotate` against the official `SamAutomaticMaskGenerator`: the same masks
//! (IoU > 0.99, equal counts) from the bundled tiny model on bundled images, for the
//! official defaults, a looser setting and crops with small-region removal. Fixtures
//! from tests/reference/make_amg_fixtures.py (CI regenerates them).

mod common;

use std::path::Path;

use burn::tensor::Device;
use common::{fixtures_dir, samtune};
use samtune::annotate::{AmgSettings, MaskGenerator};
use samtune::data::{BinaryMask, Rle};
use samtune::predict::image::{load_rgb, IntensityScaling};
use samtune::predict::Predictor;
use samtune::weights::load_sam;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn iou(a: &BinaryMask, b: &BinaryMask) -> f64 {
    let (mut inter, mut union) = (0usize, 0usize);
    for (x, y) in a.data.iter().zip(&b.data) {
        inter += (*x != 0 && *y != 0) as usize;
        union += (*x != 0 || *y != 0) as usize;
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

fn decode(segmentation: &Value) -> BinaryMask {
    let size = &segmentation["size"];
    let (h, w) = (
        size[0].as_u64().unwrap() as usize,
        size[1].as_u64().unwrap() as usize,
    );
    Rle::from_compressed(segmentation["counts"].as_str().unwrap(), h, w)
        .unwrap()
        .decode()
        .unwrap()
}

#[test]
fn the_generator_finds_the_official_masks() {
    let expected: Value = serde_json::from_slice(
        &std::fs::read(fixtures_dir().join("amg/amg_expected.json")).unwrap(),
    )
    .unwrap();
    let checkpoint = root().join(expected["checkpoint"].as_str().unwrap());
    let (model, _) = load_sam(&checkpoint, None, &Device::flex()).unwrap();
    let mut total = 0;
    for (case, data) in expected["cases"].as_object().unwrap() {
        let images: Vec<&str> = data["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let settings: AmgSettings = serde_json::from_value(data["settings"].clone()).unwrap();
        let generator = MaskGenerator::new(Predictor::new(&model), settings).unwrap();
        for (image_path, official) in images.iter().zip(data["masks"].as_array().unwrap()) {
            let image = load_rgb(&root().join(image_path), IntensityScaling::Auto).unwrap();
            let ours = generator.generate(&image).unwrap();
            let official = official.as_array().unwrap();
            assert_eq!(
                ours.len(),
                official.len(),
                "{case} {image_path}: mask count (ours vs official)"
            );
            let decoded: Vec<BinaryMask> = ours.iter().map(|m| m.rle.decode().unwrap()).collect();
            let mut used = vec![false; ours.len()];
            for (k, record) in official.iter().enumerate() {
                let truth = decode(&record["segmentation"]);
                let best = (0..ours.len())
                    .filter(|&i| !used[i])
                    .max_by(|&a, &b| iou(&decoded[a], &truth).total_cmp(&iou(&decoded[b], &truth)))
                    .unwrap();
                let overlap = iou(&decoded[best], &truth);
                assert!(
                    overlap > 0.99,
                    "{case} {image_path}: official mask {k} has no match (best IoU {overlap})"
                );
                used[best] = true;
                let m = &ours[best];
                let predicted = record["predicted_iou"].as_f64().unwrap();
                assert!(
                    (m.predicted_iou as f64 - predicted).abs() < 1e-3,
                    "{case} {image_path} mask {k}: predicted IoU {} vs {predicted}",
                    m.predicted_iou
                );
                let stability = record["stability_score"].as_f64().unwrap();
                assert!((m.stability_score as f64 - stability).abs() < 1e-2);
                let crop: Vec<usize> = record["crop_box"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as usize)
                    .collect();
                assert_eq!(m.crop_box.to_vec(), crop);
                let point = &record["point_coords"][0];
                assert!((m.point_coords[0] - point[0].as_f64().unwrap()).abs() < 1e-6);
                assert!((m.point_coords[1] - point[1].as_f64().unwrap()).abs() < 1e-6);
                if overlap == 1.0 {
                    // identical masks: identical compressed RLE, area and box
                    assert_eq!(m.rle.to_compressed(), record["segmentation"]["counts"]);
                    assert_eq!(m.area() as u64, record["area"].as_u64().unwrap());
                    let bbox: Vec<usize> = record["bbox"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_u64().unwrap() as usize)
                        .collect();
                    assert_eq!(m.bbox.to_vec(), bbox);
                }
            }
            total += official.len();
        }
    }
    assert!(total >= 10, "the fixtures exercise real masks ({total})");
}

#[test]
fn annotate_writes_coco_that_train_reads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("annotate");
    let images = root().join("data/source/images");
    let checkpoint = root().join("checkpoints/sam_tiny_source.safetensors");
    let output = samtune([
        "annotate",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
        "--points-per-side",
        "8",
        "--pred-iou-thresh",
        "0.5",
        "--stability-score-thresh",
        "0.8",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let coco: Value =
        serde_json::from_slice(&std::fs::read(out.join("annotations.json")).unwrap()).unwrap();
    let count = std::fs::read_dir(&images).unwrap().count();
    assert_eq!(coco["images"].as_array().unwrap().len(), count);
    let annotations = coco["annotations"].as_array().unwrap();
    assert!(!annotations.is_empty());
    for a in annotations {
        let mask = decode(&a["segmentation"]);
        assert_eq!(mask.area() as u64, a["area"].as_u64().unwrap());
        for key in [
            "bbox",
            "predicted_iou",
            "point_coords",
            "stability_score",
            "crop_box",
        ] {
            assert!(!a[key].is_null(), "{key}");
        }
    }
    assert_eq!(
        std::fs::read_dir(out.join("overlays")).unwrap().count(),
        count,
        "one overlay per image"
    );

    // the file is a training set as it is
    let config = dir.path().join("train.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"from_annotations\"\nruns_dir = \"{}\"\n[model]\ncheckpoint = \"{}\"\n\
             [data]\nformat = \"coco\"\nannotations = \"{}\"\nimages = \"{}\"\nval_ratio = 0.25\n\
             [train]\nepochs = 1\n[cache]\ndir = \"{}\"\n",
            dir.path().join("runs").display(),
            checkpoint.display(),
            out.join("annotations.json").display(),
            images.display(),
            dir.path().join("cache").display()
        ),
    )
    .unwrap();
    let output = samtune(["train", "--config", config.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(dir
        .path()
        .join("runs/from_annotations/checkpoints/best.safetensors")
        .is_file());
}
