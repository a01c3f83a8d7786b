//! A global allocator wrapper that remembers, per thread, the largest single
//! allocation since the last [`measure`] began. The wire target uses it to
//! check that no decoder allocates more than the configured frame bound,
//! whatever length a hostile input claims.
//!
//! Per thread so that parallel `cargo test` threads do not see each other's
//! allocations. The thread-local is a const-initialised `Cell` without a
//! destructor, so touching it from inside the allocator never allocates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct Probe;

thread_local! {
    static LARGEST_BYTES: Cell<usize> = const { Cell::new(0) };
}

fn note(size_bytes: usize) {
    // `try_with` fails only while the thread is being torn down; an
    // allocation then is not one we measure.
    let _ = LARGEST_BYTES.try_with(|largest| {
        if size_bytes > largest.get() {
            largest.set(size_bytes);
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; `note` only updates a thread-local counter.
unsafe impl GlobalAlloc for Probe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

/// Runs `f` and returns its result with the largest single allocation (in
/// bytes) this thread made while it ran.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST_BYTES.with(|largest| largest.set(0));
    let result = f();
    let largest_bytes = LARGEST_BYTES.with(Cell::get);
    (result, largest_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_largest_allocation_of_the_closure_only() {
        let _before = vec![0u8; 1 << 20];
        let (len, largest) = measure(|| vec![7u8; 4096].len());
        assert_eq!(len, 4096);
        assert!((4096..1 << 20).contains(&largest), "largest {largest}");
        let ((), none) = measure(|| {});
        assert_eq!(none, 0);
    }
}
