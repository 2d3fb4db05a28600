//! `KernelBench`: one JIT kernel compiled on its own, with buffers of the sizes its argument
//! table needs, so that a benchmark outside the crate (`benches/kernels.rs`) or the timing
//! reports of `kernel_timing` can call it without a whole training step around it. It is the one
//! way to build a kernel for timing. Constructors take the tier to compile at and name the
//! shapes that matter (the dense forward pass, the two gradients of a dense layer, a Nadam
//! update, a batch norm and its backward pass) and lay out the buffers as the
//! `Jit` does: rows `row_stride(width)` floats apart, kernels and vectors padded to whole f32x4
//! vectors, every buffer on a cache line.
//!
//! It measures; it checks nothing (`jit::tests` checks the kernels' results; the tests here only
//! that the buffers are laid out as the kernels read them). The values in the buffers are small,
//! deterministic and chosen only to keep the arithmetic in the normal range however often a
//! kernel runs.

use std::marker::PhantomData;

use super::elementwise::update_scalars;
use super::kernels::{pad4, row_stride, FusedUpdate, Kernel, Update};
use super::module::{KernelFn, KernelModule};
use super::parallel::{self, Invocation, MAX_ARGS};
use super::signature::{Access, Arg, Extent};
use super::{step_scalars, Alloc, Arena};
use crate::tier::Tier;
use netc_ir::backend::BackendError;
use netc_ir::ir::{Activation, OptimizerKind, Regularizer};
use netc_ir::optim::nadam_u_product;

/// What a kernel does with one buffer of its argument table, and so how the buffer starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Read only: small values, none of them zero.
    Input,
    /// Written only: starts at zero.
    Output,
    /// Read and written, starting from small values: the parameter of an update.
    Updated,
    /// Read and written, starting at zero as an optimizer's slots do before the first step.
    Slot,
}

impl Role {
    /// Times a call goes over the buffer: once to read or write it, twice to do both.
    fn passes(self) -> usize {
        match self {
            Role::Input | Role::Output => 1,
            Role::Updated | Role::Slot => 2,
        }
    }
}

/// One buffer of the argument table.
#[derive(Clone, Copy, Debug)]
struct Buffer {
    floats: usize,
    role: Role,
    /// Floats per row, for a buffer of batch rows (which a thread's share starts into).
    row_floats: Option<usize>,
}

impl Buffer {
    /// The buffer for `arg` of a call on `rows` rows: as long as the call may touch, starting
    /// as its access says.
    fn of(arg: &Arg, rows: usize) -> Buffer {
        let role = match arg.access {
            Access::Read => Role::Input,
            Access::Write => Role::Output,
            Access::Update if arg.name.starts_with("slot") => Role::Slot,
            Access::Update => Role::Updated,
        };
        Buffer {
            floats: arg.extent.bytes(rows).div_ceil(4),
            role,
            row_floats: match arg.extent {
                Extent::Rows { ld, .. } => Some(ld),
                _ => None,
            },
        }
    }
}

/// The small deterministic value of element `i` of buffer `b`: multiples of 0.01 between
/// -0.085 and 0.075, never zero, so that an update's moments never decay into subnormals.
fn value(b: usize, i: usize) -> f32 {
    ((i * 7 + b * 13) % 17) as f32 * 0.01 - 0.085
}

/// The rule of the benches' updates: Nadam with Keras' defaults, as `specs/baseline.net` has.
const NADAM: OptimizerKind = OptimizerKind::Nadam {
    beta_1: 0.9,
    beta_2: 0.999,
    epsilon: 1e-7,
};

/// The per-call scalars of `kind`'s first step at the baseline's rate (5e-5).
fn first_step_scalars(kind: OptimizerKind) -> [f32; update_scalars::COUNT] {
    let u_product = match kind {
        OptimizerKind::Nadam { beta_1, .. } => nadam_u_product(beta_1, 0),
        _ => 1.0,
    };
    step_scalars(kind, 0, 5e-5, u_product)
}

