//! Work shared out over the cores at set-up (compiling kernels, drawing initial parameters):
//! this thread and up to one scoped helper per other core take items one at a time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

/// `f(state, item)` for every item, each taken in order by whichever thread is free next, on
/// this thread and up to one helper per other core; `state()` makes each thread's own scratch.
/// The results come back in the order of `items`. A helper that cannot start leaves its items
/// to the others.
pub fn map_on_cores<I, S, T>(
    items: &[I],
    state: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &I) -> T + Sync,
) -> Vec<T>
where
    I: Sync,
    T: Send,
{
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<T>>> = items.iter().map(|_| Mutex::new(None)).collect();
    let work = || {
        let mut scratch = state();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return;
            };
            let result = f(&mut scratch, item);
            *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        }
    };
    let helpers = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len())
        .saturating_sub(1);
    thread::scope(|s| {
        for _ in 0..helpers {
            let _ = thread::Builder::new().spawn_scoped(s, work);
        }
        work();
    });
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every item was taken")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_is_mapped_once_in_order() {
        let items: Vec<u64> = (0..1000).collect();
        let calls = AtomicUsize::new(0);
        let out = map_on_cores(
            &items,
            || 0u64,
            |seen, x| {
                *seen += 1;
                calls.fetch_add(1, Ordering::Relaxed);
                x * x
            },
        );
        assert_eq!(out, items.iter().map(|x| x * x).collect::<Vec<_>>());
        assert_eq!(calls.load(Ordering::Relaxed), items.len());
        assert!(map_on_cores(&[] as &[u8], || (), |_, x| *x).is_empty());
    }
}
