//! The typed argument table of every kernel kind: `Kernel::signature` names each pointer of the
//! table in order, with what the kernel does with it (`Access`), how much of the buffer a call
//! may touch from the pointer (`Extent`), and how the pointer moves when the call is divided
//! among threads (`Split`). The rest of the JIT derives from it instead of repeating the table:
//!
//! - the planner checks every call it plans against its kernel's signature: as many pointers,
//!   each arena buffer long enough for the plan's rows (`check_plan`, always on);
//! - row-parallel sharing moves each pointer by its extent's row length (`Extent::row_bytes`),
//!   and divided calls (weight gradients, element-wise updates, batch norm by columns) move each
//!   pointer as its `Split` says (`divide`);
//! - `KernelBench` lays out its buffers from the extents;
//! - in debug builds and tests, the executor checks every resolved pointer of every call against
//!   the buffers it may point into before calling (`check_call`).
//!
//! The emitters in `kernels` read their tables in the order written here; the tests of every
//! kernel against the interpreter, on every tier and thread count, hold the two together.

use crate::kernels::{pad4, row_stride, Kernel};
use netc_ir::backend::BackendError;

/// What a kernel does with a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    /// Read, then written (a parameter and the slots of its update, statistics it adds to).
    Update,
}

/// How much of a buffer a call may touch, from the pointer it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// The call's rows of a value: `floats` floats of each row, rows `ld` floats apart.
    Rows { floats: usize, ld: usize },
    /// All the rows of the whole call, from every share (the statistics of a batch norm shared
    /// by rows): like `Rows`, but a share's pointer does not move, and its extent is the whole
    /// call's rows.
    Batch { floats: usize, ld: usize },
    /// `rows` rows of `floats` floats, `ld` apart, whatever the call's rows (a dense kernel, its
    /// gradient, slots and transposed copy).
    Matrix {
        rows: usize,
        floats: usize,
        ld: usize,
    },
    /// A vector of `n` floats.
    Floats(usize),
    /// The call's rows of pixels, `features` bytes each.
    Pixels { features: usize },
    /// One label byte per row of the call.
    Labels,
}

impl Extent {
    /// Bytes a call on `rows` rows may touch from the pointer (for `Batch`, `rows` are the
    /// whole call's).
    pub fn bytes(self, rows: usize) -> usize {
        let rows_of = |n: usize, floats: usize, ld: usize| match n {
            0 => 0,
            n => 4 * ((n - 1) * ld + floats),
        };
        match self {
            Extent::Rows { floats, ld } | Extent::Batch { floats, ld } => rows_of(rows, floats, ld),
            Extent::Matrix { rows, floats, ld } => rows_of(rows, floats, ld),
            Extent::Floats(n) => 4 * n,
            Extent::Pixels { features } => rows * features,
            Extent::Labels => rows,
        }
    }

    /// Bytes from one row of the batch to the next: how far a thread's share of rows moves the
    /// pointer (0 for buffers that are not rows of the batch).
    pub fn row_bytes(self) -> usize {
        match self {
            Extent::Rows { ld, .. } => 4 * ld,
            Extent::Pixels { features } => features,
            Extent::Labels => 1,
            Extent::Matrix { .. } | Extent::Floats(_) | Extent::Batch { .. } => 0,
        }
    }
}

/// How a pointer moves when a call is divided into shares along one of its dimensions (kernel
/// rows of a weight gradient, elements of an update).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Every share gets the same pointer (the `dy` of a weight gradient, an update's loss
    /// statistics), or the kernel is never divided.
    Same,
    /// By `floats` per unit of the divided dimension.
    By(usize),
    /// One block of `floats` per share: scratch each share writes on its own.
    PerShare(usize),
    /// The first share only; the others take no such pointer (a bias gradient).
    FirstOnly,
}

/// One pointer of an argument table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arg {
    pub name: &'static str,
    pub access: Access,
    pub extent: Extent,
    pub split: Split,
}

/// A kernel's argument table, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signature {
    pub args: Vec<Arg>,
}

impl Signature {
    fn push(&mut self, name: &'static str, access: Access, extent: Extent, split: Split) {
        self.args.push(Arg {
            name,
            access,
            extent,
            split,
        });
    }

    fn read(&mut self, name: &'static str, extent: Extent) {
        self.push(name, Access::Read, extent, Split::Same);
    }

    fn write(&mut self, name: &'static str, extent: Extent) {
        self.push(name, Access::Write, extent, Split::Same);
    }

    pub fn len(&self) -> usize {
        self.args.len()
    }

    /// The row length of each argument, in bytes, for row-parallel shares.
    pub fn row_bytes(&self) -> Vec<usize> {
        self.args.iter().map(|a| a.extent.row_bytes()).collect()
    }
}

