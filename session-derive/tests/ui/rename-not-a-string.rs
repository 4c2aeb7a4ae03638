use session_core::Session;

#[derive(Session)]
struct Visit {
    views: u32,
    #[session(rename = items)]
    cart: Vec<String>,
}

fn main() {}
