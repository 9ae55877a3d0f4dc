//! Folder datasets: `images/` and `masks/` with matching file stems, optionally under
//! `train/` and `val/`. Indexing reads each image's header and each mask once, to check
//! that they line up and to count its label values; the counts are kept in
//! `.samtune-index.json` beside the folders (when writable), so the next run reads no mask.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::dataset::{
    check_same_size, count_labels, image_size, is_image, read_labels, seeded_split, Annotations,
    LabelArea, Sample, Split,
};
use crate::error::{bail, Context, Result};
use crate::fsutil::{write_bytes_atomic, FileStamp};

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
        return Ok(Split {
            train,
            val,
            test: Vec::new(),
        });
    }
    Ok(seeded_split(pairs(root)?, val_ratio, seed))
}

/// The samples of one `images/` + `masks/` pair of folders, indexed.
pub fn pairs(dir: &Path) -> Result<Vec<Sample>> {
    let images = by_stem(&dir.join("images"))?;
    let masks = by_stem(&dir.join("masks"))?;
    let mut matched = Vec::new();
    let mut unmatched = Vec::new();
    for (stem, image) in &images {
        match masks.get(stem) {
            Some(mask) => matched.push((image.clone(), mask.clone())),
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
    if matched.is_empty() {
        bail!("no images in {}", dir.join("images").display());
    }
    let mut cache = LabelIndex::read(dir);
    let indexed: Vec<(Sample, Option<(String, MaskEntry)>)> = matched
        .par_iter()
        .map(|(image, mask)| index_pair(image, mask, &cache))
        .collect::<Result<_>>()?;
    let mut samples = Vec::with_capacity(indexed.len());
    let mut changed = false;
    for (sample, new_entry) in indexed {
        if let Some((name, entry)) = new_entry {
            cache.masks.insert(name, entry);
            changed = true;
        }
        samples.push(sample);
    }
    if changed {
        cache.write(dir);
    }
    Ok(samples)
}

/// One image and its mask: their sizes checked, the mask's labels counted (or taken from
/// the index file when the mask is unchanged). The new index entry, when one was made.
fn index_pair(
    image: &Path,
    mask: &Path,
    cache: &LabelIndex,
) -> Result<(Sample, Option<(String, MaskEntry)>)> {
    let size = image_size(image)?;
    let name = file_name(mask);
    let stamp = FileStamp::of(mask)?;
    let (entry, new) = match cache.masks.get(&name) {
        Some(entry) if entry.stamp == stamp => (entry.clone(), false),
        _ => {
            let (values, mask_size) = read_labels(mask)?;
            let entry = MaskEntry {
                stamp,
                size: mask_size,
                labels: count_labels(&values),
            };
            (entry, true)
        }
    };
    check_same_size(mask, entry.size, image, size)?;
    let sample = Sample {
        image: image.to_path_buf(),
        size,
        annotations: Annotations::LabelImage {
            path: mask.to_path_buf(),
            labels: entry.labels.clone(),
        },
    };
    Ok((sample, new.then_some((name, entry))))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MaskEntry {
    stamp: FileStamp,
    /// `[height, width]`
    size: [usize; 2],
    labels: Vec<LabelArea>,
}

/// `.samtune-index.json`: the label counts of a folder's masks.
#[derive(Debug, Default, Serialize, Deserialize)]
struct LabelIndex {
    version: u32,
    masks: BTreeMap<String, MaskEntry>,
}

const INDEX_FILE: &str = ".samtune-index.json";
// 2: 8-bit label values as stored (1 was 257)
const INDEX_VERSION: u32 = 2;

impl LabelIndex {
    /// The folder's index file; empty when there is none or it is of another version.
    fn read(dir: &Path) -> Self {
        std::fs::read(dir.join(INDEX_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<LabelIndex>(&bytes).ok())
            .filter(|index| index.version == INDEX_VERSION)
            .unwrap_or_default()
    }

    /// Best effort: a read-only dataset is indexed again next time.
    fn write(&self, dir: &Path) {
        let index = LabelIndex {
            version: INDEX_VERSION,
            masks: self.masks.clone(),
        };
        let written = serde_json::to_vec(&index)
            .map_err(crate::error::Error::from)
            .and_then(|bytes| write_bytes_atomic(&dir.join(INDEX_FILE), &bytes));
        if let Err(e) = written {
            eprintln!(
                "note: the mask index is not kept ({e}); the next run counts the labels again"
            );
        }
    }
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
