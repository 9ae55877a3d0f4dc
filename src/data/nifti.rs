//! NIfTI-1 and NIfTI-2 volumes (`.nii`, `.nii.gz`): header, voxel spacing, intensity
//! scaling (`scl_slope`/`scl_inter`), every standard integer and float voxel type, either
//! byte order. Voxels keep the file's storage order (x fastest); orientation matrices
//! are not applied, so image and label volumes of one scan line up as they are stored.

use std::io::Read;
use std::path::Path;

use crate::error::{bail, Context, Result};

/// A 3D volume (a 2D image is one slice deep; a 4D one's first frame is used).
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// `[nx, ny, nz]`
    pub dims: [usize; 3],
    /// Voxel size in mm along x, y, z (`pixdim[1..=3]`).
    pub spacing: [f64; 3],
    /// `nx * ny * nz` values, x fastest, after `scl_slope`/`scl_inter`.
    pub data: Vec<f32>,
}

impl Volume {
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn index(&self, x: usize, y: usize, z: usize) -> usize {
        x + self.dims[0] * (y + self.dims[1] * z)
    }

    /// The slice at `position` across `axis` (0 x, 1 y, 2 z) as `(width, height, values)`;
    /// its rows and columns are the two other axes in order (an axial slice is x by y).
    pub fn slice(&self, axis: usize, position: usize) -> (usize, usize, Vec<f32>) {
        let (w, h) = self.slice_size(axis);
        let mut values = Vec::with_capacity(w * h);
        for row in 0..h {
            for col in 0..w {
                values.push(self.data[self.slice_voxel(axis, position, col, row)]);
            }
        }
        (w, h, values)
    }

    /// `(width, height)` of slices across `axis`.
    pub fn slice_size(&self, axis: usize) -> (usize, usize) {
        let [nx, ny, nz] = self.dims;
        match axis {
            0 => (ny, nz),
            1 => (nx, nz),
            _ => (nx, ny),
        }
    }

    /// The voxel index of pixel `(col, row)` of the slice at `position` across `axis`.
    pub fn slice_voxel(&self, axis: usize, position: usize, col: usize, row: usize) -> usize {
        match axis {
            0 => self.index(position, col, row),
            1 => self.index(col, position, row),
            _ => self.index(col, row, position),
        }
    }

    /// The in-plane spacing `(column, row)` of slices across `axis`.
    pub fn slice_spacing(&self, axis: usize) -> [f64; 2] {
        let s = self.spacing;
        match axis {
            0 => [s[1], s[2]],
            1 => [s[0], s[2]],
            _ => [s[0], s[1]],
        }
    }
}

/// The most bytes a volume's voxels may take: a header declaring more is broken.
pub const MAX_VOLUME_BYTES: usize = 1 << 34;

/// Reads a `.nii` or `.nii.gz` file (gzip is recognised by its magic bytes). A gzip file
/// is decompressed only as far as its header says the volume reaches.
pub fn read_nifti(path: &Path) -> Result<Volume> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut decoder = flate2::read::MultiGzDecoder::new(&raw[..]);
        let mut out = Vec::new();
        (&mut decoder)
            .take(HEADER_READ as u64)
            .read_to_end(&mut out)
            .with_context(|| format!("{}: invalid gzip data", path.display()))?;
        let end = volume_end(&out)
            .with_context(|| format!("{}: not a readable NIfTI volume", path.display()))?;
        decoder
            .take(end.saturating_sub(out.len()) as u64)
            .read_to_end(&mut out)
            .with_context(|| format!("{}: invalid gzip data", path.display()))?;
        out
    } else {
        raw
    };
    parse_nifti(&bytes).with_context(|| format!("{}: not a readable NIfTI volume", path.display()))
}

/// Enough bytes for either header (NIfTI-2: 540, and the 4-byte extension flag).
const HEADER_READ: usize = 544;

struct Reader<'a> {
    bytes: &'a [u8],
    little: bool,
}

impl Reader<'_> {
    fn take<const N: usize>(&self, offset: usize) -> Result<[u8; N]> {
        let slice = self
            .bytes
            .get(offset..offset + N)
            .context("the header is truncated")?;
        let mut a: [u8; N] = slice.try_into().expect("N bytes");
        if !self.little {
            a.reverse();
        }
        Ok(a)
    }
    fn i16(&self, o: usize) -> Result<i16> {
        Ok(i16::from_le_bytes(self.take(o)?))
    }
    fn i32(&self, o: usize) -> Result<i32> {
        Ok(i32::from_le_bytes(self.take(o)?))
    }
    fn i64(&self, o: usize) -> Result<i64> {
        Ok(i64::from_le_bytes(self.take(o)?))
    }
    fn f32(&self, o: usize) -> Result<f32> {
        Ok(f32::from_le_bytes(self.take(o)?))
    }
    fn f64(&self, o: usize) -> Result<f64> {
        Ok(f64::from_le_bytes(self.take(o)?))
    }
}

