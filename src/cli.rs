//! (stub; to be written)
