//! The one wasmtime engine of the process, narrowed to what Portico uses: Cranelift, the pooling
//! allocator with copy-on-write memory images, epoch interruption driven by a ticker thread
//! that holds only a weak reference to the engine, and an on-disk cache of compiled modules.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig};

/// How often the ticker advances the epoch; a guest call's deadline is a number of these.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The largest `limits.memory` a plugin may ask for; also the pooling allocator's slot size.
pub const MAX_MEMORY: u64 = 1 << 30;

/// Instances the pooling allocator keeps slots for (virtual address space only until used):
/// all plugins' instances together, including, during a reload, a changed plugin's old ones
/// next to its new ones.
pub const POOL_SLOTS: u32 = 512;

#[derive(Clone)]
pub struct PluginEngine {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    /// Set by a guest call that has run for more than a tick (see [`PluginEngine::long_call`]).
    long_call: Arc<AtomicBool>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine")
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

impl PluginEngine {
    /// Builds the engine and starts its epoch ticker. The pooling allocator is preferred; where
    /// the host refuses its address-space reservation, instances are allocated on demand.
    pub fn new() -> Result<PluginEngine, wasmtime::Error> {
        let engine = match Engine::new(&config(true)) {
            Ok(engine) => engine,
            Err(e) => {
                tracing::warn!(error = %e, "pooling allocator unavailable; allocating plugin instances on demand");
                Engine::new(&config(false))?
            }
        };
        let weak = engine.weak();
        let runtime = tokio::runtime::Handle::try_current().ok();
        let long_call = Arc::new(AtomicBool::new(false));
        let flag = long_call.clone();
        std::thread::Builder::new()
            .name("portico-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    if flag.swap(false, Ordering::AcqRel)
                        && let Some(rt) = &runtime
                    {
                        rt.spawn(async {});
                    }
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| wasmtime::format_err!("cannot start the epoch ticker: {e}"))?;
        Ok(PluginEngine {
            engine,
            cache_dir: cache_dir(),
            long_call,
        })
    }

    /// Called from a guest call's epoch callback once it has run for a few milliseconds. A
    /// guest call runs on a tokio worker thread and blocks it; if that worker was the one
    /// polling the network, every connection would wait for the call to end. The ticker thread
    /// answers by spawning an empty task from outside the runtime, which wakes a parked worker,
    /// and that worker takes over polling. Ordinary calls (well under a tick) never get here.
    pub fn long_call(&self) {
        self.long_call.store(true, Ordering::Release);
    }

    /// The same engine with its compiled-code cache in `dir` (`None`: no cache).
    pub fn with_cache_dir(mut self, dir: Option<PathBuf>) -> PluginEngine {
        self.cache_dir = dir;
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles `wasm`, or loads the machine code compiled for the same bytes by an earlier run.
    pub fn compile(&self, wasm: &[u8]) -> Result<Module, wasmtime::Error> {
        let cached = self
            .cache_dir
            .as_ref()
            .map(|dir| dir.join(self.cache_key(wasm)));
        if let Some(path) = &cached
            && path.is_file()
        {
            match load_cached(&self.engine, path) {
                Ok(module) => return Ok(module),
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "ignoring unusable cached plugin code");
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let module = Module::from_binary(&self.engine, wasm)?;
        if let Some(path) = &cached {
            store_cached(&module, path);
        }
        Ok(module)
    }

    /// The file name of `wasm`'s compiled code: its digest and this engine's compatibility hash,
    /// so a Portico upgrade or a different configuration never loads stale code.
    fn cache_key(&self, wasm: &[u8]) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, wasm);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{hex}-{:016x}.cwasm", h.finish())
    }
}

fn config(pooling: bool) -> Config {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .memory_init_cow(true)
        .max_wasm_stack(1 << 20);
    if pooling {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(POOL_SLOTS)
            .total_memories(POOL_SLOTS)
            .total_tables(POOL_SLOTS)
            .max_memory_size(MAX_MEMORY as usize)
            // Keep a little of each freed memory resident so a rebuilt instance starts warm.
            .linear_memory_keep_resident(64 << 10)
            .max_unused_warm_slots(64);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// `$PORTICO_PLUGIN_CACHE`, else `$XDG_CACHE_HOME/portico/plugins`, else
/// `$HOME/.cache/portico/plugins`; `PORTICO_PLUGIN_CACHE=off` turns the cache off.
fn cache_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("PORTICO_PLUGIN_CACHE") {
        Some(v) if v == "off" || v.is_empty() => return None,
        Some(v) => PathBuf::from(v),
        None => match std::env::var_os("XDG_CACHE_HOME") {
            Some(v) if !v.is_empty() => PathBuf::from(v).join("portico/plugins"),
            _ => PathBuf::from(std::env::var_os("HOME")?).join(".cache/portico/plugins"),
        },
    };
    match std::fs::create_dir_all(&dir) {
        Ok(()) => Some(dir),
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "plugin code cache disabled");
            None
        }
    }
}

