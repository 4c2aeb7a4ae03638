use session_core::Session;

#[derive(Session)]
struct Auth {
    #[session(index)]
    user_id: u64,
}

fn main() {}
