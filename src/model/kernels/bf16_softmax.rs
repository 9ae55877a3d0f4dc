//! The bf16 attention's softmax, one row of logits at a time, rounded to bf16 into the
//! left operand of the product with the values: the relative-position bias added and the
//! maximum found in one pass, the exponentials and their sum in a second, the weights
//! normalised and rounded in a third. AVX-512 with FMA, which every CPU the bf16
//! precision runs on has.
//!
//! The f32 path's softmax takes five passes (bias, maximum, exponentials, sum,
//! normalisation; the bf16 path added a sixth, the rounding) and an exponential without
//! FMA on 8 lanes: in the bf16 encoder the exponential alone was about a fifth of the time
//! (805 M of them in ViT-B's four global-attention layers). The weights are normalised
//! before they are rounded, as the f32 softmax's would be: rounding them unnormalised and
//! scaling the products after would save the third pass, but put the f32 error of the
//! row's maximum and sum on every output instead of under bf16's rounding (measured: 3-5x
//! further from the rounded f64 result).

/// One query's terms of the decomposed bias: `rows [kh]` added to every key of a grid
/// row, `columns [kw]` to every key of a grid column.
#[derive(Clone, Copy)]
pub struct RowBias<'a> {
    pub rows: &'a [f32],
    pub columns: &'a [f32],
}

/// Adds `bias` to `logits` (one query's row over the `kh x kw` keys) and writes the
/// row's softmax, rounded to bf16, to `weights`; `logits` is left holding the
/// unnormalised exponentials. Needs [`super::bf16::available`].
pub fn biased_softmax_to_bf16(logits: &mut [f32], bias: Option<RowBias>, weights: &mut [u16]) {
    assert_eq!(logits.len(), weights.len(), "bf16 softmax: lengths differ");
    assert!(
        bias.is_none_or(|b| b.rows.len() * b.columns.len() == logits.len() && !b.columns.is_empty()),
        "bf16 softmax: the bias grid does not cover the keys"
    );
    assert!(
        super::bf16::available(),
        "the bf16 softmax needs a CPU with AVX512-BF16"
    );
    // SAFETY: the CPU has the features (`available` checks them), the slices have the
    // lengths the kernel indexes (checked above).
    unsafe { avx512(logits, bias, weights) }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn avx512(_: &mut [f32], _: Option<RowBias>, _: &mut [u16]) {
    unreachable!("the bf16 kernels are x86-64 only")
}

/// # Safety
/// The CPU has the features enabled here; `weights` is as long as `logits`, and the bias
/// grid covers it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,fma")]
unsafe fn avx512(logits: &mut [f32], bias: Option<RowBias>, weights: &mut [u16]) {
    use std::arch::x86_64::*;
    let keys = logits.len();
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    match bias {
        Some(RowBias { rows, columns }) => {
            // a grid row at a time: its columns (14 in a window, 64 in a global layer)
            // in pieces of up to 16 lanes
            let width = columns.len();
            for (segment, &row_term) in logits.chunks_exact_mut(width).zip(rows) {
                let row_term = _mm512_set1_ps(row_term);
                for start in (0..width).step_by(16) {
                    let mask = lanes(width - start);
                    let at = segment.as_mut_ptr().add(start);
                    let logit = _mm512_maskz_loadu_ps(mask, at);
                    let column_term = _mm512_maskz_loadu_ps(mask, columns.as_ptr().add(start));
                    // the official order: (logit + row term) + column term
                    let biased = _mm512_add_ps(_mm512_add_ps(logit, row_term), column_term);
                    _mm512_mask_storeu_ps(at, mask, biased);
                    max = _mm512_mask_max_ps(max, mask, max, biased);
                }
            }
        }
        None => {
            for start in (0..keys).step_by(16) {
                let mask = lanes(keys - start);
                let logit = _mm512_maskz_loadu_ps(mask, logits.as_ptr().add(start));
                max = _mm512_mask_max_ps(max, mask, max, logit);
            }
        }
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
    let mut sum = _mm512_setzero_ps();
    for start in (0..keys).step_by(16) {
        let mask = lanes(keys - start);
        let at = logits.as_mut_ptr().add(start);
        let exp = exp_of_non_positive(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, at), max));
        _mm512_mask_storeu_ps(at, mask, exp);
        sum = _mm512_mask_add_ps(sum, mask, sum, exp);
    }
    // normalised before the rounding, as the f32 softmax's weights would be rounded
    let inverse_sum = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
    for start in (0..keys).step_by(16) {
        let mask = lanes(keys - start);
        let exp = _mm512_maskz_loadu_ps(mask, logits.as_ptr().add(start));
        let rounded: __m256i =
            std::mem::transmute(_mm512_cvtneps_pbh(_mm512_mul_ps(exp, inverse_sum)));
        _mm256_mask_storeu_epi16(weights.as_mut_ptr().add(start).cast(), mask, rounded);
    }
}

