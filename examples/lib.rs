//! Runnable examples of the gdrx library; the rxe suite runs each against a real sender. See
//! the `[[example]]` targets: `cargo run --release -p gdrx-examples --example receiver`.
