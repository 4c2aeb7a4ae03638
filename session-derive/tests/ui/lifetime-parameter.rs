use session_core::Session;

#[derive(Session)]
struct Visit<'a> {
    views: u32,
    user: &'a str,
}

fn main() {}
