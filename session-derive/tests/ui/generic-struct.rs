use session_core::Session;

#[derive(Session)]
struct Visit<T> {
    views: u32,
    extra: T,
}

// The rest of the crate sees no other error.
fn handler(visit: Session<Visit<String>>) -> Option<session_core::SessionId> {
    visit.id()
}

fn main() {}
