//! Transcendentals as f32x4 polynomial code emitted into the kernels (exp, expm1, ln, tanh,
//! sigmoid, erfc for exact GELU), the dropout mask generator in i32x4 lanes, and scalar Rust twins
//! of each that follow the same steps, so tests can check the emitted code against the twin and
//! the twin against f64.
//!
//! Accuracy target: about 1e-6 relative on the range that matters (the argument ranges where the
//! result is a normal f32). Nothing here calls a libcall: every function is straight-line CLIF.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::types::{F32X4, I32X4};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value};

use super::emit::Fx;

/// Arguments of `exp` are clamped to this range so `2^k` stays a normal f32 (k in [-126, 127]).
pub(crate) const EXP_LO: f32 = -87.0;
pub(crate) const EXP_HI: f32 = 88.0;
pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
/// Adding 1.5 · 2^23 rounds to the nearest integer and leaves it in the low mantissa bits.
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;
/// Cody–Waite split of ln 2 (Cephes): `k * LN2_HI` is exact for |k| < 512.
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// Taylor coefficients of expm1 on [-ln2/2, ln2/2] after `r + r^2/2`.
pub(crate) const EXPM1_POLY: [f32; 6] = [
    1.0 / 5040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
];
/// Cephes `logf` polynomial, highest degree first.
const LN_POLY: [f32; 9] = [
    7.037_683_6e-2,
    -1.151_461e-1,
    1.167_699_9e-1,
    -1.242_014_1e-1,
    1.424_932_3e-1,
    -1.666_805_8e-1,
    2.000_071_4e-1,
    -2.499_999_4e-1,
    3.333_333e-1,
];
const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// Numerical Recipes' `erfcc` Chebyshev fit: `erfc(z) = t · exp(-z² + P(t))`, `t = 1/(1 + z/2)`,
/// fractional error below 1.2e-7 for all z >= 0. Highest degree first.
const ERFC_POLY: [f32; 10] = [
    0.170_872_77,
    -0.822_152_2,
    1.488_515_9,
    -1.135_204,
    0.278_868_07,
    -0.186_288_06,
    0.096_784_18,
    0.374_091_96,
    1.000_023_7,
    -1.265_512_2,
];
/// 1 / √(2π), for the normal density in GELU's derivative.
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// Returns `(em1r, s)` with `exp(x) = s · (1 + em1r)`: `s = 2^k` and `em1r = expm1(r)` for the
/// reduced argument `r = x - k ln2`.
fn exp_parts(fx: &mut Fx, x: Value) -> (Value, Value) {
    let lo = fx.splat(EXP_LO);
    let hi = fx.splat(EXP_HI);
    let x = fx.max(x, lo);
    let x = fx.min(x, hi);
    let log2e = fx.splat(LOG2E);
    let magic = fx.splat(ROUND_MAGIC);
    let t = fx.fma(x, log2e, magic);
    let kf = fx.sub(t, magic);
    let ln2_hi = fx.splat(-LN2_HI);
    let ln2_lo = fx.splat(-LN2_LO);
    let r = fx.fma(kf, ln2_hi, x);
    let r = fx.fma(kf, ln2_lo, r);
    let mut p = fx.splat(EXPM1_POLY[0]);
    for c in &EXPM1_POLY[1..] {
        let c = fx.splat(*c);
        p = fx.fma(p, r, c);
    }
    let r2 = fx.mul(r, r);
    let em1r = fx.fma(p, r2, r);
    // The integer k sits in the low bits of `t`; `(k + 127) << 23` is the bit pattern of 2^k.
    let t_bits = fx.b.ins().bitcast(I32X4, MemFlagsData::new(), t);
    let bias = fx.splat_i(127 - ROUND_MAGIC.to_bits() as i32);
    let k_biased = fx.b.ins().iadd(t_bits, bias);
    let s_bits = fx.b.ins().ishl_imm_u(k_biased, 23);
    let s = fx.b.ins().bitcast(F32X4, MemFlagsData::new(), s_bits);
    (em1r, s)
}

pub fn exp(fx: &mut Fx, x: Value) -> Value {
    let (em1r, s) = exp_parts(fx, x);
    fx.fma(s, em1r, s)
}

/// `exp(x) - 1`, accurate relative to the result near 0 (where `exp(x) - 1` would cancel).
pub fn expm1(fx: &mut Fx, x: Value) -> Value {
    let (em1r, s) = exp_parts(fx, x);
    let one = fx.splat(1.0);
    let sm1 = fx.sub(s, one);
    fx.fma(s, em1r, sm1)
}

