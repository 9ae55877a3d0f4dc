//! Where a labeled set comes from (`[data]` of a training config, `--data` of `eval`):
//! a typed description, one variant per format with that format's own keys, and the one
//! opener that turns it into train and validation samples for every command.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::classes::ClassKey;
use super::dataset::{filter_samples, seeded_split, split_off, Filtered, Sample, Split};
use super::volumes::{load_volumes, SliceAxis, SliceSettings};
use super::{coco, folder};
use crate::error::{check_setting, Error, Result};
use crate::predict::image::IntensityScaling;

/// The dataset of a run and how its images are read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "FlatDataConfig", into = "FlatDataConfig")]
pub struct DataConfig {
    pub source: DataSource,
    /// Fraction of images (NIfTI: volumes) held out for validation when the source has
    /// no split of its own; in [0, 1).
    pub val_ratio: f64,
    pub split_seed: u64,
    /// Objects smaller than this many pixels are skipped (and counted in the log).
    pub min_area: usize,
    /// At most this many objects per image and step (randomly chosen each epoch).
    pub max_objects_per_image: usize,
    /// How 16-bit or float images become 8-bit (NIfTI: per volume).
    pub intensity: IntensityScaling,
    /// A held-out test set, evaluated once at the end of a run with the best checkpoint.
    pub test: Option<TestSplit>,
    /// The classes of a semantic run (`task = "semantic"`): label values or COCO
    /// category names (see [`super::classes::resolve_classes`]).
    pub classes: Vec<ClassKey>,
}

/// `data.test`: a fraction of the training images (NIfTI: volumes), or a dataset of its
/// own: a COCO file (`.json`, images from `data.images`) or a folder in the dataset's
/// format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TestSplit {
    Ratio(f64),
    Path(PathBuf),
}

/// An opened dataset: its samples (indexed, small objects and empty images left out)
/// and what was left out.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub split: Split,
    pub filtered: Filtered,
}

/// A dataset format and its keys.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    /// `images/` + `masks/` with matching stems, or `train/` and `val/` holding them.
    Folder { path: PathBuf },
    /// COCO instance annotations.
    Coco {
        annotations: PathBuf,
        /// The image folder; `images/` beside the annotation file when absent.
        images: Option<PathBuf>,
        /// A separate validation file; a seeded split of `annotations` when absent.
        val_annotations: Option<PathBuf>,
        /// Only these category names (all when empty).
        categories: Vec<String>,
    },
    /// NIfTI image and label volumes (`images/`, `labels/`), sliced into 2D samples.
    Nifti {
        path: PathBuf,
        slice_axis: SliceAxis,
        /// Fraction of the training slices with foreground that are used (seeded), in (0, 1].
        slice_fraction: f64,
        /// Category names of label values.
        label_names: BTreeMap<u16, String>,
        /// Where the slices are written (reused while volumes and settings agree).
        slice_dir: PathBuf,
    },
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: DataSource::Folder {
                path: PathBuf::new(),
            },
            val_ratio: 0.2,
            split_seed: 0,
            min_area: 16,
            max_objects_per_image: 8,
            intensity: IntensityScaling::Auto,
            test: None,
            classes: Vec::new(),
        }
    }
}

impl DataConfig {
    /// A folder dataset or COCO file given by path alone (`eval --data`): a `.json` file
    /// is COCO, anything else a folder.
    pub fn for_path(path: &Path, images: Option<PathBuf>, categories: Vec<String>) -> Self {
        let source = if path.extension().is_some_and(|e| e == "json") {
            DataSource::Coco {
                annotations: path.to_path_buf(),
                images,
                val_annotations: None,
                categories,
            }
        } else {
            DataSource::Folder {
                path: path.to_path_buf(),
            }
        };
        Self {
            source,
            val_ratio: 0.0,
            ..Self::default()
        }
    }