/// One compiled kernel with buffers for one call. See the module documentation.
pub struct KernelBench {
    name: String,
    tier: Tier,
    rows: usize,
    flops: f64,
    buffers: Vec<Buffer>,
    /// Where `buffers` start in `arena`, in floats.
    offsets: Vec<usize>,
    /// The call `run` makes: pointers into `arena` and `scalars`, and a function of `_module`.
    call: Invocation,
    arena: Arena,
    /// Per-call scalars, on the heap so that `call` stays valid when the bench moves.
    scalars: Box<[f32; update_scalars::COUNT]>,
    /// Owns the code of `call.f`; dropped last.
    _module: KernelModule,
}

/// Thread `t`'s share of the rows of a row-parallel `KernelBench` (`KernelBench::row_shares`):
/// a call on its own rows of the bench's buffers, which can run on another thread at the same
/// time as the other shares.
pub struct KernelShare<'a> {
    rows: usize,
    call: Invocation,
    /// The shares write into the bench's buffers, which must stay put while they exist.
    _buffers: PhantomData<&'a mut [f32]>,
}

impl KernelBench {
    /// The dense layer's forward kernel on `rows` rows: `y = act(x·W + b)` for a
    /// `[inputs, units]` kernel, with the activation (ELU, say) fused into its epilogue.
    pub fn dense(
        tier: Tier,
        rows: usize,
        inputs: usize,
        units: usize,
        activation: Option<Activation>,
    ) -> Result<KernelBench, BackendError> {
        let kernel = Kernel::Dense {
            convert: None,
            inputs,
            units,
            bias: true,
            activation,
            store_pre_activation: false,
        };
        let flops = 2.0 * (rows * inputs * units) as f64;
        KernelBench::new(tier, &kernel, rows, flops, [0.0; update_scalars::COUNT])
    }

    /// The dense layer's weight gradient `dW = xᵀ·dy`, `db = Σ dy` over a batch of `batch`
    /// rows: for the whole `[inputs, units]` kernel when `threads` is 1, otherwise for the first
    /// thread's share of its rows, the kernel a step on `threads` threads runs on that thread.
    pub fn weight_grad(
        tier: Tier,
        batch: usize,
        inputs: usize,
        units: usize,
        threads: usize,
    ) -> Result<KernelBench, BackendError> {
        KernelBench::weight_grad_with(tier, batch, inputs, units, threads, None)
    }

    /// `weight_grad` as a training step runs it: with the Nadam step of the kernel rows fused
    /// into it (`FusedUpdate`), refreshing their columns of the transposed copy when
    /// `transposed` (every layer but the first). Counted in FLOP of the matrix multiply, as
    /// `weight_grad` is, so the two read side by side.
    pub fn weight_grad_nadam(
        tier: Tier,
        batch: usize,
        inputs: usize,
        units: usize,
        threads: usize,
        transposed: bool,
    ) -> Result<KernelBench, BackendError> {
        let update = FusedUpdate {
            kind: NADAM,
            transposed,
            normalized: false,
        };
        KernelBench::weight_grad_with(tier, batch, inputs, units, threads, Some(update))
    }

    fn weight_grad_with(
        tier: Tier,
        batch: usize,
        inputs: usize,
        units: usize,
        threads: usize,
        update: Option<FusedUpdate>,
    ) -> Result<KernelBench, BackendError> {
        let (_, share) = parallel::divide(inputs, threads.max(1), 4)[0];
        let kernel = Kernel::WeightGrad {
            inputs: share,
            x_ld: row_stride(inputs),
            units,
            batch,
            bias: true,
            update,
        };
        // The first share starts at the first column of `x` and the first row of the kernel and
        // its gradient. With an update, `dkernel` is only scratch.
        let scalars = update.map_or([0.0; update_scalars::COUNT], |u| first_step_scalars(u.kind));
        let flops = 2.0 * (batch * share * units) as f64;
        KernelBench::new(tier, &kernel, batch, flops, scalars)
    }

