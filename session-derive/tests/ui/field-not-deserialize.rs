use serde::Serialize;
use session_core::Session;

#[derive(Serialize, Default)]
struct Cart {
    items: Vec<String>,
}

#[derive(Session)]
struct Visit {
    views: u32,
    cart: Cart,
}

fn main() {}
