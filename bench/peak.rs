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

/// 12 independent 16-lane FMAs an iteration (enough to cover the FMA latency on two
/// pipes): 12 x 16 x 2 FLOP.
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512() {
    asm!(
        "vxorps zmm0, zmm0, zmm0", "vxorps zmm1, zmm1, zmm1", "vxorps zmm2, zmm2, zmm2",
        "vxorps zmm3, zmm3, zmm3", "vxorps zmm4, zmm4, zmm4", "vxorps zmm5, zmm5, zmm5",
        "vxorps zmm6, zmm6, zmm6", "vxorps zmm7, zmm7, zmm7", "vxorps zmm8, zmm8, zmm8",
        "vxorps zmm9, zmm9, zmm9", "vxorps zmm10, zmm10, zmm10", "vxorps zmm11, zmm11, zmm11",
        "2:",
        "vfmadd231ps zmm0, zmm12, zmm13", "vfmadd231ps zmm1, zmm12, zmm13",
        "vfmadd231ps zmm2, zmm12, zmm13", "vfmadd231ps zmm3, zmm12, zmm13",
        "vfmadd231ps zmm4, zmm12, zmm13", "vfmadd231ps zmm5, zmm12, zmm13",
        "vfmadd231ps zmm6, zmm12, zmm13", "vfmadd231ps zmm7, zmm12, zmm13",
        "vfmadd231ps zmm8, zmm12, zmm13", "vfmadd231ps zmm9, zmm12, zmm13",
        "vfmadd231ps zmm10, zmm12, zmm13", "vfmadd231ps zmm11, zmm12, zmm13",
        "dec {n}", "jnz 2b",
        n = inout(reg) FMA_ITERATIONS => _,
        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
        out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
        out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _,
        options(nostack, nomem),
    );
}

/// As [`fma_avx512`] on 8 lanes.
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2() {
    asm!(
        "vxorps ymm0, ymm0, ymm0", "vxorps ymm1, ymm1, ymm1", "vxorps ymm2, ymm2, ymm2",
        "vxorps ymm3, ymm3, ymm3", "vxorps ymm4, ymm4, ymm4", "vxorps ymm5, ymm5, ymm5",
        "vxorps ymm6, ymm6, ymm6", "vxorps ymm7, ymm7, ymm7", "vxorps ymm8, ymm8, ymm8",
        "vxorps ymm9, ymm9, ymm9", "vxorps ymm10, ymm10, ymm10", "vxorps ymm11, ymm11, ymm11",
        "2:",
        "vfmadd231ps ymm0, ymm12, ymm13", "vfmadd231ps ymm1, ymm12, ymm13",
        "vfmadd231ps ymm2, ymm12, ymm13", "vfmadd231ps ymm3, ymm12, ymm13",
        "vfmadd231ps ymm4, ymm12, ymm13", "vfmadd231ps ymm5, ymm12, ymm13",
        "vfmadd231ps ymm6, ymm12, ymm13", "vfmadd231ps ymm7, ymm12, ymm13",
        "vfmadd231ps ymm8, ymm12, ymm13", "vfmadd231ps ymm9, ymm12, ymm13",
        "vfmadd231ps ymm10, ymm12, ymm13", "vfmadd231ps ymm11, ymm12, ymm13",
        "dec {n}", "jnz 2b",
        n = inout(reg) FMA_ITERATIONS => _,
        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _,
        out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _,
        out("ymm10") _, out("ymm11") _, out("ymm12") _, out("ymm13") _,
        options(nostack, nomem),
    );
}

const TILE_ITERATIONS: usize = 1_000_000;

/// Tile configuration: palette 1, eight tiles of 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const TILE_CONFIG: TileConfig = {
    let mut config = [0u8; 64];
    config[0] = 1;
    let mut tile = 0;
    while tile < 8 {
        config[16 + 2 * tile] = 64;
        config[48 + tile] = 16;
        tile += 1;
    }
    TileConfig(config)
};

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
        println!("fp32 FMA peak (AVX-512): {:.0} GFLOP/s", gflops(fma_flop(16), seconds));
    }
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked).
        let seconds = on_threads(threads, || unsafe { fma_avx2() });
        println!("fp32 FMA peak (AVX2): {:.0} GFLOP/s", gflops(fma_flop(8), seconds));
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
