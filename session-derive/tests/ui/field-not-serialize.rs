use serde::Deserialize;
use session_core::Session;

#[derive(Deserialize, Default)]
struct Cart {
    items: Vec<String>,
}

#[derive(Session)]
struct Visit {
    views: u32,
    cart: Cart,
}

fn main() {}
