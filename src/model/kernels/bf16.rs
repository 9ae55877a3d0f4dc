//! bf16 matrix products for the image encoder's `bf16` precision
//! ([`crate::model::Precision`]): f32 operands rounded to bf16 (to nearest, ties to even,
//! as PyTorch's `.to(torch.bfloat16)`), the products summed in f32, f32 results. This is
//! what `torch.autocast("cpu", dtype=torch.bfloat16)` gives the official encoder's matrix
//! products through oneDNN's kernels. Two engines ([`Engine`]): Intel AMX tiles, and
//! AVX512-BF16's `vdpbf16ps` where there is no AMX (AMD Zen 4 and later).
//!
//! Written here because no crate serves: `gemm` multiplies f16 (AVX-512 FP16), not bf16,
//! and burn's CPU backend has no bf16 product; Rust's AMX intrinsics are unstable, so the
//! tile instructions are inline assembly (AVX512-BF16's intrinsics are stable). Where a
//! CPU has both, AMX runs: on an Intel Xeon a `vdpbf16ps` kernel encoded a ViT-B image in
//! 6.4 s against 4.5 s in f32 (that CPU's `vdpbf16ps` multiplies no more pairs a cycle
//! than its f32 FMAs do) and 2.7 s on AMX. On an AMD Zen 5 `vdpbf16ps` does 1.86x the
//! f32 FMAs' multiply-adds (`bench/peak.sh`), and this kernel encodes in 1.8 s against
//! 3.3 s in f32.
//!
//! Layout: the left operand is bf16 rows padded to whole tiles (`[32k rows, 32k depth]`);
//! the right operand is packed as AMX wants it (each tile 16 pairs of depth rows by 16
//! columns, a pair's two values side by side), tiles of one 16-column panel consecutive
//! over the depth; a tile's row of pairs is also what `vdpbf16ps` takes. Each step
//! multiplies a 32 x 32 block of results: in four tiles on AMX, a few rows at a time in
//! registers on AVX512-BF16.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::tile_config::{TILE_CONFIG, TILE_ROWS};

/// bf16 values in a row of a left tile (64 bytes): the depth one tile product covers.
const TILE_DEPTH: usize = 32;
/// Columns of a right or result tile (64 bytes of f32).
const TILE_COLUMNS: usize = 16;
/// bf16 values in a tile (1 KB).
const TILE_VALUES: usize = TILE_ROWS * TILE_DEPTH;
/// Results per register block side: 2 x 2 result tiles.
const BLOCK: usize = 32;
/// Result rows per parallel task: the task's left rows (with a 768 depth, 48 KB per 32
/// rows) stay in the core's L2 cache while it goes through its column panels.
const TASK_ROWS: usize = 4 * BLOCK;
/// Bytes of packed right operand one pass of [`product_parallel`] goes through: its
/// column panels stay in each core's L2 cache (2 MB on the Xeons measured) while every
/// row of the left operand meets them, instead of the whole right operand (3.4 MB for
/// the encoder's qkv layer) streaming from L3 once per task of rows.
const RIGHT_BLOCK_BYTES: usize = 768 << 10;

/// The bf16 matrix hardware a CPU can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// AMX tiles (Intel Xeon 4th generation, Sapphire Rapids, and later): 16 x 16 x 32
    /// products an instruction.
    Amx,
    /// AVX512-BF16's pairwise dot products into 16 f32 lanes (AMD Zen 4 and later, Intel
    /// Cooper Lake).
    Avx512Bf16,
}

impl Engine {
    /// The hardware's name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Amx => "AMX",
            Engine::Avx512Bf16 => "AVX512-BF16",
        }
    }
}

