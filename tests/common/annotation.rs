//! Helpers of the annotation-page tests (HTTP and browser): the bundled images to serve,
//! their objects, and masks as the page receives them.

use std::path::{Path, PathBuf};

use samtune::data::dataset::read_labels;
use samtune::data::Rle;
use samtune::predict::BinaryMask;
use serde_json::Value;

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The first `count` images (and masks) of `source` (`images/`, `masks/`, named like the
/// bundled sets) copied to `dir/data`; that folder.
pub fn copy_images(source: &Path, dir: &Path, count: usize) -> PathBuf {
    let data = dir.join("data");
    for sub in ["images", "masks"] {
        std::fs::create_dir_all(data.join(sub)).unwrap();
        for i in 0..count {
            let name = format!("{i:04}.png");
            std::fs::copy(source.join(sub).join(&name), data.join(sub).join(&name)).unwrap();
        }
    }
    data
}

/// Object `label` of mask `index` under `data`, the pixel centre of it nearest its
/// centroid (inside it), and the mask's `[height, width]`.
pub fn object(data: &Path, index: usize, label: u16) -> (BinaryMask, [f64; 2], [usize; 2]) {
    let (labels, [h, w]) = read_labels(&data.join(format!("masks/{index:04}.png"))).unwrap();
    let mask = BinaryMask::from_fn(w, h, |x, y| labels[y * w + x] == label);
    let pixels: Vec<(usize, usize)> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| mask.get(x, y))
        .collect();
    let n = pixels.len() as f64;
    let cx = pixels.iter().map(|p| p.0 as f64).sum::<f64>() / n;
    let cy = pixels.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let distance = |p: &(usize, usize)| (p.0 as f64 - cx).powi(2) + (p.1 as f64 - cy).powi(2);
    let &(x, y) = pixels
        .iter()
        .min_by(|a, b| distance(a).total_cmp(&distance(b)))
        .unwrap();
    (mask, [x as f64 + 0.5, y as f64 + 0.5], [h, w])
}

/// A mask as the page receives it (uncompressed COCO RLE counts) as a binary mask.
pub fn page_mask(counts: &Value, [height, width]: [usize; 2]) -> BinaryMask {
    let counts = counts
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap() as u32)
        .collect();
    Rle {
        height,
        width,
        counts,
    }
    .decode()
    .unwrap()
}

pub fn iou(a: &BinaryMask, b: &BinaryMask) -> f64 {
    let both = |f: fn(bool, bool) -> bool| {
        a.data
            .iter()
            .zip(&b.data)
            .filter(|(x, y)| f(**x != 0, **y != 0))
            .count()
    };
    both(|x, y| x && y) as f64 / both(|x, y| x || y).max(1) as f64
}

/// `samtune eval` of the bundled model on `data` into `out` (its outputs, review.jsonl
/// among them, to review).
pub fn bundled_eval(data: &Path, out: &Path) {
    let eval = crate::common::samtune([
        "eval",
        "--checkpoint",
        repo("checkpoints/sam_tiny_source.safetensors")
            .to_str()
            .unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
}
