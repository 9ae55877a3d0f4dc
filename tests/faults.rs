//! Fault injection: every file format samtune reads, mutated (truncated at many offsets,
//! bytes flipped, headers that lie, sizes no machine holds), must give an error that
//! names the file, never a panic; and the parsers, fed random input, must only ever
//! answer or refuse.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::fixtures_dir;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use samtune::data::mask::Rle;
use samtune::data::nifti::{parse_nifti, read_nifti, write_nifti, Volume, VoxelType};
use samtune::{Checkpoint, TrainConfig};

/// The outcome of reading one mutated file.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Read,
    Refused,
}

/// Reads `path` with `read`: a panic fails the test, and an error must name the file.
fn check(path: &Path, what: &str, read: &dyn Fn(&Path) -> samtune::Result<()>) -> Outcome {
    let result = catch_unwind(AssertUnwindSafe(|| read(path)));
    match result {
        Err(_) => panic!("{what}: reading {} panicked", path.display()),
        Ok(Ok(())) => Outcome::Read,
        Ok(Err(e)) => {
            let text = e.to_string();
            let name = path.file_name().unwrap().to_string_lossy();
            assert!(
                text.contains(name.as_ref()),
                "{what}: the error does not name {}: {text}",
                path.display()
            );
            Outcome::Refused
        }
    }
}

/// `bytes` cut at offsets spread over the file (start, header region, middle, end).
fn truncations(bytes: &[u8]) -> Vec<Vec<u8>> {
    let n = bytes.len();
    let mut offsets: Vec<usize> = vec![0, 1, 2, 4, 7, 8, 9, 15, 16, 64, 100, 348, 540];
    offsets.extend((1..12).map(|k| n * k / 12));
    offsets.extend([n.saturating_sub(2), n.saturating_sub(1)]);
    offsets.sort_unstable();
    offsets.dedup();
    offsets
        .into_iter()
        .filter(|&o| o < n)
        .map(|o| bytes[..o].to_vec())
        .collect()
}

/// `bytes` with one byte flipped, at `count` seeded positions (half of them in the first
/// kilobyte, where the headers are).
fn flips(bytes: &[u8], count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let mut b = bytes.to_vec();
            let range = if i % 2 == 0 {
                b.len().min(1024)
            } else {
                b.len()
            };
            let at = rng.random_range(0..range);
            b[at] ^= 0xA5;
            b
        })
        .collect()
}

/// Writes each mutation to `dir/<stem>_<i>.<ext>` and checks it; returns (refused, read).
fn mutate_and_check(
    dir: &Path,
    stem: &str,
    ext: &str,
    variants: Vec<Vec<u8>>,
    read: &dyn Fn(&Path) -> samtune::Result<()>,
) -> (usize, usize) {
    let (mut refused, mut read_ok) = (0, 0);
    for (i, bytes) in variants.into_iter().enumerate() {
        let path = dir.join(format!("{stem}_{i}.{ext}"));
        std::fs::write(&path, &bytes).unwrap();
        match check(&path, &format!("{stem} variant {i}"), read) {
            Outcome::Refused => refused += 1,
            Outcome::Read => read_ok += 1,
        }
    }
    (refused, read_ok)
}

fn read_checkpoint(path: &Path) -> samtune::Result<()> {
    let checkpoint = Checkpoint::open(path)?;
    let architecture = checkpoint.architecture()?;
    checkpoint.check_complete(&architecture)?;
    samtune::load_sam(
        path,
        samtune::VariantChoice::Auto,
        &burn::tensor::Device::flex(),
    )?;
    Ok(())
}

/// The tiny fixture model as safetensors and burnpack (written by samtune itself).
fn checkpoint_files(dir: &Path) -> Vec<PathBuf> {
    let (model, architecture) = samtune::load_sam(
        fixtures_dir().join("tiny_sam.pth"),
        samtune::VariantChoice::Auto,
        &burn::tensor::Device::flex(),
    )
    .unwrap();
    let mut files = vec![fixtures_dir().join("tiny_sam.pth")];
    for ext in ["safetensors", "bpk"] {
        let path = dir.join(format!("tiny.{ext}"));
        samtune::weights::save_checkpoint(
            &model,
            &architecture,
            &path,
            &Default::default(),
            &|_| true,
        )
        .unwrap();
        files.push(path);
    }
    files
}

