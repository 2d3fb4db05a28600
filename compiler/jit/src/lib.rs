//! The Cranelift backend: every op of a `Program` becomes generated machine code with its shapes,
//! activation, constants and hyper-parameters baked in, and `Jit` implements `Backend` by calling
//! those kernels in order (forward layer by layer, the head, the backward steps of
//! `autodiff::GradProgram`, then one optimizer update per trainable parameter). The host side
//! only sequences calls, fills argument tables and computes per-step scalars (dropout keys,
//! Adam's bias corrections); all per-element arithmetic is in generated code.
//!
//! Design choices, in the order a reader needs them:
//!
//! - **Rows are a runtime loop bound.** Kernels are compiled once; each call passes the number of
//!   rows (`<= train.batch`, the capacity of every activation buffer). `predict` tiles its input
//!   into chunks of `train.batch` rows and passes each chunk's first global row, so dropout
//!   element numbers (`row * width + col`) are those of the whole input.
//! - **Padded layout.** Every row of a value, kernel, gradient or slot is padded to a multiple
//!   of 4 floats (see `kernels`), so all column loops are whole f32x4 vectors; padding lanes of
//!   parameters stay zero. `state`/`set_state` convert to and from the unpadded `TrainState`.
//! - **Fusion.** Decided once per program (`fusion::Fusion`): a dense op or a batch norm
//!   followed by an element-wise activation is one kernel with the activation in its epilogue,
//!   and a dense layer's input gradient applies the derivative of the activation before it.
//!   `dy · Wᵀ` reads a transposed copy of each kernel that needs it, refreshed after every
//!   update.
//! - **Matrix multiplies in program order.** Dense kernels are compiled at `opt_level` "none":
//!   `matmul` writes its loads and FMAs in the order they should run, which the e-graph would
//!   otherwise rearrange (see `matmul`). Their input is read with movable loads, so the pixels are
//!   converted by a separate kernel before the first dense layer.
//! - **Deduplication.** Kernels with equal specs (`Kernel`'s derived equality, floats by value)
//!   are compiled once (the baseline's 19 identical hidden layers share their kernels), which
//!   keeps compile time low.
//!
//! This module must not report user errors (see `backend`); `BackendError` means a netc bug or a
//! host that cannot run JIT code.

mod adapt;
mod calibrate;
mod elementwise;
mod emit;
mod fusion;
#[cfg(target_arch = "x86_64")]
mod gemm;
mod kernel_bench;
#[cfg(test)]
mod kernel_timing;
mod kernels;
mod math;
mod matmul;
mod module;
mod parallel;
#[cfg(test)]
mod random_specs;
mod signature;
#[cfg(test)]
mod tests;
pub mod tier;
#[cfg(test)]
mod tier_tests;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_batch_norm;

use std::collections::{HashMap, HashSet};
use std::thread;
use std::time::Instant;

use ndarray::{Array2, ArrayD, IxDyn};

use adapt::{Adapt, Runner};
use elementwise::{grad_needs_input, update_scalars};
use fusion::Fusion;
use kernels::{pad4, row_stride, Convert, FusedUpdate, Kernel, Update};
use module::{KernelFn, KernelId, KernelModule};
use netc_ir::autodiff::GradProgram;
use netc_ir::backend::{
    Backend, BackendError, Batch, CallTime, InputStats, Mode, StepStats, TrainState, WHOLE_PHASE,
};
use netc_ir::ir::{Activation, OpKind, OptimizerKind, ParamRole, Preprocess, Program};
use netc_ir::optim::{nadam_u_product, AdamStep, NadamStep};
use netc_ir::rng::{dropout_key, Stream};
use parallel::{Invocation, Pool, Segment, Share, MAX_ARGS};

pub use adapt::Dispatch;
pub use calibrate::{fma_peak_gflops, tier_peak_gflops};
#[cfg(target_arch = "x86_64")]
pub use gemm::FullWidthGemm;
pub use kernel_bench::{KernelBench, KernelShare};
pub use tier::Tier;
#[cfg(target_arch = "x86_64")]
pub use x86::GemmShape;

/// The CLIF text of every kernel of `program` (deduplicated, in planning order), generated for
/// a fixed x86-64 ISA with SSE4.1, AVX and FMA so that golden files do not depend on the host.
pub fn emit_clif(program: &Program) -> Result<String, BackendError> {
    let mut sink = Collect::default();
    plan(program, true, 1, false, &mut sink)?;
    module::clif_text(&sink.specs)
}

/// The machine code of every kernel of `program` at `tier` (deduplicated, in planning order),
/// then of every GEMM they call, disassembled in Intel syntax (`module::asm_listing`). It does
/// not depend on the host, which need not have the tier.
#[cfg(target_arch = "x86_64")]
pub fn emit_asm(program: &Program, tier: Tier) -> Result<String, BackendError> {
    let mut sink = Collect::default();
    plan(program, true, 1, false, &mut sink)?;
    module::asm_listing(&sink.specs, tier)
}

/// Where a kernel argument points.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ptr {
    /// An arena buffer, by offset in floats from the aligned base.
    Arena(usize),
    Pixels,
    Labels,
}

/// Which dropout key a call receives.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Key {
    None,
    Op(u32),
}

#[derive(Clone, Debug)]
struct Call {
    kernel: KernelId,
    args: Vec<Ptr>,
    key: Key,
}

/// Where one parameter lives: `rows × ld` floats at `off`, with `cols <= ld` real columns.
#[derive(Clone, Debug)]
struct ParamBuf {
    off: usize,
    rows: usize,
    cols: usize,
    ld: usize,
    grad: Option<usize>,
    slots: Vec<usize>,
}

impl ParamBuf {
    fn padded_len(&self) -> usize {
        self.rows * self.ld
    }
}

/// Receives kernel specs while planning: the JIT compiles them, `emit_clif` collects them.
trait Sink {
    fn kernel(&mut self, kernel: Kernel) -> Result<KernelId, BackendError>;
}

impl Sink for KernelModule {
    fn kernel(&mut self, kernel: Kernel) -> Result<KernelId, BackendError> {
        KernelModule::kernel(self, &kernel)
    }
}

/// The distinct kernels of a plan, in planning order, equal specs once (as `KernelModule`
/// deduplicates them).
#[derive(Default)]
struct Collect {
    specs: Vec<Kernel>,
}

impl Sink for Collect {
    fn kernel(&mut self, kernel: Kernel) -> Result<KernelId, BackendError> {
        if let Some(i) = self.specs.iter().position(|k| *k == kernel) {
            return Ok(KernelId(i));
        }
        self.specs.push(kernel);
        Ok(KernelId(self.specs.len() - 1))
    }
}

/// Hands out arena offsets, each buffer starting on a 64-byte line.
#[derive(Default)]
struct Alloc {
    next: usize,
}

impl Alloc {
    fn take(&mut self, floats: usize) -> usize {
        let off = self.next;
        self.next += floats.div_ceil(16).max(1) * 16;
        off
    }
}

/// Everything planning produces: buffer offsets and the call lists of each phase.
struct Plan {
    /// Where each value of a training forward pass can be read afterwards; `None` for
    /// pre-activations a fused kernel did not store.
    train_values: Vec<Option<usize>>,
    /// Where each value's gradient can be read after the backward pass, if it is computed.
    value_grads: Vec<Option<usize>>,
    size: usize,
    rows: usize,
    params: Vec<ParamBuf>,
    stats: usize,
    probs: usize,
    /// `(mean, std)` buffers when the input is standardized.
    input_stats: Option<(usize, usize)>,
    threads: usize,
    /// Gradients only (`Jit::loss_and_grads`), if planned.
    gradients: bool,
    /// The segments of each call list, by `Calls::index`.
    lists: [Vec<Segment>; Calls::COUNT],
}

/// Forward behaviour of the layers that differ between training and prediction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ForwardMode {
    Train,
    Infer,
    Mc,
}

/// Remembers the spec of every kernel id handed out, to decide how calls are shared.
struct Recording<'a> {
    inner: &'a mut dyn Sink,
    specs: HashMap<usize, Kernel>,
}

impl Sink for Recording<'_> {
    fn kernel(&mut self, kernel: Kernel) -> Result<KernelId, BackendError> {
        let id = self.inner.kernel(kernel.clone())?;
        self.specs.insert(id.0, kernel);
        Ok(id)
    }
}