/// Every engine this CPU has and the OS lets this process use, best first (asked once).
/// Both need the AVX-512 extensions the element-wise bf16 kernels use (every CPU with
/// AMX has them).
fn engines() -> &'static [Engine] {
    static ENGINES: OnceLock<Vec<Engine>> = OnceLock::new();
    ENGINES.get_or_init(|| match (avx512_bf16(), amx_permitted()) {
        (false, _) => Vec::new(),
        (true, false) => vec![Engine::Avx512Bf16],
        (true, true) => vec![Engine::Amx, Engine::Avx512Bf16],
    })
}

/// The engine the products run on here, if any.
pub fn engine() -> Option<Engine> {
    engines().first().copied()
}

/// Whether bf16 products can run on this CPU.
pub fn available() -> bool {
    engine().is_some()
}

#[cfg(target_arch = "x86_64")]
fn avx512_bf16() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512bf16") && has!("fma")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_bf16() -> bool {
    false
}

/// Whether the CPU has AMX with bf16 and Linux grants this process the tile state.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_permitted() -> bool {
    // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE
    let features = std::arch::x86_64::__cpuid_count(7, 0).edx;
    let has_amx = features & (1 << 22) != 0 && features & (1 << 24) != 0;
    extern "C" {
        fn syscall(number: std::ffi::c_long, ...) -> std::ffi::c_long;
    }
    const SYS_ARCH_PRCTL: std::ffi::c_long = 158;
    const ARCH_REQ_XCOMP_PERM: std::ffi::c_long = 0x1023;
    const XFEATURE_XTILEDATA: std::ffi::c_long = 18;
    // Linux saves a process's tile data only once it has asked for it; without the
    // permission the first tile instruction faults.
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM) takes a feature number and touches no memory.
    has_amx && unsafe { syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn amx_permitted() -> bool {
    false
}

/// Values of an operand above which its filling is shared out to the rayon threads: a
/// linear layer's operands are; one attention head's stay on the head's thread.
const PARALLEL_VALUES: usize = 1 << 19;

/// `values` as a buffer to write into (as results for [`product`]).
pub fn as_uninit<T: Copy>(values: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: `MaybeUninit<T>` has `T`'s layout, and only initialised values are ever
    // written through the result.
    unsafe { &mut *(values as *mut [T] as *mut [MaybeUninit<T>]) }
}

/// `values`, each of them written since it was reserved, as initialised.
///
/// # Safety
/// Every element of `values` has been written.
unsafe fn assume_init(values: &mut [MaybeUninit<u16>]) -> &mut [u16] {
    &mut *(values as *mut [MaybeUninit<u16>] as *mut [u16])
}

/// `f` on each `chunk`-element piece of `values`' first `len` spare elements (on the
/// rayon threads when there are over [`PARALLEL_VALUES`]), which it must write entirely;
/// they are then `values`' elements. Fresh buffers are thus written once, with no
/// zeroing pass before.
fn write_all(
    values: &mut Vec<u16>,
    len: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [MaybeUninit<u16>]) + Sync,
) {
    use rayon::prelude::*;
    values.clear();
    values.reserve_exact(len);
    let spare = &mut values.spare_capacity_mut()[..len];
    if len > PARALLEL_VALUES {
        spare
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        spare
            .chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    }
    // SAFETY: `f` wrote every element of every chunk, which together are the `len`.
    unsafe { values.set_len(len) };
}

/// `x` rounded to the nearest bf16, ties to even; NaN stays NaN.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        0x7fc0
    } else {
        rounded
    }
}

/// A strided f32 matrix, in elements: `(i, j)` is at `start + i * row_stride + j *
/// column_stride`.
#[derive(Clone, Copy)]
pub struct Strided {
    pub start: *const f32,
    pub rows: usize,
    pub columns: usize,
    pub row_stride: isize,
    pub column_stride: isize,
}

// SAFETY: a `Strided` only reads the values it describes, which whoever made it keeps
// alive and unchanged while it is used (the fills' contract), from any thread.
unsafe impl Send for Strided {}
// SAFETY: as for `Send`.
unsafe impl Sync for Strided {}

