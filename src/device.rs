//! Where the model runs: burn's CPU backend or a GPU, named `auto`, `cpu`, `cuda`,
//! `cuda:N` or `wgpu` in configs and on the command line, and parsed when they are read.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{bail, Error, Result};

/// A device by name, before it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceSpec {
    /// A real GPU when one is compiled in and present, else the CPU.
    #[default]
    Auto,
    /// burn's `flex` CPU backend (always compiled in). Several `cpu` entries in
    /// `model.devices` are replicas on the one CPU.
    Cpu,
    /// The N-th NVIDIA GPU (`--features cuda`).
    Cuda(usize),
    /// The default wgpu adapter (`--features wgpu`), software ones included when named.
    Wgpu,
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let (kind, index) = match s.split_once(':') {
            Some((kind, index)) => {
                let index = index.parse::<usize>().map_err(|_| {
                    format!("device '{s}': '{index}' is not a device index (cuda:0, cuda:1, ...)")
                })?;
                (kind, Some(index))
            }
            None => (s.as_str(), None),
        };
        match (kind, index) {
            ("" | "auto", None) => Ok(DeviceSpec::Auto),
            ("cpu", _) => Ok(DeviceSpec::Cpu),
            ("cuda", index) => Ok(DeviceSpec::Cuda(index.unwrap_or(0))),
            ("wgpu", None | Some(0)) => Ok(DeviceSpec::Wgpu),
            ("wgpu", Some(i)) => Err(format!(
                "device 'wgpu:{i}': samtune uses the default wgpu adapter only"
            )),
            _ => Err(format!(
                "device '{s}': expected auto, cpu, cuda, cuda:N or wgpu"
            )),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceSpec::Wgpu => f.write_str("wgpu"),
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An opened device and what it is, in words (commands say which one was chosen).
#[derive(Debug, Clone)]
pub struct ChosenDevice {
    pub device: Device,
    pub description: String,
}

impl DeviceSpec {
    /// Opens the device: `auto` prefers a real GPU and never picks a software adapter
    /// (lavapipe answers in seconds what the CPU backend answers in milliseconds).
    pub fn open(self) -> Result<ChosenDevice> {
        match self {
            DeviceSpec::Auto => Ok(auto_device()),
            DeviceSpec::Cpu => Ok(cpu()),
            DeviceSpec::Cuda(index) => cuda::open(index),
            DeviceSpec::Wgpu => wgpu::open(),
        }
    }

    /// [`Self::open`], the device alone.
    pub fn device(self) -> Result<Device> {
        Ok(self.open()?.device)
    }
}

/// Memory a device has free for a model, in bytes, and where the figure comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct FreeMemory {
    pub bytes: u64,
    pub total: u64,
    /// e.g. `cuda:0 (NVML)`, `cpu (MemAvailable)`.
    pub source: String,
}

impl DeviceSpec {
    /// The free memory of the device this spec names, as `select_sam_checkpoint(
    /// get_available_vram())` means it: a GPU's free memory from the driver (NVML), the
    /// CPU's available RAM (`/proc/meminfo`). `auto` is GPU 0 when the driver answers,
    /// else the CPU. wgpu adapters report no free memory: an error.
    pub fn free_memory(self) -> Result<FreeMemory> {
        let gpu = |index: usize| {
            nvidia::memory(index).map(|(bytes, total)| FreeMemory {
                bytes,
                total,
                source: format!("cuda:{index} (NVML)"),
            })
        };
        match self {
            DeviceSpec::Cuda(index) => gpu(index).ok_or_else(|| {
                Error::msg(format!(
                    "device cuda:{index}: the NVIDIA driver (libnvidia-ml) reports no such GPU"
                ))
            }),
            DeviceSpec::Auto => match gpu(0) {
                Some(free) => Ok(free),
                None => cpu_free_memory(),
            },
            DeviceSpec::Cpu => cpu_free_memory(),
            DeviceSpec::Wgpu => Err(Error::msg(
                "wgpu adapters do not report their free memory; give it with --memory-gb",
            )),
        }
    }
}

/// `MemAvailable` and `MemTotal` of `/proc/meminfo`.
fn cpu_free_memory() -> Result<FreeMemory> {
    let path = std::path::Path::new("/proc/meminfo");
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::file(path, format!("{e}; give the memory with --memory-gb")))?;
    let (bytes, total) = parse_meminfo(&text)
        .ok_or_else(|| Error::file(path, "has no MemAvailable and MemTotal lines"))?;
    Ok(FreeMemory {
        bytes,
        total,
        source: "cpu (MemAvailable)".to_string(),
    })
}

/// `(MemAvailable, MemTotal)` in bytes from `/proc/meminfo`'s text.
fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
            Some(kib * 1024)
        })
    };
    Some((field("MemAvailable")?, field("MemTotal")?))
}

