//! Configuration: read YAML from a file or a directory, substitute `${VAR}`s, parse into the
//! raw types of [`raw`], and [`compile`] them into an immutable [`Snapshot`].
//!
//! Every error carries its location: the file, the line and column, and the YAML path
//! (`config/routes.yaml:14:7: routes[3].upstream: unknown upstream "ordrs"`). Loading collects
//! all errors it can before giving up, so an operator fixes a file in one pass.
//!
//! [`Snapshot`]: crate::snapshot::Snapshot

pub mod compile;
pub mod env;
pub mod locate;
pub mod plugins;
pub mod raw;
pub mod units;
pub mod watch;

use std::fmt;
use std::path::{Path, PathBuf};

use locate::LineIndex;
use raw::RawFile;

pub use compile::compile;

/// The JSON Schema of the configuration file (`portico schema`), for editors and linters.
pub fn schema() -> String {
    let schema = schemars::schema_for!(raw::RawFile);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}

/// One configuration error with where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// YAML path such as `routes[3].upstream`; empty for whole-file errors.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn global(message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            line: None,
            column: None,
            path: String::new(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
                if let Some(col) = self.column {
                    write!(f, ":{col}")?;
                }
            }
            f.write_str(": ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Where a value was written. Kept in the snapshot for errors found after compiling, such as
/// a listener address that cannot be bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// YAML path such as `listeners[1].address`.
    pub path: String,
}

impl Location {
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            path: self.path.clone(),
            message: message.into(),
        }
    }
}

/// Every error found in one attempt to load or compile a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

/// One YAML file after environment substitution, with its line index for error locations.
#[derive(Debug)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
    index: LineIndex,
}

impl Source {
    /// An error at `path` (a YAML path inside this file).
    pub fn error(&self, path: &str, message: impl Into<String>) -> ConfigError {
        self.location(path).error(message)
    }

    /// Where `path` (a YAML path inside this file) was written.
    pub fn location(&self, path: &str) -> Location {
        let pos = self.index.locate(path);
        Location {
            file: Some(self.path.clone()),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            path: path.to_string(),
        }
    }

    /// The folder relative paths in this file resolve against.
    pub fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

/// Everything read from disk for one configuration: the sources and their parsed files.
#[derive(Debug)]
pub struct Loaded {
    pub root: PathBuf,
    pub sources: Vec<Source>,
    pub files: Vec<RawFile>,
    /// Digest of the configuration text (before substitution) of every source.
    pub text_digest: aws_lc_rs::digest::Digest,
}

/// The YAML files a configuration path names: the file itself, or the `*.yaml`/`*.yml`
/// files of a directory in name order (hidden entries such as a ConfigMap's `..data` are
/// skipped; symbolic links are followed).
pub fn config_files(root: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let meta = std::fs::metadata(root).map_err(|e| {
        ConfigError::global(format!("cannot read configuration {}: {e}", root.display()))
    })?;
    if !meta.is_dir() {
        return Ok(vec![root.to_path_buf()]);
    }
    let entries = std::fs::read_dir(root).map_err(|e| {
        ConfigError::global(format!(
            "cannot list configuration directory {}: {e}",
            root.display()
        ))
    })?;
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let path = entry.path();
        // A `*.yaml` that cannot be read (a dangling symbolic link, no permission) is an
        // error, not a file to skip: its routes would be missing without a word.
        let meta = std::fs::metadata(&path).map_err(|e| {
            ConfigError::global(format!(
                "cannot read configuration file {}: {e}",
                path.display()
            ))
        })?;
        if meta.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(ConfigError::global(format!(
            "configuration directory {} holds no *.yaml file",
            root.display()
        )));
    }
    Ok(files)
}

/// Reads the raw text of every configuration file, for hashing before a full load.
pub fn read_texts(root: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, ConfigError> {
    config_files(root)?
        .into_iter()
        .map(|p| match std::fs::read(&p) {
            Ok(b) => Ok((p, b)),
            Err(e) => Err(ConfigError::global(format!(
                "cannot read {}: {e}",
                p.display()
            ))),
        })
        .collect()
}

/// Digest of configuration texts, as computed for [`Loaded::text_digest`].
pub fn digest_texts(root: &Path, texts: &[(PathBuf, Vec<u8>)]) -> aws_lc_rs::digest::Digest {
    let base = base_dir(root);
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (path, bytes) in texts {
        ctx.update(hashed_path(base, path).to_string_lossy().as_bytes());
        ctx.update(&(bytes.len() as u64).to_le_bytes());
        ctx.update(bytes);
    }
    ctx.finish()
}

/// The directory a configuration's relative paths start from: the configuration directory,
/// or the configuration file's.
pub fn base_dir(root: &Path) -> &Path {
    if root.is_dir() {
        root
    } else {
        root.parent().unwrap_or(Path::new(""))
    }
}

/// A path as the content hash sees it: relative to `base` when under it, so that one
/// configuration hashes the same however its path was spelt (`portico check --config ./cfg`
/// and a proxy run with `--config /etc/portico/cfg` agree).
pub fn hashed_path<'a>(base: &Path, path: &'a Path) -> &'a Path {
    path.strip_prefix(base).unwrap_or(path)
}

/// Reads, substitutes and parses a configuration file or directory.
pub fn load(root: &Path) -> Result<Loaded, ConfigErrors> {
    load_with_env(root, |name| std::env::var(name).ok())
}

