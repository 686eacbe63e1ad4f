//! The jwt plugin end to end (to be written).