/// A batch norm's rows of a `width`-wide value, the same rows of the whole batch (`by_rows`),
/// and its vectors of `width`.
fn batch_norm_extents(width: usize) -> (Extent, Extent, Extent) {
    let (floats, ld) = (pad4(width), row_stride(width));
    (
        Extent::Rows { floats, ld },
        Extent::Batch { floats, ld },
        Extent::Floats(floats),
    )
}

/// The rows of a `width`-wide value, as every kernel lays them out.
fn value(width: usize) -> Extent {
    Extent::Rows {
        floats: pad4(width),
        ld: row_stride(width),
    }
}

impl Kernel {
    /// The argument table, in the order the emitter reads it (see each `emit_*`).
    pub fn signature(&self) -> Signature {
        let mut s = Signature::default();
        // The conversion prologue of a first forward op: its output is the op's input.
        let forward_input =
            |s: &mut Signature, convert: &Option<crate::kernels::Convert>, width| match convert {
                Some(c) => {
                    s.read(
                        "pixels",
                        Extent::Pixels {
                            features: c.features,
                        },
                    );
                    if c.standardize {
                        s.read("mean", Extent::Floats(c.features));
                        s.read("std", Extent::Floats(c.features));
                    }
                    s.write(
                        "x",
                        Extent::Rows {
                            floats: c.features,
                            ld: row_stride(c.features),
                        },
                    );
                }
                None => s.read("x", value(width)),
            };
        match self {
            Kernel::Dense {
                convert,
                inputs,
                units,
                bias,
                store_pre_activation,
                ..
            } => {
                forward_input(&mut s, convert, *inputs);
                let n = pad4(*units);
                s.read(
                    "kernel",
                    Extent::Matrix {
                        rows: *inputs,
                        floats: n,
                        ld: n,
                    },
                );
                if *bias {
                    s.read("bias", Extent::Floats(n));
                }
                s.write("y", value(*units));
                if *store_pre_activation {
                    s.write("z", value(*units));
                }
            }
            Kernel::Activation { convert, width, .. } | Kernel::Dropout { convert, width, .. } => {
                forward_input(&mut s, convert, *width);
                s.write("y", value(*width));
            }
            Kernel::Prelu { convert, width } => {
                forward_input(&mut s, convert, *width);
                s.read("alpha", Extent::Floats(pad4(*width)));
                s.write("y", value(*width));
            }
            Kernel::BatchNorm {
                convert,
                width,
                training,
                store_normalized,
                by_rows,
                ..
            } => {
                let by = Split::Same;
                let (cols, all, vector) = batch_norm_extents(*width);
                match convert {
                    Some(_) => forward_input(&mut s, convert, *width),
                    None => s.push("x", Access::Read, cols, by),
                }
                s.push("gamma", Access::Read, vector, by);
                s.push("beta", Access::Read, vector, by);
                let moving = if *training {
                    Access::Update
                } else {
                    Access::Read
                };
                s.push("moving_mean", moving, vector, by);
                s.push("moving_variance", moving, vector, by);
                s.push("y", Access::Write, cols, by);
                if *training {
                    s.push("batch_mean", Access::Write, vector, by);
                    s.push("batch_inv_std", Access::Write, vector, by);
                    if *store_normalized {
                        s.push("x_hat", Access::Write, cols, by);
                    }
                    if *by_rows {
                        s.read("x_all", all);
                    }
                }
            }
            Kernel::Convert(c) => forward_input(&mut s, &Some(*c), c.features),
            Kernel::HeadLoss { classes } => {
                s.read("logits", value(*classes));
                s.read("labels", Extent::Labels);
                s.write("dlogits", value(*classes));
                s.write("stats", Extent::Floats(2));
            }
            Kernel::HeadProbs { classes } => {
                s.read("logits", value(*classes));
                s.write("probs", value(*classes));
            }
            Kernel::ActivationBackward { width, .. } => {
                s.read("dy", value(*width));
                s.read("saved", value(*width));
                s.write("dx", value(*width));
            }
            Kernel::WeightGrad {
                inputs,
                x_ld,
                units,
                bias,
                update,
                ..
            } => {
                let n = pad4(*units);
                let x = Extent::Rows {
                    floats: *inputs,
                    ld: *x_ld,
                };
                let rows = Extent::Matrix {
                    rows: *inputs,
                    floats: n,
                    ld: n,
                };
                s.push("x", Access::Read, x, Split::By(1));
                s.read("dy", value(*units));
                s.push("dkernel", Access::Write, rows, Split::By(n));
                if let Some(u) = update {
                    s.push("kernel", Access::Update, rows, Split::By(n));
                    for name in ["slot0", "slot1", "slot2"].iter().take(u.kind.slot_count()) {
                        s.push(name, Access::Update, rows, Split::By(n));
                    }
                    if u.transposed {
                        let t = Extent::Matrix {
                            rows: *units,
                            floats: *inputs,
                            ld: *x_ld,
                        };
                        s.push("kernel_t", Access::Write, t, Split::By(1));
                    }
                    if u.normalized {
                        let v = Extent::Floats(*inputs);
                        s.push("gamma", Access::Read, v, Split::By(1));
                        s.push("beta", Access::Read, v, Split::By(1));
                        s.push("dgamma", Access::Write, v, Split::By(1));
                        s.push("dbeta", Access::Write, v, Split::By(1));
                        s.push("sums", Access::Write, Extent::Floats(n), Split::PerShare(n));
                    }
                }
                if *bias {
                    s.push("dbias", Access::Write, Extent::Floats(n), Split::FirstOnly);
                }
            }
            Kernel::InputGrad {
                inputs,
                units,
                activation,
            } => {
                s.read(
                    "dy",
                    Extent::Rows {
                        floats: *units,
                        ld: row_stride(*units),
                    },
                );
                s.read(
                    "kernel_t",
                    Extent::Matrix {
                        rows: *units,
                        floats: pad4(*inputs),
                        ld: row_stride(*inputs),
                    },
                );
                if activation.is_some() {
                    s.read("saved", value(*inputs));
                }
                s.write("dx", value(*inputs));
            }
            Kernel::PreluBackward { width, input_grad } => {
                s.read("x", value(*width));
                s.read("alpha", Extent::Floats(pad4(*width)));
                s.read("dy", value(*width));
                s.write("dalpha", Extent::Floats(pad4(*width)));
                if *input_grad {
                    s.write("dx", value(*width));
                }
            }
            Kernel::BatchNormBackward {
                width,
                input_grad,
                by_rows,
            } => {
                let by = Split::Same;
                let (cols, all, vector) = batch_norm_extents(*width);
                s.push("x", Access::Read, cols, by);
                for name in ["gamma", "batch_mean", "batch_inv_std"] {
                    s.push(name, Access::Read, vector, by);
                }
                s.push("dy", Access::Read, cols, by);
                s.push("dgamma", Access::Write, vector, by);
                s.push("dbeta", Access::Write, vector, by);
                if *input_grad {
                    s.push("dx", Access::Write, cols, by);
                }
                if *by_rows {
                    s.read("x_all", all);
                    s.read("dy_all", all);
                }
            }
            Kernel::DropoutBackward { width, .. } => {
                s.read("dy", value(*width));
                s.write("dx", value(*width));
            }
            Kernel::Transpose { rows, cols } => {
                s.read(
                    "kernel",
                    Extent::Matrix {
                        rows: *rows,
                        floats: pad4(*cols),
                        ld: pad4(*cols),
                    },
                );
                s.write(
                    "kernel_t",
                    Extent::Matrix {
                        rows: *cols,
                        floats: *rows,
                        ld: row_stride(*rows),
                    },
                );
            }
            Kernel::Update(u) => {
                let v = Extent::Floats(u.len);
                s.push("param", Access::Update, v, Split::By(1));
                // The regularization gradient and clipping rewrite the gradient first.
                let grad = if u.regularizer.is_zero() && u.clipnorm.is_none() {
                    Access::Read
                } else {
                    Access::Update
                };
                s.push("grad", grad, v, Split::By(1));
                // The penalty is added to the loss statistics; without one they are left alone.
                let stats = if u.regularizer.is_zero() {
                    Access::Read
                } else {
                    Access::Update
                };
                s.push("stats", stats, Extent::Floats(1), Split::Same);
                for name in ["slot0", "slot1", "slot2"].iter().take(u.kind.slot_count()) {
                    s.push(name, Access::Update, v, Split::By(1));
                }
            }
        }
        s
    }
}