    /// The dense layer's input gradient `dx = dy·Wᵀ` on `rows` rows, from the transposed copy of
    /// a `[inputs, units]` kernel.
    pub fn input_grad(
        tier: Tier,
        rows: usize,
        inputs: usize,
        units: usize,
    ) -> Result<KernelBench, BackendError> {
        let kernel = Kernel::InputGrad {
            inputs,
            units,
            activation: None,
        };
        let flops = 2.0 * (rows * inputs * units) as f64;
        KernelBench::new(tier, &kernel, rows, flops, [0.0; update_scalars::COUNT])
    }

    /// A training batch norm of `width` columns over `rows` rows with the activation after it
    /// fused (`Kernel::BatchNorm`), on the whole batch; counted in the bytes it must move, as
    /// an update is.
    pub fn batch_norm(
        tier: Tier,
        rows: usize,
        width: usize,
        activation: Option<Activation>,
    ) -> Result<KernelBench, BackendError> {
        let kernel = Kernel::BatchNorm {
            convert: None,
            width,
            activation,
            training: true,
            momentum: 0.99,
            epsilon: 1e-3,
            store_normalized: false,
            by_rows: false,
        };
        KernelBench::new(tier, &kernel, rows, 0.0, [0.0; update_scalars::COUNT])
    }

    /// The batch norm's backward pass (`Kernel::BatchNormBackward`, with `dx`) over `rows` rows.
    pub fn batch_norm_backward(
        tier: Tier,
        rows: usize,
        width: usize,
    ) -> Result<KernelBench, BackendError> {
        let kernel = Kernel::BatchNormBackward {
            width,
            input_grad: true,
            by_rows: false,
        };
        KernelBench::new(tier, &kernel, rows, 0.0, [0.0; update_scalars::COUNT])
    }

    /// A Nadam step (Keras' defaults, the baseline's rate 5e-5) over `len` floats: a whole
    /// padded parameter, or the part of one that a thread updates. Its scalars are those of the
    /// first step.
    pub fn nadam(tier: Tier, len: usize) -> Result<KernelBench, BackendError> {
        let len = pad4(len);
        let kernel = Kernel::Update(Update {
            len,
            kind: NADAM,
            regularizer: Regularizer::default(),
            clipnorm: None,
            max_norm: None,
        });
        KernelBench::new(tier, &kernel, 0, 0.0, first_step_scalars(NADAM))
    }

    /// Compiles `kernel` and lays out a buffer for each argument of its signature, as long as
    /// a call on `rows` rows may touch.
    fn new(
        tier: Tier,
        kernel: &Kernel,
        rows: usize,
        flops: f64,
        scalars: [f32; update_scalars::COUNT],
    ) -> Result<KernelBench, BackendError> {
        let buffers: Vec<Buffer> = kernel
            .signature()
            .args
            .iter()
            .map(|a| Buffer::of(a, rows))
            .collect();
        assert!(
            buffers.len() <= MAX_ARGS,
            "an argument table of at most MAX_ARGS"
        );
        let mut module = KernelModule::new(tier)?;
        let id = module.kernel(kernel)?;
        module.finalize()?;
        // Each buffer on its own cache lines, as the `Jit` places them.
        let mut alloc = Alloc::default();
        let offsets: Vec<usize> = buffers.iter().map(|b| alloc.take(b.floats)).collect();
        let mut arena = Arena::new(alloc.next)?;
        for (i, (b, &off)) in buffers.iter().zip(&offsets).enumerate() {
            if b.role == Role::Input || b.role == Role::Updated {
                for (j, x) in arena.slice_mut(off, b.floats).iter_mut().enumerate() {
                    *x = value(i, j);
                }
            }
        }
        let scalars = Box::new(scalars);
        let call = invocation(module.get(id), &mut arena, &offsets, rows, &scalars);
        Ok(KernelBench {
            name: kernel.name(),
            tier,
            rows,
            flops,
            buffers,
            offsets,
            call,
            arena,
            scalars,
            _module: module,
        })
    }