fn cpu() -> ChosenDevice {
    ChosenDevice {
        device: Device::flex(),
        description: format!("cpu ({} threads)", rayon::current_num_threads()),
    }
}

fn auto_device() -> ChosenDevice {
    if let Some(chosen) = cuda::first_present() {
        return chosen;
    }
    if let Some(chosen) = wgpu::hardware() {
        return chosen;
    }
    cpu()
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;

    const DRIVER: &[&str] = &["libcuda.so.1", "libcuda.so"];
    const NVRTC: &[&str] = &["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"];

    pub fn open(index: usize) -> Result<ChosenDevice> {
        for (libraries, missing) in [
            (
                DRIVER,
                "the NVIDIA driver library (libcuda.so.1): is there an NVIDIA GPU and driver on this machine?",
            ),
            (
                NVRTC,
                "NVRTC (libnvrtc.so), which compiles the GPU kernels: install the CUDA toolkit (or \
                 `pip install nvidia-cuda-nvrtc`) and add its lib folder to LD_LIBRARY_PATH",
            ),
        ] {
            if !libraries.iter().any(|name| loadable(name)) {
                bail!("device cuda:{index}: cannot load {missing}");
            }
        }
        Ok(ChosenDevice {
            device: Device::cuda(index),
            description: format!("cuda:{index}"),
        })
    }

    /// The first CUDA GPU, when the driver and NVRTC load and the driver counts a device.
    pub fn first_present() -> Option<ChosenDevice> {
        (crate::device::nvidia::device_count()? > 0)
            .then(|| open(0).ok())
            .flatten()
    }

    /// Whether the dynamic loader finds `library`. CubeCL loads the CUDA libraries on first
    /// use, in its own thread, and panics when one is missing: looking first gives a clear
    /// error.
    fn loadable(library: &str) -> bool {
        crate::device::nvidia::open_library(library).is_some()
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::*;

    pub fn open(index: usize) -> Result<ChosenDevice> {
        bail!("device cuda:{index}: this samtune was built without CUDA; rebuild with `cargo build --release --features cuda`")
    }

    pub fn first_present() -> Option<ChosenDevice> {
        None
    }
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use burn::tensor::wgpu::wgpu;
    use burn::tensor::DeviceKind;

    use super::*;

    pub fn open() -> Result<ChosenDevice> {
        let adapters = adapters();
        let Some(adapter) = adapters.first() else {
            bail!("device wgpu: no Vulkan, Metal or DX12 adapter found (for a software one, install Mesa's lavapipe: mesa-vulkan-drivers)");
        };
        let chosen = adapters
            .iter()
            .find(|a| a.device_type != wgpu::DeviceType::Cpu)
            .unwrap_or(adapter);
        Ok(ChosenDevice {
            device: Device::wgpu(DeviceKind::DefaultDevice),
            description: describe(chosen),
        })
    }

    /// The default wgpu device when a hardware adapter exists.
    pub fn hardware() -> Option<ChosenDevice> {
        let adapters = adapters();
        let gpu = adapters
            .iter()
            .find(|a| a.device_type != wgpu::DeviceType::Cpu)?;
        Some(ChosenDevice {
            device: Device::wgpu(DeviceKind::DefaultDevice),
            description: describe(gpu),
        })
    }

    fn describe(info: &wgpu::AdapterInfo) -> String {
        let software = if info.device_type == wgpu::DeviceType::Cpu {
            ", a software adapter"
        } else {
            ""
        };
        format!("wgpu: {} ({:?}{software})", info.name, info.backend)
    }

    /// The adapters of the APIs real GPUs answer on (Vulkan, Metal, DX12), listed without
    /// opening a device or compiling anything: on native targets the future is ready at
    /// once. Not GL: its probe prints EGL errors on every headless Linux machine (each
    /// `auto` would), and a GPU with a GL driver has a Vulkan one on Linux.
    fn adapters() -> Vec<wgpu::AdapterInfo> {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let mut listing = std::pin::pin!(instance.enumerate_adapters(backends));
        match listing
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(list) => list.iter().map(|a| a.get_info()).collect(),
            Poll::Pending => Vec::new(),
        }
    }
}

#[cfg(not(feature = "wgpu"))]
mod wgpu {
    use super::*;

    pub fn open() -> Result<ChosenDevice> {
        bail!("device wgpu: this samtune was built without wgpu; rebuild with `cargo build --release --features wgpu`")
    }

    pub fn hardware() -> Option<ChosenDevice> {
        None
    }
}

/// The NVIDIA driver, asked directly through its C libraries (loaded at run time, so
/// builds without CUDA and machines without the driver need none of them): whether a GPU
/// is there, and its memory.
pub mod nvidia {
    use std::ffi::{c_char, c_int, c_uint, c_void, CString};

