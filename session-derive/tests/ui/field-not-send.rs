use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use session_core::Session;

#[derive(Serialize, Deserialize, Default)]
struct Handle {
    #[serde(skip)]
    raw: PhantomData<*const u8>,
}

#[derive(Session)]
struct Visit {
    views: u32,
    handle: Handle,
}

fn main() {}
