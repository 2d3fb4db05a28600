//! Full-width matrix multiplies called on their own: the GEMMs of the AVX-512 and AVX2 tiers
//! (`x86::gemm`) that training kernels call from their matrix multiplies (`matmul`), here in a
//! `KernelModule` of their own behind a safe, bounds-checked entry, for the tests that check
//! them against a reference product and the `kernel_timing` report that measures them against
//! the tier's FMA peak.

use crate::module::{GemmFn, KernelModule};
use crate::tier::Tier;
use crate::x86::GemmShape;
use netc_ir::backend::BackendError;

/// `C (+)= A · B` for one shape and depth `k` at one full-width tier.
pub struct FullWidthGemm {
    /// Owns the code `f` points into.
    _module: KernelModule,
    f: GemmFn,
    shape: GemmShape,
    k: usize,
}

impl FullWidthGemm {
    /// Generates and places the GEMM for `shape` at `tier` (`Avx2` or `Avx512`); an error on
    /// a CPU without the tier's instructions.
    pub fn new(tier: Tier, shape: GemmShape, k: usize) -> Result<FullWidthGemm, BackendError> {
        // `run` has no operand to give an epilogue.
        if shape.epilogue.is_some() {
            return Err(BackendError::Plan(
                "a GEMM run on its own has no epilogue".to_owned(),
            ));
        }
        let mut module = KernelModule::new(tier)?;
        let index = module.standalone_gemm(shape)?;
        module.finalize()?;
        let f = module.get_gemm(index);
        Ok(FullWidthGemm {
            _module: module,
            f,
            shape,
            k,
        })
    }

    /// The shape it computes.
    pub fn shape(&self) -> GemmShape {
        self.shape
    }

