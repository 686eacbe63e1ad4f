//! Portico's header-rewrite plugin (to be written).
#![forbid(unsafe_code)]
