//! Vector tiers: how wide a kernel's vectors are. Cranelift's x86-64 backend has 128-bit vectors
//! only (`F32x4`, every kernel today); AVX2 (16 ymm registers, FMA3) and AVX-512 (32 zmm
//! registers, opmasks) are reached by machine code netc generates itself (`x86`) and places in
//! the same JIT module. A tier is usable when the CPU has its features; `available` lists them
//! from the narrowest.

/// A vector width and the instruction set that reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// 128-bit f32x4 vectors, emitted by Cranelift: the portable tier.
    F32x4,
    /// 256-bit vectors with fused multiply-add (AVX2 + FMA3), 16 registers.
    Avx2,
    /// 512-bit vectors (AVX-512 F and VL), 32 registers.
    Avx512,
}

impl Tier {
    /// Every tier, narrowest first.
    pub const ALL: [Tier; 3] = [Tier::F32x4, Tier::Avx2, Tier::Avx512];

    /// The name `netc bench` reports.
    pub fn name(self) -> &'static str {
        match self {
            Tier::F32x4 => "f32x4",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
        }
    }

    /// f32 lanes in one vector.
    pub fn lanes(self) -> usize {
        match self {
            Tier::F32x4 => 4,
            Tier::Avx2 => 8,
            Tier::Avx512 => 16,
        }
    }

    /// Whether this CPU runs the tier's instructions (and netc generates them for this host:
    /// the generated GEMMs follow the System V calling convention, so not on Windows).
    pub fn supported(self) -> bool {
        match self {
            Tier::F32x4 => true,
            Tier::Avx2 | Tier::Avx512 if cfg!(windows) => false,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Tier::Avx2 | Tier::Avx512 => false,
        }
    }

    /// The tiers this CPU runs, narrowest first (`F32x4` always).
    pub fn available() -> Vec<Tier> {
        Tier::ALL.into_iter().filter(|t| t.supported()).collect()
    }

    /// The widest tier this CPU runs.
    pub fn best() -> Tier {
        Tier::ALL
            .into_iter()
            .rev()
            .find(|t| t.supported())
            .unwrap_or(Tier::F32x4)
    }

    /// The tier called `name` (`Tier::name`).
    pub fn from_name(name: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::Tier;

    #[test]
    fn the_portable_tier_is_always_available_and_tiers_widen() {
        let tiers = Tier::available();
        assert_eq!(tiers.first(), Some(&Tier::F32x4));
        assert!(tiers.windows(2).all(|w| w[0].lanes() < w[1].lanes()));
        // A machine with AVX-512 F and VL has AVX2 and FMA too.
        if Tier::Avx512.supported() {
            assert!(Tier::Avx2.supported());
        }
    }
}
