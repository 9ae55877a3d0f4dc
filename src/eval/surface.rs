//! 3D overlap and surface metrics of binary volumes with anisotropic voxels: IoU, Dice and
//! the normalised surface distance (NSD, Nikolov et al. 2021): the fraction of both
//! surfaces that lies within a tolerance (mm) of the other surface.
//!
//! A surface voxel is a foreground voxel with a 6-neighbour that is background or outside
//! the volume. Distances are exact Euclidean distances between voxel centres (a separable
//! distance transform with the voxel spacing), computed in the bounding box of both masks
//! grown by the tolerance, which leaves every distance up to the tolerance unchanged.

/// A binary volume, x fastest.
pub struct Mask3 {
    pub dims: [usize; 3],
    pub data: Vec<bool>,
}

impl Mask3 {
    fn at(&self, x: usize, y: usize, z: usize) -> bool {
        self.data[x + self.dims[0] * (y + self.dims[1] * z)]
    }

    pub fn count(&self) -> usize {
        self.data.iter().filter(|&&v| v).count()
    }

    /// The surface voxels' coordinates.
    pub fn surface(&self) -> Vec<[usize; 3]> {
        let [nx, ny, nz] = self.dims;
        let mut out = Vec::new();
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    if !self.at(x, y, z) {
                        continue;
                    }
                    let edge = x == 0
                        || y == 0
                        || z == 0
                        || x + 1 == nx
                        || y + 1 == ny
                        || z + 1 == nz
                        || !self.at(x - 1, y, z)
                        || !self.at(x + 1, y, z)
                        || !self.at(x, y - 1, z)
                        || !self.at(x, y + 1, z)
                        || !self.at(x, y, z - 1)
                        || !self.at(x, y, z + 1);
                    if edge {
                        out.push([x, y, z]);
                    }
                }
            }
        }
        out
    }
}

/// IoU and Dice; both 1 when both masks are empty, 0 when one is.
pub fn overlap(predicted: &Mask3, truth: &Mask3) -> (f64, f64) {
    super::metrics::overlap_of(
        predicted
            .data
            .iter()
            .copied()
            .zip(truth.data.iter().copied()),
    )
}

/// 1D squared distance transform of `f` at positions `i * spacing` (Felzenszwalb and
/// Huttenlocher's lower envelope of parabolas).
fn edt_1d(f: &[f64], spacing: f64, out: &mut [f64]) {
    let n = f.len();
    let pos = |i: usize| i as f64 * spacing;
    let mut v = vec![0usize; n];
    let mut z = vec![0f64; n + 1];
    let mut k = 0usize;
    let first = match f.iter().position(|x| x.is_finite()) {
        Some(i) => i,
        None => {
            out.fill(f64::INFINITY);
            return;
        }
    };
    v[0] = first;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    for q in first + 1..n {
        if !f[q].is_finite() {
            continue;
        }
        loop {
            let p = v[k];
            let s =
                ((f[q] + pos(q) * pos(q)) - (f[p] + pos(p) * pos(p))) / (2.0 * (pos(q) - pos(p)));
            // z[0] is -inf, so k never drops below 0
            if s <= z[k] {
                k -= 1;
                continue;
            }
            k += 1;
            v[k] = q;
            z[k] = s;
            z[k + 1] = f64::INFINITY;
            break;
        }
    }
    let mut k = 0usize;
    for (q, o) in out.iter_mut().enumerate() {
        while z[k + 1] < pos(q) {
            k += 1;
        }
        let d = pos(q) - pos(v[k]);
        *o = d * d + f[v[k]];
    }
}

/// Squared distance (mm²) from every voxel of a `dims` box to the nearest seed voxel.
fn squared_distance_to(seeds: &[[usize; 3]], dims: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let [nx, ny, nz] = dims;
    let mut d = vec![f64::INFINITY; nx * ny * nz];
    for s in seeds {
        d[s[0] + nx * (s[1] + ny * s[2])] = 0.0;
    }
    let idx = |x: usize, y: usize, z: usize| x + nx * (y + ny * z);
    for axis in 0..3 {
        let len = dims[axis];
        let mut line = vec![0f64; len];
        let mut out = vec![0f64; len];
        let (a, b) = match axis {
            0 => (ny, nz),
            1 => (nx, nz),
            _ => (nx, ny),
        };
        for i in 0..a {
            for j in 0..b {
                let at = |t: usize| match axis {
                    0 => idx(t, i, j),
                    1 => idx(i, t, j),
                    _ => idx(i, j, t),
                };
                for (t, l) in line.iter_mut().enumerate() {
                    *l = d[at(t)];
                }
                edt_1d(&line, spacing[axis], &mut out);
                for (t, o) in out.iter().enumerate() {
                    d[at(t)] = *o;
                }
            }
        }
    }
    d
}