impl Strided {
    /// A row-major matrix in `values`.
    pub fn rows_of(values: &[f32], rows: usize, columns: usize) -> Self {
        assert!(
            values.len() >= rows * columns,
            "matrix larger than its values"
        );
        Self {
            start: values.as_ptr(),
            rows,
            columns,
            row_stride: columns as isize,
            column_stride: 1,
        }
    }

    /// Row `i` as a slice (contiguous rows only).
    ///
    /// # Safety
    /// `start`, the strides and sizes describe live f32 values, and `column_stride` is 1.
    unsafe fn row(&self, i: usize) -> &[f32] {
        std::slice::from_raw_parts(
            self.start.offset(i as isize * self.row_stride),
            self.columns,
        )
    }

    /// # Safety
    /// As [`Self::row`], any strides.
    unsafe fn at(&self, i: usize, j: usize) -> f32 {
        *self
            .start
            .offset(i as isize * self.row_stride + j as isize * self.column_stride)
    }
}

fn padded(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// The left operand: `rows x depth` bf16, row-major, padded with zeros to whole blocks.
#[derive(Default)]
pub struct Left {
    values: Vec<u16>,
    rows: usize,
    columns: usize,
    /// Padded depth: the row stride.
    depth: usize,
}

impl Left {
    /// Refills `self` (keeping its allocation) with `scale * m`, its padding with zeros.
    ///
    /// # Safety
    /// `m` describes live f32 values.
    pub unsafe fn fill(&mut self, m: Strided, scale: f32) {
        let depth = padded(m.columns, TILE_DEPTH);
        let len = padded(m.rows, BLOCK) * depth;
        write_all(&mut self.values, len, BLOCK * depth, |task, block| {
            for (row, out) in block.chunks_exact_mut(depth).enumerate() {
                let i = task * BLOCK + row;
                let (values, padding) = out.split_at_mut(if i < m.rows { m.columns } else { 0 });
                padding.fill(MaybeUninit::new(0));
                if values.is_empty() {
                    continue;
                }
                // SAFETY: row `i` is one of `m`'s (the caller's contract).
                unsafe {
                    if m.column_stride == 1 {
                        round_row(values, m.row(i), scale);
                    } else {
                        for (j, value) in values.iter_mut().enumerate() {
                            value.write(to_bf16(scale * m.at(i, j)));
                        }
                    }
                }
            }
        });
        (self.rows, self.columns, self.depth) = (m.rows, m.columns, depth);
    }

    /// Refills `self` as `rows x columns`, `write(i, row)` writing the bf16 values of
    /// row `i` (all `columns` of them).
    pub fn fill_rows_with(
        &mut self,
        rows: usize,
        columns: usize,
        mut write: impl FnMut(usize, &mut [u16]),
    ) {
        let depth = padded(columns, TILE_DEPTH);
        // the padding of a fill of the same shape is still zero: only the values change
        if (self.rows, self.columns) != (rows, columns) || self.values.is_empty() {
            self.values.clear();
            self.values.resize(padded(rows, BLOCK) * depth, 0);
        }
        (self.rows, self.columns, self.depth) = (rows, columns, depth);
        for (i, row) in self.values.chunks_exact_mut(depth).take(rows).enumerate() {
            write(i, &mut row[..columns]);
        }
    }

    /// Row-major `rows x columns` values, `scale`d.
    pub fn fill_rows(&mut self, values: &[f32], columns: usize, scale: f32) {
        let m = Strided::rows_of(values, values.len() / columns, columns);
        // SAFETY: `m` lies within `values`.
        unsafe { self.fill(m, scale) }
    }
}

/// `out[j] = bf16(scale * x[j])`: with AVX512-BF16's conversion (16 values an
/// instruction) where the CPU has it, as every CPU with AMX does.
fn round_row(out: &mut [MaybeUninit<u16>], x: &[f32], scale: f32) {
    assert_eq!(out.len(), x.len(), "bf16 rounding: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512bf16") && std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has both (checked), and the slices have the same length.
        return unsafe { round_row_avx512(out, x, scale) };
    }
    for (out, &x) in out.iter_mut().zip(x) {
        out.write(to_bf16(scale * x));
    }
}