/// The pointers of share `index` of a divided call: `base` (the whole call's, as offsets) moved
/// by `first` units of the divided dimension as each argument's `Split` says.
pub fn divide(sig: &Signature, base: &[usize], first: usize, index: usize) -> Vec<usize> {
    sig.args
        .iter()
        .zip(base)
        .filter_map(|(a, &off)| match a.split {
            Split::Same => Some(off),
            Split::By(floats) => Some(off + first * floats),
            Split::PerShare(floats) => Some(off + index * floats),
            Split::FirstOnly => (index == 0).then_some(off),
        })
        .collect()
}

/// Checks a planned call: as many pointers as the signature, and each arena buffer (`Some`
/// offset, in floats) long enough for `rows` rows inside an arena of `size` floats.
pub fn check_plan(
    name: &str,
    sig: &Signature,
    arena: &[Option<usize>],
    rows: usize,
    size: usize,
) -> Result<(), BackendError> {
    if sig.len() != arena.len() {
        return Err(BackendError::Plan(format!(
            "{name} takes {} pointers, the plan gives {}",
            sig.len(),
            arena.len()
        )));
    }
    for (a, off) in sig.args.iter().zip(arena) {
        if let Some(off) = off {
            let end = 4 * off + a.extent.bytes(rows);
            if end > 4 * size {
                return Err(BackendError::Plan(format!(
                    "{name}: `{}` ({:?}) ends {} bytes past the arena",
                    a.name,
                    a.extent,
                    end - 4 * size
                )));
            }
        }
    }
    Ok(())
}

