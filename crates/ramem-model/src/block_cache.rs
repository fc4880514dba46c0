//! A global allocator that keeps a few freed large blocks for reuse.
//!
//! Training gathers every mini-batch's neighbour keys and values into fresh
//! tensors of tens of megabytes (256 queries x 32 neighbours x 1280 floats is
//! 42 MB), and the tensor library allocates each operation's output anew.
//! The system allocator serves blocks that large with `mmap` and returns them
//! with `munmap`, so every step paid for thousands of page faults and page
//! clearings: before this cache, two thirds of a training run's time was the
//! kernel's. Blocks of at least [`MIN_BLOCK`] bytes are kept on free and
//! handed back to the next request of exactly the same size and alignment,
//! which a training loop makes every step; at most [`MAX_CACHED`] bytes stay
//! cached, the rest go back to the system as before.
//!
//! A library cannot choose the allocator: the program that trains installs
//! it with `#[global_allocator]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

/// Blocks smaller than this go straight to the system allocator (which
/// serves them from its heap without page faults).
pub const MIN_BLOCK: usize = 1 << 20;
/// Most bytes kept in freed blocks at any time.
pub const MAX_CACHED: usize = 1 << 30;
const SLOTS: usize = 128;

#[derive(Clone, Copy)]
struct Slot {
    ptr: usize,
    size: usize,
    align: usize,
}

struct Cache {
    slots: [Slot; SLOTS],
    cached_bytes: usize,
}

pub struct BlockCache {
    locked: AtomicBool,
    cache: std::cell::UnsafeCell<Cache>,
}

// The cache is only touched with `locked` held.
unsafe impl Sync for BlockCache {}

impl BlockCache {
    pub const fn new() -> BlockCache {
        const EMPTY: Slot = Slot {
            ptr: 0,
            size: 0,
            align: 0,
        };
        BlockCache {
            locked: AtomicBool::new(false),
            cache: std::cell::UnsafeCell::new(Cache {
                slots: [EMPTY; SLOTS],
                cached_bytes: 0,
            }),
        }
    }

    /// Runs `f` on the cache under a spin lock (held for a few dozen
    /// comparisons; an allocator may not block on anything that allocates).
    fn with_cache<R>(&self, f: impl FnOnce(&mut Cache) -> R) -> R {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        // SAFETY: the lock above gives exclusive access until it is released.
        let result = f(unsafe { &mut *self.cache.get() });
        self.locked.store(false, Ordering::Release);
        result
    }

    fn take(&self, layout: Layout) -> Option<*mut u8> {
        self.with_cache(|cache| {
            let slot = cache
                .slots
                .iter_mut()
                .find(|s| s.ptr != 0 && s.size == layout.size() && s.align == layout.align())?;
            let ptr = slot.ptr as *mut u8;
            slot.ptr = 0;
            cache.cached_bytes -= layout.size();
            Some(ptr)
        })
    }

    /// Keeps the block if there is room; false if the caller must free it.
    fn put(&self, ptr: *mut u8, layout: Layout) -> bool {
        self.with_cache(|cache| {
            if cache.cached_bytes + layout.size() > MAX_CACHED {
                return false;
            }
            match cache.slots.iter_mut().find(|s| s.ptr == 0) {
                Some(slot) => {
                    *slot = Slot {
                        ptr: ptr as usize,
                        size: layout.size(),
                        align: layout.align(),
                    };
                    cache.cached_bytes += layout.size();
                    true
                }
                None => false,
            }
        })
    }
}

impl Default for BlockCache {
    fn default() -> Self {
        BlockCache::new()
    }
}

unsafe impl GlobalAlloc for BlockCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= MIN_BLOCK {
            if let Some(ptr) = self.take(layout) {
                return ptr;
            }
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= MIN_BLOCK {
            if let Some(ptr) = self.take(layout) {
                // A reused block holds its last owner's bytes.
                unsafe { std::ptr::write_bytes(ptr, 0, layout.size()) };
                return ptr;
            }
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= MIN_BLOCK && self.put(ptr, layout) {
            return;
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() < MIN_BLOCK && new_size < MIN_BLOCK {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // A growing Vec: let the system move (or remap) the block in place
        // of a copy, unless a cached block of the new size is at hand.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if new_size >= MIN_BLOCK {
            if let Some(new_ptr) = self.take(new_layout) {
                unsafe {
                    std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                return new_ptr;
            }
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_large_block_is_reused_for_the_same_layout_and_zeroed_on_request() {
        let cache = BlockCache::new();
        let layout = Layout::from_size_align(MIN_BLOCK * 2, 64).unwrap();
        unsafe {
            let a = cache.alloc(layout);
            assert!(!a.is_null());
            a.write_bytes(7, layout.size());
            cache.dealloc(a, layout);
            let b = cache.alloc_zeroed(layout);
            assert_eq!(a, b, "the cached block comes back");
            assert!(std::slice::from_raw_parts(b, layout.size())
                .iter()
                .all(|&x| x == 0));
            // A different size does not take it.
            let other = Layout::from_size_align(MIN_BLOCK * 3, 64).unwrap();
            cache.dealloc(b, layout);
            let c = cache.alloc(other);
            assert_ne!(c, b);
            cache.dealloc(c, other);
            // Grow through realloc keeps the contents.
            let small = Layout::from_size_align(1024, 64).unwrap();
            let d = cache.alloc(small);
            d.write_bytes(3, 1024);
            let e = cache.realloc(d, small, MIN_BLOCK * 3);
            assert_eq!(e, c, "realloc to a cached size takes the cached block");
            assert!(std::slice::from_raw_parts(e, 1024).iter().all(|&x| x == 3));
            cache.dealloc(e, other);
        }
    }

    #[test]
    fn the_cache_never_holds_more_than_its_cap() {
        let cache = BlockCache::new();
        let layout = Layout::from_size_align(MAX_CACHED / 2 + 1, 8).unwrap();
        unsafe {
            let a = cache.alloc(layout);
            let b = cache.alloc(layout);
            cache.dealloc(a, layout);
            cache.dealloc(b, layout); // over the cap: back to the system
            let cached = cache.with_cache(|c| c.cached_bytes);
            assert_eq!(cached, layout.size());
            let again = cache.alloc(layout);
            assert_eq!(again, a);
            cache.dealloc(again, layout);
        }
    }
}
