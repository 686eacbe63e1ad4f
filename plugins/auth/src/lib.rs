//! Portico's auth plugin (to be written).
#![forbid(unsafe_code)]
