use session_core::Session;

#[derive(Session)]
struct Visit {
    #[session(flash)]
    notice: String,
}

fn main() {}
