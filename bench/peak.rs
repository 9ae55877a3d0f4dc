//! The CPU's own arithmetic peaks, measured: fp32 FMAs (AVX-512 or AVX2) and, where the
//! CPU has AMX, bf16 tile products and the rate tiles load from cache. BENCHMARKS.md's
//! "hardware peak" beside PyTorch's GEMM rate. One thread per core (`std::thread`),
//! each in a register-only loop; no dependencies, so `bench/peak.sh` builds it with
//! `rustc` alone.

use std::arch::asm;
use std::time::Instant;

/// Best time of five runs of `f`, after one to warm up.
fn best_seconds(f: impl Fn()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

/// `f` on `threads` threads at once; its best time.
fn on_threads(threads: usize, f: fn()) -> f64 {
    let handles: Vec<_> = (0..threads)
        .map(|_| std::thread::spawn(move || best_seconds(f)))
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("measuring thread"))
        .fold(0.0, f64::max)
}

const FMA_ITERATIONS: usize = 20_000_000;

/// A loop of 12 independent multiply-adds `$op` (`vfmadd231ps`, or `vdpbf16ps`: bf16
/// pairs) on the vector registers `$r` (`zmm` or `ymm`) an iteration: enough of them to
/// cover the latency on two pipes. All start at zero (no subnormal operands).
macro_rules! fma_loop {
    ($op:literal, $r:literal) => {
        asm!(
            concat!("vxorps ", $r, "0, ", $r, "0, ", $r, "0"),
            concat!("vxorps ", $r, "1, ", $r, "1, ", $r, "1"),
            concat!("vxorps ", $r, "2, ", $r, "2, ", $r, "2"),
            concat!("vxorps ", $r, "3, ", $r, "3, ", $r, "3"),
            concat!("vxorps ", $r, "4, ", $r, "4, ", $r, "4"),
            concat!("vxorps ", $r, "5, ", $r, "5, ", $r, "5"),
            concat!("vxorps ", $r, "6, ", $r, "6, ", $r, "6"),
            concat!("vxorps ", $r, "7, ", $r, "7, ", $r, "7"),
            concat!("vxorps ", $r, "8, ", $r, "8, ", $r, "8"),
            concat!("vxorps ", $r, "9, ", $r, "9, ", $r, "9"),
            concat!("vxorps ", $r, "10, ", $r, "10, ", $r, "10"),
            concat!("vxorps ", $r, "11, ", $r, "11, ", $r, "11"),
            concat!("vxorps ", $r, "12, ", $r, "12, ", $r, "12"),
            concat!("vxorps ", $r, "13, ", $r, "13, ", $r, "13"),
            "2:",
            concat!($op, " ", $r, "0, ", $r, "12, ", $r, "13"),
            concat!($op, " ", $r, "1, ", $r, "12, ", $r, "13"),
            concat!($op, " ", $r, "2, ", $r, "12, ", $r, "13"),
            concat!($op, " ", $r, "3, ", $r, "12, ", $r, "13"),
            concat!($op, " ", $r, "4, ", $r, "12, ", $r, "13"),
            concat!($op, " ", $r, "5, ", $r, "12, ", $r, "13"),
            concat!($op, " ", $r, "6, ", $r, "12, ", $r, "13"),
            concat!($op, " ", $r, "7, ", $r, "12, ", $r, "13"),
            concat!($op, " ", $r, "8, ", $r, "12, ", $r, "13"),
            concat!($op, " ", $r, "9, ", $r, "12, ", $r, "13"),
            concat!($op, " ", $r, "10, ", $r, "12, ", $r, "13"),
            concat!($op, " ", $r, "11, ", $r, "12, ", $r, "13"),
            "dec {n}",
            "jnz 2b",
            n = inout(reg) FMA_ITERATIONS => _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _, out("xmm4") _,
            out("xmm5") _, out("xmm6") _, out("xmm7") _, out("xmm8") _, out("xmm9") _,
            out("xmm10") _, out("xmm11") _, out("xmm12") _, out("xmm13") _,
            options(nostack, nomem),
        )
    };
}

/// [`fma_loop`] on 16 lanes: 12 x 16 x 2 FLOP an iteration.
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512() {
    fma_loop!("vfmadd231ps", "zmm");
}

