//! Fuzz target `spec`: arbitrary bytes through the whole front end, as `netc check` and
//! `netc compile --emit ast|ir|summary` would treat a file holding them.
//!
//! UTF-8 input goes through `netc_front::compile`, the diagnostics are rendered as text, and a
//! spec that lowers is printed with every dump. Other bytes get the CLI's `syntax::not_utf8`
//! diagnostic (`netc_front::decode`), then their lossy decoding is compiled too, so that mutations which break UTF-8 still
//! exercise the parser. One input in eight is also compiled with 66,000 spaces put before its
//! last line, so every diagnostic on that line lies past column 65,535, where miette's padding
//! used to panic, and the renderer has to cut the line. Nothing here may panic (the "no input makes netc panic" invariant of
//! `docs/ARCHITECTURE.md`), and a spec without errors must lower to a program.

#![no_main]

use libfuzzer_sys::fuzz_target;
use netc_diagnostics as diagnostics;
use netc_front::print;

/// The CLI's width for diagnostics (`DIAGNOSTIC_WIDTH` in `src/commands/spec.rs`).
const WIDTH: usize = 100;

const FILE_NAME: &str = "fuzz.net";

/// Spaces put before the last line of some inputs: past `u16::MAX` columns.
const LONG_LINE: usize = 66_000;

fuzz_target!(|data: &[u8]| {
    let source = match netc_front::decode(data) {
        Ok(source) => {
            front_end(source);
            source.to_owned()
        }
        Err(bad) => {
            let _ = diagnostics::render(FILE_NAME, &bad.lossy, &[bad.diag], WIDTH, false);
            front_end(&bad.lossy);
            bad.lossy
        }
    };
    if data.len() % 8 == 0 {
        let at = source.trim_end().rfind('\n').map_or(0, |i| i + 1);
        let long = format!(
            "{}{}{}",
            &source[..at],
            " ".repeat(LONG_LINE),
            &source[at..]
        );
        front_end(&long);
    }
});

/// `netc check` and `netc compile` on a UTF-8 file.
fn front_end(source: &str) {
    let compiled = netc_front::compile(source);
    let _ = diagnostics::render(FILE_NAME, source, &compiled.diags, WIDTH, false);
    match &compiled.program {
        Some(program) => {
            if let Some(spec) = &compiled.ast {
                let _ = print::ast(spec);
            }
            let _ = print::ir(program);
            let _ = print::summary(program);
        }
        None => assert!(
            compiled.has_errors(),
            "a spec without errors did not lower; `netc compile` would fail without saying why"
        ),
    }
}
