//! Deterministic bundle artifacts, signed statements and safe unpacking (placeholder until issue #3 lands).
