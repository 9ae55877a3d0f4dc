//! Reading images of any kind (RGB, RGBA, grayscale; 8 or 16 bit; float TIFF) as the
//! 8-bit RGB the official preprocessing expects.

use std::path::Path;

use crate::error::{bail, Context, Result};
use image::{DynamicImage, RgbImage};

/// How deeper-than-8-bit intensities become 8-bit.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum IntensityScaling {
    /// 8-bit images as they are; 16-bit and float images per-image min-max.
    #[default]
    Auto,
    /// Per image: the darkest value -> 0, the brightest -> 255.
    MinMax,
    /// The type's full range: 16-bit `v * 255 / 65535`, float `[0, 1]`.
    Full,
    /// A fixed window `[low, high]` in the image's own units (CT Hounsfield units in a
    /// signed or offset 16-bit image, for instance), clipped outside.
    Window { low: f64, high: f64 },
    /// CT soft tissue: window 400 HU at level 40 (-160..240 HU).
    CtSoftTissue,
    /// CT lung: window 1500 HU at level -600 (-1350..150 HU).
    CtLung,
    /// CT bone: window 1800 HU at level 400 (-500..1300 HU).
    CtBone,
    /// Per image (per volume for NIfTI): the `low` and `high` percentiles -> 0 and 255,
    /// the usual scaling for MR, whose units are arbitrary.
    Percentile { low: f64, high: f64 },
}

impl IntensityScaling {
    /// Checks the bounds of `window` and `percentile`.
    pub fn validate(self) -> Result<()> {
        match self {
            Self::Window { low, high } if !(low.is_finite() && high.is_finite() && low < high) => {
                bail!("window {low},{high}: needs finite LOW < HIGH")
            }
            Self::Percentile { low, high } if !(0.0 <= low && low < high && high <= 100.0) => {
                bail!("percentile {low},{high}: needs 0 <= LOW < HIGH <= 100")
            }
            _ => Ok(()),
        }
    }

    /// The `[low, high]` range that maps to 0..255 for these `values` (`full_max`: the
    /// top of the type's range, for `Full`).
    pub fn bounds(self, values: &[f64], full_max: f64) -> (f64, f64) {
        match self {
            Self::Full => (0.0, full_max),
            Self::Window { low, high } => (low, high),
            Self::CtSoftTissue => (-160.0, 240.0),
            Self::CtLung => (-1350.0, 150.0),
            Self::CtBone => (-500.0, 1300.0),
            Self::Percentile { low, high } => {
                let mut sorted: Vec<f64> =
                    values.iter().copied().filter(|v| v.is_finite()).collect();
                sorted.sort_by(f64::total_cmp);
                (percentile(&sorted, low), percentile(&sorted, high))
            }
            Self::Auto | Self::MinMax => {
                let low = values.iter().copied().fold(f64::INFINITY, f64::min);
                let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                (low, high)
            }
        }
    }
}

/// `np.percentile` (linear interpolation) of sorted values; 0 for none.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = q.clamp(0.0, 100.0) / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Values mapped through `[low, high]` to 0..255, clipped outside.
pub fn to_bytes(values: &[f64], (low, high): (f64, f64)) -> Vec<u8> {
    let span = (high - low).max(f64::MIN_POSITIVE);
    values
        .iter()
        .map(|v| (((v - low) / span).clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect()
}

impl std::str::FromStr for IntensityScaling {
    type Err = String;

    /// `auto`, `minmax`, `full`, `window:LOW,HIGH`, `ct-soft-tissue`, `ct-lung`, `ct-bone`
    /// or `percentile:LOW,HIGH`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.replace('_', "-").as_str() {
            "auto" => Ok(Self::Auto),
            "minmax" => Ok(Self::MinMax),
            "full" => Ok(Self::Full),
            "ct-soft-tissue" => Ok(Self::CtSoftTissue),
            "ct-lung" => Ok(Self::CtLung),
            "ct-bone" => Ok(Self::CtBone),
            _ => {
                let (kind, range) = s.split_once(':').ok_or_else(|| {
                    format!(
                        "unknown intensity scaling '{s}' (auto, minmax, full, window:LOW,HIGH, \
                         ct-soft-tissue, ct-lung, ct-bone or percentile:LOW,HIGH)"
                    )
                })?;
                let (low, high) = range
                    .split_once(',')
                    .ok_or_else(|| format!("{kind} '{range}' must be LOW,HIGH"))?;
                let parse = |v: &str| {
                    v.trim()
                        .parse::<f64>()
                        .map_err(|_| format!("{kind} bound '{v}' is not a number"))
                };
                let (low, high) = (parse(low)?, parse(high)?);
                if high <= low {
                    return Err(format!("{kind} {low},{high}: HIGH must exceed LOW"));
                }
                match kind {
                    "window" => Ok(Self::Window { low, high }),
                    "percentile" if (0.0..=100.0).contains(&low) && high <= 100.0 => {
                        Ok(Self::Percentile { low, high })
                    }
                    "percentile" => Err(format!("percentile {low},{high}: bounds lie in 0..100")),
                    other => Err(format!(
                        "unknown intensity scaling '{other}:' (window:LOW,HIGH or percentile:LOW,HIGH)"
                    )),
                }
            }
        }
    }
}