fn load_cached(engine: &Engine, path: &Path) -> Result<Module, wasmtime::Error> {
    // SAFETY: `deserialize_file` trusts its input to be code that this engine produced. The
    // file is one Portico wrote itself (under a name that includes the engine's compatibility
    // hash) into the operator's own cache directory; wasmtime still checks its header and
    // refuses code from another engine configuration or version.
    #[allow(unsafe_code)]
    unsafe {
        Module::deserialize_file(engine, path)
    }
}

fn store_cached(module: &Module, path: &Path) {
    let Ok(bytes) = module.serialize() else {
        return;
    };
    // Write then rename, so a concurrent reader never sees half a file.
    let tmp = path.with_extension(format!("tmp{}", fastrand::u32(..)));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(&tmp);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restart finds the code compiled by an earlier run: the cache file is written, a new
    /// engine loads a working module from it, and an unusable file is replaced, not fatal.
    #[test]
    fn compiled_code_is_cached_on_disk_and_reused() {
        let dir = std::env::temp_dir().join(format!(
            "portico-cache-test-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // (module (func (export "f") (result i32) i32.const 7))
        let wasm: &[u8] = &[
            0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
            0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f, // types: () -> i32
            0x03, 0x02, 0x01, 0x00, // functions: one of type 0
            0x07, 0x05, 0x01, 0x01, 0x66, 0x00, 0x00, // exports: "f" = function 0
            0x0a, 0x06, 0x01, 0x04, 0x00, 0x41, 0x07, 0x0b, // code: i32.const 7
        ];

        let first = PluginEngine::new()
            .expect("engine")
            .with_cache_dir(Some(dir.clone()));
        first.compile(wasm).expect("compile");
        let files: Vec<_> = std::fs::read_dir(&dir)
            .expect("cache dir")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(files.len(), 1, "one cached module: {files:?}");
        let cached = files[0].clone();

        // A second engine (a restart) loads the cached code, and it runs.
        let second = PluginEngine::new()
            .expect("engine")
            .with_cache_dir(Some(dir.clone()));
        let loaded = load_cached(second.engine(), &cached).expect("cached code loads");
        let mut store = wasmtime::Store::new(second.engine(), ());
        store.set_epoch_deadline(1_000);
        let instance = wasmtime::Instance::new(&mut store, &loaded, &[]).expect("instantiate");
        let f = instance
            .get_typed_func::<(), i32>(&mut store, "f")
            .expect("export");
        assert_eq!(f.call(&mut store, ()).expect("call"), 7);
        assert!(second.compile(wasm).is_ok());

        // A corrupt cache file is thrown away and the module compiled again. (Replaced, not
        // written in place: a loaded module maps its file, as every writer here knows — the
        // cache itself writes to a temporary file and renames it.)
        drop((instance, store, loaded));
        let junk = dir.join("junk");
        std::fs::write(&junk, b"not machine code").expect("corrupt");
        std::fs::rename(&junk, &cached).expect("replace");
        assert!(second.compile(wasm).is_ok());
        assert!(load_cached(second.engine(), &cached).is_ok(), "rewritten");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
