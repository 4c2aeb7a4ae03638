use session_core::Session;

#[derive(Session)]
struct Visit(u32, Option<String>);

// The rest of the crate sees no other error.
fn handler(visit: Session<Visit>) -> Option<session_core::SessionId> {
    visit.id()
}

fn main() {}
