//! The readers under test take paths (they mmap or stream files, as for users): each input is
//! written to one scratch file per process, in memory-backed /dev/shm when there is one.

use std::path::PathBuf;

pub fn file(ext: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::path::Path::new("/dev/shm");
    let dir = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("lora-tune-fuzz-{}.{ext}", std::process::id()));
    std::fs::write(&path, bytes).expect("scratch file");
    path
}