/// The lanes of a piece with `remaining` values left in its row.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lanes(remaining: usize) -> u16 {
    if remaining >= 16 {
        u16::MAX
    } else {
        (1 << remaining) - 1
    }
}

/// e^x for x <= 0: x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor series to r^7
/// (truncation below 1e-8; measured within 6.5e-8 of f64, f32's own rounding), scaled by
/// 2^n (`vscalefps`, which goes through the subnormals to 0 below -87).
///
/// # Safety
/// The CPU has AVX-512 F and FMA.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,fma")]
unsafe fn exp_of_non_positive(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use super::{EXP_TAYLOR, LN2_HI, LN2_LO};
    use std::arch::x86_64::*;
    let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(EXP_TAYLOR[0]);
    for &coefficient in &EXP_TAYLOR[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(coefficient));
    }
    _mm512_scalef_ps(p, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::bf16::{available, to_bf16};

    fn bf16_value(bits: u16) -> f32 {
        half::bf16::from_bits(bits).to_f32()
    }

    /// Rows of every length the kernel's pieces split differently (whole pieces of 16,
    /// a masked tail, a window's 14-column grid), with and without a bias, against f64.
    #[test]
    fn softmax_matches_f64_and_rounds_as_bf16() {
        if !available() {
            eprintln!("skipped: no bf16 matrix hardware on this CPU");
            return;
        }
        let value = |i: usize| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 40.0;
        let (mut worst_exp, mut worst_sum) = (0.0f64, 0.0f64);
        for (grid_rows, grid_columns) in [(14, 14), (64, 64), (1, 5), (3, 17), (1, 16)] {
            let keys = grid_rows * grid_columns;
            let row_terms: Vec<f32> = (0..grid_rows).map(|i| value(3 * i + 1) / 8.0).collect();
            let column_terms: Vec<f32> =
                (0..grid_columns).map(|i| value(5 * i + 2) / 8.0).collect();
            for biased in [false, true] {
                let mut logits: Vec<f32> = (0..keys).map(value).collect();
                // in f32 as the kernel adds them, in the official order
                let biased_logits: Vec<f32> = match biased {
                    true => (0..keys)
                        .map(|j| {
                            logits[j] + row_terms[j / grid_columns] + column_terms[j % grid_columns]
                        })
                        .collect(),
                    false => logits.clone(),
                };
                let max = biased_logits
                    .iter()
                    .copied()
                    .fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f64> = biased_logits
                    .iter()
                    .map(|&l| ((l - max) as f64).exp())
                    .collect();
                let sum: f64 = exps.iter().sum();
                let bias = biased.then_some(RowBias {
                    rows: &row_terms,
                    columns: &column_terms,
                });
                let mut weights = vec![0u16; keys];
                biased_softmax_to_bf16(&mut logits, bias, &mut weights);
                let case = format!("{grid_rows}x{grid_columns}, biased {biased}");
                let kernel_sum: f64 = logits.iter().map(|&e| e as f64).sum();
                worst_sum = worst_sum.max(((kernel_sum - sum) / sum).abs());
                for (j, (&got, &e)) in logits.iter().zip(&exps).enumerate() {
                    let error = ((got as f64 - e) / e).abs();
                    worst_exp = worst_exp.max(error);
                    assert!(error < 1.5e-7, "{case}, key {j}: e^x {got} against {e}");
                }
                for (j, (&bits, &e)) in weights.iter().zip(&exps).enumerate() {
                    // the f32 weight is within about 3e-7 of the exact one: it rounds as
                    // the exact one does, unless that is as close to a tie of two bf16 values
                    let weight = e / sum;
                    let rounded = bf16_value(to_bf16(weight as f32)) as f64;
                    let got = bf16_value(bits) as f64;
                    assert!(
                        got == rounded || ((got + rounded) / 2.0 - weight).abs() <= 5e-7 * weight,
                        "{case}, key {j}: {got} for the weight {weight}"
                    );
                }
            }
        }
        println!("bf16 softmax: exponentials within {worst_exp:e} of f64, their sum {worst_sum:e}");
    }
}
