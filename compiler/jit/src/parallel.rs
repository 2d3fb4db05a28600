//! Running one training step on several cores: the schedule (which thread runs which share of
//! which kernel call, and where threads must wait for each other) and the persistent worker pool
//! that runs it.
//!
//! A phase's calls become *segments*. Within a segment every thread runs its own list of calls
//! without waiting; between segments all threads meet. Three kinds of call:
//! - **row-parallel** calls (dense forward, activations, dropout, `dx = dy·Wᵀ`, …) compute each
//!   row of their output from the same row of their inputs. Every thread runs the same kernel on
//!   its own rows, so a chain of them needs no meeting at all: a thread only ever reads rows it
//!   wrote itself. A training batch norm is row-parallel too, but reads every row for the
//!   batch's statistics (`Footprint::across`), so it needs a meeting before it.
//! - **divided** calls were split at planning into one kernel per thread over disjoint outputs
//!   (the rows of `dW = xᵀ·dy`, the elements of an optimizer update); a divided call reads rows
//!   every thread wrote.
//! - **whole** calls (the loss, reductions over the batch) run on the first
//!   thread alone, in a segment of their own.
//!
//! Whether a call needs a meeting before it is decided from footprints (`segments`): the arena
//! ranges each call reads and writes, from its kernel's signature.
//!
//! Every element is computed by the same code in the same order whatever the thread count, so
//! training with N threads is bit-for-bit training with one (`tests::threads_do_not_change_results`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::module::KernelFn;
use super::signature::Footprint;
use super::Call;

/// The most pointers any kernel's argument table holds.
pub const MAX_ARGS: usize = 16;

/// A call in a segment: with `row_bytes`, it runs on the thread's share of the batch rows and
/// each argument pointer advances by its bytes per row (0 for arguments that are not per-row).
#[derive(Clone, Debug)]
pub struct Task {
    pub call: Call,
    pub row_bytes: Option<Vec<usize>>,
    /// The position of the call it is a share of in the phase's list of calls (shares of one
    /// call have the same), for naming the calls of a profile.
    pub origin: usize,
}

/// Calls every thread runs before the next meeting: `parts[t]` is thread `t`'s list.
#[derive(Clone, Debug)]
pub struct Segment {
    pub parts: Vec<Vec<Task>>,
}

/// How planning may divide a call.
pub enum Share {
    Whole,
    /// Row-parallel, with each argument's bytes per row.
    Rows(Vec<usize>),
    /// Divided into these calls, at most one per thread.
    Divided(Vec<Call>),
}

/// Groups `calls` into segments for `threads` threads (see the module documentation), each
/// call with its footprint (`signature::Footprint`). A row-parallel call joins the open
/// segment unless it touches what a divided call of the segment writes, or writes what one
/// reads, or reads across rows (`Footprint::across`) anything written in the segment, or
/// writes what an earlier call of the segment reads across rows; a divided call joins it unless
/// it reads anything written in the segment or writes anything read or written there (its
/// shares read and write across the rows of all threads). So a run of independent weight
/// gradients shares one meeting, and a batch norm shared by rows needs one before it only.
pub fn segments(calls: Vec<(Call, Share, Footprint)>, threads: usize) -> Vec<Segment> {
    #[derive(PartialEq)]
    enum Open {
        None,
        Whole,
        Parallel,
    }
    let mut out: Vec<Segment> = Vec::new();
    let mut open = Open::None;
    // What the open parallel segment's calls touch: all of them, and its divided calls.
    let mut touched = Footprint::default();
    let mut divided = Footprint::default();
    for (origin, (call, share, footprint)) in calls.into_iter().enumerate() {
        let share = match share {
            _ if threads == 1 => Share::Whole,
            Share::Divided(parts) if parts.len() == 1 => Share::Whole,
            other => other,
        };
        match share {
            Share::Whole => {
                if open != Open::Whole {
                    out.push(Segment {
                        parts: vec![Vec::new()],
                    });
                    open = Open::Whole;
                }
                let seg = out.last_mut().expect("a segment is open");
                seg.parts[0].push(Task {
                    call,
                    row_bytes: None,
                    origin,
                });
            }
            Share::Rows(row_bytes) => {
                if open != Open::Parallel
                    || divided.conflicts(&footprint)
                    || touched.written_across(&footprint)
                    || touched.read_across_by(&footprint)
                {
                    out.push(Segment {
                        parts: vec![Vec::new(); threads],
                    });
                    open = Open::Parallel;
                    touched.clear();
                    divided.clear();
                }
                touched.extend(&footprint);
                // Its writes outside its rows (a batch norm's statistics, from one share) are
                // seen by every thread, as a divided call's are.
                divided.writes.extend_from_slice(&footprint.shared_writes);
                let seg = out.last_mut().expect("a segment is open");
                for part in &mut seg.parts {
                    part.push(Task {
                        call: call.clone(),
                        row_bytes: Some(row_bytes.clone()),
                        origin,
                    });
                }
            }
            Share::Divided(parts) => {
                debug_assert!(parts.len() <= threads);
                if open != Open::Parallel || touched.conflicts(&footprint) {
                    out.push(Segment {
                        parts: vec![Vec::new(); threads],
                    });
                    touched.clear();
                    divided.clear();
                }
                touched.extend(&footprint);
                divided.extend(&footprint);
                let seg = out.last_mut().expect("a segment is open");
                for (t, call) in parts.into_iter().enumerate() {
                    seg.parts[t].push(Task {
                        call,
                        row_bytes: None,
                        origin,
                    });
                }
                open = Open::Parallel;
            }
        }
    }
    out
}

