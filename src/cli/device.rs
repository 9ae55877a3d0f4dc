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
    for (libraries, missing) in [
        (
            &["libcuda.so.1", "libcuda.so"][..],
            "the NVIDIA driver library (libcuda.so.1): is there an NVIDIA GPU and driver on this machine?",
        ),
        (
            &["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"][..],
            "NVRTC (libnvrtc.so), which compiles the GPU kernels: install the CUDA toolkit (or \
             `pip install nvidia-cuda-nvrtc`) and add its lib folder to LD_LIBRARY_PATH",
        ),
    ] {
        if !libraries.iter().any(|name| loadable(name)) {
            bail!("--device cuda: cannot load {missing}");
        }
    }
    Ok(Device::cuda(index))
}

/// Whether the dynamic loader finds `library`. CubeCL loads the CUDA libraries on first use,
/// in its own thread, and panics when one is missing: looking first gives a clear error.
#[cfg(all(feature = "cuda", target_os = "linux"))]
fn loadable(library: &str) -> bool {
    use std::ffi::{c_char, c_int, c_void, CString};
    extern "C" {
        fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    }
    const RTLD_LAZY: c_int = 1;
    let Ok(name) = CString::new(library) else {
        return false;
    };
    // SAFETY: `name` is NUL-terminated; the handle stays open, as CubeCL opens the same
    // library next.
    !unsafe { dlopen(name.as_ptr(), RTLD_LAZY) }.is_null()
}

#[cfg(all(feature = "cuda", not(target_os = "linux")))]
fn loadable(_library: &str) -> bool {
    true
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
