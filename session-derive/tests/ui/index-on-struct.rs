use session_core::Session;

#[derive(Session)]
#[session(index)]
struct Auth {
    user_id: Option<u64>,
}

fn main() {}
