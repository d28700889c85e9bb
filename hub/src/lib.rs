//! The Convoy hub library (placeholder until issues #3 and #4 land).
