use session_core::Session;

#[derive(Session)]
#[session(crate = "sessions")]
struct Visit {
    views: u32,
    cart: Vec<String>,
}

fn main() {}
