use session_core::index::SessionIndex;
use session_core::Session;

#[derive(Session)]
struct Auth {
    #[session(index)]
    user_id: Option<u64>,
}

async fn sessions_of(index: SessionIndex) {
    // The index is keyed by `u64`: a name does not look it up.
    let _ = index.list(Auth::user_id_index(), &"ada".to_owned()).await;
}

fn main() {}
