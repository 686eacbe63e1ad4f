//! The auth plugin end to end (to be written).