    /// `c[..rows]` (+)= `a[..rows] · b`, with the shape's strides.
    ///
    /// # Panics
    /// When a slice is shorter than `rows` rows (or `k` rows of `b`) at its stride, or a row
    /// of `a` overlaps the next.
    pub fn run(&self, a: &[f32], b: &[f32], c: &mut [f32], rows: usize) {
        let (s, k) = (self.shape, self.k);
        let needs = |count: usize, stride: usize, width: usize| match count {
            0 => 0,
            n => (n - 1) * stride + width,
        };
        let a_needs = match (rows, k) {
            (0, _) | (_, 0) => 0,
            (r, k) => (r - 1) * s.lda + (k - 1) * s.a_k + 1,
        };
        assert!(a.len() >= a_needs, "a is too short");
        assert!(b.len() >= needs(k, s.ldb, s.n), "b is too short");
        assert!(c.len() >= needs(rows, s.ldc, s.n), "c is too short");
        // SAFETY: the CPU has the tier's instructions (checked by `KernelModule::new`); the
        // code reads `rows` rows of `a` (`lda` apart, each `k` elements `a_k` apart) and `k`
        // rows of `b`, and reads and writes `rows` rows of `c`, each no further than its row's
        // width at the shape's stride (the last vector of a row is masked), which the
        // assertions above put inside the slices; it touches nothing else.
        unsafe {
            (self.f)(
                a.as_ptr(),
                b.as_ptr(),
                c.as_mut_ptr(),
                rows as i64,
                k as i64,
                std::ptr::null(),
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netc_ir::rng::SplitMix64;

    fn random(len: usize, rng: &mut SplitMix64) -> Vec<f32> {
        (0..len)
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect()
    }

    /// The full-width tiers this CPU has.
    fn tiers() -> Vec<Tier> {
        Tier::available()
            .into_iter()
            .filter(|t| *t != Tier::F32x4)
            .collect()
    }

    /// Every odd shape the issue names, on every full-width tier here, against a product summed
    /// in f64: rows that are not a multiple of the tile, columns that are not a multiple of a
    /// vector (the masked tail), one column block and several, and padded strides whose padding
    /// must stay untouched.
    #[test]
    fn full_width_gemms_match_the_reference_on_odd_shapes() {
        let mut rng = SplitMix64::new(7, 0x6e44, 0);
        for tier in tiers() {
            for &k in &[1usize, 5, 100, 3072] {
                for &n in &[1usize, 3, 17, 33, 100, 128] {
                    let (lda, ldb, ldc) = (k + 3, n + 5, n + 2);
                    let shape = GemmShape::row_major(n, lda, ldb, ldc);
                    let gemm = FullWidthGemm::new(tier, shape, k).expect("compiles");
                    for &rows in &[1usize, 3, 4, 7, 32, 67] {
                        let a = random(rows * lda, &mut rng);
                        let b = random(k * ldb, &mut rng);
                        let mut c = vec![f32::NAN; rows * ldc];
                        gemm.run(&a, &b, &mut c, rows);
                        for r in 0..rows {
                            for j in 0..ldc {
                                let got = c[r * ldc + j];
                                if j >= n {
                                    assert!(got.is_nan(), "{tier:?} wrote padding {r},{j}");
                                    continue;
                                }
                                let want: f64 = (0..k)
                                    .map(|i| f64::from(a[r * lda + i]) * f64::from(b[i * ldb + j]))
                                    .sum();
                                let tol = 4e-6 * (k as f64).sqrt().max(1.0);
                                assert!(
                                    (f64::from(got) - want).abs() <= tol,
                                    "{tier:?} {shape:?} rows {rows}: c[{r},{j}] {got} != {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// A row's result is the same whichever tile computes it (several rows at once or one at a
    /// time): what "threads never change results" needs when threads split the rows.
    #[test]
    fn full_width_gemm_rows_do_not_depend_on_their_tile() {
        let mut rng = SplitMix64::new(8, 0x6e44, 0);
        let (k, n) = (300, 100);
        let shape = GemmShape::row_major(n, k, n, n);
        let a = random(7 * k, &mut rng);
        let b = random(k * n, &mut rng);
        for tier in tiers() {
            let gemm = FullWidthGemm::new(tier, shape, k).expect("compiles");
            let mut all = vec![0f32; 7 * n];
            gemm.run(&a, &b, &mut all, 7);
            for r in 0..7 {
                let mut one = vec![0f32; n];
                gemm.run(&a[r * k..], &b, &mut one, 1);
                assert_eq!(one, all[r * n..(r + 1) * n], "{tier:?} row {r}");
            }
        }
    }

    /// A weight gradient's product `xᵀ·dy`: `A` is `x` read transposed (rows 1 float apart,
    /// elements along `k` a row of `x` apart), on every full-width tier, against f64.
    #[test]
    fn full_width_gemms_take_a_transposed_a() {
        let mut rng = SplitMix64::new(10, 0x6e44, 0);
        for tier in tiers() {
            for &(batch, inputs, units) in &[(32usize, 100usize, 100usize), (7, 33, 17), (1, 3, 5)]
            {
                let ldx = inputs + 4;
                let shape = GemmShape {
                    n: units,
                    lda: 1,
                    a_k: ldx,
                    ldb: units,
                    ldc: units,
                    accumulate: false,
                    epilogue: None,
                    kc: 0,
                };
                let gemm = FullWidthGemm::new(tier, shape, batch).expect("compiles");
                let x = random(batch * ldx, &mut rng);
                let dy = random(batch * units, &mut rng);
                let mut dw = vec![0f32; inputs * units];
                gemm.run(&x, &dy, &mut dw, inputs);
                for i in 0..inputs {
                    for j in 0..units {
                        let want: f64 = (0..batch)
                            .map(|r| f64::from(x[r * ldx + i]) * f64::from(dy[r * units + j]))
                            .sum();
                        let got = f64::from(dw[i * units + j]);
                        assert!(
                            (got - want).abs() <= 1e-5,
                            "{tier:?} dW[{i},{j}] {got} {want}"
                        );
                    }
                }
            }
        }
    }

    /// The tiers compute the same products in the same order, so they agree bit for bit.
    #[test]
    fn full_width_tiers_agree_bit_for_bit() {
        let tiers = tiers();
        if tiers.len() < 2 {
            return;
        }
        let mut rng = SplitMix64::new(9, 0x6e44, 0);
        let shape = GemmShape::row_major(100, 3072, 100, 100);
        let a = random(33 * 3072, &mut rng);
        let b = random(3072 * 100, &mut rng);
        let results: Vec<Vec<f32>> = tiers
            .iter()
            .map(|&tier| {
                let mut c = vec![0f32; 33 * 100];
                FullWidthGemm::new(tier, shape, 3072)
                    .expect("compiles")
                    .run(&a, &b, &mut c, 33);
                c
            })
            .collect();
        assert!(results.windows(2).all(|w| w[0] == w[1]));
    }

    /// Accumulating adds the product to `C` as the first term of each chain, and a depth of 0
    /// leaves `C` as it was (accumulating) or zero (not).
    #[test]
    fn full_width_gemms_accumulate_and_take_an_empty_depth() {
        let mut rng = SplitMix64::new(11, 0x6e44, 0);
        let (rows, k, n) = (9, 37, 21);
        for tier in tiers() {
            for accumulate in [false, true] {
                let shape = GemmShape {
                    accumulate,
                    ..GemmShape::row_major(n, k, n, n)
                };
                let a = random(rows * k, &mut rng);
                let b = random(k * n, &mut rng);
                let old = random(rows * n, &mut rng);
                let mut c = old.clone();
                FullWidthGemm::new(tier, shape, k)
                    .expect("compiles")
                    .run(&a, &b, &mut c, rows);
                for r in 0..rows {
                    for j in 0..n {
                        let mut want = if accumulate { old[r * n + j] } else { 0.0 };
                        for t in 0..k {
                            want = a[r * k + t].mul_add(b[t * n + j], want);
                        }
                        assert_eq!(c[r * n + j], want, "{tier:?} acc {accumulate} [{r},{j}]");
                    }
                }
                let mut c = old.clone();
                FullWidthGemm::new(tier, shape, 0)
                    .expect("compiles")
                    .run(&a, &b, &mut c, rows);
                let want = if accumulate {
                    old.clone()
                } else {
                    vec![0.0; rows * n]
                };
                assert_eq!(c, want, "{tier:?} acc {accumulate}, k = 0");
            }
        }
    }

    /// Blocking `k` stores and reloads each tile between blocks, which leaves every chain of
    /// fused multiply-adds as it was: blocked and unblocked products agree bit for bit, for
    /// depths around the block and a last block that is short, empty or whole.
    #[test]
    fn k_blocks_do_not_change_the_product() {
        let mut rng = SplitMix64::new(12, 0x6e44, 0);
        let (rows, n) = (9, 37);
        for tier in tiers() {
            for &k in &[0usize, 1, 63, 64, 65, 255, 256, 257, 700] {
                for accumulate in [false, true] {
                    let a = random(rows * k.max(1), &mut rng);
                    let b = random(k.max(1) * n, &mut rng);
                    let old = random(rows * n, &mut rng);
                    let run = |kc| {
                        let shape = GemmShape {
                            accumulate,
                            kc,
                            ..GemmShape::row_major(n, k.max(1), n, n)
                        };
                        let mut c = old.clone();
                        FullWidthGemm::new(tier, shape, k)
                            .expect("compiles")
                            .run(&a, &b, &mut c, rows);
                        c
                    };
                    let whole = run(0);
                    for kc in [1, 64, 256] {
                        assert_eq!(run(kc), whole, "{tier:?} k {k} kc {kc} acc {accumulate}");
                    }
                }
            }
        }
    }
}
