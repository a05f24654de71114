//! Atomic file writes: a temp file in the target's directory, fsync, then rename over the target.
//! A crash or error at any point leaves either the old file or the new one, never a partial one.

use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

/// Writes `path` through `fill`, atomically. The temp file is removed if `fill` fails.
pub fn write_atomic<F>(path: &Path, fill: F) -> io::Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> io::Result<()>,
{
    write_atomic_at(path, |tmp| {
        let mut out = BufWriter::new(File::create(tmp)?);
        fill(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?;
        Ok(())
    })
}

/// Writes `path` atomically through `fill`, which creates the file at the temp path it is
/// given (for writers that take a path); then fsync and rename. The temp file is removed if
/// anything fails.
pub fn write_atomic_at<F>(path: &Path, fill: F) -> io::Result<()>
where
    F: FnOnce(&Path) -> io::Result<()>,
{
    let tmp = temp_path_beside(path);
    let result = (|| {
        fill(&tmp)?;
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A name beside `path` that no other process or thread picks at the same time.
pub fn temp_path_beside(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Removes the temp files and directories in `dir` that a process which no longer runs left
/// behind (killed mid-write). Best effort: what cannot be removed stays; on systems without
/// `/proc` nothing is removed.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = temp_owner(&name) else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if alive || !Path::new("/proc/self").exists() {
            continue;
        }
        let path = entry.path();
        let _ = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
    }
}

/// The process id in a name `temp_path_beside` made (`.{name}.tmp-{pid}-{n}`).
fn temp_owner(name: &str) -> Option<u32> {
    let (_, tail) = name.strip_prefix('.')?.rsplit_once(".tmp-")?;
    let (pid, n) = tail.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Moves a finished temp file or directory into place. When another process got there first
/// (same content: both were verified), keeps theirs and drops ours.
pub fn rename_into_place(tmp: &Path, dest: &Path) -> io::Result<()> {
    match fs::rename(tmp, dest) {
        Ok(()) => Ok(()),
        Err(_) if dest.exists() => {
            let _ = if tmp.is_dir() {
                fs::remove_dir_all(tmp)
            } else {
                fs::remove_file(tmp)
            };
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn failed_write_leaves_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("adapter.json");
        fs::write(&path, "old").unwrap();
        let err = write_atomic(&path, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left behind"
        );
    }

    #[test]
    fn stale_temps_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dead = u32::MAX - 7; // above any pid_max
        let ours = temp_path_beside(&dir.path().join("model.safetensors"));
        fs::write(&ours, "in progress").unwrap();
        fs::write(dir.path().join(format!(".a.json.tmp-{dead}-0")), "x").unwrap();
        fs::create_dir(dir.path().join(format!(".step-000003.tmp-{dead}-4"))).unwrap();
        fs::write(dir.path().join("keep.tmp-1-2"), "not ours").unwrap();
        remove_stale_temps(dir.path());
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        left.sort();
        assert_eq!(left, [ours, dir.path().join("keep.tmp-1-2")]);
    }

    #[test]
    fn write_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_atomic(&path, |f| f.write_all(b"new")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
    }
}
