//! The seed's counter app, shared by `examples/counter.rs` and the integration tests.

pub mod counter;