/// Natural logarithm of positive normal numbers (the softmax denominators in the loss).
pub fn ln(fx: &mut Fx, x: Value) -> Value {
    let bits = fx.b.ins().bitcast(I32X4, MemFlagsData::new(), x);
    let exp_field = fx.b.ins().sshr_imm_u(bits, 23);
    let e_bias = fx.splat_i(-126);
    let e = fx.b.ins().iadd(exp_field, e_bias);
    let mant_mask = fx.splat_i(0x007f_ffff);
    let half_bits = fx.splat_i(0x3f00_0000);
    let mant = fx.b.ins().band(bits, mant_mask);
    let m_bits = fx.b.ins().bor(mant, half_bits);
    let m = fx.b.ins().bitcast(F32X4, MemFlagsData::new(), m_bits);
    // m in [0.5, 1): below √½ use 2m - 1 and one less in the exponent, so f is in [-0.29, 0.41].
    let sqrt_half = fx.splat(SQRT_HALF);
    let small = fx.cmp(FloatCC::LessThan, m, sqrt_half);
    let e = fx.b.ins().iadd(e, small);
    let one = fx.splat(1.0);
    let m2 = fx.add(m, m);
    let m_adj = fx.select(small, m2, m);
    let f = fx.sub(m_adj, one);
    let ef = fx.b.ins().fcvt_from_sint(F32X4, e);
    let z = fx.mul(f, f);
    let mut p = fx.splat(LN_POLY[0]);
    for c in &LN_POLY[1..] {
        let c = fx.splat(*c);
        p = fx.fma(p, f, c);
    }
    let pf = fx.mul(p, f);
    let y = fx.mul(pf, z);
    let lo = fx.splat(LN2_LO);
    let y = fx.fma(ef, lo, y);
    let mhalf = fx.splat(-0.5);
    let y = fx.fma(z, mhalf, y);
    let r = fx.add(f, y);
    let hi = fx.splat(LN2_HI);
    fx.fma(ef, hi, r)
}

/// `tanh(x) = e / (e + 2)` with `e = expm1(2x)`: no cancellation near 0, saturates to ±1.
pub fn tanh(fx: &mut Fx, x: Value) -> Value {
    let lo = fx.splat(-9.0);
    let hi = fx.splat(9.0);
    let x = fx.max(x, lo);
    let x = fx.min(x, hi);
    let x2 = fx.add(x, x);
    let e = expm1(fx, x2);
    let two = fx.splat(2.0);
    let d = fx.add(e, two);
    fx.div(e, d)
}

pub fn sigmoid(fx: &mut Fx, x: Value) -> Value {
    let nx = fx.b.ins().fneg(x);
    let e = exp(fx, nx);
    let one = fx.splat(1.0);
    let d = fx.add(one, e);
    fx.div(one, d)
}

/// `erfc(z)` for `z >= 0`.
pub fn erfc_pos(fx: &mut Fx, z: Value) -> Value {
    let one = fx.splat(1.0);
    let half = fx.splat(0.5);
    let d = fx.fma(z, half, one);
    let t = fx.div(one, d);
    let mut p = fx.splat(ERFC_POLY[0]);
    for c in &ERFC_POLY[1..] {
        let c = fx.splat(*c);
        p = fx.fma(p, t, c);
    }
    let nz = fx.b.ins().fneg(z);
    let arg = fx.fma(nz, z, p);
    let e = exp(fx, arg);
    fx.mul(t, e)
}

/// `2 Φ(x)` (twice the standard normal CDF) from `erfc`, accurate in both tails.
fn two_phi(fx: &mut Fx, x: Value) -> Value {
    let ax = fx.b.ins().fabs(x);
    let z = fx.mulc(ax, SQRT_HALF);
    let e = erfc_pos(fx, z);
    let two = fx.splat(2.0);
    let upper = fx.sub(two, e);
    let zero = fx.zero4();
    let nonneg = fx.cmp(FloatCC::GreaterThanOrEqual, x, zero);
    fx.select(nonneg, upper, e)
}

/// Exact GELU, `x Φ(x)`.
pub fn gelu(fx: &mut Fx, x: Value) -> Value {
    let p2 = two_phi(fx, x);
    let hx = fx.mulc(x, 0.5);
    fx.mul(hx, p2)
}

/// `d/dx (x Φ(x)) = Φ(x) + x φ(x)`.
pub fn gelu_grad(fx: &mut Fx, x: Value) -> Value {
    let p2 = two_phi(fx, x);
    let phi = fx.mulc(p2, 0.5);
    let nx = fx.b.ins().fneg(x);
    let half = fx.splat(0.5);
    let hx = fx.mul(nx, half);
    let arg = fx.mul(hx, x);
    let e = exp(fx, arg);
    let dens = fx.mulc(e, INV_SQRT_2PI);
    fx.fma(x, dens, phi)
}