#[test]
fn broken_checkpoints_of_every_format_are_errors_that_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = 0;
    for original in checkpoint_files(dir.path()) {
        let bytes = std::fs::read(&original).unwrap();
        let ext = original.extension().unwrap().to_str().unwrap().to_string();
        let mut variants = truncations(&bytes);
        variants.extend(flips(&bytes, 24, 1));
        if ext == "safetensors" {
            // a header length past the end of the file, and one no machine could hold
            for len in [bytes.len() as u64, u64::MAX / 2] {
                let mut b = bytes.clone();
                b[..8].copy_from_slice(&len.to_le_bytes());
                variants.push(b);
            }
        }
        cases += variants.len();
        let (refused, _) = mutate_and_check(dir.path(), "ckpt", &ext, variants, &read_checkpoint);
        assert!(
            refused > 10,
            "{ext}: only {refused} broken variants refused"
        );
    }
    assert!(cases > 100, "{cases} cases");
}

fn read_image(path: &Path) -> samtune::Result<()> {
    samtune::load_rgb(path, Default::default()).map(|_| ())
}

/// A PNG whose IHDR declares `width` x `height`, with its CRC recomputed (so that the
/// decoder believes it).
fn lying_png(bytes: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut b = bytes.to_vec();
    // signature (8), chunk length (4), "IHDR" (4), then width and height
    b[16..20].copy_from_slice(&width.to_be_bytes());
    b[20..24].copy_from_slice(&height.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&b[12..29]);
    b[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    b
}

#[test]
fn broken_images_and_masks_are_errors_that_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let scene = image::open(fixtures_dir().join("scene.png")).unwrap();
    let mut cases = 0;
    for ext in ["png", "jpg", "tif"] {
        let original = dir.path().join(format!("scene.{ext}"));
        scene.to_rgb8().save(&original).unwrap();
        let bytes = std::fs::read(&original).unwrap();
        let mut variants = truncations(&bytes);
        variants.extend(flips(&bytes, 16, 2));
        if ext == "png" {
            variants.push(lying_png(&bytes, 1 << 30, 1 << 30));
            variants.push(lying_png(&bytes, 0, 7));
        }
        cases += variants.len();
        let (refused, _) = mutate_and_check(dir.path(), "image", ext, variants, &read_image);
        assert!(refused > 5, "{ext}: only {refused} refused");
    }
    // 16-bit label masks, read by the folder index and decoded per object
    let data = dir.path().join("data");
    samtune::data::synthetic::write_dataset(
        &data,
        samtune::data::synthetic::Domain::Source,
        1,
        48,
        1,
    )
    .unwrap();
    let mask = data.join("masks/0000.png");
    let bytes = std::fs::read(&mask).unwrap();
    let mut variants = truncations(&bytes);
    variants.extend(flips(&bytes, 16, 3));
    variants.push(lying_png(&bytes, 4096, 4096));
    cases += variants.len();
    for (i, variant) in variants.into_iter().enumerate() {
        std::fs::write(&mask, &variant).unwrap();
        let _ = std::fs::remove_file(data.join(".samtune-index.json"));
        check(&mask, &format!("mask variant {i}"), &|_| {
            let split = samtune::data::folder::load_folder(&data, 0.0, 0)?;
            for sample in &split.train {
                sample.decode_objects()?;
            }
            Ok(())
        });
    }
    assert!(cases > 60, "{cases} cases");
}

