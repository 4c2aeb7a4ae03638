use session_core::Session;

#[derive(Session)]
#[session(namespace = "prefs", namespace = "other")]
struct Prefs {
    theme: String,
}

fn main() {}
