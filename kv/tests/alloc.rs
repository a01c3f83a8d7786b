//! Allocation budget of the hot paths, counted by a global allocator: overwriting a value,
//! reading and CAS allocate nothing once warm, removing only grows the free list; creating a key allocates about once
//! (its shared key string). A regression here costs throughput long before it shows in a
//! benchmark on a noisy machine.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use tarn_kv::{Command, KvConfig, KvStateMachine, Request};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        BYTES.with(|bytes| bytes.set(bytes.get() + layout.size() as u64));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        BYTES.with(|bytes| bytes.set(bytes.get() + new_size.saturating_sub(layout.size()) as u64));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(|count| count.get())
}

fn bytes_allocated() -> u64 {
    BYTES.with(|bytes| bytes.get())
}

/// An empty state machine (what each of 10,000 idle groups holds, per node)
/// is a few KiB, not the ~120 KiB a full first arena chunk and 256 separate
/// index maps cost (3.5 GiB for 10,000 groups on three nodes in one process).
#[test]
fn an_empty_state_machine_is_small() {
    let before = bytes_allocated();
    let kv = KvStateMachine::new(KvConfig::default());
    let used = bytes_allocated() - before;
    assert!(used < 16 * 1024, "an empty KvStateMachine allocated {used} bytes");
    drop(kv);
}

const KEYS: usize = 2_000;

#[test]
fn hot_paths_stay_within_their_allocation_budget() {
    let value = Bytes::from(vec![b'x'; 256]);
    let other = Bytes::from(vec![b'y'; 256]);
    let mut kv = KvStateMachine::new(KvConfig { watch_history_max_events: 1_000, ..KvConfig::default() });
    let mut index = 0;
    let mut seq = 0;
    let mut make = |command: Command| {
        seq += 1;
        Request { client_id: 1, seq, first_unacked_seq: seq, command }
    };
    let keys: Vec<String> = (0..KEYS).map(|i| format!("d{}.k{i}", i % 10)).collect();
    for d in 0..10 {
        index += 1;
        kv.apply(index, index, &make(Command::Mkdir { key: format!("d{d}") })).unwrap();
    }
    let mut run = |kv: &mut KvStateMachine, requests: &[Request]| {
        let before = allocations();
        for request in requests {
            index += 1;
            kv.apply(index, index, request).unwrap();
        }
        allocations() - before
    };

    let creates: Vec<Request> =
        keys.iter().map(|k| make(Command::Put { key: k.clone(), value: value.clone() })).collect();
    let create_allocations = run(&mut kv, &creates);
    assert!(
        create_allocations <= (KEYS as u64) * 3 / 2,
        "creating {KEYS} keys made {create_allocations} allocations (budget: ~1 per key plus amortized growth)"
    );

    // Warm the watch history ring and the session window, then count.
    let warm: Vec<Request> =
        keys.iter().map(|k| make(Command::Put { key: k.clone(), value: other.clone() })).collect();
    run(&mut kv, &warm);
    let overwrites: Vec<Request> =
        keys.iter().map(|k| make(Command::Put { key: k.clone(), value: value.clone() })).collect();
    assert_eq!(run(&mut kv, &overwrites), 0, "overwriting a value allocates nothing");

    let cas: Vec<Request> = keys
        .iter()
        .map(|k| {
            make(Command::CompareAndSet {
                key: k.clone(),
                expected: Some(value.clone()),
                new: Some(other.clone()),
            })
        })
        .collect();
    assert_eq!(run(&mut kv, &cas), 0, "a successful CAS allocates nothing");

    let before = allocations();
    for key in &keys {
        assert!(kv.get(key).unwrap().is_some());
    }
    assert_eq!(allocations() - before, 0, "get allocates nothing");

    let removes: Vec<Request> = keys.iter().map(|k| make(Command::Remove { key: k.clone() })).collect();
    let remove_allocations = run(&mut kv, &removes);
    // Only the arena's free list grows (amortized doubling: about log2(KEYS) times).
    assert!(remove_allocations <= 16, "removing {KEYS} leaves made {remove_allocations} allocations");
    assert_eq!(kv.node_count(), 10);
}
