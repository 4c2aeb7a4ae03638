use session_core::Session;

#[derive(Session)]
struct Visit {
    views: u32,
    views_mut: bool,
}

// The rest of the crate sees no other error.
fn handler(mut visit: Session<Visit>) -> u32 {
    *visit.views_mut() += 1;
    *visit.views()
}

fn main() {}
