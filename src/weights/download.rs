//! Fetching the official checkpoints: progress bar, resumable (`.part` file plus an HTTP
//! Range request), atomic (renamed into place only once complete and verified).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::catalog::{official, DOWNLOAD_BASE_URL};
use super::checkpoint::Checkpoint;
use crate::model::SamVariant;

/// Environment variable that replaces Meta's URL (a mirror, or a local server in tests).
pub const BASE_URL_ENV: &str = "SAMTUNE_DOWNLOAD_URL";

/// What [`download_official`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadOutcome {
    /// The file was already there and loads as the variant.
    AlreadyPresent(PathBuf),
    /// Downloaded (`resumed_from` bytes were kept from an earlier attempt).
    Downloaded { path: PathBuf, resumed_from: u64 },
}

/// Downloads the official checkpoint of `variant` into `dir` and checks that it loads as
/// that variant. `base_url` defaults to [`BASE_URL_ENV`], then Meta's server.
pub fn download_official(
    variant: SamVariant,
    dir: &Path,
    base_url: Option<&str>,
    show_progress: bool,
) -> Result<DownloadOutcome> {
    let entry = official(variant);
    let base = base_url
        .map(str::to_string)
        .or_else(|| std::env::var(BASE_URL_ENV).ok())
        .unwrap_or_else(|| DOWNLOAD_BASE_URL.to_string());
    let url = format!("{}/{}", base.trim_end_matches('/'), entry.file_name);
    let dest = dir.join(entry.file_name);
    let verify = |path: &Path| verify_variant(path, variant);
    if dest.exists() {
        verify(&dest).with_context(|| {
            format!(
                "{} exists but is not a valid {variant} checkpoint; delete it to download again",
                dest.display()
            )
        })?;
        return Ok(DownloadOutcome::AlreadyPresent(dest));
    }
    let resumed_from = download_file(&url, &dest, show_progress, &verify)?;
    Ok(DownloadOutcome::Downloaded {
        path: dest,
        resumed_from,
    })
}

/// Checks that `path` is a checkpoint of `variant`'s architecture.
pub fn verify_variant(path: &Path, variant: SamVariant) -> Result<()> {
    let checkpoint = Checkpoint::open(path)?;
    checkpoint.architecture_for(variant.into())?;
    Ok(())
}

/// The partial file an interrupted download of `dest` leaves behind.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// Downloads `url` to `dest`: appends to `dest.part` (resuming with a Range request when
/// it exists), runs `verify` on the complete file, then renames it to `dest`. Returns the
/// number of bytes resumed from. A failed verification deletes the partial file.
pub fn download_file(
    url: &str,
    dest: &Path,
    show_progress: bool,
    verify: &dyn Fn(&Path) -> Result<()>,
) -> Result<u64> {
    if let Some(dir) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating folder {}", dir.display()))?;
    }
    let part = partial_path(dest);
    let mut offset = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.get(url);
    if offset > 0 {
        request = request.header("Range", format!("bytes={offset}-"));
    }
    let mut response = request
        .call()
        .with_context(|| format!("requesting {url}"))?;
    let status = response.status().as_u16();
    let append = match status {
        206 => true,
        200 => {
            // the server ignored the Range header: start over
            offset = 0;
            false
        }
        // Range beyond the end: the partial file is already complete
        416 if offset > 0 => true,
        _ => bail!("{url} answered HTTP {status}"),
    };
    let remaining: Option<u64> = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    if status != 416 {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&part)
            .with_context(|| format!("opening {}", part.display()))?;
        let bar = progress_bar(show_progress, remaining.map(|r| r + offset), offset);
        let mut reader = response.body_mut().as_reader();
        copy_with_progress(&mut reader, &mut file, &bar).with_context(|| {
            format!(
                "downloading {url} (interrupted; {} keeps what arrived, run again to resume)",
                part.display()
            )
        })?;
        file.sync_all()
            .with_context(|| format!("syncing {}", part.display()))?;
        bar.finish_and_clear();
        let got = fs::metadata(&part)?.len();
        if let Some(expected) = remaining.map(|r| r + offset) {
            if got != expected {
                bail!(
                    "downloading {url}: got {got} of {expected} bytes; run again to resume from {}",
                    part.display()
                );
            }
        }
    }
    if let Err(err) = verify(&part) {
        let _ = fs::remove_file(&part);
        return Err(err.context(format!(
            "the file downloaded from {url} failed verification"
        )));
    }
    fs::rename(&part, dest)
        .with_context(|| format!("renaming {} to {}", part.display(), dest.display()))?;
    Ok(offset)
}

fn progress_bar(show: bool, total: Option<u64>, position: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("valid progress template"),
    );
    bar.set_position(position);
    bar
}

fn copy_with_progress(
    reader: &mut impl Read,
    file: &mut File,
    bar: &ProgressBar,
) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // keep what arrived so the next run resumes from here
                file.flush()?;
                return Err(e);
            }
        };
        file.write_all(&buf[..n])?;
        bar.inc(n as u64);
    }
}
