use session_core::Session;

#[derive(Session)]
struct Auth {
    #[session(index = "users")]
    user_id: Option<u64>,
}

fn main() {}
