//! Runnable examples of the gdrx library; the rxe suite runs them against each other and its
//! test peer. `receiver` (the `Receiver`, as in the README), `srq_receiver` (the verbs by hand)
//! and `sender`: `cargo run --release -p gdrx-examples --example receiver -- 10.0.0.1:7471`.
