mod app {
    use session_core::Session;

    #[derive(Session)]
    pub struct Visit {
        pub views: u32,
        secret: String,
    }
}

fn handler(visit: session_core::Session<app::Visit>) -> usize {
    visit.secret().len()
}

fn main() {}
