use session_core::Session;

#[derive(Session)]
struct Visit {
    views: u32,
}

fn handler(visit: Session<Visit>) -> u32 {
    *visit.veiws()
}

fn main() {}
