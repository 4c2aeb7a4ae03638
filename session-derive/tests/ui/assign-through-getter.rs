use session_core::Session;

#[derive(Session)]
struct Visit {
    views: u32,
}

fn handler(visit: Session<Visit>) {
    *visit.views() = 3;
}

fn main() {}
