//! glibc malloc settings for tensor workloads. By default glibc returns freed memory at
//! the top of the heap to the OS and serves large blocks with fresh `mmap`s, so each
//! training step's temporaries (tens of MB) are page-faulted and zeroed again: on a ViT-B
//! decoder step that was a third of the time (`bench/NOTES.md`). Keeping freed memory
//! for reuse leaves the peak resident size unchanged (the process already reached it).

/// Tunes the allocator; call once, first thing in `main`. A no-op off glibc.
pub fn tune_for_tensors() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::ffi::c_int;
        // from glibc's malloc.h
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_TOP_PAD: c_int = -2;
        const M_MMAP_MAX: c_int = -4;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        // SAFETY: mallopt only changes allocator parameters; it is called before any
        // other thread exists.
        unsafe {
            // never give the top of the heap back to the OS between steps
            mallopt(M_TRIM_THRESHOLD, c_int::MAX);
            // grow the heap in large steps
            mallopt(M_TOP_PAD, 512 << 20);
            // serve every block from the reusable heap, never a fresh mmap: a raised mmap
            // threshold stops at 32 MiB, and a decoder step's `[8, 4096, 256]` activations
            // are just over it
            mallopt(M_MMAP_MAX, 0);
        }
    }
}

/// Returns the heap's free memory to the OS now (the settings above keep it), so that a
/// following peak-memory measurement starts from what is in use. A no-op off glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim only returns unused heap pages to the OS.
        unsafe {
            malloc_trim(0);
        }
    }
}
