//! The helpers of the automatic mask generator (`segment_anything/utils/amg.py`):
//! point grids, crop boxes, stability scores, mask boxes, box NMS (torchvision's
//! `batched_nms` with one category) and small-region removal (OpenCV's 8-connected
//! components, as `remove_small_regions` uses them).

use crate::data::BinaryMask;

/// `build_point_grid`: `n x n` points centred in the cells of a unit square, row by row
/// (x fastest), with `np.linspace`'s arithmetic.
pub fn build_point_grid(n_per_side: usize) -> Vec<[f64; 2]> {
    let offset = 1.0 / (2.0 * n_per_side as f64);
    let side = linspace(offset, 1.0 - offset, n_per_side);
    side.iter()
        .flat_map(|&y| side.iter().map(move |&x| [x, y]))
        .collect()
}

/// `np.linspace(start, stop, num)`: `start + i * step`, the last value exactly `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut values: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = values.last_mut() {
        *last = stop;
    }
    values
}

/// `build_all_layer_point_grids`: layer `i` has `n / scale^i` points per side.
pub fn build_all_layer_point_grids(
    n_per_side: usize,
    n_layers: usize,
    scale_per_layer: usize,
) -> Vec<Vec<[f64; 2]>> {
    (0..=n_layers)
        .map(|i| {
            let n = (n_per_side as f64 / (scale_per_layer as f64).powi(i as i32)) as usize;
            build_point_grid(n)
        })
        .collect()
}

/// A crop `[x0, y0, x1, y1]` (pixels, exclusive end) and its layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub xyxy: [usize; 4],
    pub layer: usize,
}

impl CropBox {
    pub fn width(&self) -> usize {
        self.xyxy[2] - self.xyxy[0]
    }
    pub fn height(&self) -> usize {
        self.xyxy[3] - self.xyxy[1]
    }
    /// `[x, y, w, h]`, the output format.
    pub fn xywh(&self) -> [usize; 4] {
        [self.xyxy[0], self.xyxy[1], self.width(), self.height()]
    }
}

/// `generate_crop_boxes`: the whole image, then `(2^(i+1))^2` overlapping crops in layer
/// `i + 1` (x0-major order, as `itertools.product(x0s, y0s)`).
pub fn generate_crop_boxes(
    height: usize,
    width: usize,
    n_layers: usize,
    overlap_ratio: f64,
) -> Vec<CropBox> {
    let mut boxes = vec![CropBox {
        xyxy: [0, 0, width, height],
        layer: 0,
    }];
    let short_side = height.min(width) as f64;
    let crop_len = |orig_len: usize, n_crops: usize, overlap: usize| {
        ((overlap * (n_crops - 1) + orig_len) as f64 / n_crops as f64).ceil() as usize
    };
    for layer in 0..n_layers {
        let n_crops_per_side = 1usize << (layer + 1);
        let overlap = (overlap_ratio * short_side * (2.0 / n_crops_per_side as f64)) as usize;
        let crop_w = crop_len(width, n_crops_per_side, overlap);
        let crop_h = crop_len(height, n_crops_per_side, overlap);
        for i in 0..n_crops_per_side {
            let x0 = (crop_w - overlap) * i;
            for j in 0..n_crops_per_side {
                let y0 = (crop_h - overlap) * j;
                boxes.push(CropBox {
                    xyxy: [x0, y0, (x0 + crop_w).min(width), (y0 + crop_h).min(height)],
                    layer: layer + 1,
                });
            }
        }
    }
    boxes
}

/// `calculate_stability_score`: the IoU of the masks thresholded at `threshold ± offset`
/// (NaN when even the low threshold selects nothing, which every filter then rejects).
pub fn stability_score(logits: &[f32], threshold: f32, offset: f32) -> f32 {
    let high = threshold + offset;
    let low = threshold - offset;
    let (mut intersection, mut union) = (0u32, 0u32);
    for &v in logits {
        intersection += (v > high) as u32;
        union += (v > low) as u32;
    }
    intersection as f32 / union as f32
}

/// `batched_mask_to_box` for one mask: `[x0, y0, x1, y1]` with inclusive ends, all zero
/// for an empty mask.
pub fn mask_to_box(mask: &BinaryMask) -> [usize; 4] {
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..mask.height {
        let row = &mask.data[y * mask.width..(y + 1) * mask.width];
        if let (Some(first), Some(last)) = (
            row.iter().position(|&v| v != 0),
            row.iter().rposition(|&v| v != 0),
        ) {
            x0 = x0.min(first);
            x1 = x1.max(last);
            y0 = y0.min(y);
            y1 = y;
        }
    }
    if x0 == usize::MAX {
        [0, 0, 0, 0]
    } else {
        [x0, y0, x1, y1]
    }
}