/// The header fields samtune uses, from either version.
struct Header {
    dims: Vec<i64>,
    pixdim: Vec<f64>,
    datatype: i16,
    vox_offset: usize,
    slope: f64,
    inter: f64,
}

fn header(r: &Reader, version: u8) -> Result<Header> {
    Ok(if version == 1 {
        Header {
            dims: (0..8)
                .map(|i| r.i16(40 + 2 * i).map(i64::from))
                .collect::<Result<_>>()?,
            pixdim: (0..8)
                .map(|i| r.f32(76 + 4 * i).map(f64::from))
                .collect::<Result<_>>()?,
            datatype: r.i16(70)?,
            vox_offset: r.f32(108)? as usize,
            slope: r.f32(112)? as f64,
            inter: r.f32(116)? as f64,
        }
    } else {
        Header {
            dims: (0..8).map(|i| r.i64(16 + 8 * i)).collect::<Result<_>>()?,
            pixdim: (0..8).map(|i| r.f64(104 + 8 * i)).collect::<Result<_>>()?,
            datatype: r.i16(12)?,
            vox_offset: r.i64(168)?.max(0) as usize,
            slope: r.f64(176)?,
            inter: r.f64(184)?,
        }
    })
}

/// Reads one stored voxel (its bytes, little-endian or not) as a number.
type Converter = fn(&[u8], bool) -> f64;

/// Parses a whole (uncompressed) single-file NIfTI.
pub fn parse_nifti(bytes: &[u8]) -> Result<Volume> {
    let (r, version) = reader(bytes)?;
    let h = header(&r, version)?;
    let dims = dims(&h)?;
    let rank = h.dims[0];
    let spacing = [1, 2, 3].map(|i| {
        let s = h.pixdim[i].abs();
        if i as i64 <= rank && s.is_finite() && s > 0.0 {
            s
        } else {
            1.0
        }
    });
    let (width, convert) = voxel_type(h.datatype)?;
    let (start, end) = layout(&h, version, dims, width)?;
    let count = (end - start) / width;
    let body = bytes.get(start..end).with_context(|| {
        format!(
            "{} voxels of {width} bytes need {} bytes after offset {start}, the file has {}",
            count,
            count * width,
            bytes.len().saturating_sub(start)
        )
    })?;
    let scaled = h.slope != 0.0 && h.slope.is_finite() && (h.slope != 1.0 || h.inter != 0.0);
    let data = body
        .chunks_exact(width)
        .map(|b| {
            let v = convert(b, r.little);
            (if scaled { v * h.slope + h.inter } else { v }) as f32
        })
        .collect();
    Ok(Volume {
        dims,
        spacing,
        data,
    })
}

/// Where the voxels of a header lie: `(start, end)` byte offsets, checked for overflow
/// and against [`MAX_VOLUME_BYTES`].
fn layout(h: &Header, version: u8, dims: [usize; 3], width: usize) -> Result<(usize, usize)> {
    let bytes = dims
        .iter()
        .try_fold(width, |acc, &d| acc.checked_mul(d))
        .filter(|&b| b <= MAX_VOLUME_BYTES)
        .with_context(|| {
            format!(
                "the header declares {}x{}x{} voxels of {width} bytes, more than samtune reads ({} GiB)",
                dims[0],
                dims[1],
                dims[2],
                MAX_VOLUME_BYTES >> 30
            )
        })?;
    let start = h.vox_offset.max(if version == 1 { 352 } else { 544 });
    let end = start
        .checked_add(bytes)
        .context("the header's voxel offset is out of range")?;
    Ok((start, end))
}

/// The header's byte order and NIfTI version, with its magic checked.
fn reader(bytes: &[u8]) -> Result<(Reader<'_>, u8)> {
    let le = Reader {
        bytes,
        little: true,
    };
    let be = Reader {
        bytes,
        little: false,
    };
    let (r, version) = match (le.i32(0)?, be.i32(0)?) {
        (348, _) => (le, 1),
        (540, _) => (le, 2),
        (_, 348) => (be, 1),
        (_, 540) => (be, 2),
        (n, _) => bail!("header size {n} is neither 348 (NIfTI-1) nor 540 (NIfTI-2)"),
    };
    let magic_at = if version == 1 { 344 } else { 4 };
    let magic = bytes
        .get(magic_at..magic_at + 3)
        .context("the header is truncated")?;
    if magic == b"ni1" || magic == b"ni2" {
        bail!("a two-file NIfTI (.hdr/.img) pair: convert it to a single .nii(.gz) file");
    }
    if magic != b"n+1" && magic != b"n+2" {
        bail!("no NIfTI magic ('n+1' or 'n+2') in the header");
    }
    Ok((r, version))
}