/// Opens an image file as 8-bit RGB.
pub fn load_rgb(path: &Path, scaling: IntensityScaling) -> Result<RgbImage> {
    let image = image::open(path).with_context(|| format!("reading image {}", path.display()))?;
    to_rgb8(image, scaling).with_context(|| format!("converting image {}", path.display()))
}

/// 8-bit RGB from any decoded image: alpha dropped, gray replicated to three channels.
pub fn to_rgb8(image: DynamicImage, scaling: IntensityScaling) -> Result<RgbImage> {
    let (w, h) = (image.width(), image.height());
    if w == 0 || h == 0 {
        bail!("image has no pixels ({w}x{h})");
    }
    let deep = !matches!(
        image,
        DynamicImage::ImageLuma8(_)
            | DynamicImage::ImageLumaA8(_)
            | DynamicImage::ImageRgb8(_)
            | DynamicImage::ImageRgba8(_)
    );
    let scaling = match scaling {
        IntensityScaling::Auto if deep => IntensityScaling::MinMax,
        other => other,
    };
    if matches!(scaling, IntensityScaling::Auto) {
        return Ok(image.to_rgb8());
    }
    // Deep (or explicitly rescaled) images: map every channel value through one window.
    let (values, full_max) = match &image {
        DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageRgb8(_)
        | DynamicImage::ImageRgba8(_) => (rgb_values(image.to_rgb8().into_raw()), 255.0),
        DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_)
        | DynamicImage::ImageRgb16(_)
        | DynamicImage::ImageRgba16(_) => (rgb_values(image.to_rgb16().into_raw()), 65535.0),
        _ => (
            image
                .to_rgb32f()
                .into_raw()
                .into_iter()
                .map(f64::from)
                .collect(),
            1.0,
        ),
    };
    let bytes = to_bytes(&values, scaling.bounds(&values, full_max));
    RgbImage::from_raw(w, h, bytes).context("image buffer size")
}

fn rgb_values<T: Into<f64> + Copy>(raw: Vec<T>) -> Vec<f64> {
    raw.into_iter().map(Into::into).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, ImageBuffer, Luma, Rgba, RgbaImage};

    #[test]
    fn eight_bit_gray_and_rgba_become_rgb_unchanged() {
        let gray = GrayImage::from_fn(3, 2, |x, y| Luma([(x * 10 + y) as u8]));
        let rgb = to_rgb8(DynamicImage::ImageLuma8(gray), IntensityScaling::Auto).unwrap();
        assert_eq!(rgb.get_pixel(2, 1).0, [21, 21, 21]);
        let rgba = RgbaImage::from_pixel(2, 2, Rgba([1, 2, 3, 0]));
        let rgb = to_rgb8(DynamicImage::ImageRgba8(rgba), IntensityScaling::Auto).unwrap();
        assert_eq!(rgb.get_pixel(1, 1).0, [1, 2, 3]);
    }

    #[test]
    fn sixteen_bit_is_min_max_scaled_by_default() {
        let img: ImageBuffer<Luma<u16>, Vec<u16>> =
            ImageBuffer::from_fn(3, 1, |x, _| Luma([1000 + 500 * x as u16]));
        let rgb = to_rgb8(
            DynamicImage::ImageLuma16(img.clone()),
            IntensityScaling::Auto,
        )
        .unwrap();
        let row: Vec<u8> = rgb.pixels().map(|p| p[0]).collect();
        assert_eq!(row, vec![0, 128, 255]);
        let full = to_rgb8(
            DynamicImage::ImageLuma16(img.clone()),
            IntensityScaling::Full,
        )
        .unwrap();
        assert_eq!(
            full.get_pixel(2, 0)[0],
            (2000.0f64 / 65535.0 * 255.0).round() as u8
        );
        let window = to_rgb8(
            DynamicImage::ImageLuma16(img),
            "window:1200,1700".parse().unwrap(),
        )
        .unwrap();
        let row: Vec<u8> = window.pixels().map(|p| p[0]).collect();
        assert_eq!(row, vec![0, 153, 255]);
    }

    #[test]
    fn presets_and_percentiles() {
        assert_eq!("ct-lung".parse(), Ok(IntensityScaling::CtLung));
        assert_eq!("ct_soft_tissue".parse(), Ok(IntensityScaling::CtSoftTissue));
        let values: Vec<f64> = (0..=100).map(f64::from).collect();
        let p: IntensityScaling = "percentile:1,99".parse().unwrap();
        assert_eq!(p.bounds(&values, 0.0), (1.0, 99.0));
        // np.percentile([0, 10], 25) = 2.5
        assert_eq!(percentile(&[0.0, 10.0], 25.0), 2.5);
        let bone = IntensityScaling::CtBone.bounds(&[], 0.0);
        assert_eq!(to_bytes(&[-1000.0, 400.0, 2000.0], bone), vec![0, 128, 255]);
    }

    #[test]
    fn bad_scaling_strings_are_explained() {
        for (s, needle) in [
            ("window:5", "LOW,HIGH"),
            ("window:9,1", "HIGH must exceed LOW"),
            ("window:a,1", "not a number"),
            ("gamma", "unknown intensity scaling"),
            ("percentile:1,120", "0..100"),
            ("level:1,2", "unknown intensity scaling 'level:'"),
        ] {
            let err = s.parse::<IntensityScaling>().unwrap_err();
            assert!(err.contains(needle), "{s}: {err}");
        }
    }
}
