use serde::{Deserialize, Serialize};
use session_core::Session;

#[derive(Serialize, Deserialize)]
struct User {
    name: String,
}

#[derive(Session)]
struct Visit {
    views: u32,
    user: User,
}

fn main() {}
