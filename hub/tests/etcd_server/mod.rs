//! The real etcd of the HA tests: [`convoy_testsupport::etcd`] (shared with
//! the `ha` benchmark area), named as these tests use it.

#![allow(dead_code, unused_imports)]

pub use convoy_testsupport::etcd::{Proxy, Server, gateway};
