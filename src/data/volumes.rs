//! Medical volumes as training data: NIfTI image and label volumes (`images/` and
//! `labels/` with the same file names), split by volume, sliced along an axis into 2D
//! samples. Slices are written once as PNG files (8-bit image after the intensity window,
//! 16-bit labels) under a folder keyed by the volume's content and the slicing settings,
//! so the 2D pipeline (prompts, embedding cache, evaluation) applies unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{bail, Context, Result};
use image::{GrayImage, ImageBuffer, Luma};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::dataset::{count_labels, split_off, Annotations, LabelArea, Sample, Split};
use super::nifti::{read_nifti, Volume};
use crate::fsutil::save_png;
use crate::predict::image::{to_bytes, IntensityScaling};

/// The axis slices are taken across.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SliceAxis {
    X,
    Y,
    /// Axial slices of a scan stored the usual way.
    #[default]
    Z,
}

impl SliceAxis {
    pub fn index(self) -> usize {
        match self {
            SliceAxis::X => 0,
            SliceAxis::Y => 1,
            SliceAxis::Z => 2,
        }
    }

    pub fn name(self) -> &'static str {
        ["x", "y", "z"][self.index()]
    }
}

/// How volumes become slices.
#[derive(Debug, Clone)]
pub struct SliceSettings {
    pub axis: SliceAxis,
    /// Fraction of the slices holding foreground that are kept (seeded); slices without
    /// any label hold no object to prompt and are always left out of training.
    pub fraction: f64,
    /// Applied per volume (percentiles and min-max over the whole volume).
    pub intensity: IntensityScaling,
    /// Category names of label values (others are `label <value>`).
    pub label_names: Arc<BTreeMap<u16, String>>,
    pub seed: u64,
}

/// The file name without `.nii` / `.nii.gz`.
pub fn volume_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.trim_end_matches(".gz")
        .trim_end_matches(".nii")
        .to_string()
}

fn is_nifti(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.ends_with(".nii") || name.ends_with(".nii.gz")
}

/// Image/label volume pairs of `dir/images` and `dir/labels`, by stem.
pub fn volume_pairs(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let list = |sub: &str| -> Result<BTreeMap<String, PathBuf>> {
        let folder = dir.join(sub);
        let entries = std::fs::read_dir(&folder)
            .with_context(|| format!("reading folder {}", folder.display()))?;
        let mut files = BTreeMap::new();
        for entry in entries {
            let path = entry
                .with_context(|| format!("reading folder {}", folder.display()))?
                .path();
            if is_nifti(&path) {
                files.insert(volume_stem(&path), path);
            }
        }
        Ok(files)
    };
    let images = list("images")?;
    let labels = list("labels")?;
    let mut pairs = Vec::new();
    for (stem, image) in &images {
        let label = labels.get(stem).with_context(|| {
            format!(
                "volume {} has no label volume {stem}.nii(.gz) in {}",
                image.display(),
                dir.join("labels").display()
            )
        })?;
        pairs.push((image.clone(), label.clone()));
    }
    if pairs.is_empty() {
        bail!(
            "no NIfTI volumes (.nii, .nii.gz) in {}",
            dir.join("images").display()
        );
    }
    Ok(pairs)
}

/// Reads a pair and checks that the two volumes line up.
pub fn read_pair(image: &Path, labels: &Path) -> Result<(Volume, Volume)> {
    let volume = read_nifti(image)?;
    let label_volume = read_nifti(labels)?;
    if volume.dims != label_volume.dims {
        bail!(
            "{} is {:?} voxels but its labels {} are {:?}",
            image.display(),
            volume.dims,
            labels.display(),
            label_volume.dims
        );
    }
    if let Some(v) = label_volume
        .data
        .iter()
        .find(|v| **v < 0.0 || v.fract() != 0.0 || **v > 65535.0)
    {
        bail!(
            "{}: label value {v} is not an integer in 0..65535",
            labels.display()
        );
    }
    Ok((volume, label_volume))
}

/// The volume's 8-bit intensities after `intensity` (computed over the whole volume).
pub fn windowed(volume: &Volume, intensity: IntensityScaling) -> Vec<u8> {
    let values: Vec<f64> = volume.data.iter().map(|&v| v as f64).collect();
    let scaling = match intensity {
        IntensityScaling::Auto => IntensityScaling::MinMax,
        other => other,
    };
    to_bytes(&values, scaling.bounds(&values, 1.0))
}

/// One slice of a sliced volume: its position, the two PNG files, the slice's size and
/// the label values in it.
#[derive(Debug, Clone)]
pub struct SliceFiles {
    pub position: usize,
    pub image: PathBuf,
    pub labels: PathBuf,
    /// `[height, width]`
    pub size: [usize; 2],
    pub label_areas: Vec<LabelArea>,
}

impl SliceFiles {
    /// The slice as a 2D sample whose label values are categories.
    pub fn sample(&self, names: &Arc<BTreeMap<u16, String>>) -> Sample {
        Sample {
            image: self.image.clone(),
            size: self.size,
            annotations: Annotations::SemanticLabels {
                path: self.labels.clone(),
                names: names.clone(),
                labels: self.label_areas.clone(),
            },
        }
    }
}

