use session_core::Session;

#[derive(Session)]
#[session(rename = "visit")]
struct Visit {
    views: u32,
}

fn main() {}
