//! The process's allocator: mimalloc, called the way Rust's own `System` allocator calls
//! `malloc` on Linux.
//!
//! Included by the binary (`src/main.rs`) and `examples/bare_proxy.rs`, not by the library,
//! which forbids unsafe code. `mimalloc::MiMalloc` sends every allocation through
//! `mi_malloc_aligned`; in mimalloc 3 that call takes a slow generic path (and over-allocates)
//! whenever the matching free list is empty or the block is larger than 1 KiB, even for the
//! 1-16 byte alignments that plain `mi_malloc` already guarantees. Under load (callgrind, `wrk
//! -t1 -c32` against the gateway) that cost about 1,300 instructions per proxied request;
//! calling `mi_malloc` for ordinary alignments brought it to about 740.
//!
//! Which calls are safe: `mi_malloc(size)` returns a block aligned to 16 bytes, or for blocks
//! smaller than 16 bytes to their size class (8 bytes at least); so any layout whose alignment
//! is at most 16 and at most its size is served by it, the rule `std::alloc::System` applies to
//! `malloc`. Larger alignments (tokio's cache-padded task cells) keep the aligned calls.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// The alignment `mi_malloc` guarantees for blocks of at least this size (`MI_MAX_ALIGN_SIZE`).
const PLAIN_ALIGN: usize = 16;

pub struct Mimalloc;

/// Whether `mi_malloc(size)` already satisfies `align`.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

// SAFETY: every pointer handed out comes from mimalloc and is released through `mi_free` /
// `mi_realloc*`, which accept any mimalloc pointer; alignment is as documented above and
// checked by the tests below.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            libmimalloc_sys::mi_malloc(layout.size()).cast()
        } else {
            libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            libmimalloc_sys::mi_zalloc(layout.size()).cast()
        } else {
            libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        libmimalloc_sys::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            libmimalloc_sys::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            libmimalloc_sys::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align())
                .cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes up to 9 KiB at every alignment up to 4 KiB: aligned, writable, and kept
    /// across a grow and a shrink.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let a = Mimalloc;
        let mut live = Vec::new();
        for align in (0..=12).map(|s| 1usize << s) {
            // Sizes that are not multiples of the alignment too: `Layout` allows them.
            for size in (1usize..=9 * 1024).step_by(13) {
                let layout = Layout::from_size_align(size, align).unwrap();
                for zeroed in [false, true] {
                    // SAFETY: non-zero size; each block is freed once with its layout below.
                    unsafe {
                        let p = if zeroed {
                            a.alloc_zeroed(layout)
                        } else {
                            a.alloc(layout)
                        };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        if zeroed {
                            assert!(std::slice::from_raw_parts(p, size).iter().all(|b| *b == 0));
                        }
                        std::ptr::write_bytes(p, 0xa5, size);
                        let bigger = size * 3;
                        let q = a.realloc(p, layout, bigger);
                        assert_eq!(q as usize % align, 0, "grown: size {size} align {align}");
                        assert!(std::slice::from_raw_parts(q, size)
                            .iter()
                            .all(|b| *b == 0xa5));
                        let r = a.realloc(q, Layout::from_size_align(bigger, align).unwrap(), size);
                        assert_eq!(r as usize % align, 0, "shrunk: size {size} align {align}");
                        assert!(std::slice::from_raw_parts(r, size)
                            .iter()
                            .all(|b| *b == 0xa5));
                        live.push((r, layout));
                    }
                }
                if live.len() > 64 {
                    for (p, l) in live.drain(..) {
                        // SAFETY: allocated above with this layout, freed once.
                        unsafe { a.dealloc(p, l) };
                    }
                }
            }
        }
        for (p, l) in live {
            // SAFETY: allocated above with this layout, freed once.
            unsafe { a.dealloc(p, l) };
        }
    }
}