    /// Every setting against its valid range.
    pub fn validate(&self) -> Result<()> {
        let (key, path) = match &self.source {
            DataSource::Folder { path } => ("data.path", path),
            DataSource::Nifti { path, .. } => ("data.path", path),
            DataSource::Coco { annotations, .. } => ("data.annotations", annotations),
        };
        if path.as_os_str().is_empty() {
            return Err(Error::config(key, "is required"));
        }
        check_setting(
            "data.val_ratio",
            self.val_ratio,
            (0.0..1.0).contains(&self.val_ratio),
            "in [0, 1)",
        )?;
        check_setting(
            "data.max_objects_per_image",
            self.max_objects_per_image,
            self.max_objects_per_image >= 1,
            ">= 1",
        )?;
        if let Some(TestSplit::Ratio(ratio)) = self.test {
            check_setting(
                "data.test",
                ratio,
                (0.0..1.0).contains(&ratio) && ratio + self.val_ratio < 1.0,
                "in [0, 1), with data.val_ratio + data.test below 1",
            )?;
        }
        if let DataSource::Nifti { slice_fraction, .. } = self.source {
            check_setting(
                "data.slice_fraction",
                slice_fraction,
                slice_fraction > 0.0 && slice_fraction <= 1.0,
                "in (0, 1]",
            )?;
        }
        self.intensity
            .validate()
            .map_err(|e| Error::config("data.intensity", e))
    }

    /// How the indexed samples' image files are read: NIfTI slices are written as 8-bit
    /// PNG once `intensity`'s window is applied to the volume, so they are read as they
    /// are (a second window would distort them); other images through `intensity`.
    pub fn sample_intensity(&self) -> IntensityScaling {
        match self.source {
            DataSource::Nifti { .. } => IntensityScaling::Auto,
            _ => self.intensity,
        }
    }

    /// The path a user would name the dataset by (for logs and reports).
    pub fn location(&self) -> &Path {
        match &self.source {
            DataSource::Folder { path } | DataSource::Nifti { path, .. } => path,
            DataSource::Coco { annotations, .. } => annotations,
        }
    }

    /// The train, validation and test samples, indexed (no mask decoded), without the
    /// objects below `min_area` and the images left without objects.
    pub fn open(&self) -> Result<Dataset> {
        let mut split = self.index()?;
        let mut filtered = Filtered::default();
        for part in [&mut split.train, &mut split.val, &mut split.test] {
            filtered = filtered + filter_samples(part, self.min_area);
        }
        Ok(Dataset { split, filtered })
    }

    /// The samples with their train/validation/test parts.
    fn index(&self) -> Result<Split> {
        let mut split = self.index_train_val()?;
        match &self.test {
            None => {}
            Some(TestSplit::Ratio(ratio)) if !matches!(self.source, DataSource::Nifti { .. }) => {
                // a seed of its own, so that adding a test set keeps the validation set
                let (train, test) = split_off(
                    std::mem::take(&mut split.train),
                    *ratio,
                    self.split_seed ^ TEST_SEED,
                );
                split.train = train;
                split.test = test;
            }
            Some(TestSplit::Ratio(_)) => {} // NIfTI: split by volume, in index_train_val
            Some(TestSplit::Path(path)) => split.test = self.index_test_path(path)?,
        }
        Ok(split)
    }

    /// A test set of its own: a COCO file or a folder in the dataset's format.
    fn index_test_path(&self, path: &Path) -> Result<Vec<Sample>> {
        if path.extension().is_some_and(|e| e == "json") {
            let (images, categories) = match &self.source {
                DataSource::Coco {
                    annotations,
                    images,
                    categories,
                    ..
                } => (coco_images(annotations, images), categories.clone()),
                _ => (coco_images(path, &None), Vec::new()),
            };
            return coco::load_coco(path, &images, &categories);
        }
        let test = DataConfig {
            source: self.source.clone().at(path),
            val_ratio: 0.0,
            test: None,
            ..self.clone()
        };
        let split = test.index_train_val()?;
        Ok(split.train.into_iter().chain(split.val).collect())
    }

    fn index_train_val(&self) -> Result<Split> {
        match &self.source {
            DataSource::Folder { path } => {
                folder::load_folder(path, self.val_ratio, self.split_seed)
            }
            DataSource::Coco {
                annotations,
                images,
                val_annotations,
                categories,
            } => {
                let images = coco_images(annotations, images);
                let train = coco::load_coco(annotations, &images, categories)?;
                Ok(match val_annotations {
                    None => seeded_split(train, self.val_ratio, self.split_seed),
                    Some(val) => Split {
                        train,
                        val: coco::load_coco(val, &images, categories)?,
                        test: Vec::new(),
                    },
                })
            }
            DataSource::Nifti {
                path,
                slice_axis,
                slice_fraction,
                label_names,
                slice_dir,
            } => {
                let settings = SliceSettings {
                    axis: *slice_axis,
                    fraction: *slice_fraction,
                    intensity: self.intensity,
                    label_names: Arc::new(label_names.clone()),
                    seed: self.split_seed,
                };
                let test_ratio = match self.test {
                    Some(TestSplit::Ratio(r)) => r,
                    _ => 0.0,
                };
                load_volumes(
                    path,
                    [self.val_ratio, test_ratio],
                    self.split_seed,
                    &settings,
                    slice_dir,
                )
            }
        }
    }
}

