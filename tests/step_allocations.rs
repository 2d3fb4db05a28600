//! A JIT training step allocates nothing: every buffer lives in the arena planned at compile
//! time, the thread pool's call lists keep their capacity, and no thread is spawned per step.
//! The global allocator of this test binary counts every allocation on every thread (the pool's
//! workers included), so this file holds this one test and nothing else may run beside it.
//! A counting allocator must implement the `unsafe` trait `GlobalAlloc`: the one place outside
//! the JIT crate allowed `unsafe` (the CLI package denies it elsewhere).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use netc_ir::backend::{Backend, Batch, InputStats};
use netc_jit::Jit;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments; counting
// touches only an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is `GlobalAlloc::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn training_steps_allocate_nothing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Fused updates, batch norm shared by columns and taking its gradients from the weight
    // gradient, alpha dropout's masks.
    for spec in ["baseline", "batch_norm", "alpha_dropout"] {
        let path = root.join("specs").join(format!("{spec}.net"));
        let source = std::fs::read_to_string(&path).expect("spec");
        let program = netc_front::compile(&source).program.expect("compiles");
        let batch = program.train.batch;
        let features = program.input.features;
        // A full batch and the short last one of an epoch.
        let pixels: Vec<u8> = (0..batch * features).map(|i| (i * 7 % 256) as u8).collect();
        let labels: Vec<u8> = (0..batch).map(|i| (i % 10) as u8).collect();
        let full = Batch {
            pixels: &pixels,
            labels: &labels,
        };
        let short = Batch {
            pixels: &pixels[..5 * features],
            labels: &labels[..5],
        };
        for threads in [1, 2] {
            let stats = InputStats::placeholder(&program);
            let mut jit = Jit::with_threads(&program, stats, threads).expect("jit builds");
            // The first steps may size what then stays (the pool's call lists).
            for b in [full, short, full] {
                jit.train_step(b, 1e-4);
            }
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            for b in [full, full, short, full] {
                jit.train_step(b, 1e-4);
            }
            let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
            assert_eq!(
                allocations, 0,
                "{spec}, {threads} thread(s): {allocations} allocations in four steps"
            );
        }
    }
}
