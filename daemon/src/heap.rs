//! Handing the heap's free pages back to the kernel after a burst.
//!
//! A sync of thousands of Nodes allocates as much again in passing (the
//! decoded Nodes, the first passes' plans and netlink buffers) as the peer
//! index keeps. glibc's malloc keeps what was freed between the blocks
//! still in use, so the process would stay that much larger for good
//! (~1 MB at 5000 Nodes, measured by `bench control-plane`). After a pass
//! over every peer, weftd asks malloc to return every free page.

/// Returns the heap's free pages to the kernel (glibc's `malloc_trim`;
/// elsewhere nothing).
pub fn release_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes no pointer and only rearranges malloc's own
    // free lists; it is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
