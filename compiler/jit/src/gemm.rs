//! Full-width matrix multiplies: the GEMM micro-kernels of the AVX-512 tier (`x86::gemm_avx512`)
//! compiled into a `KernelModule` of their own and called through a safe, bounds-checked entry.
//! They are the first layer of issue 16's generators and are not yet planned into training
//! steps; tests check them against a reference product, and the `kernel_timing` report measures
//! them against the tier's FMA peak.

use crate::module::{KernelId, KernelModule};
use crate::tier::Tier;
use crate::x86::{gemm_avx512, GemmShape};
use netc_ir::backend::BackendError;

/// `C = A · B` for one shape at AVX-512 width.
pub struct FullWidthGemm {
    module: KernelModule,
    id: KernelId,
    shape: GemmShape,
}

impl FullWidthGemm {
    /// Generates and places the kernel for `shape`; an error on a CPU without AVX-512.
    pub fn new(shape: GemmShape) -> Result<FullWidthGemm, BackendError> {
        if !Tier::Avx512.supported() {
            return Err(BackendError::Host {
                what: "running avx512 code".to_owned(),
                detail: "this CPU does not have the instructions".to_owned(),
            });
        }
        let mut module = KernelModule::new()?;
        let name = format!("gemm_avx512_{}x{}", shape.k, shape.n);
        let id = module.define_machine_code(&name, gemm_avx512(shape)?)?;
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
        assert!(a.len() >= needs(rows, s.lda, s.k), "a is too short");
        assert!(b.len() >= needs(s.k, s.ldb, s.n), "b is too short");
        assert!(c.len() >= needs(rows, s.ldc, s.n), "c is too short");
        let table = [
            a.as_ptr().cast_mut().cast::<u8>(),
            b.as_ptr().cast_mut().cast::<u8>(),
            c.as_mut_ptr().cast::<u8>(),
        ];
        let f = self.module.get(self.id);
        // SAFETY: the CPU has AVX-512 (checked in `new`); the code reads `rows` rows of `a` and
        // `k` rows of `b`, and writes `rows` rows of `c`, each no further than its row's width
        // at the shape's stride (the last vector of a row is masked), which the assertions
        // above put inside the slices; it touches nothing else.
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

    /// Every odd shape the issue names, against a product summed in f64: rows that are not a
    /// multiple of the tile, columns that are not a multiple of a vector (the masked tail), one
    /// column block and several, and padded strides whose padding must stay untouched.
    #[test]
    fn avx512_gemm_matches_the_reference_on_odd_shapes() {
        if !Tier::Avx512.supported() {
            return;
        }
        let mut rng = SplitMix64::new(7, 0x6e44, 0);
        for &k in &[1usize, 5, 100, 3072] {
            for &n in &[1usize, 3, 17, 33, 100, 128] {
                let (lda, ldb, ldc) = (k + 3, n + 5, n + 2);
                let shape = GemmShape {
                    k,
                    n,
                    lda,
                    ldb,
                    ldc,
                };
                let gemm = FullWidthGemm::new(shape).expect("compiles");
                for &rows in &[1usize, 3, 4, 7, 32, 67] {
                    let a = random(rows * lda, &mut rng);
                    let b = random(k * ldb, &mut rng);
                    let mut c = vec![f32::NAN; rows * ldc];
                    gemm.run(&a, &b, &mut c, rows);
                    for r in 0..rows {
                        for j in 0..ldc {
                            let got = c[r * ldc + j];
                            if j >= n {
                                assert!(got.is_nan(), "padding written at {r},{j} of {shape:?}");
                                continue;
                            }
                            let want: f64 = (0..k)
                                .map(|i| f64::from(a[r * lda + i]) * f64::from(b[i * ldb + j]))
                                .sum();
                            let tol = 1e-6 * (k as f64).sqrt().max(1.0) * 4.0;
                            assert!(
                                (f64::from(got) - want).abs() <= tol,
                                "{shape:?} rows {rows}: c[{r},{j}] = {got}, want {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A row's result is the same whichever tile computes it (four rows at once or one at a
    /// time): what "threads never change results" needs when threads split the rows.
    #[test]
    fn avx512_gemm_rows_do_not_depend_on_their_tile() {
        if !Tier::Avx512.supported() {
            return;
        }
        let mut rng = SplitMix64::new(8, 0x6e44, 0);
        let shape = GemmShape {
            k: 300,
            n: 100,
            lda: 300,
            ldb: 100,
            ldc: 100,
        };
        let gemm = FullWidthGemm::new(shape).expect("compiles");
        let a = random(7 * 300, &mut rng);
        let b = random(300 * 100, &mut rng);
        let mut all = vec![0f32; 7 * 100];
        gemm.run(&a, &b, &mut all, 7);
        for r in 0..7 {
            let mut one = vec![0f32; 100];
            gemm.run(&a[r * 300..], &b, &mut one, 1);
            assert_eq!(one, all[r * 100..(r + 1) * 100], "row {r}");
        }
    }
}
