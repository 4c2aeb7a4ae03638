use session_core::Session;

#[derive(Session)]
struct Visit {
    #[session(flash = true)]
    notice: Option<String>,
}

fn main() {}
