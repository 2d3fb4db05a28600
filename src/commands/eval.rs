//! `netc eval`.

use super::*;

pub(super) fn eval(run_dir: &Path, mc: Option<u32>, common: &DataArgs) -> Result<ExitCode> {
    let spec_path = run_dir.join(netc_runtime::run::SPEC_FILE);
    let summary =
        netc_runtime::report::read_summary(&run_dir.join(netc_runtime::run::SUMMARY_FILE))?;
    netc_runtime::run::check_spec_unchanged(run_dir, &summary)?;
    let Some(mut program) = program_of(&spec_path)? else {
        return Ok(ExitCode::from(1));
    };
    program.train.seed = summary.seed;
    let data = netc_runtime::data::load(Some(&common.locate()?))?;
    let (_, stats) = netc_runtime::run::split_and_stats(&program, &data.train)?;
    let mut backend = make_backend(common.backend(), common.threads.count(), &program, stats)?;
    let mut state = backend.state();
    state.params = netc_runtime::run::load_kept_weights(run_dir, &program)?;
    backend.set_state(&state);
    let samples = mc
        .map(|m| m as usize)
        .or(program.eval.mc_dropout)
        .unwrap_or(10);
    // Without dropout, every MC Dropout sample would be the pass with dropout off.
    let mc_samples = program.has_dropout().then_some(samples);
    let indices = data.test.all_indices();
    let e = netc_runtime::train::evaluate(
        backend.as_mut(),
        &data.test,
        &indices,
        program.input.classes,
        mc_samples,
        None,
    )?;
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
        e.standard.examples,
        backend.name()
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
    if !program.has_dropout() {
        eprintln!(
            "note: MC Dropout skipped: this model has no dropout layer, so every sample would be \
             the pass with dropout off"
        );
    }
    Ok(ExitCode::SUCCESS)
}
