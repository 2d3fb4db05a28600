//! `netc lr-find`.

use super::*;

#[derive(clap::Args, Debug)]
pub struct LrFindArgs {
    /// The `.net` spec to train from its initial weights while the rate grows.
    spec: PathBuf,
    #[command(flatten)]
    common: DataArgs,
    /// Smallest rate tried.
    #[arg(long, default_value_t = 1e-6)]
    min: f32,
    /// Largest rate tried.
    #[arg(long, default_value_t = 1.0)]
    max: f32,
    /// Steps from the smallest to the largest rate.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=100_000))]
    steps: u64,
    /// Where to write lr_find.png (default: runs/lr_find-<model>-<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the result as one JSON line on stdout.
    #[arg(long)]
    json: bool,
}

pub(super) fn lr_find(args: LrFindArgs) -> Result<ExitCode> {
    use netc_runtime::lr_find::{self, LrFindOptions};
    if !(args.min > 0.0 && args.max > args.min && args.max.is_finite()) {
        return Err(CliError::LrRange {
            min: args.min,
            max: args.max,
        }
        .into());
    }
    let Some(LoadedSpec { program, .. }) = load_spec(&args.spec, &[])? else {
        return Ok(ExitCode::from(1));
    };
    let inputs = netc_runtime::run::Inputs::load(&program, Some(&args.common.locate()?))?;
    let kind = args.common.backend();
    let threads = args.common.threads.options_for(kind)?;
    let (mut backend, _) =
        inputs.backend(&program, |p, stats| make_backend(kind, threads, p, stats))?;
    let (data, split) = (&inputs.data, &inputs.split);
    let opts = LrFindOptions {
        min_lr: args.min,
        max_lr: args.max,
        steps: args.steps as usize,
        batch: program.train.batch,
        seed: program.train.seed,
        ..LrFindOptions::default()
    };
    let result = lr_find::lr_find(backend.as_mut(), &data.train, &split.train, &opts);
    let out = match args.out {
        Some(dir) => dir,
        None => netc_runtime::run::create_run_dir(None, &format!("lr_find-{}", program.name))?,
    };
    std::fs::create_dir_all(&out).map_err(|cause| CliError::CreateDir {
        path: out.clone(),
        cause,
    })?;
    let plot = out.join("lr_find.png");
    netc_runtime::plot::plot_lr_find(
        &plot,
        &result.lrs,
        &result.losses,
        &result.smoothed,
        result.suggested_lr,
    )?;
    eprintln!("{}", lr_find::reasoning(&result));
    eprintln!(
        "suggested learning rate: {:.2e} (the spec uses {:.2e}); plot: {}",
        result.suggested_lr,
        program.train.optimizer.lr,
        plot.display()
    );
    if args.json {
        let line = serde_json::json!({
            "spec": args.spec.display().to_string(),
            "suggested_lr": result.suggested_lr,
            "min_loss_lr": result.min_loss_lr,
            "steepest_lr": result.steepest_lr,
            "spec_lr": program.train.optimizer.lr,
            "steps": result.lrs.len(),
            "plot": plot.display().to_string(),
        });
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
