//! Writing PyTorch `.pth` files (`torch.save(state_dict)`'s zip format, pickle protocol 2)
//! that `torch.load(..., weights_only=True)` reads: an `OrderedDict` of tensors rebuilt by
//! `torch._utils._rebuild_tensor_v2` from one storage each.

use std::io::Write;
use std::path::Path;

use crate::error::{bail, Context, Result};
use safetensors::Dtype;
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

use super::save::RawTensor;
use crate::fsutil::temp_path;

/// Writes `tensors` (contiguous, little-endian) as a `.pth` state_dict, atomically.
pub fn write_pth(path: &Path, tensors: &[RawTensor]) -> Result<()> {
    let tmp = temp_path(path);
    let result = write_zip(&tmp, tensors).and_then(|()| {
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_zip(path: &Path, tensors: &[RawTensor]) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut zip = zip::ZipWriter::new(FirstError::new(std::io::BufWriter::new(file)));
    let written = write_entries(&mut zip, tensors);
    let finished = zip.finish().map_err(crate::error::Error::from);
    let error = finished
        .as_ref()
        .ok()
        .and_then(|w| w.first_error())
        .map(|e| crate::error::Error::from(std::io::Error::new(e.kind(), e.to_string())));
    match (written, finished, error) {
        (_, _, Some(io)) | (Err(io), _, None) | (Ok(()), Err(io), None) => {
            Err(io.context(format!("writing {}", path.display())))
        }
        (Ok(()), Ok(mut writer), None) => {
            writer.inner.flush()?;
            writer.inner.get_ref().sync_all()?;
            Ok(())
        }
    }
}

/// A writer that keeps the first I/O error and, after it, accepts every write and seek
/// without doing anything: the zip crate then finishes (and drops) a failed archive
/// quietly instead of printing its own debug message, and the error that counts is the
/// first one, reported with the file's name. The failed archive is thrown away.
struct FirstError<W> {
    inner: W,
    error: Option<std::io::Error>,
    position: u64,
    end: u64,
}

impl<W> FirstError<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            error: None,
            position: 0,
            end: 0,
        }
    }

    fn first_error(&self) -> Option<&std::io::Error> {
        self.error.as_ref()
    }

    fn keep<T>(&mut self, result: std::io::Result<T>, otherwise: T) -> std::io::Result<T> {
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                self.error = Some(e);
                Ok(otherwise)
            }
        }
    }
}

impl<W: Write> Write for FirstError<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = if self.error.is_some() {
            buf.len()
        } else {
            let result = self.inner.write(buf);
            self.keep(result, buf.len())?
        };
        self.position += n as u64;
        self.end = self.end.max(self.position);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.error.is_some() {
            return Ok(());
        }
        let result = self.inner.flush();
        self.keep(result, ())
    }
}

impl<W: std::io::Seek> std::io::Seek for FirstError<W> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            std::io::SeekFrom::Start(n) => n,
            std::io::SeekFrom::Current(d) => self.position.saturating_add_signed(d),
            std::io::SeekFrom::End(d) => self.end.saturating_add_signed(d),
        };
        if self.error.is_none() {
            let result = self.inner.seek(std::io::SeekFrom::Start(target));
            self.keep(result, target)?;
        }
        self.position = target;
        Ok(target)
    }
}

fn write_entries<W: Write + std::io::Seek>(
    zip: &mut zip::ZipWriter<W>,
    tensors: &[RawTensor],
) -> Result<()> {
    let total: usize = tensors.iter().map(|t| t.data.len()).sum();
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .large_file(total > u32::MAX as usize / 2);
    let mut add = |name: &str, bytes: &[u8]| -> Result<()> {
        zip.start_file(format!("archive/{name}"), options)?;
        zip.write_all(bytes)?;
        Ok(())
    };
    add("data.pkl", &state_dict_pickle(tensors)?)?;
    add("byteorder", b"little")?;
    for (i, t) in tensors.iter().enumerate() {
        add(&format!("data/{i}"), &t.data)?;
    }
    add("version", b"3\n")
}

/// The pickle of `OrderedDict([(name, tensor), ...])` with storage `i` for tensor `i`.
fn state_dict_pickle(tensors: &[RawTensor]) -> Result<Vec<u8>> {
    let mut p = Pickle(vec![0x80, 2]); // PROTO 2
    p.global("collections", "OrderedDict");
    p.op(b")R"); // EMPTY_TUPLE, REDUCE
    p.op(b"("); // MARK
    for (i, t) in tensors.iter().enumerate() {
        let storage = match t.dtype {
            Dtype::F32 => "FloatStorage",
            Dtype::F64 => "DoubleStorage",
            Dtype::F16 => "HalfStorage",
            Dtype::BF16 => "BFloat16Storage",
            Dtype::I64 => "LongStorage",
            Dtype::I32 => "IntStorage",
            Dtype::U8 => "ByteStorage",
            Dtype::BOOL => "BoolStorage",
            other => bail!("tensor {}: no PyTorch storage for {other:?}", t.name),
        };
        let numel: usize = t.shape.iter().product();
        p.unicode(&t.name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.op(b"((");
        p.unicode("storage");
        p.global("torch", storage);
        p.unicode(&i.to_string());
        p.unicode("cpu");
        p.int(numel);
        p.op(b"tQ"); // TUPLE, BINPERSID
        p.int(0); // storage offset
        p.tuple(&t.shape);
        let mut strides = vec![1usize; t.shape.len()];
        for d in (0..t.shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * t.shape[d + 1];
        }
        p.tuple(&strides);
        p.op(&[0x89]); // NEWFALSE: requires_grad
        p.global("collections", "OrderedDict");
        p.op(b")R"); // backward hooks
        p.op(b"tR");
    }
    p.op(b"u."); // SETITEMS, STOP
    Ok(p.0)
}

struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }

    fn unicode(&mut self, s: &str) {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: usize) {
        if v < 256 {
            self.0.extend_from_slice(&[b'K', v as u8]);
        } else if v < 65536 {
            self.0.push(b'M');
            self.0.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v <= i32::MAX as usize {
            self.0.push(b'J');
            self.0.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            // LONG1: little-endian two's complement, 8 bytes (positive, top bit clear)
            self.0.extend_from_slice(&[0x8a, 8]);
            self.0.extend_from_slice(&(v as u64).to_le_bytes());
        }
    }

    fn tuple(&mut self, values: &[usize]) {
        self.0.push(b'(');
        for &v in values {
            self.int(v);
        }
        self.0.push(b't');
    }
}
