//! PNG plots of what a run recorded: the learning curves of one run, the validation curves of
//! several runs overlaid, and the loss-versus-learning-rate curve of `lr-find`.
//!
//! Every plot is drawn with `plotters` into an in-memory RGB buffer, encoded as PNG here and
//! written with `report::atomic_write`, so a plot on disk is always complete. Text uses DejaVu Sans,
//! embedded in the binary (`runtime/assets/`), because plotters' `ab_glyph` backend cannot find
//! system fonts. Non-finite values (a diverged epoch) are left out of the curves rather than
//! drawn; this module reads no files and knows nothing about training.

use std::error::Error;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::report::{atomic_write, EpochRecord, History, ReportError};

/// Size in pixels of `plot_curves` and `plot_compare` images (two panels side by side).
pub const PANELS_SIZE: (u32, u32) = (1400, 560);
/// Size in pixels of `plot_lr_find` images.
pub const LR_FIND_SIZE: (u32, u32) = (900, 560);

/// The font family every text element asks for; the embedded font is registered under it.
const FONT: &str = "sans-serif";
static DEJAVU_SANS: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Train and validation colours of `plot_curves`, and the first runs of `plot_compare`
/// (Tableau 10, which stays readable for the colour-blind in its first few entries).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const MARKER: RGBColor = RGBColor(90, 90, 90);

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PlotError {
    #[error("cannot plot {}: the run has no epochs", path.display())]
    #[diagnostic(
        code(netc::plot::empty_history),
        help("a run that stopped before finishing its first epoch has no curves to draw")
    )]
    EmptyHistory { path: PathBuf },
    #[error("cannot plot {}: run `{run}` has no epochs", path.display())]
    #[diagnostic(
        code(netc::plot::empty_run),
        help("leave out runs that stopped before finishing their first epoch")
    )]
    EmptyRun { path: PathBuf, run: String },
    #[error("cannot plot {}: no runs to compare", path.display())]
    #[diagnostic(code(netc::plot::no_runs), help("name at least one run directory"))]
    NoRuns { path: PathBuf },
    #[error("cannot plot the learning-rate search in {}: {reason}", path.display())]
    #[diagnostic(
        code(netc::plot::lr_find_input),
        help("this is a bug in netc's `lr-find`")
    )]
    BadLrFind { path: PathBuf, reason: String },
    #[error("the font embedded in netc could not be loaded")]
    #[diagnostic(code(netc::plot::font), help("this is a bug in netc"))]
    Font,
    #[error("could not draw {}: {reason}", path.display())]
    #[diagnostic(code(netc::plot::render), help("this is a bug in netc"))]
    Render { path: PathBuf, reason: String },
    #[error("could not encode {} as PNG: {source}", path.display())]
    #[diagnostic(code(netc::plot::encode), help("this is a bug in netc"))]
    Encode {
        path: PathBuf,
        #[source]
        source: png::EncodingError,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Write(#[from] ReportError),
}

type DrawResult = Result<(), Box<dyn Error>>;
type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Registers the embedded font once per process; plotters keeps it in a global table.
fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok =
        *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_ok());
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// Draws with `draw` on a white canvas of `size`, encodes it as PNG and writes it atomically.
fn render_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> DrawResult,
) -> Result<(), PlotError> {
    ensure_font()?;
    let render_error = |reason: String| PlotError::Render {
        path: path.to_path_buf(),
        reason,
    };
    let mut pixels = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let backend = BitMapBackend::with_buffer_and_format(&mut pixels, size)
            .map_err(|e| render_error(e.to_string()))?;
        let root = backend.into_drawing_area();
        root.fill(&WHITE).map_err(|e| render_error(e.to_string()))?;
        draw(&root).map_err(|e| render_error(e.to_string()))?;
        root.present().map_err(|e| render_error(e.to_string()))?;
    }
    let png = encode_png(&pixels, size).map_err(|source| PlotError::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    atomic_write(path, &png).map_err(|e| ReportError::write(path, e))?;
    Ok(())
}