/// `is_box_near_crop_edge`: the box (in crop coordinates) comes within 20 px of an edge
/// of the crop that is not also an edge of the image.
pub fn is_box_near_crop_edge(boxes: [usize; 4], crop: &CropBox, image: [usize; 4]) -> bool {
    const ATOL: f32 = 20.0;
    let uncropped = [
        boxes[0] + crop.xyxy[0],
        boxes[1] + crop.xyxy[1],
        boxes[2] + crop.xyxy[0],
        boxes[3] + crop.xyxy[1],
    ];
    (0..4).any(|i| {
        let close = |a: usize, b: usize| (a as f32 - b as f32).abs() <= ATOL;
        close(uncropped[i], crop.xyxy[i]) && !close(uncropped[i], image[i])
    })
}

/// torchvision's box IoU in float32 (`(x1 - x0) * (y1 - y0)` areas, as `box_area`).
fn box_iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let area = |b: [f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    inter / (area(a) + area(b) - inter)
}

/// `batched_nms` with a single category: indices kept, by decreasing score (ties keep
/// their input order); a box is dropped when its IoU with a kept one exceeds `threshold`.
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], threshold: f64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (rank, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        for &j in &order[rank + 1..] {
            // torchvision compares the float IoU with the double threshold
            if !suppressed[j] && box_iou(boxes[i], boxes[j]) as f64 > threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// 8-connected components of the set pixels, labelled 1.. in raster order of their first
/// pixel (OpenCV's order); returns the label image (0: unset) and each label's size.
fn connected_components(pixels: &[bool], width: usize, height: usize) -> (Vec<u32>, Vec<usize>) {
    let mut labels = vec![0u32; pixels.len()];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..pixels.len() {
        if !pixels[start] || labels[start] != 0 {
            continue;
        }
        let label = sizes.len() as u32 + 1;
        labels[start] = label;
        stack.push(start);
        let mut size = 0;
        while let Some(p) = stack.pop() {
            size += 1;
            let (x, y) = ((p % width) as isize, (p / width) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= width as isize || ny >= height as isize {
                        continue;
                    }
                    let q = ny as usize * width + nx as usize;
                    if pixels[q] && labels[q] == 0 {
                        labels[q] = label;
                        stack.push(q);
                    }
                }
            }
        }
        sizes.push(size);
    }
    (labels, sizes)
}

/// Which kind of small region [`remove_small_regions`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionMode {
    /// Fill background components smaller than the threshold.
    Holes,
    /// Drop foreground components smaller than the threshold (the largest one stays if
    /// all are small).
    Islands,
}