/// The dropout keep mask (all ones where kept) for elements `elem` (i32x4) under `key` (i32
/// splat): exactly `rng::uniform(key, elem) >= rate`, computed in lanes.
pub fn keep_mask(fx: &mut Fx, key: Value, elem: Value, rate: f32) -> Value {
    let golden = fx.splat_i(0x9e37_79b9_u32 as i32);
    let m1 = fx.splat_i(0x85eb_ca6b_u32 as i32);
    let m2 = fx.splat_i(0xc2b2_ae35_u32 as i32);
    let e = fx.b.ins().imul(elem, golden);
    let mut x = fx.b.ins().bxor(key, e);
    let s = fx.b.ins().ushr_imm_u(x, 16);
    x = fx.b.ins().bxor(x, s);
    x = fx.b.ins().imul(x, m1);
    let s = fx.b.ins().ushr_imm_u(x, 13);
    x = fx.b.ins().bxor(x, s);
    x = fx.b.ins().imul(x, m2);
    let s = fx.b.ins().ushr_imm_u(x, 16);
    x = fx.b.ins().bxor(x, s);
    // 24 bits fit a signed conversion exactly, which is cheaper on x64 than an unsigned one.
    let bits24 = fx.b.ins().ushr_imm_u(x, 8);
    let f = fx.b.ins().fcvt_from_sint(F32X4, bits24);
    let u = fx.mulc(f, 1.0 / 16_777_216.0);
    let r = fx.splat(rate);
    fx.cmp(FloatCC::GreaterThanOrEqual, u, r)
}

/// Scalar twins of the emitted code, step for step (with `mul_add` where the kernels use FMA).
#[cfg(test)]
pub mod scalar {
    use super::*;

    fn exp_parts(x: f32) -> (f32, f32) {
        let x = x.clamp(EXP_LO, EXP_HI);
        let t = x.mul_add(LOG2E, ROUND_MAGIC);
        let kf = t - ROUND_MAGIC;
        let r = kf.mul_add(-LN2_HI, x);
        let r = kf.mul_add(-LN2_LO, r);
        let p = EXPM1_POLY[1..]
            .iter()
            .fold(EXPM1_POLY[0], |p, &c| p.mul_add(r, c));
        let em1r = p.mul_add(r * r, r);
        let k_biased = (t.to_bits() as i32).wrapping_add(127 - ROUND_MAGIC.to_bits() as i32);
        (em1r, f32::from_bits((k_biased << 23) as u32))
    }

    pub fn exp(x: f32) -> f32 {
        let (em1r, s) = exp_parts(x);
        s.mul_add(em1r, s)
    }

    pub fn expm1(x: f32) -> f32 {
        let (em1r, s) = exp_parts(x);
        s.mul_add(em1r, s - 1.0)
    }

    pub fn ln(x: f32) -> f32 {
        let bits = x.to_bits() as i32;
        let mut e = (bits >> 23) - 126;
        let m = f32::from_bits(((bits & 0x007f_ffff) | 0x3f00_0000) as u32);
        let f = if m < SQRT_HALF {
            e -= 1;
            m + m - 1.0
        } else {
            m - 1.0
        };
        let ef = e as f32;
        let z = f * f;
        let p = LN_POLY[1..]
            .iter()
            .fold(LN_POLY[0], |p, &c| p.mul_add(f, c));
        let y = p * f * z;
        let y = ef.mul_add(LN2_LO, y);
        let y = z.mul_add(-0.5, y);
        ef.mul_add(LN2_HI, f + y)
    }

    pub fn tanh(x: f32) -> f32 {
        let e = expm1(2.0 * x.clamp(-9.0, 9.0));
        e / (e + 2.0)
    }

    pub fn sigmoid(x: f32) -> f32 {
        1.0 / (1.0 + exp(-x))
    }

    pub fn erfc_pos(z: f32) -> f32 {
        let t = 1.0 / z.mul_add(0.5, 1.0);
        let p = ERFC_POLY[1..]
            .iter()
            .fold(ERFC_POLY[0], |p, &c| p.mul_add(t, c));
        t * exp((-z).mul_add(z, p))
    }

    fn two_phi(x: f32) -> f32 {
        let e = erfc_pos(x.abs() * SQRT_HALF);
        if x >= 0.0 {
            2.0 - e
        } else {
            e
        }
    }

    pub fn gelu(x: f32) -> f32 {
        x * 0.5 * two_phi(x)
    }

    pub fn gelu_grad(x: f32) -> f32 {
        let phi = two_phi(x) * 0.5;
        x.mul_add(exp(-x * 0.5 * x) * INV_SQRT_2PI, phi)
    }
}