    extern "C" {
        fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    }
    const RTLD_LAZY: c_int = 1;

    /// A handle of `library`, kept open for the process (CubeCL opens the same one next).
    pub fn open_library(library: &str) -> Option<*mut c_void> {
        let name = CString::new(library).ok()?;
        // SAFETY: `name` is NUL-terminated.
        let handle = unsafe { dlopen(name.as_ptr(), RTLD_LAZY) };
        (!handle.is_null()).then_some(handle)
    }

    fn symbol(handle: *mut c_void, name: &str) -> Option<*mut c_void> {
        let name = CString::new(name).ok()?;
        // SAFETY: `handle` came from dlopen; `name` is NUL-terminated.
        let ptr = unsafe { dlsym(handle, name.as_ptr()) };
        (!ptr.is_null()).then_some(ptr)
    }

    /// How many CUDA devices the driver sees (`cuInit`, `cuDeviceGetCount`); `None`
    /// without a driver.
    pub fn device_count() -> Option<usize> {
        let lib = ["libcuda.so.1", "libcuda.so"]
            .iter()
            .find_map(|l| open_library(l))?;
        type CuInit = unsafe extern "C" fn(c_uint) -> c_int;
        type CuDeviceGetCount = unsafe extern "C" fn(*mut c_int) -> c_int;
        // SAFETY: the symbols have these C signatures in every CUDA driver API version.
        unsafe {
            let init: CuInit = std::mem::transmute(symbol(lib, "cuInit")?);
            let count_fn: CuDeviceGetCount = std::mem::transmute(symbol(lib, "cuDeviceGetCount")?);
            if init(0) != 0 {
                return None;
            }
            let mut count: c_int = 0;
            (count_fn(&mut count) == 0).then_some(count.max(0) as usize)
        }
    }

    /// `(free, total)` bytes of GPU `index` from NVML (`libnvidia-ml.so.1`, shipped with
    /// the driver), which needs no CUDA context.
    pub fn memory(index: usize) -> Option<(u64, u64)> {
        let lib = ["libnvidia-ml.so.1", "libnvidia-ml.so"]
            .iter()
            .find_map(|l| open_library(l))?;
        #[repr(C)]
        struct Memory {
            total: u64,
            free: u64,
            used: u64,
        }
        type Init = unsafe extern "C" fn() -> c_int;
        type ByIndex = unsafe extern "C" fn(c_uint, *mut *mut c_void) -> c_int;
        type MemoryInfo = unsafe extern "C" fn(*mut c_void, *mut Memory) -> c_int;
        // SAFETY: NVML's documented C signatures (nvmlInit_v2, nvmlDeviceGetHandleByIndex_v2,
        // nvmlDeviceGetMemoryInfo with the v1 struct of three u64).
        unsafe {
            let init: Init = std::mem::transmute(symbol(lib, "nvmlInit_v2")?);
            let by_index: ByIndex =
                std::mem::transmute(symbol(lib, "nvmlDeviceGetHandleByIndex_v2")?);
            let info: MemoryInfo = std::mem::transmute(symbol(lib, "nvmlDeviceGetMemoryInfo")?);
            if init() != 0 {
                return None;
            }
            let mut device = std::ptr::null_mut();
            if by_index(index as c_uint, &mut device) != 0 {
                return None;
            }
            let mut memory = Memory {
                total: 0,
                free: 0,
                used: 0,
            };
            (info(device, &mut memory) == 0).then_some((memory.free, memory.total))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_gives_available_and_total_bytes() {
        let text =
            "MemTotal:       24576000 kB\nMemFree:          100 kB\nMemAvailable:   20480000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some((20_480_000 * 1024, 24_576_000 * 1024))
        );
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: x kB\nMemAvailable: 1 kB\n"), None);
    }

    #[test]
    fn names_parse_and_print_back() {
        for (text, spec) in [
            ("auto", DeviceSpec::Auto),
            ("", DeviceSpec::Auto),
            ("CPU", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
            ("wgpu", DeviceSpec::Wgpu),
        ] {
            assert_eq!(text.parse::<DeviceSpec>().unwrap(), spec);
        }
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:x", "wgpu:1", "auto:1"] {
            let err = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(err.contains(bad.split(':').next().unwrap()), "{err}");
        }
    }

    #[test]
    fn auto_never_opens_a_missing_backend() {
        // on a machine without a GPU (CI), auto is the CPU backend
        if cuda::first_present().is_none() && wgpu::hardware().is_none() {
            assert!(DeviceSpec::Auto
                .open()
                .unwrap()
                .description
                .starts_with("cpu"));
        }
    }
}