/// Checks a resolved call on `rows` rows: each pointer's extent lies inside one of `buffers`
/// (byte ranges). Panics with the kernel's and argument's names otherwise.
#[cfg(any(debug_assertions, test))]
pub fn check_call(
    name: &str,
    sig: &Signature,
    table: &[*mut u8],
    rows: usize,
    call_rows: usize,
    buffers: &[(usize, usize)],
) {
    assert!(
        table.len() >= sig.len(),
        "{name}: a table of {} pointers for {} arguments",
        table.len(),
        sig.len()
    );
    for (a, p) in sig.args.iter().zip(table) {
        let start = *p as usize;
        let extent_rows = match a.extent {
            Extent::Batch { .. } => call_rows,
            _ => rows,
        };
        let end = start + a.extent.bytes(extent_rows);
        assert!(
            buffers.iter().any(|&(lo, hi)| lo <= start && end <= hi),
            "{name}: `{}` ({:?}, {rows} rows) at {start:#x}..{end:#x} is outside every buffer",
            a.name,
            a.extent
        );
    }
}

/// The arena ranges (in floats, `[start, end)`) a call may read and write, from its signature
/// and its pointers at the plan's rows: what the scheduler compares to decide whether two calls
/// may run without a meeting between them, or swap places.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    pub reads: Vec<(usize, usize)>,
    pub writes: Vec<(usize, usize)>,
    /// Reads of rows every share of a row-parallel call reads (`Extent::Batch`): rows other
    /// threads write.
    pub across: Vec<(usize, usize)>,
    /// Writes that are not rows of the batch (vectors, matrices): a row-parallel call's share
    /// that writes them writes what other threads may read.
    pub shared_writes: Vec<(usize, usize)>,
}

impl Footprint {
    /// The footprint of a call whose arena pointers are `arena` (`None` for pixels and labels,
    /// which no kernel writes), divided among up to `shares` shares (scratch per share,
    /// `Split::PerShare`, spans all of theirs).
    pub fn of(sig: &Signature, arena: &[Option<usize>], rows: usize, shares: usize) -> Footprint {
        let mut f = Footprint::default();
        for (a, off) in sig.args.iter().zip(arena) {
            let Some(off) = *off else { continue };
            let floats = match a.split {
                Split::PerShare(block) => block * shares.max(1),
                _ => a.extent.bytes(rows).div_ceil(4),
            };
            let range = (off, off + floats);
            if range.0 == range.1 {
                continue;
            }
            if let Extent::Batch { .. } = a.extent {
                f.across.push(range);
            }
            if a.access != Access::Read && a.extent.row_bytes() == 0 {
                f.shared_writes.push(range);
            }
            match a.access {
                Access::Read => f.reads.push(range),
                Access::Write => f.writes.push(range),
                Access::Update => {
                    f.reads.push(range);
                    f.writes.push(range);
                }
            }
        }
        f
    }

    /// Whether `later`, run after this call, could see a different result if the two ran at
    /// the same time or in the other order: it reads what this writes, or writes what this
    /// reads or writes.
    pub fn conflicts(&self, later: &Footprint) -> bool {
        overlap(&later.reads, &self.writes)
            || overlap(&later.writes, &self.reads)
            || overlap(&later.writes, &self.writes)
    }

    /// Whether `later`, a row-parallel call, reads across rows something this writes.
    pub fn written_across(&self, later: &Footprint) -> bool {
        overlap(&later.across, &self.writes)
    }

    /// Whether `later` writes rows that this reads across rows.
    pub fn read_across_by(&self, later: &Footprint) -> bool {
        overlap(&later.writes, &self.across)
    }

    pub fn extend(&mut self, other: &Footprint) {
        self.reads.extend_from_slice(&other.reads);
        self.writes.extend_from_slice(&other.writes);
        self.across.extend_from_slice(&other.across);
        self.shared_writes.extend_from_slice(&other.shared_writes);
    }

    pub fn clear(&mut self) {
        self.reads.clear();
        self.writes.clear();
        self.across.clear();
        self.shared_writes.clear();
    }
}

fn overlap(a: &[(usize, usize)], b: &[(usize, usize)]) -> bool {
    a.iter()
        .any(|&(s, e)| b.iter().any(|&(s2, e2)| s < e2 && s2 < e))
}
