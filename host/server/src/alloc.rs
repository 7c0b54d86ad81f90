//! The server's memory allocator: mimalloc for small blocks, glibc's
//! `malloc` for blocks of [`LARGE`] and more.
//!
//! Why two. mimalloc's thread-local free lists make the many small,
//! short-lived allocations of a transaction cheaper than glibc's arenas
//! (at 64 sessions, alternating runs of the two builds with `bench/ab.sh`:
//! median server CPU per message 164 → 135 µs with a connection reused,
//! 559 → 513 µs with a new STARTTLS connection per message). But large
//! blocks must go back to the system as soon as they are freed, and grow
//! without a copy: argon2's 19 MiB per password check and large message
//! contents are what the memory ceilings bound (see
//! [`return_large_blocks`]). glibc maps each of those on its own (`M_MMAP_THRESHOLD`),
//! unmaps it when freed, and grows it with `mremap`; with every block in
//! mimalloc, 200 sessions sending large messages grew 286 MiB instead of
//! 242, over the test's 256 MiB ceiling.
//!
//! The owner of a block follows from its size alone, which `dealloc` and
//! `realloc` are given (the `Layout` a block was allocated with), so no
//! lookup is needed; a `realloc` across the threshold moves the block.
//! A hand-written shim, since no crate routes by size; it only dispatches.

use std::alloc::{GlobalAlloc, Layout, System};

use mimalloc::MiMalloc;

/// Blocks of this size and more go to glibc, which maps them on their own
/// from this size on ([`return_large_blocks`]).
pub const LARGE: usize = 1 << 20;

pub struct Split;

fn large(size: usize) -> bool {
    size >= LARGE
}

// SAFETY: every call is forwarded to the allocator that owns the block,
// which is decided by the block's size alone: a block is always freed or
// resized by the allocator that made it, with the layout it was made with.
unsafe impl GlobalAlloc for Split {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            match large(layout.size()) {
                true => System.alloc(layout),
                false => MiMalloc.alloc(layout),
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            match large(layout.size()) {
                true => System.alloc_zeroed(layout),
                false => MiMalloc.alloc_zeroed(layout),
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `layout` is the one `ptr` was allocated with, so its size
        // names the allocator that made it.
        unsafe {
            match large(layout.size()) {
                true => System.dealloc(ptr, layout),
                false => MiMalloc.dealloc(ptr, layout),
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as in `dealloc`; a block that changes owner is copied
        // into a new one and the old one freed by its own allocator.
        unsafe {
            match (large(layout.size()), large(new_size)) {
                (true, true) => System.realloc(ptr, layout, new_size),
                (false, false) => MiMalloc.realloc(ptr, layout, new_size),
                _ => {
                    let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                    let new = self.alloc(new_layout);
                    if !new.is_null() {
                        let n = layout.size().min(new_size);
                        std::ptr::copy_nonoverlapping(ptr, new, n);
                        self.dealloc(ptr, layout);
                    }
                    new
                }
            }
        }
    }
}

/// Blocks of [`LARGE`] and more (argon2's 19 MiB per password check, large
/// message contents: the ones [`Split`] hands to glibc) are mapped on
/// their own and returned to the system when freed, instead of coming from
/// glibc's per-thread arenas, which keep what is freed for later. Without
/// this, password checks that ran on many blocking threads in turn left
/// each thread's arena holding its 19 MiB: a flood of failed logins, never
/// more than two checks at once, still took the server from 48 to 525 MiB
/// resident. Setting the threshold also stops glibc from raising it on
/// its own. Call it before any other thread exists; false when glibc
/// refused it.
pub fn return_large_blocks() -> bool {
    // SAFETY: mallopt only sets a malloc parameter.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE as libc::c_int) == 1 }
}

/// Gives back what start-up freed (compiling the components takes tens of
/// MiB, then frees it): mimalloc keeps freed pages for later, and an idle
/// server may not allocate again for a long time. A first start (the
/// components compiled) then holds 90-95 MiB instead of about 125; glibc
/// holds 45.
pub fn release_startup_memory() {
    // SAFETY: mi_collect only frees memory no block uses.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block keeps its bytes when it grows and shrinks across the
    /// threshold, and each allocator frees only its own blocks (a mix-up
    /// aborts the process).
    #[test]
    fn blocks_move_across_the_threshold_intact() {
        let a = Split;
        unsafe {
            let small = Layout::from_size_align(64, 8).unwrap();
            let p = a.alloc(small);
            assert!(!p.is_null());
            for i in 0..64 {
                *p.add(i) = i as u8;
            }
            let p = a.realloc(p, small, LARGE + 4096);
            assert!(!p.is_null());
            *p.add(LARGE) = 7;
            let big = Layout::from_size_align(LARGE + 4096, 8).unwrap();
            let p = a.realloc(p, big, 32);
            assert!(!p.is_null());
            for i in 0..32 {
                assert_eq!(*p.add(i), i as u8);
            }
            a.dealloc(p, Layout::from_size_align(32, 8).unwrap());
            let z = a.alloc_zeroed(big);
            assert!((0..big.size()).step_by(4096).all(|i| *z.add(i) == 0));
            a.dealloc(z, big);
        }
    }
}