/// Mixed into the split seed for the test split.
pub const TEST_SEED: u64 = 0x07e5_75e7;

/// A COCO file's image folder: `data.images`, else `images/` beside the file.
fn coco_images(annotations: &Path, images: &Option<PathBuf>) -> PathBuf {
    images.clone().unwrap_or_else(|| {
        annotations
            .parent()
            .unwrap_or(Path::new("."))
            .join("images")
    })
}

impl DataSource {
    /// A dataset of the same kind at `path`: a NIfTI folder with the same slicing, else a
    /// folder of images and masks.
    fn at(self, path: &Path) -> DataSource {
        match self {
            DataSource::Nifti {
                slice_axis,
                slice_fraction,
                label_names,
                slice_dir,
                ..
            } => DataSource::Nifti {
                path: path.to_path_buf(),
                slice_axis,
                slice_fraction,
                label_names,
                slice_dir,
            },
            _ => DataSource::Folder {
                path: path.to_path_buf(),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    #[default]
    Folder,
    Coco,
    Nifti,
}

impl DataFormat {
    fn name(self) -> &'static str {
        match self {
            DataFormat::Folder => "folder",
            DataFormat::Coco => "coco",
            DataFormat::Nifti => "nifti",
        }
    }
}

/// `[data]` as written in TOML: one flat table, each format's keys optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlatDataConfig {
    #[serde(default)]
    format: DataFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    images: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    val_annotations: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    categories: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    val_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    split_seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_area: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_objects_per_image: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    intensity: Option<IntensityScaling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slice_axis: Option<SliceAxis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slice_fraction: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label_names: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slice_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    test: Option<TestSplit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    classes: Vec<ClassKey>,
}

impl TryFrom<FlatDataConfig> for DataConfig {
    type Error = Error;

