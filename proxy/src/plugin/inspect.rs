//! `portico plugin inspect`: what a module is and whether Portico can run it.

use std::fmt::Write as _;

use wasmtime::{ExternType, Module};

use super::{abi, wasi};

/// The ABI versions Portico accepts, by their marker export.
const ABI_MARKERS: &[(&str, &str)] = &[
    ("proxy_abi_version_0_2_1", "0.2.1"),
    ("proxy_abi_version_0_2_0", "0.2.0"),
];

/// Refuses a module that does not declare Proxy-Wasm 0.2.x.
pub fn check_abi(module: &Module) -> Result<&'static str, String> {
    abi_version(module).ok_or_else(|| {
        let other: Vec<String> = module
            .exports()
            .filter(|e| e.name().starts_with("proxy_abi_version_"))
            .map(|e| e.name().to_string())
            .collect();
        if other.is_empty() {
            "the module exports no proxy_abi_version_0_2_1 marker: it is not a Proxy-Wasm plugin"
                .to_string()
        } else {
            format!(
                "the module declares {}; Portico runs Proxy-Wasm 0.2.1 and 0.2.0",
                other.join(", ")
            )
        }
    })
}

fn abi_version(module: &Module) -> Option<&'static str> {
    ABI_MARKERS
        .iter()
        .find(|(name, _)| module.get_export(name).is_some())
        .map(|(_, v)| *v)
}

/// Imports the host does not provide: `module.name`.
pub fn unknown_imports(module: &Module) -> Vec<String> {
    module
        .imports()
        .filter(|i| match i.module() {
            "env" => !abi::HOST_FUNCTIONS.contains(&i.name()),
            wasi::MODULE => !wasi::FUNCTIONS.contains(&i.name()),
            _ => true,
        })
        .map(|i| format!("{}.{}", i.module(), i.name()))
        .collect()
}

/// The report `portico plugin inspect` prints; `Ok(false)` when Portico cannot run it.
pub fn report(bytes: &[u8]) -> Result<(String, bool), String> {
    // The engine and linker a plugin would run with, so that "runnable" means what loading it
    // would say.
    let host = super::PluginHost::default();
    let (engine, _) = host.engine()?;
    // (`Module::new`: binary, or text where wasmtime's `wat` feature is on, as in the tests.)
    let module = Module::new(engine.engine(), bytes)
        .map_err(|e| format!("not a valid WebAssembly module: {e}"))?;
    let mut out = String::new();
    let version = abi_version(&module);
    let _ = writeln!(out, "size: {} bytes", bytes.len());
    let _ = writeln!(
        out,
        "abi: {}",
        version.map_or(
            "none (no proxy_abi_version_* export)".to_string(),
            |v| format!("Proxy-Wasm {v}")
        )
    );
    let _ = writeln!(out, "exports:");
    for e in module.exports() {
        let kind = match e.ty() {
            ExternType::Func(_) => "func",
            ExternType::Memory(_) => "memory",
            ExternType::Global(_) => "global",
            ExternType::Table(_) => "table",
            _ => "other",
        };
        let _ = writeln!(out, "  {kind} {}", e.name());
    }
    let unknown = unknown_imports(&module);
    let _ = writeln!(out, "imports:");
    for i in module.imports() {
        let name = format!("{}.{}", i.module(), i.name());
        let mark = if unknown.contains(&name) {
            if i.module() == wasi::MODULE {
                "  (not provided: answers ENOSYS)"
            } else {
                "  (not provided: traps if called)"
            }
        } else {
            ""
        };
        let _ = writeln!(out, "  {name}{mark}");
    }
    let fatal: Vec<&String> = unknown
        .iter()
        .filter(|n| !n.starts_with(wasi::MODULE))
        .collect();
    // What an instance needs to start (instance.rs): the marker, memory, an allocator the host
    // hands data through, and the context-creation entry point.
    let missing: Vec<&str> = [
        ("memory", module.get_export("memory").is_some()),
        (
            "proxy_on_memory_allocate",
            module.get_export("proxy_on_memory_allocate").is_some()
                || module.get_export("malloc").is_some(),
        ),
        (
            "proxy_on_context_create",
            module.get_export("proxy_on_context_create").is_some(),
        ),
    ]
    .into_iter()
    .filter(|(_, present)| !present)
    .map(|(name, _)| name)
    .collect();
    // Linking checks what names alone cannot: each import's kind and signature.
    let link_error = (version.is_some() && missing.is_empty())
        .then(|| host.link(&module).err())
        .flatten();
    let runnable = version.is_some() && missing.is_empty() && link_error.is_none();
    let verdict = match (runnable, fatal.is_empty()) {
        (false, _) if version.is_none() => {
            "runnable: no (not a Proxy-Wasm 0.2.x module)".to_string()
        }
        (false, _) if !missing.is_empty() => {
            format!("runnable: no (missing exports: {})", missing.join(", "))
        }
        (false, _) => format!("runnable: no ({})", link_error.unwrap_or_default()),
        (true, true) => "runnable: yes".to_string(),
        (true, false) => format!(
            "runnable: yes, but these imports trap if called: {}",
            fatal
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let _ = writeln!(out, "{verdict}");
    Ok((out, runnable))
}
