use session_core::Session;

#[derive(Session)]
struct Visit {
    views: u32,
    #[session(default)]
    cart: Vec<String>,
}

fn main() {}
