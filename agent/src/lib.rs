//! The Convoy agent library (placeholder until issue #5 lands).
