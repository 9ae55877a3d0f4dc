//! Helpers shared by the integration tests: fixture paths and reference tensors.
#![allow(dead_code)]

pub mod annotation;
pub mod device;
pub mod http;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::SafeTensors;
use samtune::predict::PromptBatch;
use samtune::train::TrainConfig;
use serde_json::Value;

/// Runs the `samtune` binary with `args`.
pub fn samtune<I, S>(args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    std::process::Command::new(env!("CARGO_BIN_EXE_samtune"))
        .args(args)
        .output()
        .expect("running samtune")
}

/// The committed fixtures, or the folder in `SAMTUNE_FIXTURES` (CI points it at freshly
/// regenerated ones).
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("SAMTUNE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
}

/// A reference tensor: shape and values as f32.
#[derive(Debug, Clone)]
pub struct Expected {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Every tensor of a safetensors file, converted to f32.
pub fn load_expected(name: &str) -> HashMap<String, Expected> {
    load_expected_from(&fixtures_dir().join(name))
}

/// Every tensor of the safetensors file at `path`, converted to f32.
pub fn load_expected_from(path: &std::path::Path) -> HashMap<String, Expected> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let values = match view.dtype() {
                safetensors::Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                safetensors::Dtype::U8 => data.iter().map(|&v| v as f32).collect(),
                other => panic!("unexpected dtype {other:?} for {name}"),
            };
            (
                name,
                Expected {
                    shape: view.shape().to_vec(),
                    values,
                },
            )
        })
        .collect()
}

pub fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// `max|a - b| / max|b|`.
pub fn relative_error(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let diff = actual
        .iter()
        .zip(expected)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

/// A 4D fixture tensor on `device`.
pub fn tensor_from(expected: &Expected, device: &Device) -> Tensor<4> {
    let s = &expected.shape;
    Tensor::from_data(
        TensorData::new(expected.values.clone(), [s[0], s[1], s[2], s[3]]),
        device,
    )
}

#[track_caller]
pub fn assert_close<const D: usize>(name: &str, actual: &Tensor<D>, expected: &Expected, tol: f32) {
    assert_eq!(actual.dims().to_vec(), expected.shape, "{name}: shape");
    let err = relative_error(&values(actual), &expected.values);
    assert!(err < tol, "{name}: relative error {err:e} >= {tol:e}");
}

/// The deterministic test pattern of `make_fixtures.py::pattern_image`.
pub fn pattern_image(h: u32, w: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (x as i64, y as i64);
        let v = |c: i64| ((x * x * 3 + y * 5 + c * 77 + (x ^ y)) & 255) as u8;
        image::Rgb([v(0), v(1), v(2)])
    })
}

/// The prompts of a fixture case, as `samtune predict` would build them.
pub fn prompt_batch(case: &Value) -> PromptBatch {
    let boxes: Vec<[f64; 4]> = case["boxes"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .map(|b| {
                    let v: Vec<f64> = b
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap())
                        .collect();
                    [v[0], v[1], v[2], v[3]]
                })
                .collect()
        })
        .unwrap_or_default();
    let points: Vec<([f64; 2], i64)> = case["points"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .zip(case["labels"].as_array().unwrap())
                .map(|(p, l)| {
                    let p = p.as_array().unwrap();
                    (
                        [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()],
                        l.as_i64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    PromptBatch::from_boxes_and_points(boxes, points)
}

/// A training configuration of the tiny test model on `dir/data` (runs and cache under
/// `dir`), box prompts, on the test device, with `key=value` overrides.
pub fn config_with(dir: &Path, name: &str, epochs: usize, overrides: &[&str]) -> TrainConfig {
    let text = format!(
        r#"
name = "{name}"
runs_dir = "{runs}"
[model]
checkpoint = "{ckpt}"
[data]
path = "{data}"
val_ratio = 0.25
max_objects_per_image = 4
[prompts]
box_prob = 1.0
points_prob = 0.0
box_and_points_prob = 0.0
[train]
epochs = {epochs}
lr = 3e-3
images_per_batch = 2
warmup_fraction = 0.0
[cache]
dir = "{cache}"
"#,
        runs = dir.join("runs").display(),
        ckpt = fixtures_dir().join("tiny_sam.pth").display(),
        data = dir.join("data").display(),
        cache = dir.join("cache").display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    // the test device first, so that a test's own `model.device` override wins
    let overrides: Vec<String> =
        std::iter::once(format!("model.device={}", device::test_device_spec()))
            .chain(overrides.iter().map(|s| s.to_string()))
            .collect();
    TrainConfig::load(&path, &overrides).unwrap()
}
