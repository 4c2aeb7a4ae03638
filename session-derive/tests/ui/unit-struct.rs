use session_core::Session;

#[derive(Session)]
struct Visit;

fn main() {}