/// [`round_row`] on AVX512-BF16. `vcvtneps2bf16` rounds to nearest even as [`to_bf16`]
/// does, but flushes subnormal inputs to zero: the products would (AMX reads bf16
/// subnormals as zero), so the results are the same.
///
/// # Safety
/// The CPU has AVX-512 F and BF16; `out` and `x` have the same length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_row_avx512(out: &mut [MaybeUninit<u16>], x: &[f32], scale: f32) {
    use std::arch::x86_64::*;
    let factor = _mm512_set1_ps(scale);
    let whole = x.len() / 16 * 16;
    let (out, out_tail) = out.split_at_mut(whole);
    let (x, x_tail) = x.split_at(whole);
    for (out, x) in out.chunks_exact_mut(16).zip(x.chunks_exact(16)) {
        let scaled = _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr()), factor);
        let rounded: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(scaled));
        _mm256_storeu_si256(out.as_mut_ptr().cast(), rounded);
    }
    for (out, &x) in out_tail.iter_mut().zip(x_tail) {
        out.write(to_bf16(scale * x));
    }
}

/// `out[2j] = bf16(first[j])`, `out[2j + 1] = bf16(second[j])`.
struct InterleaveRows<'a>(&'a mut [u16], &'a [f32], &'a [f32]);

impl super::vectorised::Loop for InterleaveRows<'_> {
    #[inline(always)]
    fn run(self) {
        let InterleaveRows(out, first, second) = self;
        for ((out, &a), &b) in out.chunks_exact_mut(2).zip(first).zip(second) {
            out[0] = to_bf16(a);
            out[1] = to_bf16(b);
        }
    }
}

/// The packed tiles of `m`'s 16 columns from `first` (fewer or none at its edge, the
/// operand being padded to whole blocks) into `panel`, which holds zeros.
///
/// # Safety
/// `m` describes live f32 values; `panel` holds its depth in tiles.
unsafe fn fill_panel(panel: &mut [u16], m: Strided, first: usize) {
    let width = m.columns.saturating_sub(first).min(TILE_COLUMNS);
    if width == 0 {
        return;
    }
    // the offset of depth row `k`'s pair in its tile
    let offset =
        |k: usize| (k / TILE_DEPTH) * TILE_VALUES + ((k % TILE_DEPTH) / 2) * 2 * TILE_COLUMNS;
    if m.column_stride == 1 {
        // two rows at a time, the pair's 16-column pieces interleaved into one 64-byte row
        let zeros = [0.0; TILE_COLUMNS];
        for k in (0..m.rows).step_by(2) {
            let first_row = &m.row(k)[first..][..width];
            let second = if k + 1 < m.rows {
                &m.row(k + 1)[first..][..width]
            } else {
                &zeros[..width]
            };
            let row = &mut panel[offset(k)..][..2 * width];
            super::vectorised::run(InterleaveRows(row, first_row, second));
        }
        return;
    }
    // one column at a time: along the operand's contiguous axis when it is transposed
    for j in 0..width {
        for k in 0..m.rows {
            panel[offset(k) + j * 2 + k % 2] = to_bf16(m.at(k, first + j));
        }
    }
}

/// The right operand, `depth x columns`, packed in AMX's pair-interleaved tiles and
/// padded with zeros to whole blocks.
#[derive(Default)]
pub struct Right {
    values: Vec<u16>,
    columns: usize,
    /// Depth steps of one tile each.
    steps: usize,
}