    /// The kernel's name, as in the CLIF dumps and `netc bench`'s calls (`dense_3072x100`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tier the kernel was compiled at.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Rows (examples) one call works on; 0 for an update, which has none.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Floating-point operations of one call, counted as `netc bench` counts them: two per
    /// multiply-add of a matrix multiply; 0 for an update.
    pub fn flops(&self) -> f64 {
        self.flops
    }

    /// Bytes one call reads and writes if every buffer passes through the cores once per read
    /// and once per write: the least memory traffic it can have.
    pub fn bytes(&self) -> f64 {
        let floats: usize = self
            .buffers
            .iter()
            .map(|b| b.floats * b.role.passes())
            .sum();
        (floats * size_of::<f32>()) as f64
    }

    /// Calls the kernel once.
    pub fn run(&mut self) {
        invoke(&self.call);
    }

    /// The bench's rows divided among `threads` threads as a step divides them, one share per
    /// thread with rows: calls on disjoint rows of the same buffers, which may run at the same
    /// time. Panics unless the kernel is row-parallel (it writes only rows: `dense`,
    /// `input_grad`).
    pub fn row_shares(&mut self, threads: usize) -> Vec<KernelShare<'_>> {
        assert!(
            self.buffers
                .iter()
                .all(|b| b.role == Role::Input || b.row_floats.is_some()),
            "{} writes more than its rows: it has no row shares",
            self.name
        );
        (0..threads)
            .map(|t| parallel::row_share(self.rows, t, threads))
            .filter(|&(_, n)| n > 0)
            .map(|(first, n)| {
                let offsets: Vec<usize> = self
                    .buffers
                    .iter()
                    .zip(&self.offsets)
                    .map(|(b, off)| off + b.row_floats.map_or(0, |r| first * r))
                    .collect();
                KernelShare {
                    rows: n,
                    call: invocation(self.call.f, &mut self.arena, &offsets, n, &self.scalars),
                    _buffers: PhantomData,
                }
            })
            .collect()
    }
}

impl KernelShare<'_> {
    /// Rows of this share.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Calls the kernel once on this share's rows.
    pub fn run(&mut self) {
        invoke(&self.call);
    }
}

/// The call of `f` on `rows` rows with the buffers at `offsets` in `arena`.
fn invocation(
    f: KernelFn,
    arena: &mut Arena,
    offsets: &[usize],
    rows: usize,
    scalars: &[f32; update_scalars::COUNT],
) -> Invocation {
    let base = arena.base_ptr();
    let mut table = [std::ptr::null_mut(); MAX_ARGS];
    for (p, &off) in table.iter_mut().zip(offsets) {
        *p = base.wrapping_add(off).cast::<u8>();
    }
    Invocation {
        f,
        table,
        rows: rows as i64,
        row0: 0,
        key: 0,
        scalars: scalars.as_ptr(),
    }
}

/// The one place this module runs generated code.
fn invoke(call: &Invocation) {
    // SAFETY: every `Invocation` here comes from `KernelBench::new` or `row_shares`. Its table
    // lists the bench's buffers in the order of the kernel's signature, each as long as the
    // signature's extent for the bench's `rows` rows (the planner's and the executor's checks
    // hold the signatures to the emitters' tables in the `jit` tests). A
    // share's table starts `first` rows into the row buffers and runs `n` rows, which end where
    // the bench's do at most. The buffers and scalars are on the heap, owned by the bench, which
    // a `KernelShare` borrows mutably, so they outlive every call and do not move; the bench
    // also owns the module whose code `f` is. Shares that run at the same time write disjoint
    // rows and only read the buffers they have in common (`row_shares` has no others).
    unsafe { call.call() };
}

#[cfg(test)]
mod tests {
    use super::*;

    impl KernelBench {
        fn buffer(&self, i: usize) -> &[f32] {
            self.arena.slice(self.offsets[i], self.buffers[i].floats)
        }
    }

