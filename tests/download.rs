//! `samtune download` against a local HTTP server: resume, restart, verification.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{fixtures_dir, samtune};
use samtune::model::SamVariant;
use samtune::weights::download::{download_file, download_official, partial_path};
use samtune::weights::Checkpoint;

/// How the test server answers.
#[derive(Clone, Copy)]
struct Behaviour {
    /// Close the first response after this many body bytes.
    cut_first_after: Option<usize>,
    honour_range: bool,
}

/// Serves `body` under `/name`; returns the base URL and the Range headers it saw.
fn serve(
    name: &'static str,
    body: Vec<u8>,
    behaviour: Behaviour,
) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut range = None;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range:") {
                    range = Some(v.trim().to_string());
                }
            }
            log.lock().unwrap().push(range.clone());
            if !request_line.contains(&format!("/{name} ")) {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            let start = range.filter(|_| behaviour.honour_range).and_then(|r| {
                r.strip_prefix("bytes=")?
                    .strip_suffix('-')?
                    .parse::<usize>()
                    .ok()
            });
            let (status, part) = match start {
                Some(s) => ("206 Partial Content", &body[s..]),
                None => ("200 OK", &body[..]),
            };
            let header = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                part.len()
            );
            let _ = stream.write_all(header.as_bytes());
            let send = match behaviour.cut_first_after {
                Some(n) if i == 0 => &part[..n],
                _ => part,
            };
            let _ = stream.write_all(send);
        }
    });
    (base, seen)
}

fn tiny_checkpoint() -> Vec<u8> {
    std::fs::read(fixtures_dir().join("tiny_sam.pth")).unwrap()
}

fn loads_as_sam(path: &Path) -> samtune::error::Result<()> {
    Checkpoint::open(path)?.architecture()?;
    Ok(())
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let body = tiny_checkpoint();
    let cut = body.len() / 3;
    let (base, seen) = serve(
        "tiny.pth",
        body.clone(),
        Behaviour {
            cut_first_after: Some(cut),
            honour_range: true,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("tiny.pth");
    let url = format!("{base}/tiny.pth");

    let err = download_file(&url, &dest, false, &loads_as_sam).unwrap_err();
    assert!(format!("{err:#}").contains("resume"), "{err:#}");
    assert!(
        !dest.exists(),
        "an incomplete download must not appear under the final name"
    );
    assert_eq!(
        std::fs::metadata(partial_path(&dest)).unwrap().len(),
        cut as u64
    );

    let resumed_from = download_file(&url, &dest, false, &loads_as_sam).unwrap();
    assert_eq!(resumed_from, cut as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert!(!partial_path(&dest).exists());
    assert_eq!(
        seen.lock().unwrap().last().unwrap().as_deref(),
        Some(format!("bytes={cut}-").as_str())
    );
}

#[test]
fn a_server_that_ignores_ranges_restarts_the_file() {
    let body = tiny_checkpoint();
    let (base, _) = serve(
        "tiny.pth",
        body.clone(),
        Behaviour {
            cut_first_after: None,
            honour_range: false,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("tiny.pth");
    std::fs::write(partial_path(&dest), b"stale bytes from another file").unwrap();
    assert_eq!(
        download_file(&format!("{base}/tiny.pth"), &dest, false, &loads_as_sam).unwrap(),
        0
    );
    assert_eq!(std::fs::read(&dest).unwrap(), body);
}

#[test]
fn a_file_that_is_not_the_named_variant_is_rejected_and_removed() {
    let (base, _) = serve(
        "sam_vit_b_01ec64.pth",
        tiny_checkpoint(),
        Behaviour {
            cut_first_after: None,
            honour_range: true,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let err = download_official(SamVariant::VitB, dir.path(), Some(&base), false).unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("vit_b") && message.contains("verification"),
        "{message}"
    );
    let dest = dir.path().join("sam_vit_b_01ec64.pth");
    assert!(!dest.exists() && !partial_path(&dest).exists());

    let output = samtune([
        "download",
        "vit_l",
        "--dir",
        dir.path().to_str().unwrap(),
        "--base-url",
        &base,
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("HTTP 404") && stderr.contains("sam_vit_l_0b3195.pth"),
        "{stderr}"
    );
}