impl Right {
    /// Refills `self` (keeping its allocation) with `m`, one 16-column panel a task.
    ///
    /// # Safety
    /// `m` describes live f32 values.
    pub unsafe fn fill(&mut self, m: Strided) {
        let steps = padded(m.rows, TILE_DEPTH) / TILE_DEPTH;
        (self.columns, self.steps) = (m.columns, steps);
        let panel_values = steps * TILE_VALUES;
        let len = padded(m.columns, BLOCK) * steps * TILE_DEPTH;
        write_all(&mut self.values, len, panel_values, |panel, out| {
            out.fill(MaybeUninit::new(0));
            // SAFETY: just written; the panel's columns are `m`'s (the caller's contract).
            unsafe { fill_panel(assume_init(out), m, panel * TILE_COLUMNS) }
        });
    }

    pub fn columns(&self) -> usize {
        self.columns
    }

    /// The packed tiles of column panel `panel` (16 columns), over the whole depth.
    fn panel(&self, panel: usize) -> *const u16 {
        self.values[panel * self.steps * TILE_VALUES..].as_ptr()
    }
}

/// `out [rows, columns] = left x right`, rows `out_stride` f32 apart, on this thread
/// (only the results are written), on this CPU's [`engine`].
pub fn product(left: &Left, right: &Right, out: &mut [MaybeUninit<f32>], out_stride: usize) {
    product_on(best_engine(), left, right, out, out_stride)
}

/// [`product`] on `engine`.
fn product_on(
    engine: Engine,
    left: &Left,
    right: &Right,
    out: &mut [MaybeUninit<f32>],
    out_stride: usize,
) {
    check_shapes(engine, left, right);
    assert!(
        left.rows == 0 || out.len() >= (left.rows - 1) * out_stride + right.columns,
        "bf16 product: result smaller than its shape"
    );
    // SAFETY: the engine is there (checked), and `product_rows` stays within the operands
    // (their padding included) and `out` (checked above).
    unsafe {
        product_rows(
            engine,
            left,
            right,
            0..left.rows,
            0..right.columns,
            out,
            out_stride,
        )
    }
}

/// [`product`] with its rows shared out to the rayon threads (`out` holds `rows x
/// columns` contiguous results, all written), one block of columns at a time.
///
/// Measured on a 2-core Xeon (AMX), one thread, 4096 rows: 1.27x faster for the
/// encoder's qkv layer (768 x 2304), 1.17x for its first MLP layer (768 x 3072), even
/// for the others, than going through all columns in each task of rows.
pub fn product_parallel(left: &Left, right: &Right, out: &mut [MaybeUninit<f32>]) {
    product_parallel_on(best_engine(), left, right, out)
}

/// [`product_parallel`] on `engine`.
fn product_parallel_on(engine: Engine, left: &Left, right: &Right, out: &mut [MaybeUninit<f32>]) {
    use rayon::prelude::*;
    check_shapes(engine, left, right);
    let columns = right.columns;
    assert_eq!(out.len(), left.rows * columns, "bf16 product: result size");
    let panel_bytes = left.depth * BLOCK * std::mem::size_of::<u16>();
    let block_columns = (RIGHT_BLOCK_BYTES / panel_bytes).max(1) * BLOCK;
    for first_column in (0..columns).step_by(block_columns) {
        let block = first_column..(first_column + block_columns).min(columns);
        out.par_chunks_mut(TASK_ROWS * columns)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * TASK_ROWS;
                let rows = first..first + out.len() / columns;
                // SAFETY: as in `product_on`; this task's rows of `out` are `out`.
                unsafe { product_rows(engine, left, right, rows, block.clone(), out, columns) }
            });
    }
}

fn best_engine() -> Engine {
    engine().expect("bf16 products need AMX or AVX512-BF16")
}

fn check_shapes(engine: Engine, left: &Left, right: &Right) {
    assert!(engines().contains(&engine), "no {engine:?} on this CPU");
    assert_eq!(
        left.depth,
        right.steps * TILE_DEPTH,
        "bf16 product: depths differ"
    );
}

