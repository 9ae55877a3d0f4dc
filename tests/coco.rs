//! COCO polygons and RLEs decode to the masks `pycocotools` makes
//! (fixtures from `tests/reference/make_coco_fixtures.py`).

mod common;

use common::{fixtures_dir, load_expected_from};
use samtune::data::coco::load_coco;
use samtune::data::Annotations;

#[test]
fn every_annotation_decodes_like_pycocotools() {
    let dir = fixtures_dir().join("coco");
    let expected = load_expected_from(&dir.join("expected_masks.safetensors"));
    let samples = load_coco(&dir.join("annotations.json"), &dir.join("images"), &[]).unwrap();
    let mut checked = 0;
    for sample in &samples {
        let Annotations::Coco { objects, .. } = &sample.annotations else {
            panic!("COCO sample")
        };
        let (decoded, skipped) = sample.objects(1).unwrap();
        assert_eq!(skipped, 0);
        for (object, coco) in decoded.iter().zip(objects) {
            let reference = &expected[&format!("ann{}", coco.annotation_id)];
            assert_eq!(reference.shape, vec![object.mask.height, object.mask.width]);
            let ours: Vec<f32> = object.mask.data.iter().map(|&v| v as f32).collect();
            let differ = ours
                .iter()
                .zip(&reference.values)
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(
                differ, 0,
                "annotation {}: {differ} pixels differ from pycocotools",
                coco.annotation_id
            );
            checked += 1;
        }
    }
    assert_eq!(checked, expected.len());
}

#[test]
fn categories_filter_and_min_area_skip() {
    let dir = fixtures_dir().join("coco");
    let nuclei = load_coco(
        &dir.join("annotations.json"),
        &dir.join("images"),
        &["nucleus".to_string()],
    )
    .unwrap();
    let total: usize = nuclei.iter().map(|s| s.objects(1).unwrap().0.len()).sum();
    assert_eq!(total, 2);
    assert!(nuclei
        .iter()
        .flat_map(|s| s.objects(1).unwrap().0)
        .all(|o| o.category.as_deref() == Some("nucleus")));
    let all = load_coco(&dir.join("annotations.json"), &dir.join("images"), &[]).unwrap();
    let skipped: usize = all.iter().map(|s| s.objects(16).unwrap().1).sum();
    assert_eq!(skipped, 1, "the 2x2 object is below 16 px");
    let err = load_coco(
        &dir.join("annotations.json"),
        &dir.join("images"),
        &["dog".to_string()],
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("dog"));
}

#[test]
fn semantic_class_maps_paint_each_category_and_leave_the_rest_background() {
    use samtune::predict::semantic::{Classes, SemanticClass};
    let dir = fixtures_dir().join("coco");
    let samples = load_coco(&dir.join("annotations.json"), &dir.join("images"), &[]).unwrap();
    // nucleus first: head order follows data.classes, not the file's category ids
    let classes = Classes(vec![
        SemanticClass {
            name: "nucleus".into(),
            value: 1,
        },
        SemanticClass {
            name: "cell".into(),
            value: 2,
        },
    ]);
    let table = classes.index_of_values();
    let mut painted = 0;
    for sample in &samples {
        let map = sample.class_map(&classes, &table).unwrap();
        let objects = sample.decode_objects().unwrap();
        for (p, &class) in map.classes.iter().enumerate() {
            // later annotations are on top: the class of the last object holding the pixel
            let expected = objects
                .iter()
                .rev()
                .find(|o| o.mask.data[p] != 0)
                .map_or(0, |o| {
                    if o.category.as_deref() == Some("nucleus") {
                        1
                    } else {
                        2
                    }
                });
            assert_eq!(class, expected, "{} pixel {p}", sample.name());
            painted += (class != 0) as usize;
        }
    }
    assert!(painted > 0);
}