/// The first three dimensions (1 beyond the rank), each checked positive.
fn dims(h: &Header) -> Result<[usize; 3]> {
    let rank = h.dims[0];
    if !(1..=7).contains(&rank) {
        bail!("dim[0] = {rank}: the number of dimensions must be 1..7");
    }
    let size = |i: usize| -> Result<usize> {
        if i as i64 > rank {
            return Ok(1);
        }
        let n = h.dims[i];
        if n < 1 {
            bail!("dim[{i}] = {n} must be positive");
        }
        usize::try_from(n).context("a dimension does not fit in memory")
    };
    Ok([size(1)?, size(2)?, size(3)?])
}

/// The byte just past the voxels of the volume whose header `head` starts with.
fn volume_end(head: &[u8]) -> Result<usize> {
    let (r, version) = reader(head)?;
    let h = header(&r, version)?;
    let dims = dims(&h)?;
    let (width, _) = voxel_type(h.datatype)?;
    Ok(layout(&h, version, dims, width)?.1)
}

/// A stored voxel's width in bytes and how to read it.
fn voxel_type(datatype: i16) -> Result<(usize, Converter)> {
    Ok(match datatype {
        2 => (1, |b, _| b[0] as f64),
        256 => (1, |b, _| b[0] as i8 as f64),
        4 => (2, |b, le| num::<2>(b, le, |a| i16::from_le_bytes(a) as f64)),
        512 => (2, |b, le| num::<2>(b, le, |a| u16::from_le_bytes(a) as f64)),
        8 => (4, |b, le| num::<4>(b, le, |a| i32::from_le_bytes(a) as f64)),
        768 => (4, |b, le| num::<4>(b, le, |a| u32::from_le_bytes(a) as f64)),
        16 => (4, |b, le| num::<4>(b, le, |a| f32::from_le_bytes(a) as f64)),
        1024 => (8, |b, le| num::<8>(b, le, |a| i64::from_le_bytes(a) as f64)),
        1280 => (8, |b, le| num::<8>(b, le, |a| u64::from_le_bytes(a) as f64)),
        64 => (8, |b, le| num::<8>(b, le, f64::from_le_bytes)),
        other => bail!("voxel datatype {other} is not supported (integers, float32, float64)"),
    })
}

fn num<const N: usize>(b: &[u8], little: bool, from_le: fn([u8; N]) -> f64) -> f64 {
    let mut a: [u8; N] = b.try_into().expect("N bytes");
    if !little {
        a.reverse();
    }
    from_le(a)
}

/// How [`write_nifti`] stores voxels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoxelType {
    /// Label volumes (values rounded, clamped to 0..65535).
    U16,
    F32,
}