    fn try_from(flat: FlatDataConfig) -> Result<Self> {
        let format = flat.format;
        let foreign = |key: &str, given: bool, owner: DataFormat| -> Result<()> {
            if given {
                return Err(Error::config(
                    format!("data.{key}"),
                    format!(
                        "applies to format = \"{}\" only, and this dataset is format = \"{}\"",
                        owner.name(),
                        format.name()
                    ),
                ));
            }
            Ok(())
        };
        let required = |key: &str, value: Option<PathBuf>| -> Result<PathBuf> {
            value.filter(|p| !p.as_os_str().is_empty()).ok_or_else(|| {
                Error::config(
                    format!("data.{key}"),
                    format!("is required for {} datasets", format.name()),
                )
            })
        };
        let coco_keys = [
            ("annotations", flat.annotations.is_some()),
            ("images", flat.images.is_some()),
            ("val_annotations", flat.val_annotations.is_some()),
            ("categories", flat.categories.is_some()),
        ];
        let nifti_keys = [
            ("slice_axis", flat.slice_axis.is_some()),
            ("slice_fraction", flat.slice_fraction.is_some()),
            ("label_names", flat.label_names.is_some()),
            ("slice_dir", flat.slice_dir.is_some()),
        ];
        if format != DataFormat::Coco {
            for (key, given) in coco_keys {
                foreign(key, given, DataFormat::Coco)?;
            }
        }
        if format != DataFormat::Nifti {
            for (key, given) in nifti_keys {
                foreign(key, given, DataFormat::Nifti)?;
            }
        }
        let source = match format {
            DataFormat::Folder => DataSource::Folder {
                path: required("path", flat.path)?,
            },
            DataFormat::Coco => {
                foreign("path", flat.path.is_some(), DataFormat::Folder)?;
                DataSource::Coco {
                    annotations: required("annotations", flat.annotations)?,
                    images: flat.images,
                    val_annotations: flat.val_annotations,
                    categories: flat.categories.unwrap_or_default(),
                }
            }
            DataFormat::Nifti => DataSource::Nifti {
                path: required("path", flat.path)?,
                slice_axis: flat.slice_axis.unwrap_or_default(),
                slice_fraction: flat.slice_fraction.unwrap_or(1.0),
                label_names: parse_label_names(flat.label_names.unwrap_or_default())?,
                slice_dir: flat.slice_dir.unwrap_or_else(|| "cache/slices".into()),
            },
        };
        let defaults = DataConfig::default();
        Ok(DataConfig {
            source,
            val_ratio: flat.val_ratio.unwrap_or(defaults.val_ratio),
            split_seed: flat.split_seed.unwrap_or(defaults.split_seed),
            min_area: flat.min_area.unwrap_or(defaults.min_area),
            max_objects_per_image: flat
                .max_objects_per_image
                .unwrap_or(defaults.max_objects_per_image),
            intensity: flat.intensity.unwrap_or(defaults.intensity),
            test: flat.test,
            classes: flat.classes,
        })
    }
}

/// `{ 1 = "liver" }`: TOML keys are strings; each must be a label value.
fn parse_label_names(names: BTreeMap<String, String>) -> Result<BTreeMap<u16, String>> {
    names
        .into_iter()
        .map(|(key, name)| {
            key.trim().parse::<u16>().map(|v| (v, name)).map_err(|_| {
                Error::config(
                    "data.label_names",
                    format!("key '{key}' is not a label value (0..65535)"),
                )
            })
        })
        .collect()
}

impl From<DataConfig> for FlatDataConfig {
    fn from(c: DataConfig) -> Self {
        let mut flat = FlatDataConfig {
            val_ratio: Some(c.val_ratio),
            split_seed: Some(c.split_seed),
            min_area: Some(c.min_area),
            max_objects_per_image: Some(c.max_objects_per_image),
            intensity: Some(c.intensity),
            test: c.test,
            classes: c.classes,
            ..FlatDataConfig::default()
        };
        match c.source {
            DataSource::Folder { path } => {
                flat.format = DataFormat::Folder;
                flat.path = Some(path);
            }
            DataSource::Coco {
                annotations,
                images,
                val_annotations,
                categories,
            } => {
                flat.format = DataFormat::Coco;
                flat.annotations = Some(annotations);
                flat.images = images;
                flat.val_annotations = val_annotations;
                flat.categories = Some(categories);
            }
            DataSource::Nifti {
                path,
                slice_axis,
                slice_fraction,
                label_names,
                slice_dir,
            } => {
                flat.format = DataFormat::Nifti;
                flat.path = Some(path);
                flat.slice_axis = Some(slice_axis);
                flat.slice_fraction = Some(slice_fraction);
                flat.label_names = Some(
                    label_names
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                );
                flat.slice_dir = Some(slice_dir);
            }
        }
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DataConfig, String> {
        toml::from_str::<DataConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn each_format_takes_its_own_keys() {
        let folder = parse("path = \"d\"\n").unwrap();
        assert_eq!(folder.source, DataSource::Folder { path: "d".into() });
        let coco = parse("format = \"coco\"\nannotations = \"a.json\"\n").unwrap();
        assert!(matches!(
            coco.source,
            DataSource::Coco {
                images: None,
                val_annotations: None,
                ..
            }
        ));
        let err = parse("path = \"d\"\nslice_axis = \"x\"\n").unwrap_err();
        assert!(
            err.contains("data.slice_axis") && err.contains("nifti"),
            "{err}"
        );
        let err = parse("format = \"coco\"\n").unwrap_err();
        assert!(
            err.contains("data.annotations") && err.contains("required"),
            "{err}"
        );
        let err = parse("format = \"nifti\"\npath = \"v\"\nlabel_names = { x = \"liver\" }\n")
            .unwrap_err();
        assert!(err.contains("label_names") && err.contains("'x'"), "{err}");
    }

    #[test]
    fn a_config_reads_back_as_written() {
        for text in [
            "path = \"d\"\nmin_area = 3\n",
            "format = \"coco\"\nannotations = \"a.json\"\nimages = \"i\"\ncategories = [\"cell\"]\n",
            "format = \"nifti\"\npath = \"v\"\nlabel_names = { 1 = \"liver\" }\nslice_fraction = 0.5\n",
        ] {
            let config = parse(text).unwrap();
            let written = toml::to_string(&config).unwrap();
            assert_eq!(parse(&written).unwrap(), config, "{written}");
        }
    }
}
