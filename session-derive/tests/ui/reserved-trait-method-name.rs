use session_core::Session;

#[derive(Session)]
struct Visit {
    views: u32,
    into: String,
}

fn main() {}
