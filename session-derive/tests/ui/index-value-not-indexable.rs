use session_core::Session;

#[derive(Session)]
struct Auth {
    /// Floats do not identify a value: `0.1 + 0.2` is not `0.3`.
    #[session(index)]
    score: Option<f64>,
}

fn main() {}
