//! `netc eval`.

use super::*;

pub(super) fn eval(run_dir: &Path, mc: Option<u32>, common: &DataArgs) -> Result<ExitCode> {
    use netc_runtime::run::{check_spec_unchanged, SPEC_FILE, SUMMARY_FILE};
    let summary = netc_runtime::report::read_summary(&run_dir.join(SUMMARY_FILE))?;
    // Read once: the text whose hash is checked is the text compiled.
    let Some(source) = read_source(&run_dir.join(SPEC_FILE))? else {
        return Ok(ExitCode::from(1));
    };
    check_spec_unchanged(run_dir, &summary, &source.text)?;
    let (compiled, ok) = compile_source(&source);
    let Some(program) = compiled.program.filter(|_| ok) else {
        return Ok(ExitCode::from(1));
    };
    let kind = common.backend();
    let threads = common.threads.options_for(kind)?;
    let result = netc_runtime::run::evaluate_run(
        run_dir,
        &summary,
        &program,
        Some(&common.locate()?),
        mc.map(|m| m as usize),
        |p, stats| make_backend(kind, threads, p, stats),
    )?;
    let e = &result.evaluation;
    let row = |name: &str, m: &netc_runtime::train::SetMetrics| {
        format!(
            "{name:<22} {:>9.2}% {:>10.4} {:>11.3} {:>10.3} {:>12.0}",
            m.accuracy * 100.0,
            m.loss,
            m.confidence,
            m.entropy,
            m.ms_per_10k
        )
    };
    println!(
        "test set: {} images, backend {}",
        e.standard.examples, result.backend
    );
    println!(
        "{:<22} {:>10} {:>10} {:>11} {:>10} {:>12}",
        "", "accuracy", "loss", "confidence", "entropy", "ms/10k img"
    );
    println!("{}", row("dropout off", &e.standard));
    if let Some(mcd) = &e.mc_dropout {
        println!(
            "{}",
            row(
                &format!("MC Dropout ({} samples)", mcd.samples),
                &mcd.metrics
            )
        );
        println!(
            "MC Dropout costs {:.1}x the inference time of one pass",
            mcd.metrics.ms_per_10k / e.standard.ms_per_10k.max(1e-9)
        );
    }
    if result.mc_skipped.is_some() {
        eprintln!(
            "note: MC Dropout skipped: this model has no dropout layer, so every sample would be \
             the pass with dropout off"
        );
    }
    Ok(ExitCode::SUCCESS)
}
