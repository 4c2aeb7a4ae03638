use session_core::Session;

#[derive(Session)]
struct Visit {
    views: u32,
    #[session(default = default_carts)]
    cart: Vec<String>,
}

fn default_cart() -> Vec<String> {
    vec!["welcome-gift".to_owned()]
}

fn main() {}
