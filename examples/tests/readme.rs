//! The README's "Using the library" code is the loop of `examples/receiver.rs`, which the rxe
//! suite runs: this keeps the two identical, so the README shows code that CI runs.

const README: &str = include_str!("../../README.md");
const RECEIVER: &str = include_str!("../receiver.rs");

/// The lines between `// README: begin` and `// README: end`, dedented by one level.
fn example_block() -> Vec<String> {
    let begin = RECEIVER
        .find("    // README: begin\n")
        .expect("a README: begin marker");
    let body = &RECEIVER[begin..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let end = body
        .find("    // README: end\n")
        .expect("a README: end marker");
    body[..end]
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l).to_owned())
        .collect()
}

/// The first `rust` code block of the README's "## Using the library" section.
fn readme_block() -> Vec<String> {
    let section = &README[README
        .find("## Using the library")
        .expect("a Using the library section")..];
    let start = section.find("```rust\n").expect("a rust block") + "```rust\n".len();
    let end = section[start..].find("```").expect("the block's end") + start;
    section[start..end].lines().map(str::to_owned).collect()
}

#[test]
fn the_readme_shows_the_receiver_example_as_it_runs() {
    let readme = readme_block();
    assert_eq!(
        readme,
        example_block(),
        "README block != examples/receiver.rs"
    );
    assert!(
        readme.len() < 20,
        "the README's Receiver example should stay under 20 lines, it has {}",
        readme.len()
    );
}
