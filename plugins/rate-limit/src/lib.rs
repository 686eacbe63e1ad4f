//! Portico's rate-limit plugin (to be written).
#![forbid(unsafe_code)]
