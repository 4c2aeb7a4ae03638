use session_core::Session;

#[derive(Session)]
struct Prefs {
    #[session(namespace = "prefs")]
    theme: String,
}

fn main() {}