/// Plans every call list of training and prediction; with `gradients`, also the plain backward
/// pass of `Jit::loss_and_grads` (its weight-gradient kernels are not the training step's).
fn plan(
    program: &Program,
    standardized_ok: bool,
    threads: usize,
    gradients: bool,
    sink: &mut dyn Sink,
) -> Result<Plan, BackendError> {
    refuse_image_ops(program)?;
    let threads = threads.max(1);
    let sink = &mut Recording {
        inner: sink,
        specs: HashMap::new(),
    };
    let rows = program.train.batch.max(1);
    let mut alloc = Alloc::default();
    let grad = GradProgram::new(program);

    let params: Vec<ParamBuf> = program
        .params
        .iter()
        .map(|p| {
            let (r, c) = match p.shape.as_slice() {
                [r, c] => (*r, *c),
                [c] => (1, *c),
                other => (
                    other[..other.len() - 1].iter().product(),
                    other[other.len() - 1],
                ),
            };
            let ld = pad4(c);
            let off = alloc.take(r * ld);
            let has_grad = !matches!(p.role, ParamRole::MovingMean | ParamRole::MovingVariance);
            let grad = has_grad.then(|| alloc.take(r * ld));
            let slot_count = if p.trainable {
                program.train.optimizer.kind.slot_count()
            } else {
                0
            };
            let slots = (0..slot_count).map(|_| alloc.take(r * ld)).collect();
            ParamBuf {
                off,
                rows: r,
                cols: c,
                ld,
                grad,
                slots,
            }
        })
        .collect();

    let widths: Vec<usize> = std::iter::once(program.input.features)
        .chain(program.ops.iter().map(|op| op.width))
        .collect();
    let values: Vec<usize> = widths
        .iter()
        .map(|w| alloc.take(rows * row_stride(*w)))
        .collect();
    let value_grads: Vec<usize> = widths
        .iter()
        .map(|w| alloc.take(rows * row_stride(*w)))
        .collect();
    let stats = alloc.take(2);
    let classes = program.output_width();
    let probs = alloc.take(rows * row_stride(classes));

    let convert = Convert {
        features: program.input.features,
        standardize: program.input.preprocess == Preprocess::Standardize,
    };
    if convert.standardize && !standardized_ok {
        return Err(BackendError::Plan(
            "a standardized input needs the training split's statistics".into(),
        ));
    }
    let input_stats = convert.standardize.then(|| {
        let f = pad4(convert.features);
        (alloc.take(f), alloc.take(f))
    });
    let mut convert_args = vec![Ptr::Pixels];
    if let Some((m, s)) = input_stats {
        convert_args.extend([Ptr::Arena(m), Ptr::Arena(s)]);
    }
    convert_args.push(Ptr::Arena(values[0]));

    let fusion = Fusion::of(program, &grad, gradients);
    let mut normalized = HashMap::new();
    for (&dense, &bn) in &fusion.normalized {
        let (bn_op, dense_op) = (&program.ops[bn as usize], &program.ops[dense as usize]);
        normalized.insert(
            dense,
            NormalizedInput {
                bn,
                xhat: alloc.take(rows * row_stride(bn_op.width)),
                sums: alloc.take(threads * pad4(dense_op.width)),
            },
        );
    }

    // Per-op scratch (batch-norm statistics) and transposed kernels for `dy · Wᵀ`.
    let mut bn_scratch = HashMap::new();
    let mut transposed = HashMap::new();
    for op in &program.ops {
        if let OpKind::BatchNorm { .. } = op.kind {
            let w = pad4(op.width);
            bn_scratch.insert(op.index, (alloc.take(w), alloc.take(w)));
        }
        if let OpKind::Dense { .. } = op.kind {
            let input_grad = grad.step_of(op.index).is_some_and(|s| s.dx.is_some());
            let read = gradients || !normalized.contains_key(&op.index);
            if input_grad && read {
                transposed.insert(op.index, alloc.take(op.width * row_stride(op.width_in)));
            }
        }
    }

    let ctx = PlanCtx {
        program,
        params: &params,
        values: &values,
        convert,
        convert_args: &convert_args,
        bn_scratch: &bn_scratch,
        fusion: &fusion,
        normalized: &normalized,
        threads,
    };
    let (train_forward, train_cur) = forward(&ctx, ForwardMode::Train, sink)?;
    let train_values = fusion.train_written(&train_cur);
    let head = sink.kernel(Kernel::HeadLoss { classes })?;
    let mut train_forward = train_forward;
    let n = program.ops.len();
    train_forward.push(Call {
        kernel: head,
        args: vec![
            Ptr::Arena(train_cur[n]),
            Ptr::Labels,
            Ptr::Arena(value_grads[n]),
            Ptr::Arena(stats),
        ],
        key: Key::None,
    });

    let mut backward = |fuse: bool| {
        backward(
            &ctx,
            &grad,
            &train_cur,
            &value_grads,
            &transposed,
            fuse,
            sink,
        )
    };
    let plain_backward = if gradients {
        backward(false)?
    } else {
        Vec::new()
    };
    let train_backward = backward(true)?;
    let UpdateCalls {
        updates,
        transposes,
        train_transposes,
    } = updates(program, &params, stats, &transposed, &fusion.updates, sink)?;

    let head_probs = sink.kernel(Kernel::HeadProbs { classes })?;
    let mut predict_plans = Vec::new();
    for phase in [ForwardMode::Infer, ForwardMode::Mc] {
        let (mut calls, cur) = forward(&ctx, phase, sink)?;
        calls.push(Call {
            kernel: head_probs,
            args: vec![Ptr::Arena(cur[n]), Ptr::Arena(probs)],
            key: Key::None,
        });
        predict_plans.push(calls);
    }
    let mc = predict_plans.pop().expect("two predict plans");
    let infer = predict_plans.pop().expect("two predict plans");

    let sharing = Sharing { threads };
    let mut sequence = |calls: Vec<Call>| -> Result<Vec<Segment>, BackendError> {
        let shared = calls
            .into_iter()
            .map(|c| {
                let spec = sink.specs[&c.kernel.0].clone();
                let share = sharing.share(&c, &spec, sink)?;
                let footprint = footprint(&spec, &c.args, rows, threads);
                Ok((c, share, footprint))
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        Ok(parallel::segments(shared, threads))
    };
    let train_forward = sequence(train_forward)?;
    let backward = sequence(plain_backward)?;
    let train_backward = sequence(train_backward)?;
    let infer = sequence(infer)?;
    let mc = sequence(mc)?;
    let mut independent = |calls: Vec<Call>| -> Result<Vec<Segment>, BackendError> {
        let shared = calls
            .into_iter()
            .map(|c| {
                let spec = sink.specs[&c.kernel.0].clone();
                let (cost, first_only) = match &spec {
                    Kernel::Update(u) => (u.len, !u.regularizer.is_zero()),
                    Kernel::Transpose { rows, cols } => (rows * cols, false),
                    _ => (1, true),
                };
                let share = sharing.share(&c, &spec, sink)?;
                Ok((c, share, cost, first_only))
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        Ok(parallel::independent(shared, threads))
    };
    let updates = independent(updates)?;
    let transposes = independent(transposes)?;
    let train_transposes = independent(train_transposes)?;

    // Every call of every phase against its kernel's signature, at the plan's rows.
    for segments in [
        &train_forward,
        &backward,
        &train_backward,
        &infer,
        &mc,
        &updates,
        &transposes,
        &train_transposes,
    ] {
        for task in segments.iter().flat_map(|s| s.parts.iter().flatten()) {
            let spec = &sink.specs[&task.call.kernel.0];
            let arena: Vec<Option<usize>> = task
                .call
                .args
                .iter()
                .map(|a| match a {
                    Ptr::Arena(off) => Some(*off),
                    Ptr::Pixels | Ptr::Labels => None,
                })
                .collect();
            signature::check_plan(&spec.name(), &spec.signature(), &arena, rows, alloc.next)?;
        }
    }
    let value_grads = value_grads
        .iter()
        .enumerate()
        .map(|(v, off)| fusion.grad_written(program, &grad, v).then_some(*off))
        .collect();
    let mut lists: [Vec<Segment>; Calls::COUNT] = Default::default();
    for (calls, segments) in [
        (Calls::TrainForward, train_forward),
        (Calls::Backward, backward),
        (Calls::TrainBackward, train_backward),
        (Calls::Updates, updates),
        (Calls::Transposes, transposes),
        (Calls::TrainTransposes, train_transposes),
        (Calls::Infer, infer),
        (Calls::Mc, mc),
    ] {
        lists[calls.index()] = segments;
    }
    Ok(Plan {
        train_values,
        value_grads,
        size: alloc.next,
        rows,
        params,
        stats,
        probs,
        input_stats,
        threads,
        gradients,
        lists,
    })
}

/// `BackendError::Unsupported` when the program has ops on images, which this JIT does not
/// compile: convolutions, pooling, flattening.
fn refuse_image_ops(program: &Program) -> Result<(), BackendError> {
    let mut names: Vec<&str> = program
        .ops
        .iter()
        .filter(|op| op.kind.is_image_op())
        .map(|op| op.kind.mnemonic())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort_unstable();
    names.dedup();
    Err(unsupported(&names))
}

/// The JIT's refusal of the layers of these mnemonics.
fn unsupported(names: &[&str]) -> BackendError {
    BackendError::Unsupported {
        what: format!("`{}` layers", names.join("`, `")),
    }
}

/// What deciding how to share a call needs to know.
struct Sharing {
    threads: usize,
}

impl Sharing {
    /// How `call` of kernel `spec` is shared among the threads (see `parallel`).
    fn share(
        &self,
        call: &Call,
        spec: &Kernel,
        sink: &mut dyn Sink,
    ) -> Result<Share, BackendError> {
        if call.args.len() > MAX_ARGS {
            return Err(BackendError::Plan(format!(
                "{} takes {} pointers, more than {MAX_ARGS}",
                spec.name(),
                call.args.len()
            )));
        }
        if self.threads == 1 {
            return Ok(Share::Whole);
        }
        let sig = spec.signature();
        let offsets = || -> Vec<usize> {
            call.args
                .iter()
                .map(|a| match a {
                    Ptr::Arena(off) => *off,
                    _ => unreachable!("divided kernels take arena buffers only"),
                })
                .collect()
        };
        // One call per share of `len` units (in blocks of `align`), each pointer moved as the
        // signature says (`signature::divide`).
        let divided = |sink: &mut dyn Sink,
                       len: usize,
                       align: usize,
                       kernel: &dyn Fn(usize, usize) -> Kernel| {
            let base = offsets();
            let mut parts = Vec::new();
            for (index, (first, n)) in parallel::divide(len, self.threads, align)
                .into_iter()
                .enumerate()
            {
                let args = signature::divide(&sig, &base, first, index)
                    .into_iter()
                    .map(Ptr::Arena)
                    .collect();
                parts.push(Call {
                    kernel: sink.kernel(kernel(first, n))?,
                    args,
                    key: call.key,
                });
            }
            Ok::<_, BackendError>(parts)
        };
        Ok(match spec {
            Kernel::Dense { .. }
            | Kernel::Activation { .. }
            | Kernel::Prelu { .. }
            | Kernel::Dropout { .. }
            | Kernel::Convert(_)
            | Kernel::HeadProbs { .. }
            | Kernel::ActivationBackward { .. }
            | Kernel::DropoutBackward { .. }
            | Kernel::InputGrad { .. }
            | Kernel::BatchNorm {
                training: false, ..
            }
            | Kernel::BatchNorm { by_rows: true, .. }
            | Kernel::BatchNormBackward { by_rows: true, .. } => Share::Rows(sig.row_bytes()),
            // Rows of the kernel gradient: thread t reads columns of x from its first row on.
            // A fused update's kernel, slots and transposed copy are divided the same way.
            Kernel::WeightGrad {
                inputs,
                x_ld,
                units,
                batch,
                bias,
                update,
            } => Share::Divided(divided(sink, *inputs, 4, &|first, n| Kernel::WeightGrad {
                inputs: n,
                x_ld: *x_ld,
                units: *units,
                batch: *batch,
                bias: *bias && first == 0,
                update: *update,
            })?),
            // An update without terms over the whole parameter is element-wise.
            Kernel::Update(u)
                if u.regularizer.is_zero() && u.clipnorm.is_none() && u.max_norm.is_none() =>
            {
                Share::Divided(divided(sink, u.len, 16, &|_, n| {
                    Kernel::Update(Update {
                        len: n,
                        ..u.clone()
                    })
                })?)
            }
            _ => Share::Whole,
        })
    }
}

struct PlanCtx<'a> {
    program: &'a Program,
    params: &'a [ParamBuf],
    /// Every fusion decision of the program, the fused updates included.
    fusion: &'a Fusion,
    values: &'a [usize],
    convert: Convert,
    convert_args: &'a [Ptr],
    bn_scratch: &'a HashMap<u32, (usize, usize)>,
    /// The dense ops (by index) whose fused weight gradient takes the `x̂` of the batch norm
    /// before them (`FusedUpdate::normalized`).
    normalized: &'a HashMap<u32, NormalizedInput>,
    /// Threads of the plan.
    threads: usize,
}

/// Buffers of a weight gradient with `FusedUpdate::normalized`.
struct NormalizedInput {
    /// The batch norm's op index.
    bn: u32,
    /// `x̂`, which the batch norm's training forward stores, rows like a value.
    xhat: usize,
    /// `Σ dy`, one vector per thread (each share of the weight gradient needs all of it).
    sums: usize,
}

impl PlanCtx<'_> {
    /// The buffer for `x̂` when the training forward of batch norm `bn` must store it.
    fn xhat_of(&self, bn: u32) -> Option<usize> {
        self.normalized
            .values()
            .find(|n| n.bn == bn)
            .map(|n| n.xhat)
    }

    fn param(&self, id: netc_ir::ir::ParamId) -> Ptr {
        Ptr::Arena(self.params[id.index()].off)
    }

    fn grad(&self, id: netc_ir::ir::ParamId) -> Ptr {
        Ptr::Arena(
            self.params[id.index()]
                .grad
                .expect("every parameter with a gradient rule has a gradient buffer"),
        )
    }
}

/// Whether op `i` does nothing in `phase` (its output is its input).
fn is_identity(kind: &OpKind, phase: ForwardMode) -> bool {
    match kind {
        OpKind::Activation(Activation::Linear) => true,
        OpKind::Dropout { .. } | OpKind::AlphaDropout { .. } => phase == ForwardMode::Infer,
        _ => false,
    }
}

/// The forward calls of one phase, and the buffer holding each value afterwards.
fn forward(
    ctx: &PlanCtx,
    phase: ForwardMode,
    sink: &mut dyn Sink,
) -> Result<(Vec<Call>, Vec<usize>), BackendError> {
    let ops = &ctx.program.ops;
    let mut cur = ctx.values.to_vec();
    let mut calls = Vec::new();
    let mut pending = Some(ctx.convert);
    // A dense kernel reads its input through movable loads (see `matmul`), which must not
    // follow stores of the same function, so it never converts the pixels itself; a training
    // batch norm's statistics read every row of the batch, which must all be converted first.
    let separate = ops.first().is_none_or(|op| {
        is_identity(&op.kind, phase)
            || matches!(op.kind, OpKind::Dense { .. })
            || matches!(op.kind, OpKind::BatchNorm { .. }) && phase == ForwardMode::Train
    });
    if separate {
        let kernel = sink.kernel(Kernel::Convert(ctx.convert))?;
        calls.push(Call {
            kernel,
            args: ctx.convert_args.to_vec(),
            key: Key::None,
        });
        pending = None;
    }
    let mut i = 0;
    while i < ops.len() {
        let op = &ops[i];
        if is_identity(&op.kind, phase) {
            cur[i + 1] = cur[i];
            i += 1;
            continue;
        }
        let convert = pending.take();
        let mut args: Vec<Ptr> = match convert {
            Some(_) => ctx.convert_args.to_vec(),
            None => vec![Ptr::Arena(cur[i])],
        };
        let out = Ptr::Arena(ctx.values[i + 1]);
        let mut key = Key::None;
        let mut consumed = 1;
        let kernel = match op.kind {
            OpKind::Dense { kernel, bias, .. } => {
                let fused = ctx.fusion.forward_activation[i];
                let activation = fused;
                let store_pre = ctx.fusion.store_pre_activation[i];
                args.push(ctx.param(kernel));
                if let Some(b) = bias {
                    args.push(ctx.param(b));
                }
                if fused.is_some() {
                    consumed = 2;
                    args.push(Ptr::Arena(ctx.values[i + 2]));
                    if store_pre {
                        args.push(out);
                    }
                } else {
                    args.push(out);
                }
                Kernel::Dense {
                    convert,
                    inputs: op.width_in,
                    units: op.width,
                    bias: bias.is_some(),
                    activation,
                    store_pre_activation: store_pre,
                }
            }
            OpKind::Activation(activation) => {
                args.push(out);
                Kernel::Activation {
                    convert,
                    width: op.width,
                    activation,
                }
            }
            OpKind::Prelu { alpha } => {
                args.extend([ctx.param(alpha), out]);
                Kernel::Prelu {
                    convert,
                    width: op.width,
                }
            }
            OpKind::BatchNorm {
                gamma,
                beta,
                moving_mean,
                moving_variance,
                momentum,
                epsilon,
            } => {
                let activation = ctx.fusion.forward_activation[i];
                if activation.is_some() {
                    consumed = 2;
                }
                args.extend([
                    ctx.param(gamma),
                    ctx.param(beta),
                    ctx.param(moving_mean),
                    ctx.param(moving_variance),
                    Ptr::Arena(ctx.values[i + consumed]),
                ]);
                let training = phase == ForwardMode::Train;
                let xhat = ctx.xhat_of(op.index).filter(|_| training);
                // On several threads, shared by rows with the statistics of the whole batch on
                // every thread: one meeting before it instead of one each side.
                let by_rows = training && convert.is_none() && ctx.threads > 1;
                if training {
                    let (m, s) = ctx.bn_scratch[&op.index];
                    args.extend([Ptr::Arena(m), Ptr::Arena(s)]);
                    args.extend(xhat.map(Ptr::Arena));
                    if by_rows {
                        args.push(Ptr::Arena(cur[i]));
                    }
                }
                Kernel::BatchNorm {
                    convert,
                    width: op.width,
                    activation,
                    training,
                    momentum,
                    epsilon,
                    store_normalized: xhat.is_some(),
                    by_rows,
                }
            }
            OpKind::Conv2d { .. }
            | OpKind::Pool { .. }
            | OpKind::GlobalAvgPool
            | OpKind::Flatten => {
                // `refuse_image_ops` stops such a program before planning.
                return Err(unsupported(&[op.kind.mnemonic()]));
            }
            OpKind::Dropout { rate } | OpKind::AlphaDropout { rate } => {
                args.push(out);
                key = Key::Op(op.index);
                Kernel::Dropout {
                    convert,
                    width: op.width,
                    rate,
                    alpha: matches!(op.kind, OpKind::AlphaDropout { .. }),
                }
            }
        };
        calls.push(Call {
            kernel: sink.kernel(kernel)?,
            args,
            key,
        });
        cur[i + 1..=i + consumed].copy_from_slice(&ctx.values[i + 1..=i + consumed]);
        i += consumed;
    }
    Ok((calls, cur))
}

/// The arena ranges a call of `spec` with `args` may touch on `rows` rows, divided among up to
/// `threads` shares.
fn footprint(spec: &Kernel, args: &[Ptr], rows: usize, threads: usize) -> signature::Footprint {
    let arena: Vec<Option<usize>> = args
        .iter()
        .map(|a| match a {
            Ptr::Arena(off) => Some(*off),
            Ptr::Pixels | Ptr::Labels => None,
        })
        .collect();
    signature::Footprint::of(&spec.signature(), &arena, rows, threads)
}

/// The backward calls, one or two per `GradStep`. With `fuse`, the weight gradients of
/// `ctx.fusion.updates` also update their kernels; such a weight gradient follows its layer's input
/// gradient, which reads the transposed copy it rewrites. Weight gradients are deferred past
/// the calls after them until one conflicts (`signature::Footprint`): the chain of input
/// gradients, row-parallel, then runs without a meeting, and the weight gradients, each divided
/// among the threads, follow it together after one (`parallel::segments`), instead of a
/// meeting per layer. The order of the arithmetic inside each kernel is unchanged, so results
/// are too.
fn backward(
    ctx: &PlanCtx,
    grad: &GradProgram,
    cur: &[usize],
    value_grads: &[usize],
    transposed: &HashMap<u32, usize>,
    fuse: bool,
    sink: &mut dyn Sink,
) -> Result<Vec<Call>, BackendError> {
    let ops = &ctx.program.ops;
    let rows = ctx.program.train.batch.max(1);
    let mut gcur = value_grads.to_vec();
    let mut calls = Vec::new();
    // Weight gradients not placed yet, with their footprints.
    let mut deferred: Vec<(Call, signature::Footprint)> = Vec::new();
    let mut place = |kernel: Kernel,
                     args: Vec<Ptr>,
                     key: Key,
                     calls: &mut Vec<Call>,
                     sink: &mut dyn Sink|
     -> Result<(), BackendError> {
        let fp = footprint(&kernel, &args, rows, ctx.threads);
        if deferred.iter().any(|(_, d)| d.conflicts(&fp)) {
            calls.extend(deferred.drain(..).map(|(c, _)| c));
        }
        let defer = matches!(kernel, Kernel::WeightGrad { .. });
        let call = Call {
            kernel: sink.kernel(kernel)?,
            args,
            key,
        };
        if defer {
            deferred.push((call, fp));
        } else {
            calls.push(call);
        }
        Ok(())
    };
    // Activations whose backward the next dense layer's input gradient did.
    let mut applied = HashSet::new();
    for step in &grad.steps {
        let op = &ops[step.op as usize];
        let (x, y) = (op.input.0 as usize, op.output.0 as usize);
        let dy = Ptr::Arena(gcur[y]);
        let dx = step.dx.map(|_| Ptr::Arena(value_grads[x]));
        let mut key = Key::None;
        let (kernel, args) = match op.kind {
            OpKind::Activation(Activation::Linear) => {
                gcur[x] = gcur[y];
                continue;
            }
            OpKind::Activation(_) if applied.contains(&op.index) => continue,
            OpKind::Activation(activation) => {
                let Some(dx) = dx else { continue };
                let saved = if activation != Activation::Softmax && grad_needs_input(activation) {
                    cur[x]
                } else {
                    cur[y]
                };
                (
                    Kernel::ActivationBackward {
                        width: op.width,
                        activation,
                    },
                    vec![dy, Ptr::Arena(saved), dx],
                )
            }
            OpKind::Dense { kernel, bias, .. } => {
                let update = ctx.fusion.updates.get(&op.index).copied().filter(|_| fuse);
                let normalized = update
                    .filter(|u| u.normalized)
                    .map(|_| &ctx.normalized[&op.index]);
                let x = normalized.map_or(cur[x], |n| n.xhat);
                let mut args = vec![Ptr::Arena(x), dy, ctx.grad(kernel)];
                if let Some(u) = update {
                    let buf = &ctx.params[kernel.index()];
                    args.push(Ptr::Arena(buf.off));
                    args.extend(buf.slots.iter().map(|s| Ptr::Arena(*s)));
                    if u.transposed {
                        args.push(Ptr::Arena(transposed[&op.index]));
                    }
                }
                if let Some(n) = normalized {
                    let OpKind::BatchNorm { gamma, beta, .. } = ops[n.bn as usize].kind else {
                        unreachable!("x̂ comes from a batch norm")
                    };
                    args.extend([
                        ctx.param(gamma),
                        ctx.param(beta),
                        ctx.grad(gamma),
                        ctx.grad(beta),
                        Ptr::Arena(n.sums),
                    ]);
                }
                // The batch norm's gradients come from the weight gradient: no `dy · Wᵀ`.
                let dx = dx.filter(|_| normalized.is_none());
                if let Some(b) = bias {
                    args.push(ctx.grad(b));
                }
                let weight_grad = Kernel::WeightGrad {
                    inputs: op.width_in,
                    x_ld: row_stride(op.width_in),
                    units: op.width,
                    batch: ctx.program.train.batch.max(1),
                    bias: bias.is_some(),
                    update,
                };
                match dx {
                    None => (weight_grad, args),
                    Some(dx) => {
                        let wt = Ptr::Arena(transposed[&op.index]);
                        let before = ctx.fusion.derivative_in_input_grad[op.index as usize];
                        let (activation, ig_args) = match before {
                            Some((act_op, activation)) => {
                                applied.insert(act_op);
                                let act = &ops[act_op as usize];
                                let (ax, ay) = (act.input.0 as usize, act.output.0 as usize);
                                let saved = if grad_needs_input(activation) {
                                    cur[ax]
                                } else {
                                    cur[ay]
                                };
                                let act_dx = Ptr::Arena(value_grads[ax]);
                                (Some(activation), vec![dy, wt, Ptr::Arena(saved), act_dx])
                            }
                            None => (None, vec![dy, wt, dx]),
                        };
                        let input_grad = (
                            Kernel::InputGrad {
                                inputs: op.width_in,
                                units: op.width,
                                activation,
                            },
                            ig_args,
                        );
                        // A fused update rewrites the transposed copy the input gradient reads.
                        let ((first, first_args), last) = if update.is_some() {
                            (input_grad, (weight_grad, args))
                        } else {
                            ((weight_grad, args), input_grad)
                        };
                        place(first, first_args, Key::None, &mut calls, sink)?;
                        last
                    }
                }
            }
            OpKind::Prelu { alpha } => {
                let mut args = vec![Ptr::Arena(cur[x]), ctx.param(alpha), dy, ctx.grad(alpha)];
                args.extend(dx);
                (
                    Kernel::PreluBackward {
                        width: op.width,
                        input_grad: dx.is_some(),
                    },
                    args,
                )
            }
            // Its gradients come from the next layer's weight gradient.
            OpKind::BatchNorm { .. } if fuse && ctx.xhat_of(op.index).is_some() => continue,
            OpKind::BatchNorm { gamma, beta, .. } => {
                let (m, s) = ctx.bn_scratch[&op.index];
                let mut args = vec![
                    Ptr::Arena(cur[x]),
                    ctx.param(gamma),
                    Ptr::Arena(m),
                    Ptr::Arena(s),
                    dy,
                    ctx.grad(gamma),
                    ctx.grad(beta),
                ];
                args.extend(dx);
                let by_rows = ctx.threads > 1;
                if by_rows {
                    args.extend([Ptr::Arena(cur[x]), dy]);
                }
                (
                    Kernel::BatchNormBackward {
                        width: op.width,
                        input_grad: dx.is_some(),
                        by_rows,
                    },
                    args,
                )
            }
            OpKind::Conv2d { .. }
            | OpKind::Pool { .. }
            | OpKind::GlobalAvgPool
            | OpKind::Flatten => {
                return Err(unsupported(&[op.kind.mnemonic()]));
            }
            OpKind::Dropout { rate } | OpKind::AlphaDropout { rate } => {
                let Some(dx) = dx else { continue };
                key = Key::Op(op.index);
                (
                    Kernel::DropoutBackward {
                        width: op.width,
                        rate,
                        alpha: matches!(op.kind, OpKind::AlphaDropout { .. }),
                    },
                    vec![dy, dx],
                )
            }
        };
        place(kernel, args, key, &mut calls, sink)?;
    }
    calls.extend(deferred.into_iter().map(|(c, _)| c));
    Ok(calls)
}

/// One update call per trainable parameter whose update is not fused, every transpose that
/// refreshes a `Wᵀ` copy, and those of them a training step runs (the copies of kernels whose
/// update is not fused).
fn updates(
    program: &Program,
    params: &[ParamBuf],
    stats: usize,
    transposed: &HashMap<u32, usize>,
    fused: &HashMap<u32, FusedUpdate>,
    sink: &mut dyn Sink,
) -> Result<UpdateCalls, BackendError> {
    let optimizer = &program.train.optimizer;
    let mut constraints = HashMap::new();
    let mut fused_kernels = HashSet::new();
    let mut transposes = Vec::new();
    let mut train_transposes = Vec::new();
    for op in &program.ops {
        if let OpKind::Dense {
            kernel,
            regularizer,
            max_norm,
            ..
        } = op.kind
        {
            constraints.insert(kernel.index(), (regularizer, max_norm));
            let is_fused = fused.contains_key(&op.index);
            if is_fused {
                fused_kernels.insert(kernel.index());
            }
            if let Some(&wt) = transposed.get(&op.index) {
                let k = sink.kernel(Kernel::Transpose {
                    rows: op.width_in,
                    cols: op.width,
                })?;
                let call = Call {
                    kernel: k,
                    args: vec![Ptr::Arena(params[kernel.index()].off), Ptr::Arena(wt)],
                    key: Key::None,
                };
                if !is_fused {
                    train_transposes.push(call.clone());
                }
                transposes.push(call);
            }
        }
    }
    let mut calls = Vec::new();
    for (i, (p, buf)) in program.params.iter().zip(params).enumerate() {
        if !p.trainable || fused_kernels.contains(&i) {
            continue;
        }
        let Some(g) = buf.grad else { continue };
        let (regularizer, max_norm) = constraints.get(&i).copied().unwrap_or_default();
        let update = Update {
            len: buf.padded_len(),
            kind: optimizer.kind,
            regularizer,
            clipnorm: optimizer.clipnorm,
            max_norm: max_norm.map(|m| (m, buf.rows, buf.ld)),
        };
        let mut args = vec![Ptr::Arena(buf.off), Ptr::Arena(g), Ptr::Arena(stats)];
        args.extend(buf.slots.iter().map(|s| Ptr::Arena(*s)));
        calls.push(Call {
            kernel: sink.kernel(Kernel::Update(update))?,
            args,
            key: Key::None,
        });
    }
    Ok(UpdateCalls {
        updates: calls,
        transposes,
        train_transposes,
    })
}

/// The call lists `updates` plans (see there).
struct UpdateCalls {
    updates: Vec<Call>,
    transposes: Vec<Call>,
    train_transposes: Vec<Call>,
}

/// The buffers of all kernels: one allocation, its usable part aligned to 64 bytes.
struct Arena {
    data: Vec<f32>,
    base: usize,
}

/// Huge pages are this large and aligned; the arena's usable part starts on one.
const HUGE_PAGE: usize = 2 << 20;

impl Arena {
    fn new(floats: usize) -> Result<Arena, BackendError> {
        let pad = HUGE_PAGE / 4;
        let len = floats.saturating_add(pad);
        let too_large = || BackendError::OutOfMemory {
            bytes: (len as u64).saturating_mul(4),
        };
        // Reserved first so that a size the machine cannot provide is an error, not an abort.
        let mut data: Vec<f32> = Vec::new();
        data.try_reserve_exact(len).map_err(|_| too_large())?;
        // A zeroed allocation this large usually comes from the OS untouched (mmap), so the
        // advice below applies before any page exists; pages already touched are left to the
        // kernel's background collapsing.
        data.resize(len, 0.0);
        let misalign = (data.as_ptr() as usize / 4) % pad;
        let base = (pad - misalign) % pad;
        let arena = Arena { data, base };
        arena.advise_huge_pages(floats);
        Ok(arena)
    }

    /// Asks Linux to back the arena with 2 MiB pages: a step walks several MiB of parameters,
    /// slots and activations (3 MiB of inputs alone at batch 256, 12 KiB a row), and with 4 KiB
    /// pages the weight gradient of the first layer missed the TLB on almost every row.
    #[cfg(target_os = "linux")]
    fn advise_huge_pages(&self, floats: usize) {
        let start = self.data.as_ptr().wrapping_add(self.base);
        let bytes = (floats * 4).div_ceil(HUGE_PAGE) * HUGE_PAGE;
        // SAFETY: `[start, start + bytes)` lies inside `data` (it has a huge page of floats to
        // spare beyond `base + floats`, and `base` starts a huge page), and madvise only gives
        // advice: it neither moves nor frees memory. Failure (no THP) just leaves 4 KiB pages.
        unsafe {
            libc::madvise(
                start.cast_mut().cast(),
                bytes.min((self.data.len() - self.base) * 4),
                libc::MADV_HUGEPAGE,
            );
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn advise_huge_pages(&self, _floats: usize) {}

    /// The aligned start of the usable part, where offset 0 of every plan is.
    fn base_ptr(&mut self) -> *mut f32 {
        self.data.as_mut_ptr().wrapping_add(self.base)
    }

    fn slice(&self, off: usize, len: usize) -> &[f32] {
        &self.data[self.base + off..self.base + off + len]
    }

    fn slice_mut(&mut self, off: usize, len: usize) -> &mut [f32] {
        &mut self.data[self.base + off..self.base + off + len]
    }
}

/// How a `Jit` is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Threads every step runs on (this one and `threads - 1` workers that live as long as
    /// the `Jit`). Results do not depend on it.
    pub threads: usize,
    /// The vector tier of the matrix multiplies: the widest this CPU has by default.
    pub tier: Tier,
    /// Also plan the plain backward pass of `loss_and_grads`.
    pub gradients: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            threads: 1,
            tier: Tier::best(),
            gradients: false,
        }
    }
}

/// The JIT backend. See the module documentation for its design.
pub struct Jit {
    program: Program,
    kernels: KernelModule,
    fns: Vec<KernelFn>,
    /// Each kernel's name and argument table, by id, for the checks before each call.
    #[cfg(any(debug_assertions, test))]
    signatures: Vec<(String, signature::Signature)>,
    arena: Arena,
    plan: Plan,
    step: u64,
    /// Nadam's `u_product` after `step` steps, carried from step to step as Keras does.
    nadam_u_product: f32,
    compile_ms: f64,
    /// The other threads of a multi-threaded plan.
    pool: Option<Pool>,
    /// This thread's resolved calls of the running segment.
    own: Vec<Invocation>,
    /// Where each share starts in `own` when this thread runs every share of a segment.
    share_starts: Vec<usize>,
    /// Who runs the shares of a multi-threaded plan, and the measurements behind the choice,
    /// one per phase kind (`Calls::index`).
    dispatch: Dispatch,
    adapt: [Adapt; Calls::COUNT],
}

impl Jit {
    /// Plans, generates and compiles every kernel of `program`, and initializes the parameters
    /// and optimizer state exactly as the reference executor does. `stats` are required when
    /// the input is standardized.
    pub fn new(program: &Program, stats: Option<InputStats>) -> Result<Jit, BackendError> {
        Jit::with_threads(program, stats, 1)
    }

    /// `new`, running every step on `threads` threads (this one and `threads - 1` workers that
    /// live as long as the `Jit`). Results do not depend on the thread count.
    pub fn with_threads(
        program: &Program,
        stats: Option<InputStats>,
        threads: usize,
    ) -> Result<Jit, BackendError> {
        Jit::with_options(
            program,
            stats,
            Options {
                threads,
                ..Options::default()
            },
        )
    }

    /// `with_threads`, able to compute plain gradients too (`loss_and_grads`), for comparisons
    /// with the reference executor: a training step updates most kernels inside their weight
    /// gradients, so the gradients alone need kernels of their own.
    pub fn for_gradients(
        program: &Program,
        stats: Option<InputStats>,
        threads: usize,
    ) -> Result<Jit, BackendError> {
        Jit::with_options(
            program,
            stats,
            Options {
                threads,
                gradients: true,
                ..Options::default()
            },
        )
    }

    /// `new` with every choice spelled out (`Options`); an error if this CPU does not have
    /// the tier's instructions.
    pub fn with_options(
        program: &Program,
        stats: Option<InputStats>,
        options: Options,
    ) -> Result<Jit, BackendError> {
        let Options {
            threads,
            tier,
            gradients,
        } = options;
        let started = Instant::now();
        let seed = program.train.seed;
        // The initial parameters need nothing compiled: they are drawn beside the compilation.
        let (built, params) = thread::scope(|s| {
            let init = thread::Builder::new()
                .spawn_scoped(s, || netc_ir::init::init_params(program, seed));
            let built = (|| {
                let mut kernels = KernelModule::new(tier)?;
                let plan = plan(program, stats.is_some(), threads, gradients, &mut kernels)?;
                kernels.finalize()?;
                Ok::<_, BackendError>((kernels, plan))
            })();
            let params = match init {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(_) => netc_ir::init::init_params(program, seed),
            };
            (built, params)
        });
        let (kernels, plan) = built?;
        let pool = if plan.threads > 1 {
            let pool = Pool::new(plan.threads - 1).map_err(|e| BackendError::Host {
                what: format!("starting {} threads", plan.threads),
                detail: e.to_string(),
            })?;
            Some(pool)
        } else {
            None
        };
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;
        let fns = (0..kernels.len())
            .map(|i| kernels.get(KernelId(i)))
            .collect();
        #[cfg(any(debug_assertions, test))]
        let signatures = (0..kernels.len())
            .map(|i| {
                let id = KernelId(i);
                let sig = kernels.spec(id).map(Kernel::signature).unwrap_or_default();
                (kernels.name(id).to_owned(), sig)
            })
            .collect();
        let mut jit = Jit {
            program: program.clone(),
            kernels,
            fns,
            #[cfg(any(debug_assertions, test))]
            signatures,
            arena: Arena::new(plan.size)?,
            plan,
            step: 0,
            nadam_u_product: 1.0,
            compile_ms,
            pool,
            own: Vec::with_capacity(64),
            share_starts: Vec::with_capacity(threads + 1),
            dispatch: Dispatch::Adaptive,
            adapt: Default::default(),
        };
        if let (Some((m, s)), Some(stats)) = (jit.plan.input_stats, stats) {
            let f = program.input.features;
            jit.arena.slice_mut(m, f).copy_from_slice(&stats.mean[..f]);
            jit.arena.slice_mut(s, f).copy_from_slice(&stats.std[..f]);
        }
        let state = TrainState {
            params,
            slots: netc_ir::optim::initial_slots(program),
            step: 0,
        };
        jit.set_state(&state);
        Ok(jit)
    }

    /// Wall time of planning, code generation and compilation in `new`, in milliseconds.
    pub fn compile_ms(&self) -> f64 {
        self.compile_ms
    }

    /// The vector tier of the matrix multiplies.
    pub fn tier(&self) -> Tier {
        self.kernels.tier()
    }

    /// Loss (without the regularization penalty, which the update kernels add), correct count,
    /// the gradient of every trainable parameter (without the regularization terms) and every
    /// value of the training forward pass, at the current state and step, with the masks the
    /// next `train_step` would draw. Nothing is updated: the moving averages that the forward
    /// kernels advance are restored. For comparisons with the reference executor.
    ///
    /// # Panics
    /// If the `Jit` was not built by `for_gradients`.
    pub fn loss_and_grads(&mut self, batch: Batch<'_>) -> JitGrads {
        assert!(
            self.plan.gradients,
            "loss_and_grads needs a Jit built by Jit::for_gradients"
        );
        let before = self.state();
        let key = self.train_key();
        let scalars = [0.0; update_scalars::COUNT];
        let rows = batch.len();
        self.run(Calls::TrainForward, rows, 0, batch, &key, &scalars);
        self.run(Calls::Backward, rows, 0, batch, &key, &scalars);
        let s = self.arena.slice(self.plan.stats, 2);
        let (loss, correct) = (s[0], s[1] as usize);
        let grads = self
            .program
            .params
            .iter()
            .zip(&self.plan.params)
            .map(|(p, buf)| {
                let g = buf.grad.filter(|_| p.trainable)?;
                Some(self.read_param(g, buf, &p.shape))
            })
            .collect();
        let read = |offs: &[Option<usize>]| -> Vec<Option<Array2<f32>>> {
            offs.iter()
                .zip(self.value_widths())
                .map(|(off, w)| off.map(|o| self.read_rows(o, rows, w)))
                .collect()
        };
        let values = read(&self.plan.train_values);
        let value_grads = read(&self.plan.value_grads);
        self.set_state(&before);
        JitGrads {
            loss,
            correct,
            grads,
            values,
            value_grads,
        }
    }

    fn value_widths(&self) -> Vec<usize> {
        std::iter::once(self.program.input.features)
            .chain(self.program.ops.iter().map(|op| op.width))
            .collect()
    }

    /// `rows` rows of a padded `[rows, width]` buffer.
    fn read_rows(&self, off: usize, rows: usize, width: usize) -> Array2<f32> {
        let ld = row_stride(width);
        let data = self.arena.slice(off, rows * ld);
        Array2::from_shape_fn((rows, width), |(r, c)| data[r * ld + c])
    }

    /// Number of distinct generated functions.
    pub fn kernel_count(&self) -> usize {
        self.kernels.len()
    }

    /// Runs the segments of `calls` on `rows` rows.
    fn run(
        &mut self,
        calls: Calls,
        rows: usize,
        row0: usize,
        batch: Batch<'_>,
        key: KeyFn,
        scalars: &[f32],
    ) {
        let mode = match (&self.pool, self.dispatch) {
            (None, _) | (_, Dispatch::Pool) => Runner::Pool,
            (_, Dispatch::Solo) => Runner::Solo,
            (_, Dispatch::Adaptive) => self.adapt[calls.index()].next(),
        };
        let started = Instant::now();
        // Moved out while they run (no copy, no allocation) and put back.
        let segments = std::mem::take(self.segments_mut(calls));
        self.execute(&segments, rows, row0, batch, key, scalars, mode);
        *self.segments_mut(calls) = segments;
        if self.pool.is_some() && self.dispatch == Dispatch::Adaptive {
            self.adapt[calls.index()].record(mode, rows, started.elapsed());
        }
    }

    /// Who runs the shares of the segments from now on (`Dispatch::Adaptive` by default).
    /// Results are the same whoever runs them; this is for tests and measurements.
    pub fn set_dispatch(&mut self, dispatch: Dispatch) {
        self.dispatch = dispatch;
    }

    fn segments_mut(&mut self, calls: Calls) -> &mut Vec<Segment> {
        &mut self.plan.lists[calls.index()]
    }

    /// `Backend::profile`: every forward and backward call of a step on its own (all threads
    /// run their share of it, then meet), the optimizer updates and the kernel transposes as a
    /// whole; milliseconds are the median of `reps` runs. The calls run again and again on the
    /// same state, so the parameters end where one step leaves them.
    fn profile_calls(&mut self, batch: Batch<'_>, lr: f32, reps: usize) -> Vec<CallTime> {
        let rows = batch.len();
        let key = self.train_key();
        let scalars = self.update_scalars(lr);
        let mut out = Vec::new();
        for (phase, calls, by_call) in [
            ("forward", Calls::TrainForward, true),
            ("backward", Calls::TrainBackward, true),
            ("optimizer", Calls::Updates, false),
            ("transposes", Calls::TrainTransposes, false),
        ] {
            let segments = std::mem::take(self.segments_mut(calls));
            let mut groups: Vec<(String, Vec<Segment>)> = Vec::new();
            if by_call {
                // Each call with its shares on every thread: tasks of one origin.
                for seg in &segments {
                    let mut origins: Vec<usize> = Vec::new();
                    for task in seg.parts.iter().flatten() {
                        if !origins.contains(&task.origin) {
                            origins.push(task.origin);
                        }
                    }
                    for origin in origins {
                        let parts: Vec<Vec<parallel::Task>> = seg
                            .parts
                            .iter()
                            .map(|p| p.iter().filter(|t| t.origin == origin).cloned().collect())
                            .collect();
                        let first = parts.iter().flatten().next().expect("a share of the call");
                        let name = self.kernels.name(first.call.kernel).to_string();
                        groups.push((name, vec![Segment { parts }]));
                    }
                }
            } else if !segments.is_empty() {
                let calls = segments.iter().flat_map(|s| &s.parts).flatten().count();
                groups.push((format!("{calls} calls"), segments.clone()));
            }
            if by_call && self.plan.threads > 1 {
                // The phase as it runs in a step: the calls above plus the meetings.
                let meetings = segments.len();
                groups.push((
                    format!("{WHOLE_PHASE}, {meetings} meetings"),
                    segments.clone(),
                ));
            }
            for (kernel, group) in groups {
                let mut ms: Vec<f64> = (0..reps.max(1))
                    .map(|_| {
                        let started = Instant::now();
                        self.execute(&group, rows, 0, batch, &key, &scalars, Runner::Pool);
                        started.elapsed().as_secs_f64() * 1e3
                    })
                    .collect();
                ms.sort_by(f64::total_cmp);
                out.push(CallTime {
                    phase,
                    kernel,
                    ms: ms[ms.len() / 2],
                });
            }
            *self.segments_mut(calls) = segments;
        }
        out
    }

    /// Runs `segments` on `rows` rows, with the pool or (`Runner::Solo`) every share on this
    /// thread. The only place generated code is called.
    #[allow(clippy::too_many_arguments)]
    fn execute(
        &mut self,
        segments: &[Segment],
        rows: usize,
        row0: usize,
        batch: Batch<'_>,
        key: KeyFn,
        scalars: &[f32],
        mode: Runner,
    ) {
        assert!(
            rows <= self.plan.rows,
            "batch of {rows} rows exceeds the capacity"
        );
        assert!(batch.pixels.len() >= rows * self.program.input.features);
        let base = self.arena.base_ptr();
        // The step's scalars, and the whole call's rows (`update_scalars::ROWS`); on the stack,
        // which outlives every call of this function.
        let mut all_scalars = [0f32; update_scalars::COUNT];
        let given = scalars.len().min(update_scalars::ROWS);
        all_scalars[..given].copy_from_slice(&scalars[..given]);
        all_scalars[update_scalars::ROWS] = rows as f32;
        let scalars = &all_scalars;
        #[cfg(any(debug_assertions, test))]
        let buffers = [
            (base as usize, base as usize + 4 * self.plan.size),
            (
                batch.pixels.as_ptr() as usize,
                batch.pixels.as_ptr() as usize + batch.pixels.len(),
            ),
            (
                batch.labels.as_ptr() as usize,
                batch.labels.as_ptr() as usize + batch.labels.len(),
            ),
        ];
        let Jit {
            #[cfg(any(debug_assertions, test))]
            signatures,
            fns,
            pool,
            own,
            share_starts,
            ..
        } = self;
        // Thread `t`'s calls of a segment, with pointers, rows and first row of its share.
        let resolve = |tasks: &[parallel::Task], t: usize, of: usize, out: &mut Vec<Invocation>| {
            for task in tasks {
                let (first, n) = match task.row_bytes {
                    Some(_) => parallel::row_share(rows, t, of),
                    None => (0, rows),
                };
                if n == 0 && task.row_bytes.is_some() {
                    // An empty share (a batch smaller than a row block per thread).
                    continue;
                }
                let mut table = [std::ptr::null_mut::<u8>(); MAX_ARGS];
                for (i, a) in task.call.args.iter().enumerate() {
                    let p = match a {
                        Ptr::Arena(off) => base.wrapping_add(*off).cast::<u8>(),
                        Ptr::Pixels => batch.pixels.as_ptr().cast_mut(),
                        Ptr::Labels => batch.labels.as_ptr().cast_mut(),
                    };
                    let skip = task.row_bytes.as_ref().map_or(0, |b| b[i] * first);
                    table[i] = p.wrapping_add(skip);
                }
                #[cfg(any(debug_assertions, test))]
                {
                    let (name, sig) = &signatures[task.call.kernel.0];
                    signature::check_call(name, sig, &table, n, rows, &buffers);
                }
                out.push(Invocation {
                    f: fns[task.call.kernel.0],
                    table,
                    rows: n as i64,
                    row0: (row0 + first) as i64,
                    key: match task.call.key {
                        Key::None => 0,
                        Key::Op(op) => key(op) as i32,
                    },
                    scalars: scalars.as_ptr(),
                });
            }
        };
        // SAFETY (for every call below): every pointer is inside the arena (offsets planned with
        // room for `plan.rows` rows, and `rows <= plan.rows` was checked; a thread's share of
        // rows starts inside the batch) or the caller's pixels/labels, which hold at least
        // `rows` examples (checked above; labels are only read for rows the loss kernel visits,
        // and `train_step` passes matching lengths). Each kernel was compiled for exactly this
        // argument table and the host ABI. Threads of one segment write disjoint rows or
        // elements (`parallel`), and `Pool::run` returns only when all of them are done.
        for seg in segments {
            own.clear();
            let of = seg.parts.len();
            match pool {
                Some(pool) if of > 1 && mode == Runner::Pool => {
                    debug_assert_eq!(of, pool.workers() + 1);
                    pool.run(
                        |t, list| resolve(&seg.parts[t], t, of, list),
                        || {
                            resolve(&seg.parts[0], 0, of, own);
                            for inv in own.iter() {
                                unsafe { inv.call() };
                            }
                        },
                    );
                }
                _ => {
                    share_starts.clear();
                    for (t, part) in seg.parts.iter().enumerate() {
                        share_starts.push(own.len());
                        resolve(part, t, of, own);
                    }
                    share_starts.push(own.len());
                    // The shares are independent: round-robin, so that the shares of one
                    // row-parallel call run one after the other while its weights are in cache.
                    let longest = share_starts.windows(2).map(|w| w[1] - w[0]).max();
                    for i in 0..longest.unwrap_or(0) {
                        for w in share_starts.windows(2) {
                            if w[0] + i < w[1] {
                                unsafe { own[w[0] + i].call() };
                            }
                        }
                    }
                }
            }
        }
    }

    /// The dropout key of each op for this training step.
    fn train_key(&self) -> impl Fn(u32) -> u32 + use<> {
        let (seed, step) = (self.program.train.seed, self.step);
        move |op| dropout_key(seed, Stream::Train, step, op)
    }

    fn update_scalars(&self, lr: f32) -> [f32; update_scalars::COUNT] {
        step_scalars(
            self.program.train.optimizer.kind,
            self.step,
            lr,
            self.nadam_u_product,
        )
    }

    /// Copies the padded parameter `p` out of the arena.
    fn read_param(&self, off: usize, buf: &ParamBuf, shape: &[usize]) -> ArrayD<f32> {
        let data = self.arena.slice(off, buf.padded_len());
        let mut out = Vec::with_capacity(buf.rows * buf.cols);
        for r in 0..buf.rows {
            out.extend_from_slice(&data[r * buf.ld..r * buf.ld + buf.cols]);
        }
        ArrayD::from_shape_vec(IxDyn(shape), out).expect("parameter shapes match the plan")
    }

    fn write_param(&mut self, off: usize, buf: &ParamBuf, value: &ArrayD<f32>) {
        let (rows, cols, ld) = (buf.rows, buf.cols, buf.ld);
        if ld == 0 {
            return;
        }
        let data = self.arena.slice_mut(off, rows * ld);
        let standard;
        let values = match value.as_slice() {
            Some(v) => v,
            None => {
                standard = value.iter().copied().collect::<Vec<_>>();
                &standard
            }
        };
        for (dst, src) in data.chunks_mut(ld).zip(values.chunks(cols.max(1))) {
            dst[..src.len()].copy_from_slice(src);
            dst[src.len()..].fill(0.0);
        }
    }
}

/// What `Jit::loss_and_grads` measured; vectors are indexed like `Program::params` and by
/// `ValueId`.
#[derive(Clone, Debug)]
pub struct JitGrads {
    pub loss: f32,
    pub correct: usize,
    pub grads: Vec<Option<ArrayD<f32>>>,
    pub values: Vec<Option<Array2<f32>>>,
    pub value_grads: Vec<Option<Array2<f32>>>,
}

/// The per-step scalars of the update kernels (`elementwise::update_scalars`) for step `step`
/// (counted from 0) at learning rate `lr`; `nadam_u_product` is Nadam's `Π u` before the step.
pub(crate) fn step_scalars(
    kind: OptimizerKind,
    step: u64,
    lr: f32,
    nadam_u_product: f32,
) -> [f32; update_scalars::COUNT] {
    let mut s = [0.0; update_scalars::COUNT];
    s[update_scalars::LR] = lr;
    match kind {
        OptimizerKind::Adam { beta_1, beta_2, .. }
        | OptimizerKind::AdamW { beta_1, beta_2, .. } => {
            s[update_scalars::C1] = AdamStep::new(step, lr, beta_1, beta_2).alpha;
        }
        OptimizerKind::Nadam { beta_1, beta_2, .. } => {
            let n = NadamStep::new(step, lr, beta_1, beta_2, nadam_u_product);
            s[update_scalars::C1] = n.u_t1 / (1.0 - n.u_product_t1);
            s[update_scalars::C2] = (1.0 - n.u_t) / (1.0 - n.u_product_t);
            s[update_scalars::C3] = 1.0 / n.one_minus_beta_2_power;
        }
        _ => {}
    }
    s
}

/// Which call list `run` executes.
#[derive(Clone, Copy)]
enum Calls {
    TrainForward,
    /// The plain backward pass of `Jit::loss_and_grads` (empty unless planned).
    Backward,
    /// A training step's backward pass, with the fused updates.
    TrainBackward,
    /// The updates a training step does after its backward pass (those not fused).
    Updates,
    /// Every transposed kernel copy from its kernel (after `set_state`).
    Transposes,
    /// The copies a training step refreshes after its updates (those not fused).
    TrainTransposes,
    Infer,
    Mc,
}

impl Calls {
    const COUNT: usize = 8;

    fn index(self) -> usize {
        self as usize
    }
}

type KeyFn<'a> = &'a dyn Fn(u32) -> u32;

impl Backend for Jit {
    fn name(&self) -> &'static str {
        "jit"
    }

    fn threads(&self) -> usize {
        self.plan.threads
    }

    fn dispatch_runs(&self) -> (u64, u64) {
        self.adapt.iter().fold((0, 0), |(pool, solo), a| {
            let (p, s) = a.runs();
            (pool + p, solo + s)
        })
    }

    fn profile(&mut self, batch: Batch<'_>, lr: f32, reps: usize) -> Vec<CallTime> {
        self.profile_calls(batch, lr, reps)
    }

    fn train_step(&mut self, batch: Batch<'_>, lr: f32) -> StepStats {
        let rows = batch.len();
        let key = self.train_key();
        let scalars = self.update_scalars(lr);
        self.run(Calls::TrainForward, rows, 0, batch, &key, &scalars);
        self.run(Calls::TrainBackward, rows, 0, batch, &key, &scalars);
        self.run(Calls::Updates, rows, 0, batch, &key, &scalars);
        self.run(Calls::TrainTransposes, rows, 0, batch, &key, &scalars);
        if let OptimizerKind::Nadam { beta_1, .. } = self.program.train.optimizer.kind {
            self.nadam_u_product *= netc_ir::optim::nadam_u(beta_1, self.step + 1);
        }
        self.step += 1;
        let s = self.arena.slice(self.plan.stats, 2);
        StepStats {
            loss: s[0],
            correct: s[1] as usize,
        }
    }

    fn predict(&mut self, pixels: &[u8], mode: Mode, probs: &mut [f32]) {
        let features = self.program.input.features;
        let classes = self.program.output_width();
        let total = pixels.len() / features;
        let cap = self.plan.rows;
        let seed = self.program.train.seed;
        let (phase, sample) = match mode {
            Mode::Inference => (Calls::Infer, 0),
            Mode::McDropout { sample } => (Calls::Mc, sample),
        };
        let key = move |op: u32| dropout_key(seed, Stream::McDropout, u64::from(sample), op);
        let ld = row_stride(classes);
        let mut row0 = 0;
        while row0 < total {
            let rows = cap.min(total - row0);
            let chunk = Batch {
                pixels: &pixels[row0 * features..(row0 + rows) * features],
                labels: &[],
            };
            self.run(
                phase,
                rows,
                row0,
                chunk,
                &key,
                &[0.0; update_scalars::COUNT],
            );
            let out = self.arena.slice(self.plan.probs, rows * ld);
            for r in 0..rows {
                probs[(row0 + r) * classes..(row0 + r + 1) * classes]
                    .copy_from_slice(&out[r * ld..r * ld + classes]);
            }
            row0 += rows;
        }
    }

    fn state(&self) -> TrainState {
        let mut params = Vec::new();
        let mut slots = Vec::new();
        for (p, buf) in self.program.params.iter().zip(&self.plan.params) {
            params.push(self.read_param(buf.off, buf, &p.shape));
            slots.push(
                buf.slots
                    .iter()
                    .map(|s| self.read_param(*s, buf, &p.shape))
                    .collect(),
            );
        }
        TrainState {
            params,
            slots,
            step: self.step,
        }
    }

    fn set_state(&mut self, state: &TrainState) {
        let bufs = self.plan.params.clone();
        for (i, buf) in bufs.iter().enumerate() {
            self.write_param(buf.off, buf, &state.params[i]);
            for (s, off) in buf.slots.iter().enumerate() {
                self.write_param(*off, buf, &state.slots[i][s]);
            }
        }
        self.step = state.step;
        if let OptimizerKind::Nadam { beta_1, .. } = self.program.train.optimizer.kind {
            self.nadam_u_product = nadam_u_product(beta_1, state.step);
        }
        let no_batch = Batch {
            pixels: &[],
            labels: &[],
        };
        self.run(
            Calls::Transposes,
            0,
            0,
            no_batch,
            &|_| 0,
            &[0.0; update_scalars::COUNT],
        );
    }
}
