//! The float types the reference executor runs in: `f32` for training, as every backend does,
//! and `f64` for gradient checks against finite differences. `Real` adds to ndarray's `NdFloat`
//! the few things the executor needs: conversions from `f64` constants and `erf` (for exact
//! GELU), which Rust's standard library does not offer on stable.
//!
//! Nothing here knows about ops; it must stay plain scalar math.

use ndarray::NdFloat;

pub trait Real: NdFloat {
    /// `x` rounded to this type.
    fn of(x: f64) -> Self;
    fn to_f64(self) -> f64;
    /// The error function, accurate to about 1e-15 (computed in `f64`).
    fn erf(self) -> Self {
        Self::of(erf(self.to_f64()))
    }
}

impl Real for f32 {
    fn of(x: f64) -> f32 {
        x as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Real for f64 {
    fn of(x: f64) -> f64 {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// `erf(x)`: a series of positive terms below 2.5 (no cancellation), a continued fraction for
/// `erfc` above, and ±1 beyond 6 where `erfc` is below `f64` resolution.
pub fn erf(x: f64) -> f64 {
    let a = x.abs();
    let value = if a < 2.5 {
        erf_series(a)
    } else if a < 6.0 {
        1.0 - erfc_continued_fraction(a)
    } else {
        1.0
    };
    if x < 0.0 {
        -value
    } else {
        value
    }
}

/// `erf(x) = 2/√π · exp(-x²) · Σₙ 2ⁿ x^(2n+1) / (1·3·…·(2n+1))` (Abramowitz & Stegun 7.1.6).
fn erf_series(x: f64) -> f64 {
    let x2 = x * x;
    let mut term = x;
    let mut sum = x;
    let mut n = 0.0;
    while term > sum * 1e-17 {
        n += 1.0;
        term *= 2.0 * x2 / (2.0 * n + 1.0);
        sum += term;
    }
    std::f64::consts::FRAC_2_SQRT_PI * (-x2).exp() * sum
}

/// `erfc(x) = exp(-x²)/√π · 1/(x + (1/2)/(x + (2/2)/(x + (3/2)/(x + …))))` for `x ≥ 2.5`,
/// evaluated bottom-up; 80 levels reach `f64` precision at `x = 2.5`.
fn erfc_continued_fraction(x: f64) -> f64 {
    let mut t = x;
    for k in (1..=80).rev() {
        t = x + (f64::from(k) / 2.0) / t;
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_reference_values() {
        // Reference values from CPython's math.erf / math.erfc.
        let cases = [
            (0.1, 0.1124629160182849),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (2.0, 0.9953222650189527),
            (2.4, 0.999311486103355),
            (2.5, 0.999593047982555),
            (2.6, 0.9997639655834707),
            (3.0, 0.9999779095030014),
            (4.0, 0.9999999845827421),
            (5.5, 0.9999999999999927),
        ];
        for (x, want) in cases {
            assert!((erf(x) - want).abs() < 2e-16 * 4.0, "erf({x}) = {}", erf(x));
            assert!((erf(-x) + want).abs() < 2e-16 * 4.0);
        }
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(7.0), 1.0);
        // The tail matters for GELU's gradient at very negative inputs: check erfc directly.
        let erfc3 = erfc_continued_fraction(3.0);
        assert!(
            (erfc3 / 2.2090496998585438e-05 - 1.0).abs() < 1e-13,
            "{erfc3}"
        );
        let erfc25 = erfc_continued_fraction(2.5);
        assert!(
            (erfc25 / 0.0004069520174449589 - 1.0).abs() < 1e-13,
            "{erfc25}"
        );
    }
}
