use session_core::Session;

// Every problem is reported in one compile, not one per fix.
#[derive(Session)]
#[session(rename = "visit")]
struct Visit {
    #[session(renam = "count")]
    views: u32,
    #[session(rename = "")]
    cart: Vec<String>,
    #[session(default)]
    theme: String,
}

fn main() {}
