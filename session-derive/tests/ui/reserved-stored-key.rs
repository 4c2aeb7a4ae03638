use session_core::Session;

#[derive(Session)]
struct Visit {
    #[session(rename = "session-core:cookie_max_age")]
    remember: Option<u64>,
    views: u32,
}

fn main() {}
