//! Fuzz target `spec`: arbitrary bytes through the whole front end, as `netc check` and
//! `netc compile --emit ast|ir|summary` would treat a file holding them.
//!
//! UTF-8 input goes through `netc_compiler::compile`, the diagnostics are rendered as text, and a
//! spec that lowers is printed with every dump. Other bytes get the CLI's `syntax::not_utf8`
//! diagnostic (`netc_compiler::decode`), then their lossy decoding is compiled too, so that mutations which break UTF-8 still
//! exercise the parser. Nothing here may panic (the "no input makes netc panic" invariant of
//! `docs/ARCHITECTURE.md`), and a spec without errors must lower to a program.

#![no_main]

use libfuzzer_sys::fuzz_target;
use netc_compiler::diagnostics;
use netc_compiler::print;

/// The CLI's width for diagnostics (`DIAGNOSTIC_WIDTH` in `src/commands.rs`).
const WIDTH: usize = 100;

const FILE_NAME: &str = "fuzz.net";

fuzz_target!(|data: &[u8]| {
    match netc_compiler::decode(data) {
        Ok(source) => front_end(source),
        Err(bad) => {
            let _ = diagnostics::render(FILE_NAME, &bad.lossy, &[bad.diag], WIDTH, false);
            front_end(&bad.lossy);
        }
    }
});

/// `netc check` and `netc compile` on a UTF-8 file.
fn front_end(source: &str) {
    let compiled = netc_compiler::compile(source);
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
