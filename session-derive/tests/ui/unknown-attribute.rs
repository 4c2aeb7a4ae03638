use session_core::Session;

#[derive(Session)]
struct Visit {
    views: u32,
    #[session(renam = "items")]
    cart: Vec<String>,
}

// The rest of the crate sees no other error.
fn handler(mut visit: Session<Visit>) -> usize {
    visit.cart_mut().push("tea".to_owned());
    visit.cart().len()
}

fn main() {}
