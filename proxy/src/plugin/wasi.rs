//! The slice of WASI preview 1 (`wasi_snapshot_preview1`) a sandboxed plugin gets: stdout and
//! stderr (to the log, under the plugin's name), clocks, random bytes, an empty environment
//! and argument list. There are no preopened directories and no sockets; any other WASI
//! function answers `ENOSYS` instead of trapping, so a plugin that probes for files gets an
//! error it can handle.
//!
//! Envoy's host takes the same approach. wasmtime-wasi would give the full preview 1 surface
//! only to have most of it switched off, at the cost of a large dependency tree.

use wasmtime::{Caller, Linker, Val, ValType};

use super::abi::read;
use super::instance::HostCtx;

pub const MODULE: &str = "wasi_snapshot_preview1";

const SUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EINVAL: i32 = 28;
const ENOSYS: i32 = 52;
const ESPIPE: i32 = 70;

/// Longest write to stdout/stderr taken in one call; the rest is reported as not written.
const MAX_WRITE: usize = 64 << 10;
/// Output kept before a line break is forced.
const MAX_LINE: usize = 16 << 10;
/// Output buffered in one guest call (it reaches the log when the call returns); the rest of
/// that call's output is dropped, with a note, so a printing loop cannot grow host memory.
const MAX_BUFFERED: usize = 256 << 10;

/// The WASI functions Portico implements.
pub const FUNCTIONS: &[&str] = &[
    "fd_write",
    "fd_read",
    "fd_close",
    "fd_seek",
    "fd_fdstat_get",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "environ_sizes_get",
    "environ_get",
    "args_sizes_get",
    "args_get",
    "clock_time_get",
    "clock_res_get",
    "random_get",
    "sched_yield",
    "proc_exit",
];

type C<'a> = Caller<'a, HostCtx>;
type R = wasmtime::Result<i32>;

pub fn add_to_linker(linker: &mut Linker<HostCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, "fd_write", fd_write)?;
    linker.func_wrap(MODULE, "fd_read", |_: C, _: i32, _: i32, _: i32, _: i32| {
        Ok(EBADF)
    })?;
    linker.func_wrap(MODULE, "fd_close", |_: C, _: i32| Ok(EBADF))?;
    linker.func_wrap(
        MODULE,
        "fd_seek",
        |_: C, fd: i32, _: i64, _: i32, _: i32| {
            Ok(if (0..=2).contains(&fd) { ESPIPE } else { EBADF })
        },
    )?;
    linker.func_wrap(MODULE, "fd_fdstat_get", fd_fdstat_get)?;
    linker.func_wrap(MODULE, "fd_prestat_get", |_: C, _: i32, _: i32| Ok(EBADF))?;
    linker.func_wrap(
        MODULE,
        "fd_prestat_dir_name",
        |_: C, _: i32, _: i32, _: i32| Ok(EBADF),
    )?;
    linker.func_wrap(MODULE, "environ_sizes_get", sizes_zero)?;
    linker.func_wrap(MODULE, "environ_get", |_: C, _: i32, _: i32| Ok(SUCCESS))?;
    linker.func_wrap(MODULE, "args_sizes_get", sizes_zero)?;
    linker.func_wrap(MODULE, "args_get", |_: C, _: i32, _: i32| Ok(SUCCESS))?;
    linker.func_wrap(MODULE, "clock_time_get", clock_time_get)?;
    linker.func_wrap(MODULE, "clock_res_get", clock_res_get)?;
    linker.func_wrap(MODULE, "random_get", random_get)?;
    linker.func_wrap(MODULE, "sched_yield", |_: C| Ok(SUCCESS))?;
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |_: C, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::format_err!("plugin called proc_exit({code})"))
        },
    )?;
    Ok(())
}

/// Defines every import of `module` that the linker lacks: unknown WASI functions return
/// `ENOSYS`; anything else traps with a message naming it. Returns the unknown `env` imports.
pub fn stub_unknown(
    linker: &mut Linker<HostCtx>,
    module: &wasmtime::Module,
) -> wasmtime::Result<Vec<String>> {
    let mut unknown = Vec::new();
    for import in module.imports() {
        let (m, name) = (import.module().to_string(), import.name().to_string());
        let known = match m.as_str() {
            "env" => super::abi::HOST_FUNCTIONS.contains(&name.as_str()),
            MODULE => FUNCTIONS.contains(&name.as_str()),
            _ => false,
        };
        if known {
            continue;
        }
        let Some(ty) = import.ty().func().cloned() else {
            return Err(wasmtime::format_err!(
                "the module imports {m}.{name}, which is not a function; Portico provides only functions"
            ));
        };
        let wasi_errno = m == MODULE
            && ty.results().len() == 1
            && matches!(ty.results().next(), Some(ValType::I32));
        if wasi_errno {
            linker.func_new(&m, &name, ty, |_, _, results| {
                results[0] = Val::I32(ENOSYS);
                Ok(())
            })?;
        } else {
            let message = format!("plugin called {m}.{name}, which Portico does not provide");
            unknown.push(format!("{m}.{name}"));
            linker.func_new(&m, &name, ty, move |_, _, _| {
                Err(wasmtime::format_err!("{message}"))
            })?;
        }
    }
    Ok(unknown)
}

