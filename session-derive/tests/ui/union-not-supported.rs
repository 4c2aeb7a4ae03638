use session_core::Session;

#[derive(Session)]
union Visit {
    views: u32,
    total: u64,
}

fn main() {}
