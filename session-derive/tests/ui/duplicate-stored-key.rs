use session_core::Session;

#[derive(Session)]
struct Visit {
    views: u32,
    #[session(rename = "views")]
    page_views: u32,
}

fn main() {}