/// One 32 x 32 block of results, `out = lhs [32, depth] x panel [depth, 32]`: `(lhs,
/// depth, panel, steps, out, out_stride)`.
///
/// # Safety (of calling one)
/// Its engine is ready; `lhs` holds 32 rows of `depth` bf16 (`depth = 32 steps`),
/// `panel` two column panels of `steps` tiles, `out` 32 rows of 32 f32 at `out_stride`.
type Block = unsafe fn(*const u16, usize, *const u16, usize, *mut f32, usize);

/// Results `rows` x `columns` (of the whole product) into `out`, whose first row is
/// `rows.start` (and first column the product's first), by blocks of `engine`'s
/// [`Block`]; `columns.start` is a multiple of [`BLOCK`].
///
/// # Safety
/// `engine` is on this CPU; `out` holds those rows at `out_stride`.
unsafe fn product_rows(
    engine: Engine,
    left: &Left,
    right: &Right,
    rows: std::ops::Range<usize>,
    columns: std::ops::Range<usize>,
    out: &mut [MaybeUninit<f32>],
    out_stride: usize,
) {
    let block: Block = match engine {
        Engine::Amx => amx_block,
        Engine::Avx512Bf16 => avx512_block,
    };
    let all_blocks = || {
        let mut edge = [0f32; BLOCK * BLOCK];
        for column in columns.step_by(BLOCK) {
            let panel = right.panel(column / TILE_COLUMNS);
            for row in rows.clone().step_by(BLOCK) {
                let lhs = left.values[row * left.depth..].as_ptr();
                let (height, width) = (
                    (rows.end - row).min(BLOCK),
                    (right.columns - column).min(BLOCK),
                );
                let local = (row - rows.start) * out_stride + column;
                if height == BLOCK && width == BLOCK {
                    let out = out[local..].as_mut_ptr().cast::<f32>();
                    block(lhs, left.depth, panel, right.steps, out, out_stride);
                    continue;
                }
                block(
                    lhs,
                    left.depth,
                    panel,
                    right.steps,
                    edge.as_mut_ptr(),
                    BLOCK,
                );
                for (i, results) in edge.chunks_exact(BLOCK).take(height).enumerate() {
                    let out = &mut out[local + i * out_stride..][..width];
                    for (out, &result) in out.iter_mut().zip(results) {
                        out.write(result);
                    }
                }
            }
        }
    };
    if engine == Engine::Amx {
        with_tiles(all_blocks)
    } else {
        all_blocks()
    }
}

/// Runs `f` with the tiles configured, releasing them after (an idle thread then does
/// not carry 8 KB of tile state through context switches).
///
/// # Safety
/// [`amx_permitted`].
#[cfg(target_arch = "x86_64")]
unsafe fn with_tiles<R>(f: impl FnOnce() -> R) -> R {
    std::arch::asm!("ldtilecfg [{}]", in(reg) TILE_CONFIG.0.as_ptr(), options(nostack));
    let result = f();
    std::arch::asm!("tilerelease", options(nostack, nomem));
    result
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn with_tiles<R>(_: impl FnOnce() -> R) -> R {
    unreachable!("AMX is x86-64 only")
}

/// A [`Block`] on AMX tiles (configured by [`with_tiles`]): four result tiles, each step
/// two left and two right tiles loaded.
#[cfg(target_arch = "x86_64")]
unsafe fn amx_block(
    lhs: *const u16,
    depth: usize,
    panel: *const u16,
    steps: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let (lhs_stride, out_stride) = (depth * 2, out_stride * 4);
    std::arch::asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        "2:",
        "tileloadd tmm4, [{a0} + {lhs_stride}*1]",
        "tileloadd tmm5, [{a1} + {lhs_stride}*1]",
        "tileloadd tmm6, [{b0} + {tile_stride}*1]",
        "tileloadd tmm7, [{b1} + {tile_stride}*1]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        "add {a0}, 64",
        "add {a1}, 64",
        "add {b0}, 1024",
        "add {b1}, 1024",
        "dec {steps}",
        "jnz 2b",
        "tilestored [{c0} + {out_stride}*1], tmm0",
        "tilestored [{c0} + {out_stride}*1 + 64], tmm1",
        "tilestored [{c1} + {out_stride}*1], tmm2",
        "tilestored [{c1} + {out_stride}*1 + 64], tmm3",
        a0 = inout(reg) lhs => _,
        a1 = inout(reg) lhs.add(TILE_ROWS * depth) => _,
        b0 = inout(reg) panel => _,
        b1 = inout(reg) panel.add(steps * TILE_VALUES) => _,
        steps = inout(reg) steps => _,
        lhs_stride = in(reg) lhs_stride,
        tile_stride = in(reg) 2 * TILE_COLUMNS * 2,
        c0 = in(reg) out,
        c1 = in(reg) out.byte_add(TILE_ROWS * out_stride),
        out_stride = in(reg) out_stride,
        options(nostack),
    );
}