    /// `c[i][j] = Σ_k a[i·a_row + k·a_col] · b[k·ldb + j]` for `m × n` results, in f64.
    fn matmul(
        a: &[f32],
        (a_row, a_col): (usize, usize),
        b: &[f32],
        ldb: usize,
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<Vec<f64>> {
        (0..m)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        (0..k)
                            .map(|l| {
                                f64::from(a[i * a_row + l * a_col]) * f64::from(b[l * ldb + j])
                            })
                            .sum()
                    })
                    .collect()
            })
            .collect()
    }

    fn assert_close(got: &[f32], ld: usize, want: &[Vec<f64>]) {
        for (i, row) in want.iter().enumerate() {
            for (j, w) in row.iter().enumerate() {
                let g = f64::from(got[i * ld + j]);
                assert!((g - w).abs() < 1e-4, "[{i}][{j}]: {g} against {w}");
            }
        }
    }

    /// The buffers are laid out as the kernels read them: results computed from the bench's own
    /// buffers, over rows of 3,072 inputs (a cache line longer than `pad4`), at every tier.
    #[test]
    fn kernels_read_and_write_the_buffers_as_laid_out() {
        for tier in Tier::available() {
            buffers_as_laid_out(tier);
        }
    }

    fn buffers_as_laid_out(tier: Tier) {
        let (rows, inputs, units) = (8, 3072, 10);
        let (ld_x, ld_y, ld_w) = (row_stride(inputs), row_stride(units), pad4(units));

        let mut dense = KernelBench::dense(tier, rows, inputs, units, None).expect("compiles");
        dense.run();
        let mut want = matmul(
            dense.buffer(0),
            (ld_x, 1),
            dense.buffer(1),
            ld_w,
            rows,
            inputs,
            units,
        );
        for row in &mut want {
            for (y, b) in row.iter_mut().zip(dense.buffer(2)) {
                *y += f64::from(*b);
            }
        }
        assert_close(dense.buffer(3), ld_y, &want);

        let mut grad = KernelBench::weight_grad(tier, rows, inputs, units, 2).expect("compiles");
        grad.run();
        let share = inputs / 2;
        let want = matmul(
            grad.buffer(0),
            (1, ld_x),
            grad.buffer(1),
            ld_y,
            share,
            rows,
            units,
        );
        assert_close(grad.buffer(2), ld_w, &want);

        let mut grad = KernelBench::input_grad(tier, rows, inputs, units).expect("compiles");
        grad.run();
        let want = matmul(
            grad.buffer(0),
            (ld_y, 1),
            grad.buffer(1),
            ld_x,
            rows,
            units,
            inputs,
        );
        assert_close(grad.buffer(2), ld_x, &want);
    }

    /// Row shares run on the rows of each thread, so that together they compute what one call
    /// does, bit for bit.
    #[test]
    fn row_shares_together_are_one_call() {
        let elu = Some(Activation::Elu { alpha: 1.0 });
        let mut bench = KernelBench::dense(Tier::best(), 12, 100, 100, elu).expect("compiles");
        bench.run();
        let whole = bench.buffer(3).to_vec();
        let (off, floats) = (bench.offsets[3], bench.buffers[3].floats);
        bench.arena.slice_mut(off, floats).fill(0.0);
        let mut shares = bench.row_shares(2);
        assert_eq!(
            shares.iter().map(KernelShare::rows).collect::<Vec<_>>(),
            [4, 8]
        );
        std::thread::scope(|s| {
            for share in &mut shares {
                s.spawn(|| share.run());
            }
        });
        assert_eq!(bench.buffer(3), whole);
    }

    #[test]
    fn nadam_moves_every_weight_and_keeps_them_finite() {
        let mut bench = KernelBench::nadam(Tier::best(), 99).expect("compiles");
        let before = bench.buffer(0).to_vec();
        for _ in 0..3 {
            bench.run();
        }
        assert_eq!(bench.buffer(0).len(), 100);
        for (w, b) in bench.buffer(0).iter().zip(&before) {
            assert!(w.is_finite() && w != b, "{b} became {w}");
        }
        // w, m and v read and written, g read, and the one float of the loss statistics.
        assert_eq!(bench.bytes(), (7 * 100 + 1) as f64 * 4.0);
    }
}
