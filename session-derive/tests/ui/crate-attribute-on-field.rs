use session_core::Session;

#[derive(Session)]
struct Visit {
    #[session(crate = "session_core")]
    views: u32,
}

fn main() {}