/// Writes the slices of a volume pair at `positions` (or every slice with foreground)
/// under `dir`, unless already there. Returns them in slice order.
pub fn write_slices(
    volume: &Volume,
    labels: &Volume,
    stem: &str,
    axis: SliceAxis,
    intensity: IntensityScaling,
    positions: Option<&[usize]>,
    dir: &Path,
) -> Result<Vec<SliceFiles>> {
    let a = axis.index();
    let count = volume.dims[a];
    let wanted: Vec<usize> = match positions {
        Some(p) => p.to_vec(),
        None => (0..count)
            .filter(|&i| labels.slice(a, i).2.iter().any(|&v| v != 0.0))
            .collect(),
    };
    let bytes = windowed(volume, intensity);
    let as_volume = Volume {
        dims: volume.dims,
        spacing: volume.spacing,
        data: bytes.iter().map(|&b| b as f32).collect(),
    };
    let mut out = Vec::with_capacity(wanted.len());
    for position in wanted {
        let name = format!("{stem}_{}{position:04}.png", axis.name());
        let image_path = dir.join("images").join(&name);
        let label_path = dir.join("masks").join(&name);
        let (w, h, label_pixels) = labels.slice(a, position);
        let label_values: Vec<u16> = label_pixels.iter().map(|&v| v as u16).collect();
        let label_areas = count_labels(&label_values);
        if !(image_path.is_file() && label_path.is_file()) {
            let (_, _, pixels) = as_volume.slice(a, position);
            let gray = GrayImage::from_raw(
                w as u32,
                h as u32,
                pixels.iter().map(|&v| v as u8).collect(),
            )
            .context("slice buffer size")?;
            let label_image: ImageBuffer<Luma<u16>, Vec<u16>> =
                ImageBuffer::from_raw(w as u32, h as u32, label_values)
                    .context("slice buffer size")?;
            save_png(&label_path, &label_image)?;
            save_png(&image_path, &gray)?;
        }
        out.push(SliceFiles {
            position,
            image: image_path,
            labels: label_path,
            size: [h, w],
            label_areas,
        });
    }
    Ok(out)
}

