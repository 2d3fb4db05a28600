//! `netc compile`.

use super::*;

/// Prints one dump of a spec that compiles; with `timings`, also how long the JIT takes to
/// compile its kernels.
pub(super) fn compile(
    file: &Path,
    emit: Emit,
    timings: bool,
    threads: JitArgs,
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
        #[cfg(target_arch = "x86_64")]
        Emit::Asm => netc_jit::emit_asm(program, threads.tier_named())?,
        #[cfg(not(target_arch = "x86_64"))]
        Emit::Asm => {
            return Err(BackendError::Host {
                what: "listing machine code".to_owned(),
                detail: "netc lists x86-64 code, on x86-64 hosts only".to_owned(),
            }
            .into())
        }
    };
    print!("{text}");
    if timings {
        let options = threads.options()?;
        let jit = netc_jit::Jit::with_options(program, InputStats::placeholder(program), options)?;
        eprintln!(
            "compiled {} JIT kernels ({} tier) for {} in {:.1} ms",
            jit.kernel_count(),
            jit.tier().name(),
            plural(options.threads, "thread"),
            jit.compile_ms()
        );
    }
    Ok(ExitCode::SUCCESS)
}
