use session_core::Session;

#[derive(Session)]
struct Visit {
    views: u32,
}

fn handler(visit: Session<Visit>) {
    *visit.views_mut() += 1;
}

fn main() {}