/// [`fma_loop`] of bf16 pair products (AVX512-BF16) on 16 lanes: 12 x 16 x 2 x 2 FLOP an
/// iteration.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot_bf16_avx512() {
    fma_loop!("vdpbf16ps", "zmm");
}

/// [`fma_loop`] on 8 lanes.
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2() {
    fma_loop!("vfmadd231ps", "ymm");
}

const TILE_ITERATIONS: usize = 1_000_000;

#[path = "../src/model/kernels/tile_config.rs"]
mod tile_config;
use tile_config::TILE_CONFIG;

/// Linux grants a process AMX's tile state on request (`arch_prctl`).
fn amx_permitted() -> bool {
    extern "C" {
        fn syscall(number: std::ffi::c_long, ...) -> std::ffi::c_long;
    }
    let features = std::arch::x86_64::__cpuid_count(7, 0).edx;
    let has_amx = features & (1 << 22) != 0 && features & (1 << 24) != 0;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) touches no memory.
    has_amx && unsafe { syscall(158, 0x1023, 18) } == 0
}

/// Four independent 16 x 16 x 32 bf16 tile products an iteration, tiles never reloaded.
fn tile_products() {
    // SAFETY: AMX is permitted (checked before any thread runs this).
    unsafe {
        asm!(
            "ldtilecfg [{config}]",
            "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
            "tilezero tmm4", "tilezero tmm5", "tilezero tmm6", "tilezero tmm7",
            "2:",
            "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
            "dec {n}", "jnz 2b",
            "tilerelease",
            config = in(reg) TILE_CONFIG.0.as_ptr(),
            n = inout(reg) TILE_ITERATIONS => _,
            options(nostack),
        );
    }
}

/// Four 1 KB tile loads an iteration from a 4 KB buffer (in L1).
fn tile_loads() {
    let buffer = vec![0u8; 4096];
    // SAFETY: AMX is permitted; every load lies within `buffer`.
    unsafe {
        asm!(
            "ldtilecfg [{config}]",
            "2:",
            "tileloadd tmm4, [{p} + {stride}*1]",
            "tileloadd tmm5, [{p} + {stride}*1 + 1024]",
            "tileloadd tmm6, [{p} + {stride}*1 + 2048]",
            "tileloadd tmm7, [{p} + {stride}*1 + 3072]",
            "dec {n}", "jnz 2b",
            "tilerelease",
            config = in(reg) TILE_CONFIG.0.as_ptr(),
            p = in(reg) buffer.as_ptr(),
            stride = in(reg) 64usize,
            n = inout(reg) TILE_ITERATIONS => _,
            options(nostack),
        );
    }
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map(|t| t.parse().expect("threads: a number"))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let gflops = |flop: f64, seconds: f64| flop * threads as f64 / seconds / 1e9;
    println!("threads: {threads}");
    let fma_flop = |lanes: usize| (FMA_ITERATIONS * 12 * lanes * 2) as f64;
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512 F (checked).
        let seconds = on_threads(threads, || unsafe { fma_avx512() });
        println!(
            "fp32 FMA peak (AVX-512): {:.0} GFLOP/s",
            gflops(fma_flop(16), seconds)
        );
    }
    if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16") {
        // SAFETY: the CPU has AVX-512 F and BF16 (checked).
        let seconds = on_threads(threads, || unsafe { dot_bf16_avx512() });
        println!(
            "bf16 pair-product peak (AVX512-BF16 vdpbf16ps): {:.0} GFLOP/s",
            gflops(2.0 * fma_flop(16), seconds)
        );
    }
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked).
        let seconds = on_threads(threads, || unsafe { fma_avx2() });
        println!(
            "fp32 FMA peak (AVX2): {:.0} GFLOP/s",
            gflops(fma_flop(8), seconds)
        );
    }
    if !amx_permitted() {
        println!("AMX: none");
        return;
    }
    let products = (TILE_ITERATIONS * 4) as f64;
    let seconds = on_threads(threads, tile_products);
    println!(
        "bf16 AMX tile-product peak: {:.0} GFLOP/s ({:.2} ns a tile product)",
        gflops(products * 16.0 * 16.0 * 32.0 * 2.0, seconds),
        seconds / products * 1e9
    );
    let seconds = on_threads(threads, tile_loads);
    println!(
        "AMX tile loads from L1: {:.2} ns per 1 KB tile, {:.0} GB/s a core",
        seconds / products * 1e9,
        1024.0 * products / seconds / 1e9
    );
}