/// `volume.json` in a slice folder: where the slices come from, the volume's size and
/// voxel spacing (mm), and the in-plane spacing of its slices.
fn write_manifest(
    dir: &Path,
    image: &Path,
    labels: &Path,
    volume: &Volume,
    axis: SliceAxis,
) -> Result<()> {
    let manifest = serde_json::json!({
        "image": image.display().to_string(),
        "labels": labels.display().to_string(),
        "axis": axis.name(),
        "dims": volume.dims,
        "spacing_mm": volume.spacing,
        "slice_spacing_mm": volume.slice_spacing(axis.index()),
    });
    crate::fsutil::write_bytes_atomic(
        &dir.join("volume.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )
}

/// The slice folder of one volume pair: keyed by both files' contents and the settings.
fn slice_folder(
    root: &Path,
    image: &Path,
    labels: &Path,
    settings: &SliceSettings,
) -> Result<PathBuf> {
    let mut hasher = Sha256::new();
    for path in [image, labels] {
        hasher.update(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?);
    }
    hasher.update(format!("{:?}{:?}", settings.axis, settings.intensity));
    let digest = hasher.finalize();
    let key: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Ok(root.join(format!("{}-{key}", volume_stem(image))))
}

/// The 2D samples of a NIfTI dataset: `root/{train,val}/{images,labels}` when `root/train`
/// exists, else `root/{images,labels}` split by volume with `[val, test]` ratios and `seed`
/// (slices of one scan never land on two sides); a test ratio takes volumes from the
/// training side.
pub fn load_volumes(
    root: &Path,
    [val_ratio, test_ratio]: [f64; 2],
    seed: u64,
    settings: &SliceSettings,
    slice_root: &Path,
) -> Result<Split> {
    if !root.is_dir() {
        bail!("dataset folder {} does not exist", root.display());
    }
    let (train_pairs, val_pairs) = if root.join("train").is_dir() {
        let val = if root.join("val").is_dir() {
            volume_pairs(&root.join("val"))?
        } else {
            Vec::new()
        };
        (volume_pairs(&root.join("train"))?, val)
    } else {
        // split the volumes, not the slices
        split_off(volume_pairs(root)?, val_ratio, seed)
    };
    let (train_pairs, test_pairs) = if test_ratio > 0.0 {
        split_off(train_pairs, test_ratio, seed ^ super::source::TEST_SEED)
    } else {
        (train_pairs, Vec::new())
    };
    let slices = |pairs: &[(PathBuf, PathBuf)], keep_fraction: f64| -> Result<Vec<Sample>> {
        let mut samples = Vec::new();
        for (image, labels) in pairs {
            let (volume, label_volume) = read_pair(image, labels)?;
            let dir = slice_folder(slice_root, image, labels, settings)?;
            write_manifest(&dir, image, labels, &volume, settings.axis)?;
            let mut files = write_slices(
                &volume,
                &label_volume,
                &volume_stem(image),
                settings.axis,
                settings.intensity,
                None,
                &dir,
            )?;
            if keep_fraction < 1.0 {
                let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
                files.shuffle(&mut rng);
                files.truncate(((files.len() as f64) * keep_fraction).ceil() as usize);
                files.sort_by_key(|f| f.position);
            }
            samples.extend(files.iter().map(|f| f.sample(&settings.label_names)));
        }
        Ok(samples)
    };
    Ok(Split {
        train: slices(&train_pairs, settings.fraction)?,
        // validation and test keep every slice with foreground
        val: slices(&val_pairs, 1.0)?,
        test: slices(&test_pairs, 1.0)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::nifti::{write_nifti, VoxelType};

    /// A 6x5x4 scan: intensity = z * 100, label 1 in slices 1..=2, label 3 in slice 2.
    fn scan(dir: &Path, stem: &str) {
        let dims = [6, 5, 4];
        let mut image = Vec::new();
        let mut labels = Vec::new();
        for z in 0..4 {
            for y in 0..5 {
                for x in 0..6 {
                    image.push((z * 100) as f32);
                    let mut l = 0.0;
                    if (1..=2).contains(&z) && x < 3 && y < 3 {
                        l = 1.0;
                    }
                    if z == 2 && x >= 4 {
                        l = 3.0;
                    }
                    labels.push(l);
                }
            }
        }
        let spacing = [1.0, 1.0, 3.0];
        write_nifti(
            &dir.join("images").join(format!("{stem}.nii.gz")),
            &Volume {
                dims,
                spacing,
                data: image,
            },
            VoxelType::F32,
        )
        .unwrap();
        write_nifti(
            &dir.join("labels").join(format!("{stem}.nii.gz")),
            &Volume {
                dims,
                spacing,
                data: labels,
            },
            VoxelType::U16,
        )
        .unwrap();
    }

    fn settings() -> SliceSettings {
        SliceSettings {
            axis: SliceAxis::Z,
            fraction: 1.0,
            intensity: IntensityScaling::MinMax,
            label_names: Arc::new(BTreeMap::from([(3, "kidney".to_string())])),
            seed: 0,
        }
    }

    #[test]
    fn foreground_slices_become_samples_with_named_labels() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        for stem in ["a", "b", "c"] {
            scan(&data, stem);
        }
        let slices = dir.path().join("slices");
        let split = load_volumes(&data, [0.34, 0.0], 0, &settings(), &slices).unwrap();
        assert_eq!(
            split.train.len(),
            4,
            "two volumes, two foreground slices each"
        );
        assert_eq!(split.val.len(), 2);
        let val_stem = split.val[0].name();
        assert!(
            split.train.iter().all(|s| s.name()[..1] != val_stem[..1]),
            "split by volume"
        );
        let names: Vec<String> = split.train.iter().map(Sample::name).collect();
        assert!(names[0].ends_with("_z0001.png") && names[1].ends_with("_z0002.png"));
        let (objects, _) = split.train[1].objects(1).unwrap();
        let categories: Vec<_> = objects
            .iter()
            .map(|o| o.category.clone().unwrap())
            .collect();
        assert_eq!(categories, vec!["label 1", "kidney"]);
        assert_eq!(objects[0].mask.area(), 9);
        // windowed over the whole volume: slice z = 1 of 0..300 -> 85
        let image = image::open(&split.train[0].image).unwrap().to_luma8();
        assert_eq!(image.get_pixel(0, 0)[0], 85);
        assert_eq!(image.dimensions(), (6, 5));
        // the spacing stays with the slices
        let folder = split.train[0].image.parent().unwrap().parent().unwrap();
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(folder.join("volume.json")).unwrap()).unwrap();
        assert_eq!(manifest["spacing_mm"], serde_json::json!([1.0, 1.0, 3.0]));
        assert_eq!(manifest["axis"], "z");
    }

    #[test]
    fn mismatched_or_missing_volumes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        scan(dir.path(), "a");
        std::fs::remove_file(dir.path().join("labels/a.nii.gz")).unwrap();
        let e = load_volumes(
            dir.path(),
            [0.0, 0.0],
            0,
            &settings(),
            &dir.path().join("s"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("has no label volume a.nii"), "{e}");
        write_nifti(
            &dir.path().join("labels/a.nii.gz"),
            &Volume {
                dims: [2, 2, 2],
                spacing: [1.0; 3],
                data: vec![0.0; 8],
            },
            VoxelType::U16,
        )
        .unwrap();
        let e = format!(
            "{:#}",
            load_volumes(
                dir.path(),
                [0.0, 0.0],
                0,
                &settings(),
                &dir.path().join("s")
            )
            .unwrap_err()
        );
        assert!(e.contains("[6, 5, 4] voxels"), "{e}");
    }
}