/// Calls that are independent of each other (the optimizer updates, the kernel transposes):
/// one segment, each call whole or divided, whole calls on the first thread when `first_only`
/// says so (they add to a shared total) and otherwise on the least loaded thread by `cost`.
pub fn independent(calls: Vec<(Call, Share, usize, bool)>, threads: usize) -> Vec<Segment> {
    let mut seg = Segment {
        parts: vec![Vec::new(); threads],
    };
    let mut load = vec![0usize; threads];
    for (origin, (call, share, cost, first_only)) in calls.into_iter().enumerate() {
        match share {
            Share::Divided(parts) if threads > 1 => {
                let n = parts.len();
                for (t, call) in parts.into_iter().enumerate() {
                    load[t] += cost / n;
                    seg.parts[t].push(Task {
                        call,
                        row_bytes: None,
                        origin,
                    });
                }
            }
            _ => {
                let t = if first_only {
                    0
                } else {
                    (0..threads).min_by_key(|t| load[*t]).unwrap_or(0)
                };
                load[t] += cost;
                seg.parts[t].push(Task {
                    call,
                    row_bytes: None,
                    origin,
                });
            }
        }
    }
    if seg.parts.iter().all(Vec::is_empty) {
        return Vec::new();
    }
    if seg.parts[1..].iter().all(Vec::is_empty) {
        seg.parts.truncate(1);
    }
    vec![seg]
}

/// Thread `t` of `threads`' rows of a batch of `rows`: `(first, count)`. Shares start on
/// multiples of 4 rows, the matrix multiplies' row block.
pub fn row_share(rows: usize, t: usize, threads: usize) -> (usize, usize) {
    let start = |t: usize| {
        if t >= threads {
            rows
        } else {
            rows * t / threads / 4 * 4
        }
    };
    let (a, b) = (start(t), start(t + 1));
    (a, b - a)
}

