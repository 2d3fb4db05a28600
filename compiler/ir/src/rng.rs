//! Counter-based random numbers, shared by every backend so they draw identical values.
//!
//! Nothing here keeps hidden state: a dropout mask element is a pure function of
//! `(seed, stream, step, op, element)`, so the reference executor and JIT kernels (which compute
//! `uniform` inside the generated code, four lanes at a time) agree bit for bit. Parameter
//! initialization uses `SplitMix64` streams keyed by `(seed, param)`.

/// Which sequence of dropout masks a draw belongs to: training steps and MC Dropout samples must
/// never reuse each other's masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Training steps; the counter is the optimizer step (`TrainState::step`).
    Train = 1,
    /// MC Dropout passes; the counter is the sample number (`Mode::McDropout`).
    McDropout = 2,
}

/// The SplitMix64 finalizer: a bijective 64-bit mix.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 32-bit key of one op's mask at one step; computed on the host once per step and op.
pub fn dropout_key(seed: u64, stream: Stream, counter: u64, op: u32) -> u32 {
    let h = mix64(seed ^ mix64((stream as u64) << 56 ^ mix64(counter ^ mix64(u64::from(op) + 1))));
    (h >> 32) as u32
}

/// The 32-bit key of one training image's augmentation in one epoch (`ir::Augment`); `image`
/// is the example's index among the training files. Its draws are `mix32(key, AUGMENT_*)`.
/// Unlike dropout keys it does not depend on the step, so where an image falls in the epoch's
/// shuffled order does not matter.
pub fn augment_key(seed: u64, epoch: u64, image: u32) -> u32 {
    let h = mix64(seed ^ mix64(AUGMENT_STREAM << 56 ^ mix64(epoch ^ mix64(u64::from(image) + 1))));
    (h >> 32) as u32
}

/// The stream tag of `augment_key`, after `Stream`'s values, so no augmentation key is computed
/// like a dropout key.
const AUGMENT_STREAM: u64 = 3;
/// Element of `mix32(augment_key, _)` that draws the crop's row offset.
pub const AUGMENT_CROP_ROW: u32 = 0;
/// Element that draws the crop's column offset.
pub const AUGMENT_CROP_COLUMN: u32 = 1;
/// Element that draws whether the image is flipped.
pub const AUGMENT_FLIP: u32 = 2;

/// A uniform draw in `0..n` from the 32 bits of `mix32(key, element)` (bias below `n / 2^32`).
pub fn below(key: u32, element: u32, n: u32) -> u32 {
    ((u64::from(mix32(key, element)) * u64::from(n)) >> 32) as u32
}

/// Murmur3's 32-bit finalizer over `key ^ element * φ`; cheap in i32x4 lanes.
pub fn mix32(key: u32, element: u32) -> u32 {
    let mut x = key ^ element.wrapping_mul(0x9e37_79b9);
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

/// A uniform draw in `[0, 1)` with 24 random bits: exact in f32.
pub fn uniform(key: u32, element: u32) -> f32 {
    (mix32(key, element) >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Whether dropout keeps `element` (row-major index in the `[batch, width]` value): kept when the
/// draw is at least `rate`, so a rate of 0 keeps everything.
pub fn keep(key: u32, element: u32, rate: f32) -> bool {
    uniform(key, element) >= rate
}

/// A SplitMix64 generator: for initializers and shuffles, never for dropout.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A stream for `(seed, purpose, index)`, e.g. `(seed, INIT, param)`.
    pub fn new(seed: u64, purpose: u64, index: u64) -> Self {
        SplitMix64 {
            state: mix64(seed ^ mix64(purpose.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ mix64(index))),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.state)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// Standard normal by Box–Muller (one value per two uniforms, for simplicity and determinism).
    pub fn next_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Uniform in `0..n` (n > 0), by Lemire's multiply-shift (bias below 2^-32 for our sizes).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Purposes for `SplitMix64::new`, so unrelated streams never coincide.
pub mod purpose {
    /// Initial parameter values; the index is the parameter's.
    pub const INIT: u64 = 1;
    /// The hold-out of the validation examples; the index is 0.
    pub const SPLIT: u64 = 2;
    /// The order of the training examples in an epoch; the index is the 0-based epoch.
    pub const SHUFFLE: u64 = 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_in_unit_interval_and_roughly_flat() {
        let key = dropout_key(42, Stream::Train, 7, 3);
        let n = 100_000u32;
        let mut buckets = [0u32; 10];
        for e in 0..n {
            let u = uniform(key, e);
            assert!((0.0..1.0).contains(&u));
            buckets[(u * 10.0) as usize] += 1;
        }
        for b in buckets {
            assert!((9_000..11_000).contains(&b), "bucket count {b} of {n}");
        }
    }

    #[test]
    fn keys_differ_across_streams_steps_and_ops() {
        let a = dropout_key(1, Stream::Train, 0, 0);
        assert_ne!(a, dropout_key(1, Stream::McDropout, 0, 0));
        assert_ne!(a, dropout_key(1, Stream::Train, 1, 0));
        assert_ne!(a, dropout_key(1, Stream::Train, 0, 1));
        assert_ne!(a, dropout_key(2, Stream::Train, 0, 0));
    }

    #[test]
    fn augment_keys_differ_across_seeds_epochs_and_images_and_from_dropout_keys() {
        let a = augment_key(1, 0, 0);
        assert_eq!(a, augment_key(1, 0, 0));
        assert_ne!(a, augment_key(2, 0, 0));
        assert_ne!(a, augment_key(1, 1, 0));
        assert_ne!(a, augment_key(1, 0, 1));
        assert_ne!(a, dropout_key(1, Stream::Train, 0, 0));
    }

    #[test]
    fn below_covers_its_range_evenly() {
        let key = augment_key(7, 3, 11);
        let mut counts = [0u32; 9];
        for e in 0..90_000 {
            counts[below(key, e, 9) as usize] += 1;
        }
        for c in counts {
            assert!((9_400..10_600).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn keep_rate_matches() {
        let key = dropout_key(9, Stream::Train, 0, 0);
        let kept = (0..50_000).filter(|&e| keep(key, e, 0.2)).count();
        assert!((39_000..41_000).contains(&kept), "{kept}");
        assert!((0..1000).all(|e| keep(key, e, 0.0)));
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut rng = SplitMix64::new(42, purpose::INIT, 0);
        let xs: Vec<f64> = (0..100_000).map(|_| rng.next_normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.02, "{mean}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
    }
}