#[test]
fn broken_coco_files_are_errors_that_name_the_file() {
    let source = fixtures_dir().join("coco");
    let dir = tempfile::tempdir().unwrap();
    let images = source.join("images");
    let pretty = std::fs::read_to_string(source.join("annotations.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&pretty).unwrap();
    let text = serde_json::to_string(&value).unwrap();
    let bytes = text.as_bytes().to_vec();
    let mut variants = truncations(&bytes);
    variants.extend(flips(&bytes, 24, 4));
    // lies: sizes, ids, counts and polygons that cannot be
    for (from, to) in [
        ("\"height\":48", "\"height\":4800000000"),
        ("\"height\":48", "\"height\":0"),
        ("\"width\":64", "\"width\":-3"),
        ("\"image_id\":2", "\"image_id\":99"),
        ("\"category_id\":1", "\"category_id\":77"),
        ("\"size\":[48,64]", "\"size\":[48,65]"),
        ("[[3.2,4.7,", "[[3.2e300,4.7,"),
        ("[[3.2,4.7,", "[[\"x\",4.7,"),
        ("[260,20,", "[260,4294967295,"),
    ] {
        assert!(text.contains(from), "{from}");
        variants.push(text.replacen(from, to, 1).into_bytes());
    }
    let count = variants.len();
    let (refused, _) = mutate_and_check(dir.path(), "coco", "json", variants, &|path| {
        for sample in samtune::data::coco::load_coco(path, &images, &[])? {
            sample.decode_objects()?;
        }
        Ok(())
    });
    assert!(refused > 20 && count > 40, "{refused} of {count} refused");
}

fn ct_volume() -> Volume {
    let dims = [9, 7, 5];
    Volume {
        dims,
        spacing: [0.8, 0.8, 2.5],
        data: (0..dims.iter().product::<usize>())
            .map(|i| (i % 13) as f32)
            .collect(),
    }
}

#[test]
fn broken_nifti_volumes_are_errors_that_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = 0;
    for (name, voxel) in [("v.nii", VoxelType::U16), ("v.nii.gz", VoxelType::F32)] {
        let original = dir.path().join(name);
        write_nifti(&original, &ct_volume(), voxel).unwrap();
        let bytes = std::fs::read(&original).unwrap();
        let mut variants = truncations(&bytes);
        variants.extend(flips(&bytes, 24, 5));
        if !name.ends_with(".gz") {
            // NIfTI-1 dims are i16 at 40..56: huge, negative, zero and a lying rank
            for (at, value) in [(42, i16::MAX), (44, -5), (46, 0), (40, 9)] {
                let mut b = bytes.clone();
                b[at..at + 2].copy_from_slice(&value.to_le_bytes());
                variants.push(b);
            }
        }
        cases += variants.len();
        let ext = if name.ends_with(".gz") {
            "nii.gz"
        } else {
            "nii"
        };
        let (refused, _) = mutate_and_check(dir.path(), "volume", ext, variants, &|p| {
            read_nifti(p).map(|_| ())
        });
        assert!(refused > 10, "{name}: {refused} refused");
    }
    assert!(cases > 60, "{cases} cases");
}

/// A NIfTI-2 header (540 bytes + 4) with `dims`, int16 voxels, and no data.
fn nifti2_header(dims: [i64; 4]) -> Vec<u8> {
    let mut b = vec![0u8; 544];
    b[..4].copy_from_slice(&540i32.to_le_bytes());
    b[4..8].copy_from_slice(b"n+2\0");
    b[12..14].copy_from_slice(&4i16.to_le_bytes()); // int16
    for (i, d) in dims.iter().enumerate() {
        b[16 + 8 * i..24 + 8 * i].copy_from_slice(&d.to_le_bytes());
    }
    b[168..176].copy_from_slice(&544i64.to_le_bytes());
    b
}

#[test]
fn a_nifti2_header_whose_sizes_overflow_is_refused_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    // dims whose product wraps around 2^64, and ones far beyond any machine
    for dims in [
        [3, 1 << 22, 1 << 22, 1 << 21],
        [3, i64::MAX, 2, 2],
        [3, 1 << 20, 1 << 20, 64],
    ] {
        let path = dir.path().join("crafted.nii");
        std::fs::write(&path, nifti2_header(dims)).unwrap();
        let started = Instant::now();
        assert_eq!(
            check(&path, "crafted NIfTI-2", &|p| read_nifti(p).map(|_| ())),
            Outcome::Refused
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

#[test]
fn broken_configs_are_errors_that_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let original = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/vit_b_decoder.toml");
    let bytes = std::fs::read(&original).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let mut variants = truncations(&bytes);
    variants.extend(flips(&bytes, 16, 6));
    for (from, to) in [
        ("lr = 1e-4", "lr = -1"),
        ("weight_decay = 0.01", "weight_decay = -1"),
        ("epochs = 20", "epochs = 0"),
        ("focal_weight = 20.0", "focal_weight = -2.0"),
        ("val_ratio = 0.2", "val_ratio = 1.5"),
        ("images_per_batch = 2", "images_per_batch = \"two\""),
        ("[train]", "[train]\ngrad_clip_norm = -1"),
        ("[model]", "[model]\ndevice = \"gpu7\""),
    ] {
        assert!(text.contains(from), "{from}");
        variants.push(text.replacen(from, to, 1).into_bytes());
    }
    let count = variants.len();
    let (refused, _) = mutate_and_check(dir.path(), "config", "toml", variants, &|p| {
        TrainConfig::load(p, &[]).map(|_| ())
    });
    assert!(refused >= 8 && count > 30, "{refused} of {count} refused");
}

/// Random input for `budget` (or `max` cases): the parser answers or refuses, never
/// panics. Returns the number of cases run.
fn fuzz(budget: Duration, max: usize, mut case: impl FnMut(&mut ChaCha8Rng)) -> usize {
    let mut rng = ChaCha8Rng::seed_from_u64(20261201);
    let started = Instant::now();
    let mut n = 0;
    while n < max && started.elapsed() < budget {
        let result = catch_unwind(AssertUnwindSafe(|| case(&mut rng)));
        assert!(result.is_ok(), "case {n} panicked");
        n += 1;
    }
    n
}

#[test]
fn parsers_answer_or_refuse_random_input() {
    let budget = Duration::from_millis(1500);
    // compressed RLE strings: any characters, any sizes
    let rle = fuzz(budget, 20_000, |rng| {
        let len = rng.random_range(0..40);
        let s: String = (0..len)
            .map(|_| char::from(rng.random_range(32u8..127)))
            .collect();
        let (h, w) = (rng.random_range(0..20), rng.random_range(0..20));
        if let Ok(r) = Rle::from_compressed(&s, h, w) {
            let _ = r.decode();
        }
    });
    // polygons and RLE objects with random numbers (NaN, huge, negative included)
    let polygon = fuzz(budget, 20_000, |rng| {
        let n = rng.random_range(0..12);
        let coords: Vec<String> = (0..n)
            .map(|_| match rng.random_range(0..6) {
                0 => "1e308".to_string(),
                1 => "-7".to_string(),
                _ => format!("{:.2}", rng.random_range(-10.0..40.0)),
            })
            .collect();
        let json = if rng.random_bool(0.5) {
            format!("[[{}]]", coords.join(","))
        } else {
            format!(
                "{{\"size\": [{}, 9], \"counts\": [{}]}}",
                rng.random_range(0..12),
                coords.join(",")
            )
        };
        let _ = samtune::data::coco::decode_segmentation(&json, 8, 9);
    });
    // NIfTI headers: a valid magic, random fields
    let nifti = fuzz(budget, 5_000, |rng| {
        let mut header = nifti2_header([3, 2, 2, 2]);
        for _ in 0..rng.random_range(1..6) {
            let at = rng.random_range(8..header.len());
            header[at] = rng.random();
        }
        header.extend((0..rng.random_range(0..64)).map(|_| rng.random::<u8>()));
        let _ = parse_nifti(&header);
    });
    // pickles: the fixture checkpoint's data.pkl with random bytes changed
    let dir = tempfile::tempdir().unwrap();
    let pth = std::fs::read(fixtures_dir().join("tiny_sam.pth")).unwrap();
    let pickle = fuzz(budget, 300, |rng| {
        let mut b = pth.clone();
        // data.pkl is the first entry of the zip, after its 30-byte local header and name
        let at = rng.random_range(30..(30 + 2048).min(b.len()));
        b[at] = rng.random();
        let path = dir.path().join("fuzz.pth");
        std::fs::write(&path, &b).unwrap();
        let _ = Checkpoint::open(&path).and_then(|c| c.architecture());
    });
    for (name, n) in [
        ("rle", rle),
        ("polygon", polygon),
        ("nifti", nifti),
        ("pickle", pickle),
    ] {
        assert!(n >= 50, "{name}: only {n} cases in the budget");
    }
}
