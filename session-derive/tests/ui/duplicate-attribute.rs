use session_core::Session;

#[derive(Session)]
struct Visit {
    views: u32,
    #[session(rename = "items")]
    #[session(rename = "basket")]
    cart: Vec<String>,
}

fn main() {}
