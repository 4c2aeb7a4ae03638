use session_core::Session;

#[derive(Session)]
struct Visit {
    views: u32,
    #[session(default = "default_cart")]
    cart: Vec<String>,
}

fn default_cart() -> Vec<u32> {
    vec![1]
}

fn main() {}
