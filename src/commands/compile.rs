//! `netc compile`.

use super::*;

/// Prints one dump of a spec that compiles; with `timings`, also how long the JIT takes to
/// compile its kernels.
pub(super) fn compile(
    file: &Path,
    emit: Emit,
    timings: bool,
    threads: ThreadsArg,
) -> Result<ExitCode> {
    let (compiled, ok) = front_end(file)?;
    let (Some(program), true) = (compiled.program.as_ref(), ok) else {
        return Ok(ExitCode::from(1));
    };
    let text = match emit {
        Emit::Ast => compiled.ast.as_ref().map(print::ast).unwrap_or_default(),
        Emit::Ir => print::ir(program),
        Emit::Summary => print::summary(program),
        Emit::Clif => netc_jit::emit_clif(program)?,
    };
    print!("{text}");
    if timings {
        let threads = threads.count();
        let jit = netc_jit::Jit::with_threads(program, InputStats::placeholder(program), threads)?;
        eprintln!(
            "compiled {} JIT kernels for {} in {:.1} ms",
            jit.kernel_count(),
            plural(threads, "thread"),
            jit.compile_ms()
        );
    }
    Ok(ExitCode::SUCCESS)
}
