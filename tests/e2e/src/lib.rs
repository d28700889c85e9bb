//! End-to-end fleet scenario helpers (placeholder until issue #6 lands).
