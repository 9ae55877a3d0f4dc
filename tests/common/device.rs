//! The device the parity and training tests run on: burn's CPU backend, or the one
//! `SAMTUNE_TEST_DEVICE` names (`.ci/run` runs them again with `wgpu` on Mesa's lavapipe,
//! a Vulkan driver on the CPU, so that every GPU kernel and fallback executes on every
//! change). The tolerances stay the CPU's: on lavapipe the parity errors measured the
//! same (image embedding 9.8e-7, decoder outputs <= 4.8e-6, upsampled logits <= 1.1e-5).

use burn::tensor::Device;
use samtune::device::DeviceSpec;

/// `SAMTUNE_TEST_DEVICE` parsed (`cpu` when unset). A device named there that cannot be
/// opened fails the test: a run asked for it.
pub fn test_device_spec() -> DeviceSpec {
    match std::env::var("SAMTUNE_TEST_DEVICE") {
        Err(_) => DeviceSpec::Cpu,
        Ok(name) => name
            .parse()
            .unwrap_or_else(|e| panic!("SAMTUNE_TEST_DEVICE: {e}")),
    }
}

/// The opened test device.
pub fn test_device() -> Device {
    let spec = test_device_spec();
    let chosen = spec
        .open()
        .unwrap_or_else(|e| panic!("SAMTUNE_TEST_DEVICE={spec}: {e}"));
    eprintln!("test device: {}", chosen.description);
    chosen.device
}