/// Boundaries dividing `len` into `parts` ranges that start on multiples of `align`.
pub fn divide(len: usize, parts: usize, align: usize) -> Vec<(usize, usize)> {
    let start = |t: usize| {
        if t >= parts {
            len
        } else {
            len * t / parts / align * align
        }
    };
    (0..parts)
        .map(|t| (start(t), start(t + 1) - start(t)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// One resolved kernel call, ready to run on any thread.
#[derive(Clone, Copy)]
pub struct Invocation {
    pub f: KernelFn,
    pub table: [*mut u8; MAX_ARGS],
    pub rows: i64,
    pub row0: i64,
    pub key: i32,
    pub scalars: *const f32,
}

// SAFETY: an invocation is a function pointer and pointers into buffers that the `Jit` owning
// the pool keeps alive and unmoved while a segment runs (`Pool::run` returns only after every
// list has run), and the schedule gives the lists of a segment disjoint outputs.
unsafe impl Send for Invocation {}

impl Invocation {
    /// # Safety
    /// The table must match the kernel's argument table, with buffers large enough for `rows`.
    pub unsafe fn call(&self) {
        // SAFETY: the caller's contract.
        unsafe {
            (self.f)(
                self.table.as_ptr(),
                self.rows,
                self.row0,
                self.key,
                self.scalars,
            )
        }
    }
}

/// One worker's list of a segment. Its calls run in order, each after the one before it has
/// finished, but not necessarily on the same thread: the caller of `Pool::run`, done with its
/// own list, takes the rest of a worker's list that has not moved for as long as the caller's
/// own list took, and at least `STALL`. The schedule gives the lists of a segment about equal
/// work, so a worker that runs is never that late, even inside one long call, while a worker the
/// OS has descheduled costs about one list's time, not a time slice. A worker that is merely
/// behind keeps its list: taking its calls one at a time would bounce the rows of a chain of
/// row-parallel calls between the cores and leave the two threads waiting on each other by
/// turns.
struct List {
    calls: Mutex<Vec<Invocation>>,
    /// `(generation, next call nobody has taken, number of calls)` in one word, so that a
    /// thread still looking at an earlier segment can never take a call of this one.
    state: AtomicU64,
    /// Number of calls finished (they finish in order).
    done: AtomicUsize,
}

fn pack(generation: u64, next: usize, len: usize) -> u64 {
    (generation & 0xffff_ffff) << 32 | (next as u64) << 16 | len as u64
}

fn unpack(state: u64) -> (u64, usize, usize) {
    (
        state >> 32,
        ((state >> 16) & 0xffff) as usize,
        (state & 0xffff) as usize,
    )
}

/// Most calls one list of a segment may hold.
const MAX_LIST: usize = 0xffff;

struct Shared {
    generation: AtomicU64,
    /// Lists of the running segment not finished yet.
    remaining: AtomicUsize,
    stop: AtomicBool,
    work: Vec<List>,
}

impl Shared {
    /// Runs calls `first..end` of list `w` of `len` calls, which this thread has taken, each
    /// after the one before it has finished.
    fn run_taken(&self, w: usize, first: usize, end: usize, len: usize) {
        let list = &self.work[w];
        for i in first..end {
            // The call before this one may still run on another thread.
            wait_until(|| list.done.load(Ordering::Acquire) == i);
            let inv = {
                let calls = list.calls.lock().unwrap_or_else(|e| e.into_inner());
                calls[i]
            };
            // SAFETY: `Pool::run` filled the list from the schedule of the `Jit` that owns this
            // pool and waits until every list has run before its buffers can change; the calls
            // of a list run in order.
            unsafe { inv.call() };
            list.done.store(i + 1, Ordering::Release);
            if i + 1 == len {
                self.remaining.fetch_sub(1, Ordering::Release);
            }
        }
    }

    /// The worker's loop over its list `w` of segment `generation`: takes and runs one call at
    /// a time until none is left to take.
    fn help(&self, w: usize, generation: u64) {
        let list = &self.work[w];
        loop {
            let state = list.state.load(Ordering::Acquire);
            let (g, i, len) = unpack(state);
            if g != generation & 0xffff_ffff || i >= len {
                return;
            }
            let taken = pack(g, i + 1, len);
            if list
                .state
                .compare_exchange(state, taken, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            self.run_taken(w, i, i + 1, len);
        }
    }

    /// The caller's wait for list `w` of segment `generation`: returns once every call of it
    /// is taken, and takes all that are left itself when the list has not moved for `patience`.
    fn finish_or_take(&self, w: usize, generation: u64, patience: Duration) {
        let list = &self.work[w];
        let mut seen = (u64::MAX, usize::MAX);
        let mut since = Instant::now();
        let mut taken = None;
        wait_until(|| {
            let state = list.state.load(Ordering::Acquire);
            let (g, next, len) = unpack(state);
            if g != generation & 0xffff_ffff || next >= len {
                return true;
            }
            let now = (state, list.done.load(Ordering::Acquire));
            if now != seen {
                seen = now;
                since = Instant::now();
                return false;
            }
            let stalled = since.elapsed() >= patience
                && list
                    .state
                    .compare_exchange(
                        state,
                        pack(g, len, len),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok();
            if stalled {
                taken = Some((next, len));
            }
            stalled
        });
        if let Some((next, len)) = taken {
            self.run_taken(w, next, len, len);
        }
    }
}

/// Worker threads that live as long as the `Jit`: they spin briefly between segments (a step
/// has a few dozen) and park when idle, so no thread is spawned per step.
pub struct Pool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

/// How long a worker spins for the next segment before it parks.
const SPIN: Duration = Duration::from_micros(300);

/// The least time the caller waits for a list that does not move before it takes the rest: far
/// longer than a worker takes to notice a segment, and far shorter than an OS time slice.
const STALL: Duration = Duration::from_micros(200);

impl Pool {
    /// A pool of `workers` threads besides the caller's.
    pub fn new(workers: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            remaining: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            work: (0..workers)
                .map(|_| List {
                    calls: Mutex::new(Vec::with_capacity(64)),
                    state: AtomicU64::new(0),
                    done: AtomicUsize::new(0),
                })
                .collect(),
        });
        let mut handles = Vec::new();
        for w in 0..workers {
            let mine = Arc::clone(&shared);
            let handle = thread::Builder::new()
                .name(format!("netc-jit-{}", w + 1))
                .spawn(move || worker(&mine, w));
            match handle {
                Ok(h) => handles.push(h),
                Err(e) => {
                    let pool = Pool { shared, handles };
                    drop(pool);
                    return Err(e);
                }
            }
        }
        Ok(Pool { shared, handles })
    }

    pub fn workers(&self) -> usize {
        self.shared.work.len()
    }

    /// Fills worker `w`'s list with `fill(w + 1, list)`, lets the workers run their lists while
    /// this thread runs `own`, then takes the rest of any list whose worker stalls, and returns
    /// when every list has run.
    pub fn run(&self, mut fill: impl FnMut(usize, &mut Vec<Invocation>), own: impl FnOnce()) {
        let s = &*self.shared;
        let generation = s.generation.load(Ordering::Relaxed) + 1;
        let mut lists = 0;
        for (w, list) in s.work.iter().enumerate() {
            let mut calls = list.calls.lock().unwrap_or_else(|e| e.into_inner());
            calls.clear();
            fill(w + 1, &mut calls);
            assert!(
                calls.len() <= MAX_LIST,
                "a segment list of {} calls",
                calls.len()
            );
            // Every call of the last segment has finished, and a thread still looking at it
            // cannot take one of this one (the state names the generation).
            list.done.store(0, Ordering::Relaxed);
            list.state
                .store(pack(generation, 0, calls.len()), Ordering::Release);
            lists += usize::from(!calls.is_empty());
        }
        s.remaining.store(lists, Ordering::Relaxed);
        s.generation.store(generation, Ordering::Release);
        for h in &self.handles {
            h.thread().unpark();
        }
        let started = Instant::now();
        own();
        let patience = started.elapsed().max(STALL);
        for w in 0..s.work.len() {
            s.finish_or_take(w, generation, patience);
        }
        wait_until(|| s.remaining.load(Ordering::Acquire) == 0);
    }
}

/// Spins until `done()` (another thread is a few microseconds from it), then yields the core
/// while it waits longer (that thread may need the core to get there).
fn wait_until(mut done: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !done() {
        spins = spins.saturating_add(1);
        if spins < 1 << 12 {
            std::hint::spin_loop();
        } else {
            thread::yield_now();
        }
    }
}

fn worker(s: &Shared, w: usize) {
    let mut seen = 0u64;
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || started.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                thread::park_timeout(Duration::from_millis(5));
            }
        }
        s.help(w, seen);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for h in &self.handles {
            h.thread().unpark();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_shares_cover_the_batch_once_on_row_blocks() {
        for rows in [1, 3, 4, 5, 31, 32, 33, 256] {
            for threads in 1..=4 {
                let mut next = 0;
                for t in 0..threads {
                    let (first, n) = row_share(rows, t, threads);
                    assert_eq!(first, next, "{rows} rows, {threads} threads");
                    assert!(first % 4 == 0 || n == 0);
                    next = first + n;
                }
                assert_eq!(next, rows);
            }
        }
    }

    #[test]
    fn divisions_cover_the_range_on_alignment() {
        for len in [4, 16, 100, 400, 307_200] {
            for parts in 1..=3 {
                let d = divide(len, parts, 16);
                assert_eq!(d.iter().map(|p| p.1).sum::<usize>(), len);
                assert!(d.iter().all(|p| p.0 % 16 == 0));
                assert!(d.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
            }
        }
    }

    #[test]
    fn pool_runs_every_list_and_waits_for_it() {
        use std::sync::atomic::AtomicU32;
        static HITS: AtomicU32 = AtomicU32::new(0);
        unsafe extern "C" fn count(_: *const *mut u8, rows: i64, _: i64, _: i32, _: *const f32) {
            HITS.fetch_add(rows as u32, Ordering::Relaxed);
        }
        let pool = Pool::new(2).expect("threads start");
        let inv = |rows| Invocation {
            f: count,
            table: [std::ptr::null_mut(); MAX_ARGS],
            rows,
            row0: 0,
            key: 0,
            scalars: std::ptr::null(),
        };
        for round in 0..1000u32 {
            // Three calls per worker list: every call runs exactly once, whoever takes it.
            pool.run(
                |w, list| list.extend([inv(w as i64), inv(w as i64), inv(w as i64)]),
                || {
                    // SAFETY: `count` ignores its table.
                    unsafe { inv(10).call() }
                },
            );
            assert_eq!(HITS.load(Ordering::Relaxed), (round + 1) * 19);
        }
    }
}