/// Normalised surface distance at `tolerance_mm`; 1 when both masks are empty, 0 when
/// exactly one is.
pub fn normalized_surface_distance(
    predicted: &Mask3,
    truth: &Mask3,
    spacing: [f64; 3],
    tolerance_mm: f64,
) -> f64 {
    let sp = predicted.surface();
    let st = truth.surface();
    match (sp.is_empty(), st.is_empty()) {
        (true, true) => return 1.0,
        (true, false) | (false, true) => return 0.0,
        _ => {}
    }
    // the bounding box of both surfaces, grown by the tolerance
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    for v in sp.iter().chain(&st) {
        for a in 0..3 {
            lo[a] = lo[a].min(v[a]);
            hi[a] = hi[a].max(v[a]);
        }
    }
    for a in 0..3 {
        let margin = (tolerance_mm / spacing[a]).ceil() as usize + 1;
        lo[a] = lo[a].saturating_sub(margin);
        hi[a] = (hi[a] + margin).min(predicted.dims[a] - 1);
    }
    let dims = [hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1];
    let local = |v: &[usize; 3]| [v[0] - lo[0], v[1] - lo[1], v[2] - lo[2]];
    let sp: Vec<[usize; 3]> = sp.iter().map(local).collect();
    let st: Vec<[usize; 3]> = st.iter().map(local).collect();
    let to_truth = squared_distance_to(&st, dims, spacing);
    let to_predicted = squared_distance_to(&sp, dims, spacing);
    let tol2 = tolerance_mm * tolerance_mm;
    let within = |surface: &[[usize; 3]], field: &[f64]| {
        surface
            .iter()
            .filter(|v| field[v[0] + dims[0] * (v[1] + dims[1] * v[2])] <= tol2 + 1e-9)
            .count()
    };
    (within(&sp, &to_truth) + within(&st, &to_predicted)) as f64 / (sp.len() + st.len()) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn cube(dims: [usize; 3], lo: [usize; 3], hi: [usize; 3]) -> Mask3 {
        let mut data = vec![false; dims.iter().product()];
        for z in lo[2]..hi[2] {
            for y in lo[1]..hi[1] {
                for x in lo[0]..hi[0] {
                    data[x + dims[0] * (y + dims[1] * z)] = true;
                }
            }
        }
        Mask3 { dims, data }
    }

    /// The definition, by brute force.
    fn nsd_brute(p: &Mask3, t: &Mask3, spacing: [f64; 3], tol: f64) -> f64 {
        let (sp, st) = (p.surface(), t.surface());
        let dist = |a: &[usize; 3], b: &[usize; 3]| {
            (0..3)
                .map(|i| ((a[i] as f64 - b[i] as f64) * spacing[i]).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let near = |from: &[[usize; 3]], to: &[[usize; 3]]| {
            from.iter()
                .filter(|a| {
                    to.iter().map(|b| dist(a, b)).fold(f64::INFINITY, f64::min) <= tol + 1e-9
                })
                .count()
        };
        (near(&sp, &st) + near(&st, &sp)) as f64 / (sp.len() + st.len()) as f64
    }

    #[test]
    fn overlap_by_hand() {
        let dims = [6, 6, 6];
        let a = cube(dims, [0, 0, 0], [2, 2, 2]); // 8 voxels
        let b = cube(dims, [1, 0, 0], [3, 2, 2]); // 8, 4 shared
        let (iou, dice) = overlap(&a, &b);
        assert!((iou - 4.0 / 12.0).abs() < 1e-12 && (dice - 0.5).abs() < 1e-12);
        let empty = cube(dims, [0, 0, 0], [0, 0, 0]);
        assert_eq!(overlap(&empty, &empty), (1.0, 1.0));
        assert_eq!(overlap(&a, &empty), (0.0, 0.0));
    }

    #[test]
    fn nsd_of_shifted_cubes_depends_on_tolerance_and_spacing() {
        let dims = [12, 12, 8];
        let a = cube(dims, [2, 2, 2], [8, 8, 6]);
        let b = cube(dims, [3, 2, 2], [9, 8, 6]);
        assert_eq!(normalized_surface_distance(&a, &a, [1.0; 3], 0.0), 1.0);
        // a 1-voxel shift along x: within 1 mm everywhere at 1 mm spacing
        assert_eq!(normalized_surface_distance(&a, &b, [1.0; 3], 1.0), 1.0);
        // but not within 1 mm when x voxels are 2 mm wide
        let wide = normalized_surface_distance(&a, &b, [2.0, 1.0, 1.0], 1.0);
        assert!(wide < 1.0, "{wide}");
        assert!((wide - nsd_brute(&a, &b, [2.0, 1.0, 1.0], 1.0)).abs() < 1e-12);
        let empty = cube(dims, [0, 0, 0], [0, 0, 0]);
        assert_eq!(normalized_surface_distance(&a, &empty, [1.0; 3], 5.0), 0.0);
        assert_eq!(
            normalized_surface_distance(&empty, &empty, [1.0; 3], 5.0),
            1.0
        );
    }

    #[test]
    fn nsd_matches_brute_force_on_random_shapes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..20 {
            let dims = [
                rng.random_range(3..10),
                rng.random_range(3..10),
                rng.random_range(2..7),
            ];
            let n = dims.iter().product();
            let p = Mask3 {
                dims,
                data: (0..n).map(|_| rng.random_bool(0.3)).collect(),
            };
            let t = Mask3 {
                dims,
                data: (0..n).map(|_| rng.random_bool(0.3)).collect(),
            };
            let spacing = [
                rng.random_range(0.5..2.0),
                rng.random_range(0.5..2.0),
                rng.random_range(0.5..4.0),
            ];
            let tol = rng.random_range(0.0..3.0);
            let fast = normalized_surface_distance(&p, &t, spacing, tol);
            let slow = nsd_brute(&p, &t, spacing, tol);
            assert!(
                (fast - slow).abs() < 1e-12,
                "{dims:?} {spacing:?} {tol}: {fast} vs {slow}"
            );
        }
    }
}
