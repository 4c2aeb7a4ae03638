use session_core::Session;

#[derive(Session)]
#[session(namespace = "")]
struct Prefs {
    theme: String,
}

fn main() {}
