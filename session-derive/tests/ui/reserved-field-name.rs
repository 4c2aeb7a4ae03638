use session_core::Session;

#[derive(Session)]
struct Visit {
    id: u64,
    views: u32,
}

// The rest of the crate sees no other error.
fn handler(mut visit: Session<Visit>) -> u32 {
    *visit.views_mut() += 1;
    *visit.views()
}

fn main() {}