/// Writes `volume` as a single-file NIfTI-1 (`.nii`, or gzip-compressed when the name ends
/// in `.gz`), little-endian, with its spacing and an identity-scaled voxel-to-mm transform
/// (qform code 0: no orientation is claimed). Written atomically.
pub fn write_nifti(path: &Path, volume: &Volume, voxel: VoxelType) -> Result<()> {
    let mut bytes = vec![0u8; 352];
    let put = |b: &mut Vec<u8>, o: usize, v: &[u8]| b[o..o + v.len()].copy_from_slice(v);
    put(&mut bytes, 0, &348i32.to_le_bytes());
    let dims = [
        3,
        volume.dims[0],
        volume.dims[1],
        volume.dims[2],
        1,
        1,
        1,
        1,
    ];
    for (i, d) in dims.iter().enumerate() {
        let d = i16::try_from(*d)
            .with_context(|| format!("{}: dimension {d} does not fit NIfTI-1", path.display()))?;
        put(&mut bytes, 40 + 2 * i, &d.to_le_bytes());
    }
    let (code, bits): (i16, i16) = match voxel {
        VoxelType::U16 => (512, 16),
        VoxelType::F32 => (16, 32),
    };
    put(&mut bytes, 70, &code.to_le_bytes());
    put(&mut bytes, 72, &bits.to_le_bytes());
    let pixdim = [
        1.0,
        volume.spacing[0],
        volume.spacing[1],
        volume.spacing[2],
        1.0,
        1.0,
        1.0,
        1.0,
    ];
    for (i, p) in pixdim.iter().enumerate() {
        put(&mut bytes, 76 + 4 * i, &(*p as f32).to_le_bytes());
    }
    put(&mut bytes, 108, &352f32.to_le_bytes());
    put(&mut bytes, 112, &1f32.to_le_bytes());
    put(&mut bytes, 123, &[2]); // xyzt_units: millimetres
    put(&mut bytes, 344, b"n+1\0");
    bytes.reserve(volume.len() * bits as usize / 8);
    for &v in &volume.data {
        match voxel {
            VoxelType::U16 => {
                bytes.extend_from_slice(&(v.round().clamp(0.0, 65535.0) as u16).to_le_bytes())
            }
            VoxelType::F32 => bytes.extend_from_slice(&v.to_le_bytes()),
        }
    }
    let gzip = path.to_string_lossy().ends_with(".gz");
    crate::fsutil::write_atomic(path, |f| {
        use std::io::Write;
        if gzip {
            let mut encoder = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            encoder.write_all(&bytes)?;
            encoder.finish()?;
        } else {
            f.write_all(&bytes)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal NIfTI-1 file: int16 voxels, spacing (0.5, 0.75, 2), slope 2, inter -1.
    pub fn tiny_nifti(little: bool) -> Vec<u8> {
        let mut h = vec![0u8; 352];
        let put = |h: &mut Vec<u8>, o: usize, b: &[u8]| h[o..o + b.len()].copy_from_slice(b);
        let e16 = |v: i16| {
            if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            }
        };
        let e32 = |v: i32| {
            if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            }
        };
        let f32b = |v: f32| {
            if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            }
        };
        put(&mut h, 0, &e32(348));
        for (i, d) in [3i16, 3, 2, 2, 1, 1, 1, 1].iter().enumerate() {
            put(&mut h, 40 + 2 * i, &e16(*d));
        }
        put(&mut h, 70, &e16(4));
        put(&mut h, 72, &e16(16));
        for (i, p) in [1.0f32, 0.5, 0.75, 2.0].iter().enumerate() {
            put(&mut h, 76 + 4 * i, &f32b(*p));
        }
        put(&mut h, 108, &f32b(352.0));
        put(&mut h, 112, &f32b(2.0));
        put(&mut h, 116, &f32b(-1.0));
        put(&mut h, 344, b"n+1\0");
        for v in 0..12i16 {
            h.extend_from_slice(&e16(v));
        }
        h
    }

    #[test]
    fn reads_either_byte_order_with_scaling_and_spacing() {
        for little in [true, false] {
            let v = parse_nifti(&tiny_nifti(little)).unwrap();
            assert_eq!(v.dims, [3, 2, 2]);
            assert_eq!(v.spacing, [0.5, 0.75, 2.0]);
            assert_eq!(v.data[0], -1.0);
            assert_eq!(v.data[11], 21.0);
            assert_eq!(v.data[v.index(1, 1, 1)], 2.0 * 10.0 - 1.0);
        }
    }

    #[test]
    fn slices_run_across_each_axis() {
        let v = parse_nifti(&tiny_nifti(true)).unwrap();
        let (w, h, z1) = v.slice(2, 1);
        assert_eq!((w, h), (3, 2));
        assert_eq!(z1, vec![11.0, 13.0, 15.0, 17.0, 19.0, 21.0]);
        let (w, h, x2) = v.slice(0, 2);
        assert_eq!((w, h), (2, 2));
        // (y, z) = (0,0), (1,0), (0,1), (1,1) at x = 2
        assert_eq!(x2, vec![3.0, 9.0, 15.0, 21.0]);
        assert_eq!(v.slice_spacing(0), [0.75, 2.0]);
    }

    #[test]
    fn written_volumes_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let volume = Volume {
            dims: [4, 3, 2],
            spacing: [0.8, 0.8, 2.5],
            data: (0..24).map(|v| v as f32 * 1.5).collect(),
        };
        for name in ["v.nii", "v.nii.gz"] {
            let path = dir.path().join(name);
            write_nifti(&path, &volume, VoxelType::F32).unwrap();
            let back = read_nifti(&path).unwrap();
            assert_eq!(back.dims, volume.dims);
            assert!((back.spacing[2] - 2.5).abs() < 1e-6);
            assert_eq!(back.data, volume.data);
        }
        let path = dir.path().join("labels.nii.gz");
        write_nifti(&path, &volume, VoxelType::U16).unwrap();
        assert_eq!(read_nifti(&path).unwrap().data[3], 5.0); // 4.5 rounds to 5 (away from 0)
    }

    #[test]
    fn bad_files_are_explained() {
        let mut bytes = tiny_nifti(true);
        bytes.truncate(360);
        let e = parse_nifti(&bytes).unwrap_err().to_string();
        assert!(e.contains("12 voxels"), "{e}");
        let mut bytes = tiny_nifti(true);
        bytes[344..347].copy_from_slice(b"xyz");
        assert!(parse_nifti(&bytes)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let mut bytes = tiny_nifti(true);
        bytes[70..72].copy_from_slice(&128i16.to_le_bytes());
        assert!(parse_nifti(&bytes)
            .unwrap_err()
            .to_string()
            .contains("datatype 128"));
    }
}
