use session_core::Session;

#[derive(Session)]
struct Auth {
    #[session(index, flash)]
    notice: Option<String>,
}

fn main() {}
