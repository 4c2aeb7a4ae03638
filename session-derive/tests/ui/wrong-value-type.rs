use session_core::Session;

#[derive(Session)]
struct Visit {
    views: u32,
}

fn handler(mut visit: Session<Visit>) {
    visit.set_views("three");
}

fn main() {}
