//! The header_rewrite plugin end to end (to be written).