fn encode_png(rgb: &[u8], (width, height): (u32, u32)) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

/// One curve of a panel: a legend label, a colour, and one y value per epoch (NaN allowed).
struct Curve<'a> {
    label: &'a str,
    color: RGBColor,
    /// `(epoch, value)`; non-finite values are gaps.
    points: Vec<(i32, f64)>,
}

/// A panel of per-epoch curves sharing an epoch axis.
struct Panel<'a> {
    caption: &'a str,
    y_desc: &'a str,
    curves: Vec<Curve<'a>>,
    /// Accuracies are drawn in percent and clamped to `[0, 100]`.
    percent: bool,
    /// Epoch marked with a dashed line, and the curve index whose value there gets a dot.
    best: Option<(i32, usize)>,
    legend: SeriesLabelPosition,
}

/// Splits points at non-finite values so that a gap in the data is a gap in the line.
fn finite_runs<X: Copy>(points: &[(X, f64)]) -> Vec<Vec<(X, f64)>> {
    points
        .split(|(_, y)| !y.is_finite())
        .filter(|run| !run.is_empty())
        .map(<[_]>::to_vec)
        .collect()
}

/// A y range covering every finite value with a margin; `[0, 1]` when there is none.
fn padded_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return 0.0..1.0;
    }
    let pad = if hi > lo {
        0.06 * (hi - lo)
    } else {
        0.1 * lo.abs().max(1.0)
    };
    (lo - pad)..(hi + pad)
}

/// Enough decimals for neighbouring tick labels (about a tenth of the range apart) to differ.
fn label_decimals(range: &Range<f64>) -> usize {
    let span = range.end - range.start;
    if span >= 20.0 {
        0
    } else if span >= 2.0 {
        1
    } else {
        2
    }
}