/// [`load`] with an explicit environment, for tests.
pub fn load_with_env(
    root: &Path,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    let texts = read_texts(root)?;
    let text_digest = digest_texts(root, &texts);
    let mut errors = Vec::new();
    let mut sources = Vec::new();
    let mut files = Vec::new();
    for (path, bytes) in texts {
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError {
                    file: Some(path),
                    line: None,
                    column: None,
                    path: String::new(),
                    message: format!("not UTF-8 text: {e}"),
                });
                continue;
            }
        };
        let text = match env::substitute(&text, &lookup) {
            Ok(t) => t.into_owned(),
            Err(env_errors) => {
                errors.extend(env_errors.into_iter().map(|e| ConfigError {
                    file: Some(path.clone()),
                    line: Some(e.line),
                    column: Some(e.column),
                    path: String::new(),
                    message: e.message.clone(),
                }));
                continue;
            }
        };
        let index = LineIndex::new(&text);
        let source = Source { path, text, index };
        match parse_file(&source) {
            Ok(file) => {
                sources.push(source);
                files.push(file);
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Loaded {
        root: root.to_path_buf(),
        sources,
        files,
        text_digest,
    })
}

fn parse_file(source: &Source) -> Result<RawFile, ConfigError> {
    let blank = source
        .text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---");
    if blank {
        return Ok(RawFile::default());
    }
    let de = serde_yaml::Deserializer::from_str(&source.text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = err.into_inner();
        let location = inner.location();
        let mut e = source.error(&path, clean_serde_message(&inner.to_string(), &path));
        if let Some(loc) = location {
            e.line = Some(loc.line());
            e.column = Some(loc.column());
        }
        e
    })
}

/// serde_yaml writes `PATH: MESSAGE at line X column Y`, where the YAML path and location are
/// printed in front already (from `serde_path_to_error`, which for an unknown field names the
/// field rather than the mapping that holds it). Keeps MESSAGE, and for syntax errors the
/// context after the location (`..., while parsing a flow sequence at line 1 column 12`).
fn clean_serde_message(msg: &str, path: &str) -> String {
    let mut out = msg.to_string();
    if let Some(i) = msg.find(" at line ") {
        let after = &msg[i + " at line ".len()..];
        let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        if let Some(col) = after[digits(after)..].strip_prefix(" column ")
            && digits(after) > 0
            && digits(col) > 0
        {
            out = format!("{}{}", &msg[..i], &col[digits(col)..]);
        }
    }
    if let Some((head, message)) = out.split_once(": ")
        && let Some(after) = path.strip_prefix(head)
        && (after.is_empty() || after.starts_with(['.', '[']))
    {
        return message.to_string();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_lose_the_path_and_location_printed_in_front() {
        let cases = [
            (
                "limits.max_connections: invalid type: string \"lots\", expected usize at line 3 column 20",
                "limits.max_connections",
                "invalid type: string \"lots\", expected usize",
            ),
            (
                "routes[0]: unknown field `x`, expected `name` at line 4 column 5",
                "routes[0].x",
                "unknown field `x`, expected `name`",
            ),
            (
                "did not find expected ',' or ']' at line 2 column 1, while parsing a flow sequence at line 1 column 12",
                "",
                "did not find expected ',' or ']', while parsing a flow sequence at line 1 column 12",
            ),
            (
                "invalid type: map at line 1",
                "",
                "invalid type: map at line 1",
            ),
            ("routesx: oops", "routes", "routesx: oops"),
        ];
        for (msg, path, want) in cases {
            assert_eq!(clean_serde_message(msg, path), want, "{msg}");
        }
    }

    #[test]
    fn an_error_names_the_file_line_and_path_once() {
        let dir = std::env::temp_dir().join(format!("portico-mod-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("typo.yaml");
        std::fs::write(
            &file,
            "listeners: []\nroutes:\n  - name: a\n    upstrem: b\n",
        )
        .unwrap();
        let errors = load_with_env(&file, |_| None).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        let text = errors.to_string();
        let head = format!(
            "{}:4:5: routes[0].upstrem: unknown field `upstrem`, expected one of",
            file.display()
        );
        assert!(text.starts_with(&head), "{text}");
    }

    /// A `*.yaml` in a configuration directory that cannot be read (here a dangling symbolic
    /// link) fails the load, naming it; hidden entries and other names are still skipped.
    #[test]
    fn an_unreadable_yaml_in_a_directory_is_an_error() {
        let dir = std::env::temp_dir().join(format!("portico-dir-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("10-ok.yaml"), "routes: []\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        std::os::unix::fs::symlink(dir.join("gone.yaml"), dir.join(".hidden.yaml")).unwrap();
        assert_eq!(config_files(&dir).unwrap(), [dir.join("10-ok.yaml")]);
        std::os::unix::fs::symlink(dir.join("gone.yaml"), dir.join("20-dangling.yaml")).unwrap();
        let err = config_files(&dir).unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            err.contains("cannot read configuration file") && err.contains("20-dangling.yaml"),
            "{err}"
        );
    }

    /// The committed schema must be what the code generates: `portico schema > config/portico.schema.json`.
    #[test]
    fn committed_schema_is_current() {
        let committed = include_str!("../../../config/portico.schema.json");
        assert!(
            committed == super::schema(),
            "config/portico.schema.json is stale: run `cargo run -p portico -- schema > config/portico.schema.json`"
        );
    }
}
