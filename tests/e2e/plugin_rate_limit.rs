//! The rate_limit plugin end to end (to be written).