fn sizes_zero(mut caller: C, count: i32, size: i32) -> R {
    write(&mut caller, count, &0u32.to_le_bytes())?;
    write(&mut caller, size, &0u32.to_le_bytes())?;
    Ok(SUCCESS)
}

fn fd_write(mut caller: C, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32) -> R {
    if !(1..=2).contains(&fd) {
        return Ok(EBADF);
    }
    if !(0..=1024).contains(&iovs_len) {
        return Ok(EINVAL);
    }
    let vec = read(&mut caller, iovs as u32, (iovs_len as u32) * 8, 8 * 1024)?;
    let mut out = Vec::new();
    for iov in vec.chunks_exact(8) {
        let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]) as usize;
        let take = len.min(MAX_WRITE - out.len());
        out.extend_from_slice(&read(&mut caller, ptr, take as u32, MAX_WRITE)?);
        if out.len() == MAX_WRITE {
            break;
        }
    }
    let written = out.len() as u32;
    let ctx = caller.data_mut();
    let buf = if fd == 1 {
        &mut ctx.stdout
    } else {
        &mut ctx.stderr
    };
    let room = MAX_BUFFERED.saturating_sub(buf.len());
    if out.len() <= room {
        buf.extend_from_slice(&out);
    } else if room > 0 {
        buf.extend_from_slice(&out[..room]);
        buf.extend_from_slice(b"\n[more output in this call dropped: over 256 KiB]\n");
    }
    if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
        buf.push(b'\n');
    }
    write(&mut caller, nwritten, &written.to_le_bytes())?;
    Ok(SUCCESS)
}

fn fd_fdstat_get(mut caller: C, fd: i32, out: i32) -> R {
    if !(0..=2).contains(&fd) {
        return Ok(EBADF);
    }
    // filetype character_device (2), no flags, rights: fd_write (bit 6) for stdout/stderr.
    let mut stat = [0u8; 24];
    stat[0] = 2;
    let rights: u64 = if fd == 0 { 0 } else { 1 << 6 };
    stat[8..16].copy_from_slice(&rights.to_le_bytes());
    write(&mut caller, out, &stat)?;
    Ok(SUCCESS)
}

fn clock_time_get(mut caller: C, id: i32, _precision: i64, out: i32) -> R {
    let nanos: u64 = match id {
        // realtime
        0 => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        // monotonic, process and thread CPU time: a monotonic clock
        1..=3 => monotonic_nanos(),
        _ => return Ok(EINVAL),
    };
    write(&mut caller, out, &nanos.to_le_bytes())?;
    Ok(SUCCESS)
}

fn clock_res_get(mut caller: C, id: i32, out: i32) -> R {
    if !(0..=3).contains(&id) {
        return Ok(EINVAL);
    }
    write(&mut caller, out, &1u64.to_le_bytes())?;
    Ok(SUCCESS)
}

fn monotonic_nanos() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

fn random_get(mut caller: C, buf: i32, len: i32) -> R {
    if !(0..=65536).contains(&len) {
        return Ok(EINVAL);
    }
    let mut bytes = vec![0u8; len as usize];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return Ok(ENOSYS);
    }
    write(&mut caller, buf, &bytes)?;
    Ok(SUCCESS)
}

fn write(caller: &mut C, ptr: i32, bytes: &[u8]) -> wasmtime::Result<()> {
    let memory = caller
        .data()
        .memory
        .ok_or_else(|| wasmtime::format_err!("plugin has no memory"))?;
    let data = memory.data_mut(caller);
    let start = ptr as u32 as usize;
    data.get_mut(start..start + bytes.len())
        .ok_or_else(|| wasmtime::format_err!("plugin passed a pointer outside its memory"))?
        .copy_from_slice(bytes);
    Ok(())
}
