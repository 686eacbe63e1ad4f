//! `portico plugin new NAME`: a plugin crate that builds, tests and loads as it stands — the
//! first ten minutes of docs/plugins.md ("Writing a plugin") done for you.

use std::path::{Path, PathBuf};

/// Why a scaffold could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "plugin name {0:?}: use lowercase letters, digits, '-' and '_', starting with a letter"
    )]
    BadName(String),
    #[error("{0} already exists; choose another name or --dir")]
    Exists(PathBuf),
    #[error(
        "cannot find the SDK (portico-plugin-sdk) at {0}; pass --sdk PATH to the plugin-sdk \
         directory of a Portico checkout"
    )]
    NoSdk(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The SDK next to the sources this binary was built from, if it is still there.
pub fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk")
}

/// Writes the crate `dir/name` and returns its path.
pub fn create(name: &str, dir: &Path, sdk: &Path) -> Result<PathBuf, Error> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid || name.len() > 64 {
        return Err(Error::BadName(name.to_string()));
    }
    let sdk = sdk
        .canonicalize()
        .ok()
        .filter(|p| p.join("Cargo.toml").is_file())
        .ok_or_else(|| Error::NoSdk(sdk.to_path_buf()))?;
    let root = dir.join(name);
    if root.exists() {
        return Err(Error::Exists(root));
    }
    let lib = name.replace('-', "_");
    let sdk = sdk.display().to_string();
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{lib}}", &lib)
            .replace("{{sdk}}", &sdk)
    };
    for (path, template) in [
        ("Cargo.toml", CARGO_TOML),
        ("src/lib.rs", LIB_RS),
        ("README.md", README),
        ("portico.yaml", PORTICO_YAML),
        (".gitignore", "/target\n"),
    ] {
        let path = root.join(path);
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, fill(template)).map_err(io)?;
    }
    Ok(root)
}

const CARGO_TOML: &str = r#"[package]
name = "{{name}}"
version = "0.1.0"
edition = "2024"

[lib]
# cdylib: the .wasm Portico loads; rlib: so `cargo test` can link the unit tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
portico-plugin-sdk = { path = "{{sdk}}" }
serde = { version = "1", features = ["derive"] }

[dev-dependencies]
# The native mock host that runs the hooks under `cargo test`.
portico-plugin-sdk = { path = "{{sdk}}", features = ["testing"] }
serde_json = "1"

[profile.release]
lto = true
codegen-units = 1
strip = true

# A crate of its own, even when created inside another workspace.
[workspace]
"#;

const LIB_RS: &str = r#"//! {{name}}: a Portico plugin. It adds a header to every request, and refuses requests that
//! carry the header named by `block_if_present` with 403.
#![forbid(unsafe_code)]

use portico_plugin_sdk::{Flow, Http, LocalResponse, Plugin, Result, Root, info, plugin};
use serde::Deserialize;

/// The plugin's `config:` in Portico's YAML. Unknown keys are refused, so typos surface in
/// `portico check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The header to add to every request.
    #[serde(default = "default_header")]
    header: String,
    value: String,
    /// Requests with this header are refused with 403.
    #[serde(default)]
    block_if_present: Option<String>,
}

fn default_header() -> String {
    "x-{{name}}".into()
}

struct MyPlugin {
    config: Config,
}

// Exports the plugin: the Proxy-Wasm entry points of the hooks this block defines.
#[plugin]
impl Plugin for MyPlugin {
    type Config = Config;
    /// Per-request state; `()` when the plugin needs none.
    type State = ();

    fn configure(config: Config, _root: &mut Root) -> Result<Self> {
        if config.value.is_empty() {
            return Err(portico_plugin_sdk::Error::config("value: must not be empty"));
        }
        info!("adding {} to every request", config.header);
        Ok(MyPlugin { config })
    }

    fn on_request_headers(&mut self, http: &mut Http<'_, ()>) -> Result<Flow> {
        if let Some(name) = &self.config.block_if_present
            && http.request().contains(name)?
        {
            return http.respond(LocalResponse::new(403).text("blocked\n"));
        }
        http.request().set(&self.config.header, &self.config.value)?;
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_plugin_sdk::testing::{Harness, Outcome};
    use serde_json::json;

    #[test]
    fn adds_the_header() {
        let plugin = Harness::<MyPlugin>::new(json!({ "value": "hi" })).unwrap();
        let request = plugin.request().path("/anything");
        assert_eq!(request.on_request_headers(), Outcome::Continue);
        assert_eq!(request.request_header("x-{{name}}").as_deref(), Some("hi"));
    }

    #[test]
    fn blocks_when_told() {
        let plugin =
            Harness::<MyPlugin>::new(json!({ "value": "hi", "block_if_present": "x-evil" }))
                .unwrap();
        let request = plugin.request().header("x-evil", "1");
        let Outcome::Respond(response) = request.on_request_headers() else {
            panic!("expected 403");
        };
        assert_eq!(response.status, 403);
    }

    #[test]
    fn refuses_bad_config() {
        let err = Harness::<MyPlugin>::new(json!({ "valeu": "hi" })).unwrap_err();
        assert!(err.to_string().contains("unknown field `valeu`"), "{err}");
        let err = Harness::<MyPlugin>::new(json!({ "value": "" })).unwrap_err();
        assert!(err.to_string().contains("must not be empty"), "{err}");
    }
}
"#;

const README: &str = r#"# {{name}}

A Portico plugin, scaffolded by `portico plugin new {{name}}`.

```sh
rustup target add wasm32-wasip1                    # once
cargo test                                         # the unit tests, natively, on a mock host
cargo build --target wasm32-wasip1 --release       # → target/wasm32-wasip1/release/{{lib}}.wasm
portico plugin inspect target/wasm32-wasip1/release/{{lib}}.wasm
portico check --config portico.yaml                # runs the plugin's configure step too
portico run --config portico.yaml                  # then: curl -i localhost:8080/
```

Edit `src/lib.rs`; the SDK's documentation is `cargo doc --open -p portico-plugin-sdk`, and
Portico's docs/plugins.md ("Writing a plugin") walks through the rest.
"#;

const PORTICO_YAML: &str = r#"# Portico with this plugin on one route; the route answers by itself, so no upstream is needed.
listeners: [{ name: web, address: "127.0.0.1:8080" }]
plugins:
  {{name}}:
    module: target/wasm32-wasip1/release/{{lib}}.wasm   # relative to this file
    config: { value: "hello from {{name}}", block_if_present: x-block }
routes:
  - name: demo
    plugins: [{{name}}]
    direct_response: { status: 200, body: "the plugin let this request through\n" }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_nothing_is_overwritten() {
        let dir = std::env::temp_dir().join(format!("portico-scaffold-{}", std::process::id()));
        let sdk = default_sdk();
        for bad in ["", "Caps", "1st", "a b", "../x", "a/b"] {
            assert!(
                matches!(create(bad, &dir, &sdk), Err(Error::BadName(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            create("ok", &dir, Path::new("/nonexistent")),
            Err(Error::NoSdk(_))
        ));
        let root = create("my-plugin", &dir, &sdk).expect("created");
        let toml = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(toml.contains("name = \"my-plugin\""));
        assert!(!toml.contains("{{"), "every placeholder filled");
        let yaml = std::fs::read_to_string(root.join("portico.yaml")).unwrap();
        assert!(yaml.contains("release/my_plugin.wasm"));
        assert!(matches!(
            create("my-plugin", &dir, &sdk),
            Err(Error::Exists(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
