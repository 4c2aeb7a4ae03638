//! The example apps, shared by `examples/` and the integration tests: the seed's counter
//! app and a small shop, and the environment handling both `main`s share.

pub mod counter;
pub mod serve;
pub mod shop;
