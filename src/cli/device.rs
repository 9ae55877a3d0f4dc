//! `--device cpu|cuda|wgpu`: the backend is chosen at run time among those compiled in.

use anyhow::{bail, Result};
use burn::tensor::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// burn's `flex` CPU backend (always available).
    Cpu,
    /// NVIDIA GPU (build with `--features cuda`).
    Cuda,
    /// Any GPU through wgpu (build with `--features wgpu`).
    Wgpu,
}

impl DeviceChoice {
    /// The best backend compiled into this binary: cuda, then wgpu, then the CPU.
    pub fn best_available() -> Self {
        if cfg!(feature = "cuda") {
            DeviceChoice::Cuda
        } else if cfg!(feature = "wgpu") {
            DeviceChoice::Wgpu
        } else {
            DeviceChoice::Cpu
        }
    }

    pub fn device(self) -> Result<Device> {
        self.device_at(0)
    }

    /// The `index`-th device of this backend (`cuda:1`); the CPU is one device, whatever
    /// the index (several "cpu" entries run data-parallel code on one machine).
    pub fn device_at(self, index: usize) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::flex()),
            DeviceChoice::Cuda => cuda(index),
            DeviceChoice::Wgpu if index == 0 => wgpu(),
            DeviceChoice::Wgpu => bail!("wgpu:{index}: samtune uses the default wgpu device only"),
        }
    }
}

/// The device for an optional `--device` argument.
pub fn resolve(choice: Option<DeviceChoice>) -> Result<Device> {
    choice.unwrap_or_else(DeviceChoice::best_available).device()
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Result<Device> {
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> Result<Device> {
    bail!("--device cuda: this samtune was built without CUDA; rebuild with `cargo build --release --features cuda`")
}

#[cfg(feature = "wgpu")]
fn wgpu() -> Result<Device> {
    Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu() -> Result<Device> {
    bail!("--device wgpu: this samtune was built without wgpu; rebuild with `cargo build --release --features wgpu`")
}
