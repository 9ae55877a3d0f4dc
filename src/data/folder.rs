//! Folder datasets: `images/` and `masks/` with matching file stems, optionally under
//! `train/` and `val/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{bail, Context, Result};

use super::dataset::{is_image, seeded_split, Annotations, Sample, Split};

/// Reads `root/{train,val}/{images,masks}` when `root/train` exists, else `root/{images,masks}`
/// split by `val_ratio` with `seed`.
pub fn load_folder(root: &Path, val_ratio: f64, seed: u64) -> Result<Split> {
    if !root.is_dir() {
        bail!("dataset folder {} does not exist", root.display());
    }
    if root.join("train").is_dir() {
        let train = pairs(&root.join("train"))?;
        let val = if root.join("val").is_dir() {
            pairs(&root.join("val"))?
        } else {
            Vec::new()
        };
        return Ok(Split { train, val });
    }
    Ok(seeded_split(pairs(root)?, val_ratio, seed))
}

/// The samples of one `images/` + `masks/` pair of folders.
fn pairs(dir: &Path) -> Result<Vec<Sample>> {
    let images = by_stem(&dir.join("images"))?;
    let masks = by_stem(&dir.join("masks"))?;
    let mut samples = Vec::new();
    let mut unmatched = Vec::new();
    for (stem, image) in &images {
        match masks.get(stem) {
            Some(mask) => samples.push(Sample {
                image: image.clone(),
                annotations: Annotations::LabelImage(mask.clone()),
            }),
            None => unmatched.push(image.display().to_string()),
        }
    }
    if !unmatched.is_empty() {
        bail!(
            "{} image(s) in {} have no mask with the same stem in {}: {}",
            unmatched.len(),
            dir.join("images").display(),
            dir.join("masks").display(),
            unmatched
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if samples.is_empty() {
        bail!("no images in {}", dir.join("images").display());
    }
    Ok(samples)
}

fn by_stem(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("reading folder {}", dir.display()))?;
    let mut files = BTreeMap::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading folder {}", dir.display()))?
            .path();
        if !is_image(&path) {
            continue;
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(previous) = files.insert(stem.clone(), path.clone()) {
            bail!(
                "{} and {} have the same stem '{stem}'",
                previous.display(),
                path.display()
            );
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, stem: &str, labels: &[u16]) {
        std::fs::create_dir_all(dir.join("images")).unwrap();
        std::fs::create_dir_all(dir.join("masks")).unwrap();
        image::RgbImage::new(8, 4)
            .save(dir.join("images").join(format!("{stem}.png")))
            .unwrap();
        let mask = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(8, 4, |x, _| {
            image::Luma([labels[x as usize % labels.len()]])
        });
        mask.save(dir.join("masks").join(format!("{stem}.png")))
            .unwrap();
    }

    #[test]
    fn instance_labels_become_objects_and_small_ones_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        // per row: labels 0,7,7,300,0,7,7,300 -> object 7 has 16 px, object 300 has 8 px
        write_pair(dir.path(), "a", &[0, 7, 7, 300]);
        write_pair(dir.path(), "b", &[0]);
        let split = load_folder(dir.path(), 0.5, 1).unwrap();
        assert_eq!(split.train.len() + split.val.len(), 2);
        let a = split
            .train
            .iter()
            .chain(&split.val)
            .find(|s| s.name() == "a.png")
            .unwrap();
        let (objects, skipped) = a.objects(1).unwrap();
        assert_eq!(
            objects.iter().map(|o| o.mask.area()).collect::<Vec<_>>(),
            vec![16, 8]
        );
        assert_eq!(skipped, 0);
        let (objects, skipped) = a.objects(10).unwrap();
        assert_eq!((objects.len(), skipped), (1, 1));
    }

    #[test]
    fn train_and_val_folders_are_used_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(&dir.path().join("train"), "a", &[1]);
        write_pair(&dir.path().join("train"), "b", &[1]);
        write_pair(&dir.path().join("val"), "c", &[1]);
        let split = load_folder(dir.path(), 0.9, 1).unwrap();
        assert_eq!(split.train.len(), 2);
        assert_eq!(split.val[0].name(), "c.png");
    }

    #[test]
    fn seeded_split_is_reproducible_and_disjoint() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..10 {
            write_pair(dir.path(), &format!("img{i}"), &[1]);
        }
        let a = load_folder(dir.path(), 0.3, 5).unwrap();
        let b = load_folder(dir.path(), 0.3, 5).unwrap();
        assert_eq!(a.val.len(), 3);
        let names = |s: &[Sample]| s.iter().map(Sample::name).collect::<Vec<_>>();
        assert_eq!(names(&a.val), names(&b.val));
        assert!(a
            .val
            .iter()
            .all(|v| !a.train.iter().any(|t| t.image == v.image)));
    }

    #[test]
    fn an_image_without_mask_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "a", &[1]);
        image::RgbImage::new(2, 2)
            .save(dir.path().join("images/orphan.png"))
            .unwrap();
        let err = format!("{:#}", load_folder(dir.path(), 0.2, 1).unwrap_err());
        assert!(err.contains("orphan.png"), "{err}");
    }
}
