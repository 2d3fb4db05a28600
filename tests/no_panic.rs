//! No input of any kind makes the front end panic: arbitrary bytes, and mutations of every real
//! spec (characters inserted, deleted, replaced; lines duplicated; the file cut short).
//! Each case must come back as a `Compiled` whose diagnostics render.

use std::path::Path;

use netc_diagnostics as diagnostics;
use proptest::prelude::*;

fn corpus() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in ["specs", "tests/golden/ok", "tests/golden/err"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("corpus directory") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|x| x == "net") {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    out.push(text);
                }
            }
        }
    }
    out.sort();
    out
}

/// Runs the whole front end and the renderer, as `netc check` does.
fn front_end(source: &str) {
    let compiled = netc_front::compile(source);
    let _ = diagnostics::render("fuzz.net", source, &compiled.diags, 80, false);
    if let Some(program) = &compiled.program {
        let _ = netc_front::print::ir(program);
        let _ = netc_front::print::summary(program);
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Insert(usize, String),
    Delete(usize, usize),
    Replace(usize, char),
    DuplicateLine(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let fragments = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        ";",
        "\n",
        "#",
        "-",
        "1e999",
        "0",
        "-1",
        "1.5",
        "repeat 99999 ",
        "dense ",
        "softmax",
        "\0",
        "é",
        "\u{202e}",
        "true",
        "{{{{",
        "99999999999999999999",
        "_",
    ]);
    prop_oneof![
        (any::<usize>(), fragments).prop_map(|(at, s)| Mutation::Insert(at, s.to_string())),
        (any::<usize>(), 1..20usize).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (any::<usize>(), any::<char>()).prop_map(|(at, c)| Mutation::Replace(at, c)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn char_boundary(s: &str, at: usize) -> usize {
    let mut at = at % (s.len() + 1);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(mut s: String, m: &Mutation) -> String {
    match m {
        Mutation::Insert(at, frag) => {
            let at = char_boundary(&s, *at);
            s.insert_str(at, frag);
        }
        Mutation::Delete(at, n) => {
            let start = char_boundary(&s, *at);
            let end = char_boundary(&s, (start + n).min(s.len()));
            s.replace_range(start..end.max(start), "");
        }
        Mutation::Replace(at, c) => {
            let at = char_boundary(&s, *at);
            if let Some(old) = s[at..].chars().next() {
                s.replace_range(at..at + old.len_utf8(), &c.to_string());
            }
        }
        Mutation::DuplicateLine(i) => {
            let lines: Vec<&str> = s.lines().collect();
            if !lines.is_empty() {
                let line = lines[i % lines.len()].to_string();
                s = format!("{s}\n{line}");
            }
        }
        Mutation::Truncate(at) => {
            let at = char_boundary(&s, *at);
            s.truncate(at);
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        front_end(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_specs_never_panic(seed in any::<prop::sample::Index>(), muts in prop::collection::vec(mutation(), 1..6)) {
        let corpus = corpus();
        let mut text = seed.get(&corpus).clone();
        for m in &muts {
            text = apply(text, m);
        }
        front_end(&text);
    }
}

#[test]
fn pathological_inputs_are_errors_not_crashes() {
    let cases = [
        "{".repeat(100_000),
        "[".repeat(100_000),
        format!("model m\ninput cifar10\n{}", "dense 10\n".repeat(50_000)),
        format!("model m\nrepeat {} {{ dense 10 }}", u64::MAX),
        "x".repeat(2 << 20),
        "model m\ninput cifar10\ndense 18446744073709551615\n".to_string(),
        // Bodies that expand to nothing must not be iterated a quintillion times.
        format!(
            "model m\nrepeat {} {{ }}\nrepeat {} {{ dense x }}",
            u64::MAX,
            u64::MAX
        ),
    ];
    for case in &cases {
        let compiled = netc_front::compile(case);
        assert!(
            compiled.has_errors(),
            "accepted a pathological input of {} bytes",
            case.len()
        );
    }
}
