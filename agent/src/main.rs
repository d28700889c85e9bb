//! The `convoy-agent` binary.
fn main() {}
