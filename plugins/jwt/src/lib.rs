//! Portico's jwt plugin (to be written).
#![forbid(unsafe_code)]