/// Rows of results [`avx512_block`] keeps in registers at a time: two registers of 16
/// f32 per row (the block's 32 columns). 12 rows (24 sums, 14 loads for 24 products
/// instead of 10 for 16) measured no faster on an AMD Zen 5.
const DOT_ROWS: usize = 8;

/// A [`Block`] on AVX512-BF16: [`DOT_ROWS`] rows at a time in registers; each pair of
/// depth values is one broadcast from the left row and one `vdpbf16ps` per register, on
/// the right panels' row of pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn avx512_block(
    lhs: *const u16,
    depth: usize,
    panel: *const u16,
    steps: usize,
    out: *mut f32,
    out_stride: usize,
) {
    use std::arch::x86_64::*;
    let second_panel = panel.add(steps * TILE_VALUES);
    for first in (0..BLOCK).step_by(DOT_ROWS) {
        let mut sums = [[_mm512_setzero_ps(); 2]; DOT_ROWS];
        // the panels' rows of pairs are consecutive over their tiles
        for pair in 0..steps * TILE_ROWS {
            let offset = pair * 2 * TILE_COLUMNS;
            let right: [__m512bh; 2] = std::mem::transmute([
                _mm512_loadu_si512(panel.add(offset).cast()),
                _mm512_loadu_si512(second_panel.add(offset).cast()),
            ]);
            for (row, sums) in sums.iter_mut().enumerate() {
                let values = lhs.add((first + row) * depth + pair * 2).cast::<i32>();
                let left: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(values.read_unaligned()));
                sums[0] = _mm512_dpbf16_ps(sums[0], left, right[0]);
                sums[1] = _mm512_dpbf16_ps(sums[1], left, right[1]);
            }
        }
        for (row, sums) in sums.iter().enumerate() {
            let out = out.add((first + row) * out_stride);
            _mm512_storeu_ps(out, sums[0]);
            _mm512_storeu_ps(out.add(TILE_COLUMNS), sums[1]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn amx_block(_: *const u16, _: usize, _: *const u16, _: usize, _: *mut f32, _: usize) {
    unreachable!("bf16 products are x86-64 only")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn avx512_block(_: *const u16, _: usize, _: *const u16, _: usize, _: *mut f32, _: usize) {
    unreachable!("bf16 products are x86-64 only")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16_value(x: f32) -> f64 {
        f32::from_bits((to_bf16(x) as u32) << 16) as f64
    }

    #[test]
    fn rounds_to_nearest_even_as_half_does() {
        for x in [
            0.0f32,
            -0.0,
            1.0,
            1.0 + 1.0 / 256.0, // halfway between two bf16: to the even one
            1.0 + 3.0 / 256.0, // halfway: to the even one, upwards
            std::f32::consts::PI,
            -2.7182817,
            1e-40,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            assert_eq!(to_bf16(x), half::bf16::from_f32(x).to_bits(), "{x}");
        }
        assert!(f32::from_bits((to_bf16(f32::NAN) as u32) << 16).is_nan());
        // the vectorised rounding of a row: the same, but for subnormals (zero there)
        let row: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.3711 + 1e-3).collect();
        let mut rounded = vec![0u16; row.len()];
        round_row(as_uninit(&mut rounded), &row, 1.5);
        let each: Vec<u16> = row.iter().map(|&x| to_bf16(1.5 * x)).collect();
        assert_eq!(rounded, each);
    }

    /// Products of every shape class (whole blocks, ragged rows, columns and depths,
    /// strided and transposed operands, operands filled on the rayon threads, results in
    /// more than one block of columns), on every engine of this CPU, against f64 sums of
    /// the bf16-rounded operands:
    /// only the f32 summation differs. The operands are refilled from shape to shape, as
    /// the attention's are: a larger shape's values must not show through the padding
    /// of a smaller one.
    #[test]
    fn products_match_the_rounded_operands_exact_sums() {
        if !available() {
            eprintln!("skipped: this CPU has no bf16 matrix hardware");
            return;
        }
        // the first shape's left operand and the third's right one are filled in parallel;
        // the third's 600 columns at a depth of 1000 are two blocks of `product_parallel`
        const {
            assert!(600 * 1000 > PARALLEL_VALUES);
            assert!(RIGHT_BLOCK_BYTES / (1024 * BLOCK * 2) * BLOCK < 600);
        }
        let (mut left, mut right, mut row_major) =
            (Left::default(), Right::default(), Right::default());
        for (m, k, n) in [
            (600, 1000, 40),
            (32, 32, 32),
            (40, 1000, 600),
            (64, 768, 96),
            (37, 50, 19),
            (1, 1, 1),
            (200, 64, 196),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919 % 997) as f32 - 498.0) / 97.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 104729 % 991) as f32 - 495.0) / 89.0)
                .collect();
            left.fill_rows(&a, k, 0.5);
            // the right operand row-major, as a linear layer's weight, and stored
            // transposed ([n, k] row-major), as attention's keys
            let b_t: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let transposed = Strided {
                start: b_t.as_ptr(),
                rows: k,
                columns: n,
                row_stride: 1,
                column_stride: k as isize,
            };
            // SAFETY: the views lie within `b_t` and `b`.
            unsafe {
                right.fill(transposed);
                row_major.fill(Strided::rows_of(&b, k, n));
            }
            assert_eq!(
                right.values, row_major.values,
                "{m}x{k}x{n}: packings differ"
            );
            for &engine in engines() {
                let mut out = vec![MaybeUninit::new(f32::NAN); m * (n + 3)];
                product_on(engine, &left, &right, &mut out, n + 3);
                let mut parallel = vec![MaybeUninit::new(0.0); m * n];
                product_parallel_on(engine, &left, &right, &mut parallel);
                // SAFETY: every element was initialised when the vectors were made.
                let (out, parallel): (Vec<f32>, Vec<f32>) = unsafe {
                    (
                        out.into_iter().map(|x| x.assume_init()).collect(),
                        parallel.into_iter().map(|x| x.assume_init()).collect(),
                    )
                };
                for i in 0..m {
                    for j in 0..n {
                        let terms = (0..k)
                            .map(|l| bf16_value(0.5 * a[i * k + l]) * bf16_value(b[l * n + j]));
                        let exact: f64 = terms.clone().sum();
                        let magnitude: f64 = terms.map(f64::abs).sum();
                        let got = out[i * (n + 3) + j] as f64;
                        // f32 sums of k terms: within k ulps of the terms' magnitude
                        let bound = magnitude * k as f64 * f32::EPSILON as f64 + 1e-30;
                        assert!(
                            (got - exact).abs() <= bound,
                            "{engine:?} {m}x{k}x{n} ({i}, {j}): {got} vs {exact}"
                        );
                        assert_eq!(
                            parallel[i * n + j],
                            out[i * (n + 3) + j],
                            "{engine:?} {m}x{k}x{n}"
                        );
                    }
                    // the padding between rows is not written
                    assert!(out[i * (n + 3) + n..][..3].iter().all(|x| x.is_nan()));
                }
            }
        }
    }
}
