//! The SDK's example plugin end to end (to be written).
