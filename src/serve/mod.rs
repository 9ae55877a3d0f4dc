//! `samtune serve`: a local web page to annotate images with SAM (clicks and boxes give
//! masks at interactive speed, accepted objects are saved as a COCO dataset that
//! `samtune train` reads), to run the automatic mask generator and pick its proposals,
//! and to review evaluation and training runs image by image. The page and everything
//! it needs are in the binary: nothing is fetched from elsewhere.

mod api;
pub mod review;
pub mod state;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::Device;

use crate::annotate::AmgSettings;
use crate::error::{Context, Result};
use crate::model::Precision;
use crate::predict::image::IntensityScaling;
use crate::predict::CacheConfig;
use state::ServerState;

/// What `samtune serve` serves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The checkpoints the page switches between (the first is selected).
    pub checkpoints: Vec<PathBuf>,
    /// The folder of images to annotate.
    pub images: PathBuf,
    /// The COCO file accepted objects are saved to (created when absent).
    pub annotations: PathBuf,
    /// `eval --out` folders and training runs to review.
    pub reviews: Vec<PathBuf>,
    /// Where encoded images are kept between sessions (and shared with training).
    pub cache: Option<CacheConfig>,
    pub intensity: IntensityScaling,
    /// The image encoder's arithmetic.
    pub encoder_precision: Precision,
    /// The automatic mask generator's settings.
    pub amg: AmgSettings,
    pub address: SocketAddr,
}

/// A server running on a thread of its own.
pub struct Server {
    pub address: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

/// Opens everything `config` names (a bad path or checkpoint is an error here) and
/// starts serving on `config.address` (port 0: any free port; [`Server::address`] says
/// which).
pub fn start(config: &ServeConfig, device: Device) -> Result<Server> {
    let state = Arc::new(ServerState::open(config, device)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // timers too: axum waits with one after a failed accept (e.g. out of file handles)
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(config.address))
        .with_context(|| format!("listening on {}", config.address))?;
    let address = listener.local_addr().context("reading the bound address")?;
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = api::router(state);
    let thread = std::thread::spawn(move || {
        runtime.block_on(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        })
    });
    Ok(Server {
        address,
        shutdown: Some(shutdown),
        thread: Some(thread),
    })
}

impl Server {
    /// Serves until the process is stopped.
    pub fn wait(mut self) -> Result<()> {
        self.join()
    }

    /// Stops serving (requests in flight finish first).
    pub fn stop(mut self) -> Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(served)) => served.context("serving"),
            Some(Err(_)) => Err(crate::error::err!("the server thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
