//! Proves that the device callback path (the bodies cpal calls, in
//! `device::ring`) never allocates, with a global allocator that counts the
//! allocations made on this thread while counting is switched on.
// A counting allocator has to implement `GlobalAlloc`, which is an unsafe
// trait; it only forwards to the system allocator and bumps a counter.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tincan_audio::device::ring::{capture_ring, playback_ring};

struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation() {
    // try_with: the thread-locals may be gone while a thread shuts down.
    let _ = COUNTING.try_with(|counting| {
        if counting.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every method forwards to `System` with the same arguments, so the
// contract of `GlobalAlloc` is System's; counting touches no heap memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged, as the caller promised for ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Allocations made by `f` on this thread.
fn allocations_in(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(|n| n.get())
}

#[test]
fn the_counter_sees_allocations() {
    // Without this, a broken counter would make the test below pass.
    let n = allocations_in(|| {
        let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(64));
        std::hint::black_box(v);
    });
    assert_eq!(n, 1);
}

#[test]
fn device_callbacks_do_not_allocate() {
    // Set-up may allocate: it happens before the stream starts.
    let (mut capture, mut captured, _) = capture_ring(4096, 2);
    let (mut to_play, mut playback, counters) = playback_ring(4096, 2);
    let input_f32 = vec![0.25f32; 2 * 256];
    let input_i16 = vec![1000i16; 2 * 256];
    let mut output_f32 = vec![0.0f32; 2 * 256];
    let mut output_i16 = vec![0i16; 2 * 256];
    let mut drain = vec![0.0f32; 4096];
    let mut heard = 0usize;

    let n = allocations_in(|| {
        for round in 0..1000 {
            capture.on_input(&input_f32);
            capture.on_input(&input_i16);
            // Engine side (not the callback, but allocation-free too): move
            // what was captured to the speaker.
            let available = captured.slots().min(drain.len());
            if let Ok(chunk) = captured.read_chunk(available) {
                let (a, b) = chunk.as_slices();
                drain[..a.len()].copy_from_slice(a);
                drain[a.len()..a.len() + b.len()].copy_from_slice(b);
                chunk.commit_all();
            }
            if round % 3 != 0 {
                let fits = available.min(to_play.slots());
                if let Ok(chunk) = to_play.write_chunk_uninit(fits) {
                    chunk.fill_from_iter(drain[..fits].iter().copied());
                }
            }
            playback.on_output(&mut output_f32);
            playback.on_output(&mut output_i16);
            heard += output_f32.iter().filter(|s| **s != 0.0).count();
        }
    });
    assert_eq!(n, 0, "the callback path allocated {n} times");
    // The loop really moved sound, and really ran dry at times.
    assert!(heard > 100_000, "only {heard} samples played");
    assert!(
        counters
            .underruns
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}
