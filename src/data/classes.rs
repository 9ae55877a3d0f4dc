//! The classes of a semantic (prompt-free, multi-class) run: `data.classes` resolved
//! against the dataset's format, and each image's class map (the output index of every
//! pixel) decoded when a batch or an evaluation needs it.

use serde::{Deserialize, Serialize};

use super::dataset::{read_labels, Annotations, Sample};
use super::source::{DataConfig, DataSource};
use crate::error::{Error, Result};
use crate::predict::semantic::{Classes, LabelMap, SemanticClass};

/// The most classes a head may have (output indexes are bytes, background included).
pub const MAX_CLASSES: usize = 254;

/// One entry of `data.classes`: a label value (label images, NIfTI labels), a COCO
/// category name, or a label value with its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClassKey {
    Value(u16),
    Name(String),
    Named { value: u16, name: String },
}

/// `data.classes` as the classes of a head. Label-image and NIfTI datasets take label
/// values (named by `data.label_names` for NIfTI; every named value when `data.classes`
/// is empty); COCO takes category names (`data.categories` when empty), numbered 1, 2, ...
pub fn resolve_classes(config: &DataConfig) -> Result<Classes> {
    let keys = &config.classes;
    let classes: Vec<SemanticClass> = match &config.source {
        DataSource::Coco { categories, .. } => {
            let names: Vec<String> = if keys.is_empty() {
                categories.clone()
            } else {
                keys.iter()
                    .map(|k| match k {
                        ClassKey::Name(name) => Ok(name.clone()),
                        other => Err(Error::config(
                            "data.classes",
                            format!("{other:?}: a COCO dataset's classes are category names"),
                        )),
                    })
                    .collect::<Result<_>>()?
            };
            names
                .into_iter()
                .enumerate()
                .map(|(i, name)| SemanticClass {
                    name,
                    value: i as u16 + 1,
                })
                .collect()
        }
        source => {
            let names = match source {
                DataSource::Nifti { label_names, .. } => label_names.clone(),
                _ => Default::default(),
            };
            let name_of = |value: u16| {
                names
                    .get(&value)
                    .cloned()
                    .unwrap_or_else(|| format!("label {value}"))
            };
            if keys.is_empty() {
                names
                    .keys()
                    .map(|&value| SemanticClass {
                        name: name_of(value),
                        value,
                    })
                    .collect()
            } else {
                keys.iter()
                    .map(|k| match k {
                        ClassKey::Value(value) => Ok(SemanticClass {
                            name: name_of(*value),
                            value: *value,
                        }),
                        ClassKey::Named { value, name } => Ok(SemanticClass {
                            name: name.clone(),
                            value: *value,
                        }),
                        ClassKey::Name(name) => Err(Error::config(
                            "data.classes",
                            format!(
                                "'{name}': label images take label values (1, or {{ value = 1, name = \"{name}\" }})"
                            ),
                        )),
                    })
                    .collect::<Result<_>>()?
            }
        }
    };
    check_classes(&classes)?;
    Ok(Classes(classes))
}

fn check_classes(classes: &[SemanticClass]) -> Result<()> {
    if classes.is_empty() {
        return Err(Error::config(
            "data.classes",
            "is required with task = \"semantic\" (label values, or COCO category names)",
        ));
    }
    if classes.len() > MAX_CLASSES {
        return Err(Error::config(
            "data.classes",
            format!("{} classes; at most {MAX_CLASSES}", classes.len()),
        ));
    }
    for (i, class) in classes.iter().enumerate() {
        if class.value == 0 {
            return Err(Error::config(
                "data.classes",
                "label value 0 is the background, not a class",
            ));
        }
        if let Some(twin) = classes[..i]
            .iter()
            .find(|c| c.value == class.value || c.name == class.name)
        {
            return Err(Error::config(
                "data.classes",
                format!(
                    "'{}' ({}) appears twice (as '{}' ({}))",
                    class.name, class.value, twin.name, twin.value
                ),
            ));
        }
    }
    Ok(())
}

impl Sample {
    /// The image's class map: each pixel's class (`index_of_values` of its label value,
    /// or of its COCO category; later annotations on top), background elsewhere.
    pub fn class_map(&self, classes: &Classes, index_of_values: &[u8]) -> Result<LabelMap> {
        let [height, width] = self.size;
        let map = match &self.annotations {
            Annotations::LabelImage { path, .. } | Annotations::SemanticLabels { path, .. } => {
                let (values, size) = read_labels(path)?;
                super::dataset::check_same_size(path, size, &self.image, self.size)?;
                values
                    .iter()
                    .map(|&v| index_of_values[v as usize])
                    .collect()
            }
            Annotations::Coco { .. } => {
                let mut map = vec![0u8; height * width];
                for object in self.decode_objects()? {
                    let index = object
                        .category
                        .as_deref()
                        .and_then(|c| (1..=classes.len()).find(|&k| classes.name(k) == c));
                    if let Some(k) = index {
                        for (out, &inside) in map.iter_mut().zip(&object.mask.data) {
                            if inside != 0 {
                                *out = k as u8;
                            }
                        }
                    }
                }
                map
            }
        };
        Ok(LabelMap {
            width,
            height,
            classes: map,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn folder(classes: Vec<ClassKey>) -> DataConfig {
        DataConfig {
            source: DataSource::Folder {
                path: PathBuf::from("d"),
            },
            classes,
            ..DataConfig::default()
        }
    }

    #[test]
    fn label_values_resolve_with_names_and_mistakes_name_the_key() {
        let c = resolve_classes(&folder(vec![
            ClassKey::Value(2),
            ClassKey::Named {
                value: 5,
                name: "tumour".into(),
            },
        ]))
        .unwrap();
        assert_eq!((c.name(1), c.value(1)), ("label 2", 2));
        assert_eq!((c.name(2), c.value(2)), ("tumour", 5));
        for (keys, needle) in [
            (vec![], "is required"),
            (vec![ClassKey::Value(0)], "background"),
            (vec![ClassKey::Value(3), ClassKey::Value(3)], "twice"),
            (vec![ClassKey::Name("liver".into())], "label values"),
        ] {
            let err = resolve_classes(&folder(keys)).unwrap_err().to_string();
            assert!(
                err.contains("data.classes") && err.contains(needle),
                "{err}"
            );
        }
    }

    #[test]
    fn coco_classes_are_category_names_numbered_from_one() {
        let config = DataConfig {
            source: DataSource::Coco {
                annotations: "a.json".into(),
                images: None,
                val_annotations: None,
                categories: vec!["cat".into(), "dog".into()],
            },
            ..DataConfig::default()
        };
        let c = resolve_classes(&config).unwrap();
        assert_eq!((c.len(), c.name(2), c.value(2)), (2, "dog", 2));
    }
}
