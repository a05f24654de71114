//! How freed buffers return to the operating system. glibc's malloc gives every allocation above
//! its mmap threshold (128 kB at first, raised dynamically up to 32 MB) its own fresh pages and
//! unmaps them on free, and trims the heap's top whenever 128 kB lie free there; a training step
//! or an evaluation allocates and frees the same few-MB activations hundreds of times, so the
//! kernel zeroed fresh pages for each: 15 % of an evaluation's samples were page faults. With
//! buffers up to 32 MB (glibc's ceiling) taken from the heap and the heap never trimmed, a freed
//! buffer's pages are reused by the next one. Peak memory does not grow: the pages kept are the
//! ones the peak already held.

/// Keep freed buffers' pages in the process (glibc; elsewhere nothing to do). Call once, first
/// thing in `main`, before the threads start.
pub fn keep_freed_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets two of malloc's parameters; called before other threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