/// `remove_small_regions`: the mask without holes or islands smaller than `area_thresh`,
/// and whether anything changed.
pub fn remove_small_regions(
    mask: &BinaryMask,
    area_thresh: f64,
    mode: RegionMode,
) -> (BinaryMask, bool) {
    let holes = mode == RegionMode::Holes;
    let working: Vec<bool> = mask.data.iter().map(|&v| (v != 0) != holes).collect();
    let (labels, sizes) = connected_components(&working, mask.width, mask.height);
    let small: Vec<bool> = sizes.iter().map(|&s| (s as f64) < area_thresh).collect();
    if !small.contains(&true) {
        return (mask.clone(), false);
    }
    // label 0 is the complement of `working`; `fill[l]`: label l is set in the output
    let mut fill = vec![false; sizes.len() + 1];
    if holes {
        fill[0] = true;
        for (i, &s) in small.iter().enumerate() {
            fill[i + 1] = s;
        }
    } else {
        for (i, &s) in small.iter().enumerate() {
            fill[i + 1] = !s;
        }
        if !fill.contains(&true) {
            let largest = (0..sizes.len())
                .max_by(|&a, &b| sizes[a].cmp(&sizes[b]).then(b.cmp(&a)))
                .unwrap_or(0);
            fill[largest + 1] = true;
        }
    }
    let data = labels.iter().map(|&l| fill[l as usize] as u8).collect();
    (
        BinaryMask {
            width: mask.width,
            height: mask.height,
            data,
        },
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(rows: &[&str]) -> BinaryMask {
        BinaryMask::from_fn(rows[0].len(), rows.len(), |x, y| {
            rows[y].as_bytes()[x] == b'#'
        })
    }

    #[test]
    fn point_grids_match_numpy() {
        // np.linspace(1/8, 7/8, 4)
        let grid = build_point_grid(4);
        assert_eq!(grid.len(), 16);
        assert_eq!(grid[0], [0.125, 0.125]);
        assert_eq!(grid[1], [0.375, 0.125]);
        assert_eq!(grid[15], [0.875, 0.875]);
        assert_eq!(build_point_grid(1), vec![[0.5, 0.5]]);
        let layers = build_all_layer_point_grids(32, 2, 2);
        let sizes: Vec<usize> = layers.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![32 * 32, 16 * 16, 8 * 8]);
    }

    #[test]
    fn crop_boxes_match_the_official_layout() {
        // generate_crop_boxes((600, 800), 1, 512 / 1500) in the official code
        let boxes = generate_crop_boxes(600, 800, 1, 512.0 / 1500.0);
        let xyxy: Vec<[usize; 4]> = boxes.iter().map(|b| b.xyxy).collect();
        assert_eq!(
            xyxy,
            vec![
                [0, 0, 800, 600],
                [0, 0, 502, 402],
                [0, 198, 502, 600],
                [298, 0, 800, 402],
                [298, 198, 800, 600],
            ]
        );
        assert_eq!(boxes[4].layer, 1);
        assert_eq!(boxes[4].xywh(), [298, 198, 502, 402]);
    }

    #[test]
    fn stability_is_the_iou_of_two_thresholds() {
        let logits = [-2.0, -0.5, 0.5, 1.5, 3.0];
        // > 1: {1.5, 3.0}; > -1: {-0.5, 0.5, 1.5, 3.0}
        assert_eq!(stability_score(&logits, 0.0, 1.0), 0.5);
        assert!(stability_score(&[-5.0], 0.0, 1.0).is_nan());
    }

    #[test]
    fn boxes_are_inclusive_and_empty_masks_are_zero() {
        let m = mask(&["....", ".##.", "..#.", "...."]);
        assert_eq!(mask_to_box(&m), [1, 1, 2, 2]);
        assert_eq!(mask_to_box(&BinaryMask::empty(3, 3)), [0, 0, 0, 0]);
    }

    #[test]
    fn near_crop_edges_but_not_image_edges() {
        let crop = CropBox {
            xyxy: [100, 0, 300, 200],
            layer: 1,
        };
        let image = [0, 0, 300, 400];
        // left edge at crop x 5 -> image x 105, 5 px from the crop's left edge
        assert!(is_box_near_crop_edge([5, 50, 60, 90], &crop, image));
        // touching the crop's right edge, which is also the image's
        assert!(!is_box_near_crop_edge([60, 50, 199, 90], &crop, image));
        // top edge is the image's too; bottom at 190 is near the crop's bottom (200)
        assert!(is_box_near_crop_edge([60, 0, 90, 190], &crop, image));
        assert!(!is_box_near_crop_edge([60, 30, 90, 150], &crop, image));
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes_in_score_order() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 10.0, 10.0], // IoU 0.81 with the first
            [20.0, 20.0, 30.0, 30.0],
            [0.0, 0.0, 10.0, 10.0],
        ];
        let scores = [0.8, 0.9, 0.5, 0.9];
        // 1 and 3 tie at 0.9: input order; 3 overlaps 1 (0.81 > 0.7), 0 too
        assert_eq!(nms(&boxes, &scores, 0.7), vec![1, 2]);
        assert_eq!(nms(&boxes, &scores, 0.9), vec![1, 3, 2]);
    }

    #[test]
    fn small_holes_are_filled_and_small_islands_dropped() {
        let m = mask(&[
            "#####...", //
            "#.###...", "#####..#", "........",
        ]);
        let (filled, changed) = remove_small_regions(&m, 2.0, RegionMode::Holes);
        assert!(changed);
        assert!(filled.get(1, 1) && filled.area() == m.area() + 1);
        let (cleaned, changed) = remove_small_regions(&m, 2.0, RegionMode::Islands);
        assert!(changed && !cleaned.get(7, 2) && cleaned.area() == m.area() - 1);
        let (same, changed) = remove_small_regions(&m, 1.0, RegionMode::Islands);
        assert!(!changed && same == m);
        // every island small: the largest is kept
        let (largest, _) = remove_small_regions(&m, 100.0, RegionMode::Islands);
        assert_eq!(largest.area(), m.area() - 1);
        // diagonal neighbours are connected (8-connectivity)
        let diagonal = mask(&["#..", ".#.", "..#"]);
        let (kept, changed) = remove_small_regions(&diagonal, 3.0, RegionMode::Islands);
        assert!(!changed && kept == diagonal);
    }
}
