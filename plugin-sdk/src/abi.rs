//! The Proxy-Wasm v0.2.1 imports, each behind a safe function. The only `unsafe` of the SDK is
//! here: raw pointers handed to and taken back from the host, and the allocator export.
//!
//! On other targets than `wasm32` the same functions are served by [`crate::mock`], so a
//! plugin's code compiles and its unit tests run natively.

#![allow(unsafe_code)]

use crate::error::{Error, Status};
use crate::host::{Buffer, Map, MetricKind};

mod sys {
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        pub fn proxy_log(level: u32, ptr: *const u8, len: usize) -> u32;
        pub fn proxy_get_log_level(ret: *mut u32) -> u32;
        pub fn proxy_get_current_time_nanoseconds(ret: *mut u64) -> u32;
        pub fn proxy_set_tick_period_milliseconds(millis: u32) -> u32;
        pub fn proxy_get_buffer_bytes(
            kind: u32,
            start: usize,
            max: usize,
            ret_ptr: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_set_buffer_bytes(
            kind: u32,
            start: usize,
            size: usize,
            ptr: *const u8,
            len: usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(
            kind: u32,
            ret_ptr: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_set_header_map_pairs(kind: u32, ptr: *const u8, len: usize) -> u32;
        pub fn proxy_get_header_map_value(
            kind: u32,
            key_ptr: *const u8,
            key_len: usize,
            ret_ptr: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            kind: u32,
            key_ptr: *const u8,
            key_len: usize,
            value_ptr: *const u8,
            value_len: usize,
        ) -> u32;
        pub fn proxy_add_header_map_value(
            kind: u32,
            key_ptr: *const u8,
            key_len: usize,
            value_ptr: *const u8,
            value_len: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(kind: u32, key_ptr: *const u8, key_len: usize) -> u32;
        pub fn proxy_get_property(
            path_ptr: *const u8,
            path_len: usize,
            ret_ptr: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_set_property(
            path_ptr: *const u8,
            path_len: usize,
            value_ptr: *const u8,
            value_len: usize,
        ) -> u32;
        pub fn proxy_get_shared_data(
            key_ptr: *const u8,
            key_len: usize,
            ret_ptr: *mut *mut u8,
            ret_len: *mut usize,
            ret_cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key_ptr: *const u8,
            key_len: usize,
            value_ptr: *const u8,
            value_len: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_register_shared_queue(
            name_ptr: *const u8,
            name_len: usize,
            ret_id: *mut u32,
        ) -> u32;
        pub fn proxy_resolve_shared_queue(
            vm_ptr: *const u8,
            vm_len: usize,
            name_ptr: *const u8,
            name_len: usize,
            ret_id: *mut u32,
        ) -> u32;
        pub fn proxy_dequeue_shared_queue(
            id: u32,
            ret_ptr: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_enqueue_shared_queue(id: u32, ptr: *const u8, len: usize) -> u32;
        pub fn proxy_continue_stream(kind: u32) -> u32;
        #[allow(clippy::too_many_arguments)]
        pub fn proxy_send_local_response(
            status: u32,
            details_ptr: *const u8,
            details_len: usize,
            body_ptr: *const u8,
            body_len: usize,
            headers_ptr: *const u8,
            headers_len: usize,
            grpc_status: i32,
        ) -> u32;
        #[allow(clippy::too_many_arguments)]
        pub fn proxy_http_call(
            upstream_ptr: *const u8,
            upstream_len: usize,
            headers_ptr: *const u8,
            headers_len: usize,
            body_ptr: *const u8,
            body_len: usize,
            trailers_ptr: *const u8,
            trailers_len: usize,
            timeout_ms: u32,
            ret_token: *mut u32,
        ) -> u32;
        pub fn proxy_set_effective_context(id: u32) -> u32;
        pub fn proxy_call_foreign_function(
            name_ptr: *const u8,
            name_len: usize,
            args_ptr: *const u8,
            args_len: usize,
            ret_ptr: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_define_metric(
            kind: u32,
            name_ptr: *const u8,
            name_len: usize,
            ret_id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        pub fn proxy_record_metric(id: u32, value: u64) -> u32;
        pub fn proxy_get_metric(id: u32, ret: *mut u64) -> u32;
    }
}

/// Memory the host asks for to hand the guest a value; taken back by [`take`].
pub fn allocate(size: usize) -> *mut u8 {
    let mut buf: Vec<u8> = Vec::with_capacity(size);
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr
}

/// Takes ownership of a buffer the host allocated through [`allocate`].
fn take(ptr: *mut u8, len: usize) -> Vec<u8> {
    if ptr.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: the host got `ptr` from `allocate(len)` (a `Vec` of capacity `len`) and filled
    // `len` bytes; ownership passes back to us exactly once.
    unsafe { Vec::from_raw_parts(ptr, len, len) }
}

fn check(call: &'static str, status: u32) -> Result<(), Error> {
    match Status::from_raw(status) {
        Status::Ok => Ok(()),
        s => Err(Error::host(call, s)),
    }
}

/// Runs a call that returns a buffer; `Ok(None)` when the host says `NotFound`.
fn returned(
    call: &'static str,
    f: impl FnOnce(*mut *mut u8, *mut usize) -> u32,
) -> Result<Option<Vec<u8>>, Error> {
    let mut ptr: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    let status = f(&mut ptr, &mut len);
    match Status::from_raw(status) {
        Status::Ok => Ok(Some(take(ptr, len))),
        Status::NotFound => Ok(None),
        s => Err(Error::host(call, s)),
    }
}

pub fn log(level: u32, msg: &str) -> Result<(), Error> {
    // SAFETY: a valid slice for the duration of the call.
    check("proxy_log", unsafe {
        sys::proxy_log(level, msg.as_ptr(), msg.len())
    })
}

pub fn log_level() -> Result<u32, Error> {
    let mut level = 0;
    // SAFETY: a valid out-pointer.
    check("proxy_get_log_level", unsafe {
        sys::proxy_get_log_level(&mut level)
    })?;
    Ok(level)
}

pub fn now_nanos() -> Result<u64, Error> {
    let mut t = 0;
    // SAFETY: a valid out-pointer.
    check("proxy_get_current_time_nanoseconds", unsafe {
        sys::proxy_get_current_time_nanoseconds(&mut t)
    })?;
    Ok(t)
}

pub fn set_tick_period(millis: u32) -> Result<(), Error> {
    // SAFETY: no pointers.
    check("proxy_set_tick_period_milliseconds", unsafe {
        sys::proxy_set_tick_period_milliseconds(millis)
    })
}

pub fn get_buffer(kind: Buffer, start: usize, max: usize) -> Result<Option<Vec<u8>>, Error> {
    returned("proxy_get_buffer_bytes", |p, l| {
        // SAFETY: valid out-pointers.
        unsafe { sys::proxy_get_buffer_bytes(kind as u32, start, max, p, l) }
    })
}

pub fn set_buffer(kind: Buffer, start: usize, size: usize, data: &[u8]) -> Result<(), Error> {
    // SAFETY: a valid slice for the duration of the call.
    check("proxy_set_buffer_bytes", unsafe {
        sys::proxy_set_buffer_bytes(kind as u32, start, size, data.as_ptr(), data.len())
    })
}

pub fn get_map(kind: Map) -> Result<Vec<u8>, Error> {
    Ok(returned("proxy_get_header_map_pairs", |p, l| {
        // SAFETY: valid out-pointers.
        unsafe { sys::proxy_get_header_map_pairs(kind as u32, p, l) }
    })?
    .unwrap_or_default())
}

pub fn set_map(kind: Map, serialized: &[u8]) -> Result<(), Error> {
    // SAFETY: a valid slice for the duration of the call.
    check("proxy_set_header_map_pairs", unsafe {
        sys::proxy_set_header_map_pairs(kind as u32, serialized.as_ptr(), serialized.len())
    })
}

pub fn get_map_value(kind: Map, key: &str) -> Result<Option<Vec<u8>>, Error> {
    returned("proxy_get_header_map_value", |p, l| {
        // SAFETY: a valid slice and out-pointers.
        unsafe { sys::proxy_get_header_map_value(kind as u32, key.as_ptr(), key.len(), p, l) }
    })
}

pub fn replace_map_value(kind: Map, key: &str, value: &[u8]) -> Result<(), Error> {
    // SAFETY: valid slices for the duration of the call.
    check("proxy_replace_header_map_value", unsafe {
        sys::proxy_replace_header_map_value(
            kind as u32,
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn add_map_value(kind: Map, key: &str, value: &[u8]) -> Result<(), Error> {
    // SAFETY: valid slices for the duration of the call.
    check("proxy_add_header_map_value", unsafe {
        sys::proxy_add_header_map_value(
            kind as u32,
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_map_value(kind: Map, key: &str) -> Result<(), Error> {
    // SAFETY: a valid slice for the duration of the call.
    check("proxy_remove_header_map_value", unsafe {
        sys::proxy_remove_header_map_value(kind as u32, key.as_ptr(), key.len())
    })
}

pub fn get_property(path: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    returned("proxy_get_property", |p, l| {
        // SAFETY: a valid slice and out-pointers.
        unsafe { sys::proxy_get_property(path.as_ptr(), path.len(), p, l) }
    })
}

pub fn set_property(path: &[u8], value: &[u8]) -> Result<(), Error> {
    // SAFETY: valid slices for the duration of the call.
    check("proxy_set_property", unsafe {
        sys::proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len())
    })
}

pub fn get_shared(key: &str) -> Result<Option<(Vec<u8>, u32)>, Error> {
    let mut cas = 0;
    let value = returned("proxy_get_shared_data", |p, l| {
        // SAFETY: a valid slice and out-pointers.
        unsafe { sys::proxy_get_shared_data(key.as_ptr(), key.len(), p, l, &mut cas) }
    })?;
    Ok(value.map(|v| (v, cas)))
}

pub fn set_shared(key: &str, value: &[u8], cas: u32) -> Result<(), Error> {
    // SAFETY: valid slices for the duration of the call.
    check("proxy_set_shared_data", unsafe {
        sys::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

pub fn register_queue(name: &str) -> Result<u32, Error> {
    let mut id = 0;
    // SAFETY: a valid slice and out-pointer.
    check("proxy_register_shared_queue", unsafe {
        sys::proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id)
    })?;
    Ok(id)
}

pub fn resolve_queue(name: &str) -> Result<Option<u32>, Error> {
    let mut id = 0;
    // SAFETY: valid slices and out-pointer; the VM id is empty.
    let status = unsafe {
        sys::proxy_resolve_shared_queue(std::ptr::null(), 0, name.as_ptr(), name.len(), &mut id)
    };
    match Status::from_raw(status) {
        Status::Ok => Ok(Some(id)),
        Status::NotFound => Ok(None),
        s => Err(Error::host("proxy_resolve_shared_queue", s)),
    }
}

pub fn enqueue(id: u32, value: &[u8]) -> Result<(), Error> {
    // SAFETY: a valid slice for the duration of the call.
    check("proxy_enqueue_shared_queue", unsafe {
        sys::proxy_enqueue_shared_queue(id, value.as_ptr(), value.len())
    })
}

pub fn dequeue(id: u32) -> Result<Option<Vec<u8>>, Error> {
    let mut ptr: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: valid out-pointers.
    let status = unsafe { sys::proxy_dequeue_shared_queue(id, &mut ptr, &mut len) };
    match Status::from_raw(status) {
        Status::Ok => Ok(Some(take(ptr, len))),
        Status::Empty => Ok(None),
        s => Err(Error::host("proxy_dequeue_shared_queue", s)),
    }
}

pub fn continue_stream(kind: u32) -> Result<(), Error> {
    // SAFETY: no pointers.
    check("proxy_continue_stream", unsafe {
        sys::proxy_continue_stream(kind)
    })
}

pub fn send_local_response(
    status: u16,
    details: &str,
    body: &[u8],
    headers: &[u8],
) -> Result<(), Error> {
    // SAFETY: valid slices for the duration of the call.
    check("proxy_send_local_response", unsafe {
        sys::proxy_send_local_response(
            status as u32,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

pub fn http_call(
    upstream: &str,
    headers: &[u8],
    body: &[u8],
    timeout_ms: u32,
) -> Result<u32, Error> {
    let mut token = 0;
    let trailers = crate::host::serialize_pairs(std::iter::empty::<(&str, &[u8])>());
    // SAFETY: valid slices and out-pointer for the duration of the call.
    check("proxy_http_call", unsafe {
        sys::proxy_http_call(
            upstream.as_ptr(),
            upstream.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

pub fn set_effective_context(id: u32) -> Result<(), Error> {
    // SAFETY: no pointers.
    check("proxy_set_effective_context", unsafe {
        sys::proxy_set_effective_context(id)
    })
}

/// `Ok(None)` when the host has no function of that name.
pub fn call_foreign(name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    returned("proxy_call_foreign_function", |p, l| {
        // SAFETY: valid slices and out-pointers.
        unsafe {
            sys::proxy_call_foreign_function(
                name.as_ptr(),
                name.len(),
                args.as_ptr(),
                args.len(),
                p,
                l,
            )
        }
    })
}

pub fn define_metric(kind: MetricKind, name: &str) -> Result<u32, Error> {
    let mut id = 0;
    // SAFETY: a valid slice and out-pointer.
    check("proxy_define_metric", unsafe {
        sys::proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id)
    })?;
    Ok(id)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), Error> {
    // SAFETY: no pointers.
    check("proxy_increment_metric", unsafe {
        sys::proxy_increment_metric(id, offset)
    })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Error> {
    // SAFETY: no pointers.
    check("proxy_record_metric", unsafe {
        sys::proxy_record_metric(id, value)
    })
}

pub fn get_metric(id: u32) -> Result<u64, Error> {
    let mut v = 0;
    // SAFETY: a valid out-pointer.
    check("proxy_get_metric", unsafe {
        sys::proxy_get_metric(id, &mut v)
    })?;
    Ok(v)
}

/// The exports every plugin needs whatever its hooks: the ABI marker and the allocator. The
/// hook exports are generated by `#[plugin]` for the plugin's type.
pub mod exports {
    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_abi_version_0_2_1() {}

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
        super::allocate(size)
    }
}
