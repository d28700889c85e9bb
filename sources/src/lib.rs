//! Git sources and the artifact pipeline (placeholder until issue #3 lands).
