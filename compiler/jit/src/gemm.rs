//! Full-width matrix multiplies: the GEMM micro-kernels of the AVX-512 and AVX2 tiers
//! (`x86::gemm_avx512`, `x86::gemm_avx2`) compiled into a `KernelModule` of their own and called
//! through a safe, bounds-checked entry.
//! They are the first layer of issue 16's generators and are not yet planned into training
//! steps; tests check them against a reference product, and the `kernel_timing` report measures
//! them against the tier's FMA peak.

use crate::module::{KernelId, KernelModule};
use crate::tier::Tier;
use crate::x86::{gemm_avx2, gemm_avx512, GemmShape};
use netc_ir::backend::BackendError;

/// `C = A · B` for one shape at one full-width tier.
pub struct FullWidthGemm {
    module: KernelModule,
    id: KernelId,
    shape: GemmShape,
}

impl FullWidthGemm {
    /// Generates and places the kernel for `shape` at `tier` (`Avx2` or `Avx512`); an error on
    /// a CPU without the tier's instructions.
    pub fn new(tier: Tier, shape: GemmShape) -> Result<FullWidthGemm, BackendError> {
        if !tier.supported() {
            return Err(BackendError::Host {
                what: format!("running {} code", tier.name()),
                detail: "this CPU does not have the instructions".to_owned(),
            });
        }
        let code = match tier {
            Tier::Avx512 => gemm_avx512(shape)?,
            Tier::Avx2 => gemm_avx2(shape)?,
            Tier::F32x4 => {
                return Err(BackendError::Plan(
                    "the f32x4 tier's kernels are Cranelift's".to_owned(),
                ))
            }
        };
        let mut module = KernelModule::new()?;
        let name = format!("gemm_{}_{}x{}", tier.name(), shape.k, shape.n);
        let id = module.define_machine_code(&name, code)?;
        module.finalize()?;
        Ok(FullWidthGemm { module, id, shape })
    }

    /// The shape it computes.
    pub fn shape(&self) -> GemmShape {
        self.shape
    }

    /// `c[..rows]` = `a[..rows] · b`, with the shape's strides.
    ///
    /// # Panics
    /// When a slice is shorter than `rows` rows (or `k` rows of `b`) at its stride.
    pub fn run(&self, a: &[f32], b: &[f32], c: &mut [f32], rows: usize) {
        let s = self.shape;
        let needs = |count: usize, stride: usize, width: usize| match count {
            0 => 0,
            n => (n - 1) * stride + width,
        };
        let a_needs = match (rows, s.k) {
            (0, _) | (_, 0) => 0,
            (r, k) => (r - 1) * s.lda + (k - 1) * s.a_k + 1,
        };
        assert!(a.len() >= a_needs, "a is too short");
        assert!(b.len() >= needs(s.k, s.ldb, s.n), "b is too short");
        assert!(c.len() >= needs(rows, s.ldc, s.n), "c is too short");
        let table = [
            a.as_ptr().cast_mut().cast::<u8>(),
            b.as_ptr().cast_mut().cast::<u8>(),
            c.as_mut_ptr().cast::<u8>(),
        ];
        let f = self.module.get(self.id);
        // SAFETY: the CPU has the tier's instructions (checked in `new`); the code reads `rows`
        // rows of `a` (`lda` apart, each `k` elements `a_k` apart) and `k` rows of `b`, and
        // writes `rows` rows of `c`, each no further than its row's width at the shape's
        // stride (the last vector of a row is masked), which the assertions above put inside
        // the slices; it touches nothing else.
        unsafe { f(table.as_ptr(), rows as i64, 0, 0, [0f32].as_ptr()) };
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
                    let shape = GemmShape::row_major(k, n, lda, ldb, ldc);
                    let gemm = FullWidthGemm::new(tier, shape).expect("compiles");
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
        let shape = GemmShape::row_major(k, n, k, n, n);
        let a = random(7 * k, &mut rng);
        let b = random(k * n, &mut rng);
        for tier in tiers() {
            let gemm = FullWidthGemm::new(tier, shape).expect("compiles");
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
                    k: batch,
                    n: units,
                    lda: 1,
                    a_k: ldx,
                    ldb: units,
                    ldc: units,
                };
                let gemm = FullWidthGemm::new(tier, shape).expect("compiles");
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
        let shape = GemmShape::row_major(3072, 100, 3072, 100, 100);
        let a = random(33 * 3072, &mut rng);
        let b = random(3072 * 100, &mut rng);
        let results: Vec<Vec<f32>> = tiers
            .iter()
            .map(|&tier| {
                let mut c = vec![0f32; 33 * 100];
                FullWidthGemm::new(tier, shape)
                    .expect("compiles")
                    .run(&a, &b, &mut c, 33);
                c
            })
            .collect();
        assert!(results.windows(2).all(|w| w[0] == w[1]));
    }
}
