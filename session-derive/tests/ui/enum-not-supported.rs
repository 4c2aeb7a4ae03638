use session_core::Session;

#[derive(Session)]
enum Visit {
    Anonymous,
    SignedIn { user: String },
}

// The rest of the crate sees no other error.
fn handler(visit: Session<Visit>) -> Option<session_core::SessionId> {
    visit.id()
}

fn main() {}