fn draw_panel(area: &Area<'_>, epochs: i32, panel: &Panel<'_>) -> DrawResult {
    let mut y = padded_range(
        panel
            .curves
            .iter()
            .flat_map(|c| c.points.iter().map(|p| p.1)),
    );
    if panel.percent {
        y = y.start.max(0.0)..y.end.min(100.0);
    }
    let decimals = label_decimals(&y);
    // One empty epoch on either side keeps the first and last points off the axes, and gives a
    // single-epoch run a visible width.
    let mut chart = ChartBuilder::on(area)
        .caption(panel.caption, (FONT, 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0..epochs + 1, y.clone())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(panel.y_desc)
        .x_labels((epochs as usize + 2).min(12))
        .x_label_formatter(&|x| {
            if (1..=epochs).contains(x) {
                x.to_string()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| format!("{v:.decimals$}"))
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;

    if let Some((best, _)) = panel.best {
        // Named in the legend rather than beside the line, where it would collide with the
        // legend box whenever the best epoch is one of the last.
        let style = MARKER.stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(
                [(best, y.start), (best, y.end)],
                8,
                5,
                style,
            ))?
            .label(format!("best: epoch {best}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
    }
    for (index, curve) in panel.curves.iter().enumerate() {
        let style = curve.color.stroke_width(2);
        // An empty series carries the legend entry, so a curve with no finite value still
        // appears in the legend and the segments below need no label.
        chart
            .draw_series(LineSeries::new(std::iter::empty(), style))?
            .label(curve.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        for run in finite_runs(&curve.points) {
            if let [single] = run.as_slice() {
                chart.draw_series(std::iter::once(Circle::new(*single, 3, style.filled())))?;
            } else {
                chart.draw_series(LineSeries::new(run, style))?;
            }
        }
        if let Some((best, _)) = panel.best.filter(|&(_, marked)| marked == index) {
            let at_best = curve
                .points
                .iter()
                .filter(|(x, y)| *x == best && y.is_finite());
            chart.draw_series(at_best.map(|p| Circle::new(*p, 5, style.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .position(panel.legend.clone())
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .draw()?;
    Ok(())
}

fn epoch_points(history: &History, value: impl Fn(&EpochRecord) -> f64) -> Vec<(i32, f64)> {
    history
        .epochs
        .iter()
        .map(|e| (epoch_coord(e.epoch), value(e)))
        .collect()
}

/// Epoch numbers are small; saturating keeps a corrupt epoch number from wrapping around.
fn epoch_coord(epoch: usize) -> i32 {
    i32::try_from(epoch).unwrap_or(i32::MAX - 1)
}

fn last_epoch<'a>(histories: impl Iterator<Item = &'a History>) -> i32 {
    histories
        .flat_map(|h| h.epochs.iter().map(|e| epoch_coord(e.epoch)))
        .max()
        .unwrap_or(1)
        .max(1)
}

/// The learning curves of one run: loss (left) and accuracy (right) per epoch, training against
/// validation, with `best_epoch` (the run's best epoch, whose weights it keeps; 0 for none)
/// marked in both panels.
pub fn plot_curves(
    path: &Path,
    title: &str,
    history: &History,
    best_epoch: usize,
) -> Result<(), PlotError> {
    if history.epochs.is_empty() {
        return Err(PlotError::EmptyHistory {
            path: path.to_path_buf(),
        });
    }
    let epochs = last_epoch(std::iter::once(history));
    let best = history
        .epochs
        .iter()
        .find(|record| record.epoch == best_epoch)
        .map(|record| epoch_coord(record.epoch));
    let loss = Panel {
        caption: "loss",
        y_desc: "cross-entropy",
        curves: vec![
            Curve {
                label: "train",
                color: PALETTE[0],
                points: epoch_points(history, |e| f64::from(e.loss)),
            },
            Curve {
                label: "validation",
                color: PALETTE[1],
                points: epoch_points(history, |e| f64::from(e.val_loss)),
            },
        ],
        percent: false,
        best: best.map(|epoch| (epoch, 1)),
        legend: SeriesLabelPosition::UpperRight,
    };
    let accuracy = Panel {
        caption: "accuracy",
        y_desc: "accuracy (%)",
        curves: vec![
            Curve {
                label: "train",
                color: PALETTE[0],
                points: epoch_points(history, |e| 100.0 * f64::from(e.accuracy)),
            },
            Curve {
                label: "validation",
                color: PALETTE[1],
                points: epoch_points(history, |e| 100.0 * f64::from(e.val_accuracy)),
            },
        ],
        percent: true,
        best: best.map(|epoch| (epoch, 1)),
        legend: SeriesLabelPosition::LowerRight,
    };
    render_png(path, PANELS_SIZE, |root| {
        let body = root.titled(title, (FONT, 26))?;
        let (left, right) = body.split_horizontally(PANELS_SIZE.0 / 2);
        draw_panel(&left, epochs, &loss)?;
        draw_panel(&right, epochs, &accuracy)
    })
}

fn run_color(index: usize) -> RGBColor {
    match PALETTE.get(index) {
        Some(color) => *color,
        None => {
            let RGBAColor(r, g, b, _) = Palette99::pick(index).to_rgba();
            RGBColor(r, g, b)
        }
    }
}

/// Validation accuracy (left) and validation loss (right) of several runs overlaid, one colour
/// per run, named in the legend.
pub fn plot_compare(path: &Path, runs: &[(String, History)]) -> Result<(), PlotError> {
    if runs.is_empty() {
        return Err(PlotError::NoRuns {
            path: path.to_path_buf(),
        });
    }
    if let Some((run, _)) = runs.iter().find(|(_, h)| h.epochs.is_empty()) {
        return Err(PlotError::EmptyRun {
            path: path.to_path_buf(),
            run: run.clone(),
        });
    }
    let epochs = last_epoch(runs.iter().map(|(_, h)| h));
    let curves = |value: fn(&EpochRecord) -> f64| {
        runs.iter()
            .enumerate()
            .map(|(i, (name, history))| Curve {
                label: name,
                color: run_color(i),
                points: epoch_points(history, value),
            })
            .collect()
    };
    let accuracy = Panel {
        caption: "validation accuracy",
        y_desc: "accuracy (%)",
        curves: curves(|e| 100.0 * f64::from(e.val_accuracy)),
        percent: true,
        best: None,
        legend: SeriesLabelPosition::LowerRight,
    };
    let loss = Panel {
        caption: "validation loss",
        y_desc: "cross-entropy",
        curves: curves(|e| f64::from(e.val_loss)),
        percent: false,
        best: None,
        legend: SeriesLabelPosition::UpperRight,
    };
    render_png(path, PANELS_SIZE, |root| {
        let body = root.titled("netc: runs compared", (FONT, 26))?;
        let (left, right) = body.split_horizontally(PANELS_SIZE.0 / 2);
        draw_panel(&left, epochs, &accuracy)?;
        draw_panel(&right, epochs, &loss)
    })
}

fn check_lr_find(lrs: &[f32], losses: &[f32], smoothed: &[f32]) -> Result<(), String> {
    if lrs.is_empty() {
        return Err("no learning rates were tried".to_string());
    }
    if losses.len() != lrs.len() || smoothed.len() != lrs.len() {
        return Err(format!(
            "{} learning rates but {} losses and {} smoothed losses",
            lrs.len(),
            losses.len(),
            smoothed.len()
        ));
    }
    match lrs.iter().find(|lr| !(lr.is_finite() && **lr > 0.0)) {
        Some(lr) => Err(format!(
            "learning rate {lr} cannot be placed on a logarithmic axis"
        )),
        None => Ok(()),
    }
}

/// Replaces every value above `limit` that follows another such value with NaN.
fn cut_above(points: &mut [(f64, f64)], limit: f64) {
    let mut outside = false;
    for point in points {
        let above = point.1 > limit;
        if above && outside {
            point.1 = f64::NAN;
        }
        outside = above;
    }
}

/// The y range of `plot_lr_find`. It reaches down to the lowest loss, raw or smoothed, so the
/// noise of the raw losses is never cut off below. Its top is twice the smoothed loss's fall
/// from its first value to its minimum, above that minimum, or the highest raw loss before that
/// minimum if higher: the search ends by exploding, and the raw losses of the last steps can be
/// thousands of times larger, so letting them in would flatten everything that matters.
fn lr_find_y_range(losses: &[f32], smoothed: &[f32]) -> Range<f64> {
    let finite = |values: &[f32]| -> Vec<f64> {
        values
            .iter()
            .map(|&v| f64::from(v))
            .filter(|v| v.is_finite())
            .collect()
    };
    let Some((min_at, lowest)) = smoothed
        .iter()
        .map(|&v| f64::from(v))
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .min_by(|a, b| a.1.total_cmp(&b.1))
    else {
        return padded_range(finite(losses).into_iter());
    };
    let first = smoothed
        .iter()
        .map(|&v| f64::from(v))
        .find(|v| v.is_finite())
        .unwrap_or(lowest);
    if first <= lowest {
        return padded_range(finite(losses).into_iter().chain(finite(smoothed)));
    }
    let bottom = finite(losses).into_iter().fold(lowest, f64::min);
    let top = finite(&losses[..=min_at.min(losses.len().saturating_sub(1))])
        .into_iter()
        .fold(lowest + 2.0 * (first - lowest), f64::max);
    padded_range([bottom, top].into_iter())
}

/// The loss against the learning rate on a logarithmic axis, raw and smoothed, with the suggested
/// rate marked (no mark when `suggested` is not a positive finite rate). The y axis is cut at
/// twice the initial smoothed loss's distance from the minimum, because the search ends by
/// diverging and the explosion would otherwise flatten the part of the curve that matters.
pub fn plot_lr_find(
    path: &Path,
    lrs: &[f32],
    losses: &[f32],
    smoothed: &[f32],
    suggested: f32,
) -> Result<(), PlotError> {
    check_lr_find(lrs, losses, smoothed).map_err(|reason| PlotError::BadLrFind {
        path: path.to_path_buf(),
        reason,
    })?;
    let points = |ys: &[f32]| -> Vec<(f64, f64)> {
        lrs.iter()
            .zip(ys)
            .map(|(&lr, &y)| (f64::from(lr), f64::from(y)))
            .collect()
    };
    let (mut raw, mut smooth) = (points(losses), points(smoothed));
    let (lr_lo, lr_hi) = lrs.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &lr| {
        (lo.min(f64::from(lr)), hi.max(f64::from(lr)))
    });
    let x = if lr_hi > lr_lo {
        lr_lo..lr_hi
    } else {
        lr_lo / 2.0..lr_hi * 2.0
    };
    let y = lr_find_y_range(losses, smoothed);
    // plotters pins points outside the range to its edge, which would draw a false plateau along
    // the top; each excursion keeps its first point (so the line visibly leaves the chart) and
    // becomes a gap after it.
    cut_above(&mut raw, y.end);
    cut_above(&mut smooth, y.end);
    let suggested = f64::from(suggested);
    let decimals = label_decimals(&y);
    render_png(path, LR_FIND_SIZE, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("learning-rate search", (FONT, 24))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x.clone().log_scale(), y.clone())?;
        chart
            .configure_mesh()
            .x_desc("learning rate")
            .y_desc("loss")
            .x_label_formatter(&|lr| format!("{lr:.0e}"))
            .y_label_formatter(&|v| format!("{v:.decimals$}"))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        let raw_style = PALETTE[0].mix(0.35).stroke_width(1);
        let smooth_style = PALETTE[0].stroke_width(2);
        for (label, series, style) in [
            ("loss", &raw, raw_style),
            ("smoothed", &smooth, smooth_style),
        ] {
            chart
                .draw_series(LineSeries::new(std::iter::empty(), style))?
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
            for run in finite_runs(series) {
                chart.draw_series(LineSeries::new(run, style))?;
            }
        }
        if suggested.is_finite() && suggested > 0.0 {
            let style = PALETTE[3].stroke_width(2);
            chart
                .draw_series(DashedLineSeries::new(
                    [(suggested, y.start), (suggested, y.end)],
                    8,
                    5,
                    style,
                ))?
                .label(format!("suggested {suggested:.1e}"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .draw()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    /// Decodes a PNG written by this module: its size and its RGB pixels.
    fn decode(path: &Path) -> ((u32, u32), Vec<u8>) {
        let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        pixels.truncate(info.buffer_size());
        ((info.width, info.height), pixels)
    }

    fn count(pixels: &[u8], color: RGBColor) -> usize {
        pixels
            .chunks_exact(3)
            .filter(|p| *p == [color.0, color.1, color.2])
            .count()
    }

    #[test]
    fn curves_are_a_png_of_the_expected_size_with_both_curves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        let history = fixtures::history(20);
        let best = history.best_by_val_accuracy().unwrap().epoch;
        plot_curves(&path, "mlp", &history, best).unwrap();
        let (size, pixels) = decode(&path);
        assert_eq!(size, PANELS_SIZE);
        assert!(count(&pixels, PALETTE[0]) > 500, "train curve missing");
        assert!(count(&pixels, PALETTE[1]) > 500, "validation curve missing");
        assert!(
            count(&pixels, WHITE) > pixels.len() / 6,
            "background missing"
        );
    }

    #[test]
    fn a_single_epoch_is_drawn_as_points() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.png");
        let history = fixtures::history(1);
        plot_curves(&path, "one epoch", &history, 1).unwrap();
        let (size, pixels) = decode(&path);
        assert_eq!(size, PANELS_SIZE);
        // The same plot without the training values has only the legend samples in that colour.
        let mut without_train = history.clone();
        without_train.epochs[0].loss = f32::NAN;
        without_train.epochs[0].accuracy = f32::NAN;
        plot_curves(&path, "one epoch", &without_train, 1).unwrap();
        let (_, baseline) = decode(&path);
        let (dots, legend) = (count(&pixels, PALETTE[0]), count(&baseline, PALETTE[0]));
        assert!(
            dots >= legend + 2 * 20,
            "{dots} train pixels, {legend} in the legend"
        );
    }

    #[test]
    fn nan_values_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nan.png");
        let mut history = fixtures::history(6);
        history.epochs[2].val_loss = f32::NAN;
        for record in &mut history.epochs {
            record.val_accuracy = f32::NAN;
            record.loss = f32::INFINITY;
        }
        plot_curves(&path, "diverged", &history, 0).unwrap();
        let (size, pixels) = decode(&path);
        assert_eq!(size, PANELS_SIZE);
        assert!(
            count(&pixels, PALETTE[1]) > 300,
            "finite validation losses missing"
        );
    }

    #[test]
    fn an_empty_history_is_an_error_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.png");
        let err = plot_curves(&path, "empty", &History::default(), 0).unwrap_err();
        assert!(matches!(err, PlotError::EmptyHistory { .. }), "{err:?}");
        assert!(!path.exists());
    }

    #[test]
    fn compare_overlays_every_run_in_its_own_colour() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("compare.png");
        let runs = vec![
            ("mlp".to_string(), fixtures::history(20)),
            ("wide".to_string(), fixtures::history(12)),
            ("selu".to_string(), fixtures::history(30)),
        ];
        plot_compare(&path, &runs).unwrap();
        let (size, pixels) = decode(&path);
        assert_eq!(size, PANELS_SIZE);
        for (i, color) in PALETTE.iter().take(3).enumerate() {
            assert!(count(&pixels, *color) > 150, "run {i} missing");
        }
        assert_eq!(count(&pixels, PALETTE[3]), 0, "a fourth run appeared");
    }

    #[test]
    fn compare_rejects_no_runs_and_empty_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("compare.png");
        assert!(matches!(
            plot_compare(&path, &[]),
            Err(PlotError::NoRuns { .. })
        ));
        let runs = vec![
            ("ok".to_string(), fixtures::history(3)),
            ("stillborn".to_string(), History::default()),
        ];
        match plot_compare(&path, &runs) {
            Err(PlotError::EmptyRun { run, .. }) => assert_eq!(run, "stillborn"),
            other => panic!("expected EmptyRun, got {other:?}"),
        }
        assert!(!path.exists());
    }

    fn lr_search() -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let lrs: Vec<f32> = (0..100)
            .map(|i| 1e-6 * 10f32.powf(i as f32 * 0.07))
            .collect();
        let losses: Vec<f32> = lrs
            .iter()
            .map(|lr| 2.3 - 0.2 * (lr.log10() + 6.0) + 3.0 * lr.powi(2))
            .collect();
        let mut average = 0.0;
        let smoothed = losses
            .iter()
            .enumerate()
            .map(|(i, loss)| {
                average = 0.9 * average + 0.1 * loss;
                average / (1.0 - 0.9f32.powi(i as i32 + 1))
            })
            .collect();
        (lrs, losses, smoothed)
    }

    #[test]
    fn lr_find_marks_the_suggestion_when_there_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let (lrs, losses, smoothed) = lr_search();
        let marked = dir.path().join("marked.png");
        plot_lr_find(&marked, &lrs, &losses, &smoothed, 3e-3).unwrap();
        let (size, pixels) = decode(&marked);
        assert_eq!(size, LR_FIND_SIZE);
        assert!(count(&pixels, PALETTE[0]) > 500, "smoothed curve missing");
        assert!(count(&pixels, PALETTE[3]) > 300, "suggestion missing");

        let unmarked = dir.path().join("unmarked.png");
        plot_lr_find(&unmarked, &lrs, &losses, &smoothed, f32::NAN).unwrap();
        let (_, pixels) = decode(&unmarked);
        assert_eq!(count(&pixels, PALETTE[3]), 0);
    }

    #[test]
    fn the_lr_find_range_shows_every_raw_loss_but_the_explosion() {
        let (_, mut losses, smoothed) = lr_search();
        // A lucky batch far below the smoothed curve, and a noisy one above it, both before the
        // smoothed minimum; then the explosion.
        losses[20] = 0.2;
        losses[30] = 2.9;
        let last = losses.len() - 1;
        losses[last] = 1e4;
        let y = lr_find_y_range(&losses, &smoothed);
        let lowest_smoothed = smoothed.iter().copied().fold(f32::INFINITY, f32::min);
        assert!(f64::from(lowest_smoothed) > 0.5, "{lowest_smoothed}");
        assert!(y.start < 0.2 && y.start > 0.0, "{y:?}");
        assert!(y.end > 2.9 && y.end < 10.0, "{y:?}");
        // Without a fall to measure, everything finite is shown.
        let flat = [1.0f32, 1.5, f32::NAN, 0.5];
        let y = lr_find_y_range(&flat, &[1.0, 1.0, 1.0, 1.0]);
        assert!(y.start < 0.5 && y.end > 1.5, "{y:?}");
    }

    #[test]
    fn lr_find_rejects_inputs_it_cannot_draw() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lr.png");
        let (lrs, losses, smoothed) = lr_search();
        let reason = |result: Result<(), PlotError>| match result {
            Err(PlotError::BadLrFind { reason, .. }) => reason,
            other => panic!("expected BadLrFind, got {other:?}"),
        };
        let short = reason(plot_lr_find(&path, &lrs, &losses[1..], &smoothed, 1e-3));
        assert!(
            short.contains("100 learning rates but 99 losses"),
            "{short}"
        );
        let mut negative = lrs.clone();
        negative[4] = 0.0;
        let zero = reason(plot_lr_find(&path, &negative, &losses, &smoothed, 1e-3));
        assert!(zero.contains("logarithmic"), "{zero}");
        let empty = reason(plot_lr_find(&path, &[], &[], &[], 1e-3));
        assert!(empty.contains("no learning rates"), "{empty}");
        assert!(!path.exists());
    }

    #[test]
    fn excursions_above_the_cut_keep_only_their_first_point() {
        let mut points = [(1.0, 1.0), (2.0, 5.0), (3.0, 6.0), (4.0, 2.0), (5.0, 9.0)];
        cut_above(&mut points, 4.0);
        let ys: Vec<String> = points.iter().map(|p| p.1.to_string()).collect();
        assert_eq!(ys, ["1", "5", "NaN", "2", "9"]);
    }

    #[test]
    fn gaps_split_curves_and_ranges_ignore_them() {
        let points = [
            (1, 1.0),
            (2, f64::NAN),
            (3, 2.0),
            (4, 3.0),
            (5, f64::INFINITY),
        ];
        assert_eq!(
            finite_runs(&points),
            vec![vec![(1, 1.0)], vec![(3, 2.0), (4, 3.0)]]
        );
        let range = padded_range(points.iter().map(|p| p.1));
        assert!(range.start < 1.0 && range.start > 0.8, "{range:?}");
        assert!(range.end > 3.0 && range.end < 3.2, "{range:?}");
        assert_eq!(padded_range([f64::NAN].into_iter()), 0.0..1.0);
        let flat = padded_range([2.0, 2.0].into_iter());
        assert!(flat.start < 2.0 && flat.end > 2.0, "{flat:?}");
    }
}
