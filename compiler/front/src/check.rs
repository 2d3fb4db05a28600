//! The checker: everything about a spec that needs more than one entry to decide. Required
//! sections, ranges, limits, the network's shape (repeats expanded, defaults applied, every
//! layer's output shape inferred: vectors and channels-last images), and the lints that carry
//! the theory of the exercise.
//!
//! It reports every problem at once and hands `lower` a `Checked` spec: resolved, in range and
//! within limits, so lowering never fails. Lints are warnings with stable codes
//! (`netc::lint::<name>`); `allow <name>` in the spec silences one.

use crate::ast::{
    ActivationSpec, InitSpec, LayerDecl, LayerKindName, LayerProps, LayerStmt, PaddingSpec,
    ScheduleSpec, Spanned, Spec,
};
use crate::print::{dims, thousands};
use netc_diagnostics::{did_you_mean, one_of, Diag, Span};
use netc_ir::ir;

/// Most layers a spec may expand to.
pub const MAX_LAYERS: u64 = 1_000;
/// Widest dense layer, and most filters of a convolution.
pub const MAX_UNITS: u64 = 65_536;
/// Largest window side and stride of a convolution or pooling layer, in pixels.
pub const MAX_WINDOW: u64 = 256;
/// A dense layer with more weights than this on a flattened feature map is linted
/// (`heavy_flatten`).
pub const HEAVY_FLATTEN_WEIGHTS: u64 = 1_000_000;
/// Most parameters a model may have (400 MB of f32 weights, before optimizer state).
pub const MAX_PARAMS: u64 = 100_000_000;
/// Most memory a spec's training may need (`ir::Program::training_memory`): enough for every
/// dense model worth training on CIFAR-10, and below what a machine of the kind netc targets
/// has, so a spec that would exhaust it is refused up front instead of aborting mid-run.
pub const MAX_TRAINING_MEMORY: u64 = 16 << 30;
/// Largest batch.
pub const MAX_BATCH: u64 = 65_536;
pub const MAX_EPOCHS: u64 = ir::MAX_EPOCHS as u64;
pub const MAX_MC_SAMPLES: u64 = 10_000;
/// Training images in CIFAR-10's training files.
pub const CIFAR10_TRAIN: u64 = 50_000;
/// Most zero pixels `augment { crop: P }` may pad each side with: half a CIFAR-10 image's side,
/// beyond which a crop may keep less than a quarter of the image.
pub const MAX_CROP: u64 = 16;
/// A CIFAR-10 example read as an image: 32 × 32 pixels of red, green and blue.
pub const CIFAR10_IMAGE: ir::Shape = ir::Shape::Image {
    height: 32,
    width: 32,
    channels: 3,
};

/// Every lint: its name (as written in `allow`) and what it is about.
pub const LINTS: [(&str, &str); 12] = [
    (
        "symmetric_init",
        "a kernel initialized to one constant never breaks symmetry",
    ),
    (
        "momentum_close_to_one",
        "momentum or beta_1 at or above 0.99 overshoots and oscillates",
    ),
    (
        "selu_self_normalization",
        "SELU without what self-normalization needs",
    ),
    (
        "hidden_softmax",
        "softmax on a layer that is not the output",
    ),
    (
        "output_width",
        "an output layer wider than the number of classes",
    ),
    (
        "heavy_dropout",
        "dropout rates that throw away most of the signal",
    ),
    (
        "mc_dropout_without_dropout",
        "MC Dropout on a model without dropout",
    ),
    (
        "redundant_bias",
        "a dense or conv2d bias right before batch normalization",
    ),
    ("saturating_deep", "sigmoid or tanh in a deep stack"),
    (
        "nesterov_without_momentum",
        "Nesterov momentum with momentum 0",
    ),
    (
        "ineffective_early_stopping",
        "early stopping patience that can never trigger",
    ),
    (
        "heavy_flatten",
        "a dense layer with millions of weights on a flattened feature map",
    ),
];

/// One layer after repeats are expanded and defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct FlatLayer {
    /// `dense_3`, `batch_norm_1`, ...: unique, numbered per kind from 1.
    pub name: String,
    pub kind: LayerKindName,
    /// Units of a dense layer, filters of a `conv2d`.
    pub units: u64,
    /// The dense or conv2d layer's activation, or the standalone activation layer's.
    pub activation: ActivationSpec,
    /// Properties with defaults applied (absent ones take Keras' defaults in `lower`).
    pub props: LayerProps,
    /// The declaration this layer comes from (shared by all copies of a repeat).
    pub span: Span,
    pub kind_span: Span,
}

/// The window of a convolution or pooling layer, with defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// `[height, width]` of the window.
    pub size: [usize; 2],
    /// Pixels between windows, `[down, across]`.
    pub strides: [usize; 2],
    pub padding: ir::Padding,
}

impl FlatLayer {
    /// The window of a `conv2d`, `max_pool` or `avg_pool` layer, with Keras' defaults: a pooling
    /// window is 2 × 2 and moves by its size, a convolution moves by 1, padding is `valid`.
    /// Values out of range (which the checker reports) are clamped into it, so shapes can
    /// always be computed; a `conv2d` without `size` (also reported) gets 1 × 1.
    pub fn window(&self) -> Window {
        let clamp = |v: [u64; 2]| v.map(|x| x.clamp(1, MAX_WINDOW) as usize);
        let p = &self.props;
        let default_size = if self.kind == LayerKindName::Conv2d {
            [1, 1]
        } else {
            [2, 2]
        };
        let size = p.size.as_ref().map_or(default_size, |s| clamp(s.value));
        let default_strides = if self.kind == LayerKindName::Conv2d {
            [1, 1]
        } else {
            size
        };
        Window {
            size,
            strides: p
                .strides
                .as_ref()
                .map_or(default_strides, |s| clamp(s.value)),
            padding: match p.padding.as_ref().map(|p| p.value) {
                Some(PaddingSpec::Same) => ir::Padding::Same,
                Some(PaddingSpec::Valid) | None => ir::Padding::Valid,
            },
        }
    }

    /// The window's options are all given and in range, so its output shape means something.
    fn window_is_valid(&self) -> bool {
        let p = &self.props;
        let in_range = |v: &Option<Spanned<[u64; 2]>>| {
            v.as_ref()
                .is_none_or(|v| v.value.iter().all(|x| (1..=MAX_WINDOW).contains(x)))
        };
        let sized = self.kind != LayerKindName::Conv2d || p.size.is_some();
        !self.kind.has_window() || (sized && in_range(&p.size) && in_range(&p.strides))
    }

    /// The shape of the layer's output when it reads `input`. A layer that does not fit its
    /// input (which the checker reports) still gets a shape: the input's length read as a
    /// 1 × 1 image, or as a vector. Unit and filter counts are clamped to `MAX_UNITS`.
    pub fn output_shape(&self, input: ir::Shape) -> ir::Shape {
        let units = self.units.clamp(1, MAX_UNITS) as usize;
        match self.kind {
            LayerKindName::Dense => ir::Shape::Flat(units),
            LayerKindName::Conv2d | LayerKindName::MaxPool | LayerKindName::AvgPool => {
                let (height, width, channels) = input.image().unwrap_or((1, 1, input.len()));
                let w = self.window();
                let side = |len: usize, i: usize| w.padding.output(len, w.size[i], w.strides[i]);
                ir::Shape::Image {
                    height: side(height, 0),
                    width: side(width, 1),
                    channels: if self.kind == LayerKindName::Conv2d {
                        units
                    } else {
                        channels
                    },
                }
            }
            LayerKindName::GlobalAvgPool => ir::Shape::Flat(input.channels()),
            LayerKindName::Flatten => ir::Shape::Flat(input.len()),
            LayerKindName::BatchNorm
            | LayerKindName::Dropout
            | LayerKindName::AlphaDropout
            | LayerKindName::Activation => input,
        }
    }

    /// Scalars of the parameters the layer creates when it reads `input` (Keras' count: kernel,
    /// bias, PReLU slopes, and batch norm's four vectors).
    fn param_count(&self, input: ir::Shape) -> u64 {
        let units = self.units.clamp(1, MAX_UNITS);
        let bias = u64::from(self.props.use_bias.as_ref().is_none_or(|b| b.value));
        let len = |s: ir::Shape| s.len() as u64;
        let prelu = |out: ir::Shape| match self.activation {
            ActivationSpec::Prelu => len(out),
            _ => 0,
        };
        let out = self.output_shape(input);
        match self.kind {
            LayerKindName::Dense => len(input)
                .saturating_mul(units)
                .saturating_add(bias * units)
                .saturating_add(prelu(out)),
            LayerKindName::Conv2d => {
                let [kh, kw] = self.window().size.map(|s| s as u64);
                (kh * kw)
                    .saturating_mul(input.channels() as u64)
                    .saturating_mul(units)
                    .saturating_add(bias * units)
                    .saturating_add(prelu(out))
            }
            LayerKindName::BatchNorm => 4 * input.channels() as u64,
            LayerKindName::Activation => prelu(out),
            _ => 0,
        }
    }
}

/// How messages describe a value: `an image of shape (32, 32, 3)`, `a vector of 100 features`.
fn describe_shape(shape: ir::Shape) -> String {
    match shape {
        ir::Shape::Flat(n) => format!("a vector of {n} features"),
        ir::Shape::Image { .. } => format!("an image of shape {shape}"),
    }
}

/// A spec that passed the checker.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    pub name: String,
    pub input: ir::Input,
    pub layers: Vec<FlatLayer>,
    pub train: ir::TrainConfig,
    pub eval: ir::EvalConfig,
}

/// Checks a spec; `None` when there were errors (all of which are in `diags`).
pub fn check(spec: &Spec, diags: &mut Vec<Diag>) -> Option<Checked> {
    let errors_before = diags.iter().filter(|d| d.is_error()).count();
    // After a syntax error, a section or layer may be missing only because its statement did
    // not parse; after any error, the network may lack layers that were rejected. Errors that
    // would merely echo those are not reported.
    let syntax_errors = diags.iter().any(|d| d.code.starts_with("syntax::"));
    let prior_errors = errors_before > 0;
    let mut cx = Cx {
        diags: Vec::new(),
        end: Span::default(),
        quiet_missing: syntax_errors,
        quiet_shape: prior_errors,
    };
    let name = match &spec.model {
        Some(m) => m.value.clone(),
        None => {
            cx.missing(
                "model",
                "every spec names its model first: `model baseline`",
            );
            String::new()
        }
    };
    let mut input = match &spec.input {
        Some(i) => ir::Input {
            dataset: ir::Dataset::Cifar10,
            features: 3072,
            shape: ir::Shape::Flat(3072),
            classes: 10,
            preprocess: if i.standardize.is_some() {
                ir::Preprocess::Standardize
            } else {
                ir::Preprocess::Scale01
            },
            stats_scope: match i.standardize_per.as_ref().map(|p| p.value.as_str()) {
                Some("channel") => ir::StatsScope::Channel,
                _ => ir::StatsScope::Feature,
            },
        },
        None => {
            cx.missing(
                "input",
                "say what the model reads: `input cifar10` or `input cifar10 { standardize }`",
            );
            ir::Input {
                dataset: ir::Dataset::Cifar10,
                features: 3072,
                shape: ir::Shape::Flat(3072),
                classes: 10,
                preprocess: ir::Preprocess::Scale01,
                stats_scope: ir::StatsScope::Feature,
            }
        }
    };
    let layers = cx.flatten(spec);
    // Dense networks read the data set's order (all red, then green, then blue); image layers
    // read each pixel's channels side by side.
    if layers.iter().any(|l| l.kind.reads_image()) {
        input.shape = CIFAR10_IMAGE;
    }
    if layers.is_empty() && cx.diags.iter().all(|d| !d.is_error()) {
        cx.missing(
            "layers",
            "add the network's layers, ending with `dense 10 { activation: softmax }`",
        );
    }
    cx.check_layers(&layers, &input);
    let train = cx.train(spec);
    let eval = cx.eval(spec);
    // Lints speak about a spec that makes sense; while it has errors, they would mostly comment
    // on values that are about to change.
    let clean = errors_before == 0 && cx.diags.iter().all(|d| !d.is_error());
    if let (Some(train), true) = (&train, clean) {
        cx.lints(spec, &layers, &input, train, &eval);
    }
    cx.apply_allow(spec);
    diags.extend(cx.diags);
    let errors = diags.iter().filter(|d| d.is_error()).count() > errors_before;
    if errors {
        return None;
    }
    Some(Checked {
        name,
        input,
        layers,
        train: train?,
        eval,
    })
}

struct Cx {
    diags: Vec<Diag>,
    /// Do not report missing sections (see `check`).
    quiet_missing: bool,
    /// Do not report problems of the network's overall shape (see `check`).
    quiet_shape: bool,
    /// Where "missing" errors point: the start of the file.
    end: Span,
}

impl Cx {
    fn missing(&mut self, what: &str, help: &str) {
        if self.quiet_missing {
            return;
        }
        self.diags.push(
            Diag::error(
                &format!("check::missing_{what}"),
                format!("the spec has no `{what}`"),
            )
            .with_label(self.end, "expected somewhere in this file")
            .with_help(help.to_string()),
        );
    }

    fn range_error(&mut self, span: Span, what: &str, value: impl std::fmt::Display, range: &str) {
        self.diags.push(
            Diag::error(
                "check::out_of_range",
                format!("{what} must be {range}, not {value}"),
            )
            .with_label(span, format!("must be {range}"))
            .with_help(format!("change it to a value {range}")),
        );
    }

    fn check_f64(
        &mut self,
        v: &Option<Spanned<f64>>,
        what: &str,
        ok: impl Fn(f64) -> bool,
        range: &str,
    ) {
        if let Some(v) = v {
            if !ok(v.value) {
                self.range_error(v.span, what, v.value, range);
            }
        }
    }

    fn check_u64(&mut self, v: &Option<Spanned<u64>>, what: &str, min: u64, max: u64) {
        if let Some(v) = v {
            if v.value < min || v.value > max {
                self.range_error(v.span, what, v.value, &format!("between {min} and {max}"));
            }
        }
    }

    fn lint(
        &mut self,
        name: &str,
        message: impl Into<String>,
        span: Span,
        label: &str,
        help: &str,
        note: &str,
    ) {
        let code = format!("lint::{name}");
        if self.diags.iter().any(|d| {
            d.code == code
                && d.primary_start() == span.start
                && d.labels.first().is_some_and(|l| l.0 == span)
        }) {
            return;
        }
        let explained = self.diags.iter().any(|d| d.code == code);
        let diag = Diag::warning(&code, message)
            .with_label(span, label)
            .with_help(format!("{help} (or `allow {name}`)"));
        // The theory behind a lint is explained once per file, on its first occurrence.
        self.diags.push(if explained {
            diag
        } else {
            diag.with_note(note)
        });
    }

    // ----- the network ----------------------------------------------------------------------

    fn flatten(&mut self, spec: &Spec) -> Vec<FlatLayer> {
        let mut defaults: Vec<(LayerKindName, LayerProps, Span)> = Vec::new();
        for d in &spec.defaults {
            if let Some((_, _, first)) = defaults.iter().find(|(k, _, _)| *k == d.kind.value) {
                self.diags.push(
                    Diag::error(
                        "check::duplicate",
                        format!("two `defaults {}` blocks", d.kind.value.name()),
                    )
                    .with_label(d.span, "given again here")
                    .with_label(*first, "first given here")
                    .with_help("merge them into one block"),
                );
                continue;
            }
            defaults.push((d.kind.value, d.props.clone(), d.span));
        }
        let total = count_layers(&spec.layers);
        if total > MAX_LAYERS {
            let span = spec.layers.iter().find_map(|s| match s {
                LayerStmt::Repeat(r) => Some(r.count.span),
                LayerStmt::Layer(_) => None,
            });
            self.diags.push(
                Diag::error(
                    "check::too_large",
                    format!("the network expands to {total} layers; the limit is {MAX_LAYERS}"),
                )
                .with_label(span.unwrap_or_default(), "this repeat makes it too deep")
                .with_help("use a smaller repeat count"),
            );
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut counters = [0usize; LayerKindName::COUNT];
        self.expand(&spec.layers, &defaults, &mut counters, &mut out);
        out
    }

    fn expand(
        &mut self,
        stmts: &[LayerStmt],
        defaults: &[(LayerKindName, LayerProps, Span)],
        counters: &mut [usize; LayerKindName::COUNT],
        out: &mut Vec<FlatLayer>,
    ) {
        for stmt in stmts {
            match stmt {
                LayerStmt::Repeat(r) => {
                    if r.count.value == 0 {
                        self.range_error(r.count.span, "repeat count", 0, "at least 1");
                        continue;
                    }
                    // A body without layers (empty, or every layer rejected) expands to nothing
                    // however large the count: do not spin through the count.
                    if count_layers(&r.body) == 0 {
                        continue;
                    }
                    for _ in 0..r.count.value {
                        self.expand(&r.body, defaults, counters, out);
                    }
                }
                LayerStmt::Layer(l) => out.push(self.flat_layer(l, defaults, counters)),
            }
        }
    }

    fn flat_layer(
        &mut self,
        l: &LayerDecl,
        defaults: &[(LayerKindName, LayerProps, Span)],
        counters: &mut [usize; LayerKindName::COUNT],
    ) -> FlatLayer {
        let kind = l.kind.value;
        let slot = kind.index();
        counters[slot] += 1;
        let props = match defaults.iter().find(|(k, _, _)| *k == kind) {
            Some((_, d, _)) => l.props.or(d),
            None => l.props.clone(),
        };
        let activation = match kind {
            LayerKindName::Activation => l
                .activation
                .as_ref()
                .map_or(ActivationSpec::Linear, |a| a.value),
            _ => props
                .activation
                .as_ref()
                .map_or(ActivationSpec::Linear, |a| a.value),
        };
        FlatLayer {
            name: format!("{}_{}", kind.name(), counters[slot]),
            kind,
            units: l.units.as_ref().map_or(0, |u| u.value),
            activation,
            props,
            span: l.span,
            kind_span: l.kind.span,
        }
    }

    fn check_layers(&mut self, layers: &[FlatLayer], input: &ir::Input) {
        let mut seen_spans: Vec<Span> = Vec::new();
        // The shape the next layer reads; `None` once an image layer did not fit its input
        // (reported once), so that one mistake is not reported again by every layer after it.
        let mut shape = Some(input.shape);
        let mut params: u64 = 0;
        for (i, layer) in layers.iter().enumerate() {
            if !seen_spans.contains(&layer.span) {
                seen_spans.push(layer.span);
                self.check_options(layer);
            }
            let Some(shape_in) = shape else { continue };
            params = params.saturating_add(layer.param_count(shape_in));
            shape = self.check_shape(layer, shape_in, i + 1 == layers.len());
        }
        if params > MAX_PARAMS {
            let span = layers
                .iter()
                .max_by_key(|l| l.units)
                .map_or_else(Span::default, |l| l.span);
            self.diags.push(
                Diag::error(
                    "check::too_large",
                    format!("the model has {params} parameters; the limit is {MAX_PARAMS}"),
                )
                .with_label(span, "the widest layer")
                .with_help("use fewer or narrower layers"),
            );
        }
        self.check_output(layers, input, shape);
    }

    /// The ranges of one layer declaration's values (once, however often a repeat copies it).
    fn check_options(&mut self, layer: &FlatLayer) {
        let p = &layer.props;
        match layer.kind {
            LayerKindName::Dense | LayerKindName::Conv2d => {
                if layer.units == 0 || layer.units > MAX_UNITS {
                    let what = if layer.kind == LayerKindName::Dense {
                        "unit count"
                    } else {
                        "filter count"
                    };
                    self.range_error(
                        layer.kind_span.to(layer.span),
                        what,
                        layer.units,
                        &format!("between 1 and {MAX_UNITS}"),
                    );
                }
                self.check_f64(&p.l1, "`l1` factor", |x| x >= 0.0, "at least 0");
                self.check_f64(&p.l2, "`l2` factor", |x| x >= 0.0, "at least 0");
                self.check_f64(&p.max_norm, "`max_norm`", |x| x > 0.0, "above 0");
                for init in [&p.init, &p.bias_init].into_iter().flatten() {
                    if let InitSpec::Normal { stddev, .. }
                    | InitSpec::TruncatedNormal { stddev, .. } = init.value
                    {
                        if stddev <= 0.0 {
                            self.range_error(init.span, "`stddev`", stddev, "above 0");
                        }
                    }
                }
            }
            LayerKindName::BatchNorm => {
                self.check_f64(
                    &p.momentum,
                    "batch-norm `momentum`",
                    |x| (0.0..=1.0).contains(&x),
                    "between 0 and 1",
                );
                self.check_f64(&p.epsilon, "batch-norm `epsilon`", |x| x > 0.0, "above 0");
            }
            LayerKindName::Dropout | LayerKindName::AlphaDropout => match &p.rate {
                None => self.diags.push(
                    Diag::error(
                        "check::missing_value",
                        format!("`{}` needs a rate", layer.kind.name()),
                    )
                    .with_label(layer.span, "drop how much?")
                    .with_help(format!("write `{} 0.2`", layer.kind.name())),
                ),
                Some(r) if !(0.0..1.0).contains(&r.value) => {
                    self.range_error(r.span, "dropout rate", r.value, "in [0, 1)")
                }
                Some(_) => {}
            },
            LayerKindName::MaxPool
            | LayerKindName::AvgPool
            | LayerKindName::GlobalAvgPool
            | LayerKindName::Flatten
            | LayerKindName::Activation => {}
        }
        if layer.kind.has_window() {
            self.check_window(layer);
        }
    }

    fn check_window(&mut self, layer: &FlatLayer) {
        let p = &layer.props;
        if layer.kind == LayerKindName::Conv2d && p.size.is_none() {
            self.diags.push(
                Diag::error("check::missing_value", "`conv2d` needs a kernel `size`")
                    .with_label(layer.span, "how large is the kernel?")
                    .with_help(
                        "write `conv2d 32 { size: 3 }` (or `size: [3, 5]`), or give every \
                         `conv2d` one with `defaults conv2d { size: 3 }`",
                    ),
            );
        }
        for (v, what) in [(&p.size, "window `size`"), (&p.strides, "`strides`")] {
            let Some(v) = v else { continue };
            if let Some(bad) = v.value.iter().find(|x| !(1..=MAX_WINDOW).contains(*x)) {
                self.range_error(v.span, what, bad, &format!("between 1 and {MAX_WINDOW}"));
            }
        }
    }

    /// Whether `layer` can read `input`, reporting why not (unless the network's shape is not
    /// to be judged); its output shape when it can.
    fn check_shape(
        &mut self,
        layer: &FlatLayer,
        input: ir::Shape,
        is_last: bool,
    ) -> Option<ir::Shape> {
        if !layer.window_is_valid() {
            return None;
        }
        let problem = match (layer.kind, input) {
            (LayerKindName::Dense, ir::Shape::Image { .. }) => Some(
                Diag::error(
                    "check::needs_vector",
                    format!(
                        "`{}` needs a vector, but its input is {}",
                        layer.name,
                        describe_shape(input)
                    ),
                )
                .with_label(layer.span, format!("reads (None, {})", dims(input)))
                .with_help(format!(
                    "insert `flatten` (keeps all {} values) or `global_avg_pool` (keeps one mean \
                     per channel, {}) before it",
                    input.len(),
                    input.channels()
                )),
            ),
            (kind, ir::Shape::Flat(n)) if kind.reads_image() => {
                let help = if kind == LayerKindName::Flatten {
                    "remove it: its input is a vector already".to_string()
                } else {
                    "image layers (`conv2d`, `max_pool`, `avg_pool`) come before `flatten` or \
                     `global_avg_pool`, and those before the dense layers"
                        .to_string()
                };
                Some(
                    Diag::error(
                        "check::needs_image",
                        format!(
                            "`{}` needs an image, but its input is {}",
                            layer.name,
                            describe_shape(input)
                        ),
                    )
                    .with_label(layer.span, format!("reads (None, {n})"))
                    .with_help(help),
                )
            }
            _ => None,
        };
        let output = layer.output_shape(input);
        let problem = problem.or_else(|| self.too_small(layer, input, output));
        if let Some(diag) = problem {
            // A dense layer's output is a vector of its units whatever it read, so the layers
            // after it can still be judged; after an image layer that did not fit, nothing is
            // known.
            let known = diag.code == "check::needs_vector";
            if !self.quiet_shape {
                self.diags.push(diag);
            }
            return known.then_some(output);
        }
        let softmax = layer.activation == ActivationSpec::Softmax
            && matches!(
                layer.kind,
                LayerKindName::Conv2d | LayerKindName::Activation
            );
        // The output layer on an image is reported as such (`check_output`).
        if softmax && output.image().is_some() && !is_last {
            let span = layer
                .props
                .activation
                .as_ref()
                .map_or(layer.span, |a| a.span);
            let diag = Diag::error(
                "check::image_softmax",
                format!("softmax on an image: `{}` outputs {output}", layer.name),
            )
            .with_label(span, "softmax here")
            .with_help("use `relu` or `elu` on image layers; softmax belongs on the output dense layer")
            .with_note("netc's softmax normalizes all the values of an example together: on an image it would couple every pixel of every channel (Keras normalizes each pixel's channels instead), and a hidden layer needs neither");
            let repeated = self
                .diags
                .iter()
                .any(|d| d.code == diag.code && d.primary_start() == diag.primary_start());
            if !repeated && !self.quiet_shape {
                self.diags.push(diag);
            }
        }
        Some(output)
    }

    /// A convolution or pooling window that leaves no pixel of its input.
    fn too_small(&self, layer: &FlatLayer, input: ir::Shape, output: ir::Shape) -> Option<Diag> {
        let (height, width, _) = input.image()?;
        let (out_h, out_w, _) = output.image()?;
        if !layer.kind.has_window() || (out_h > 0 && out_w > 0) {
            return None;
        }
        let w = layer.window();
        Some(
            Diag::error(
                "check::image_too_small",
                format!(
                    "`{}`'s {}×{} window does not fit its {height}×{width} input",
                    layer.name, w.size[0], w.size[1]
                ),
            )
            .with_label(
                layer.span,
                format!(
                    "{}×{} window, `{}` padding, on {height}×{width} pixels",
                    w.size[0],
                    w.size[1],
                    w.padding.name()
                ),
            )
            .with_help(
                "use `padding: same`, a smaller window, or fewer layers that shrink the image \
                 before it",
            )
            .with_note(format!(
                "with `valid` padding a window only goes where it fits: a side of n pixels \
                 gives (n - size) / stride + 1 outputs, none when n < size ({height}×{width} \
                 → {out_h}×{out_w} here)"
            )),
        )
    }

    fn check_output(&mut self, layers: &[FlatLayer], input: &ir::Input, shape: Option<ir::Shape>) {
        let Some(last) = layers.last() else { return };
        if self.quiet_shape {
            return;
        }
        if let Some(image @ ir::Shape::Image { .. }) = shape {
            self.diags.push(
                Diag::error(
                    "check::output_is_image",
                    format!("the network ends with an image of shape {image}"),
                )
                .with_label(last.span, format!("outputs (None, {})", dims(image)))
                .with_help(format!(
                    "end with `global_avg_pool` (or `flatten`), then `dense {} {{ activation: \
                     softmax }}`",
                    input.classes
                ))
                .with_note("cross-entropy compares one probability per class with each label, so the output must be a vector of one value per class"),
            );
            return;
        }
        let softmax_last = matches!(last.kind, LayerKindName::Dense | LayerKindName::Activation)
            && last.activation == ActivationSpec::Softmax;
        if !softmax_last {
            let label = match last.kind {
                LayerKindName::Dense => format!("its activation is `{}`", last.activation.name()),
                _ => format!("the last layer is `{}`", last.kind.name()),
            };
            self.diags.push(
                Diag::error("check::output_not_softmax", "cross-entropy needs a softmax output layer")
                    .with_label(last.span, label)
                    .with_help(format!("end the network with `dense {} {{ activation: softmax }}`", input.classes))
                    .with_note("the loss compares predicted class probabilities with the labels; softmax is what turns the last layer's outputs into probabilities"),
            );
        }
        let Some(ir::Shape::Flat(width)) = shape else {
            return;
        };
        let width = width as u64;
        if width < input.classes as u64 {
            self.diags.push(
                Diag::error(
                    "check::output_too_narrow",
                    format!(
                        "the output has {width} units but {} has {} classes",
                        input.dataset.name(),
                        input.classes
                    ),
                )
                .with_label(last.span, format!("{width} units"))
                .with_help(format!(
                    "the last dense layer needs {} units, one per class",
                    input.classes
                )),
            );
        } else if width > input.classes as u64 {
            self.lint(
                "output_width",
                format!(
                    "the output has {width} units but {} has {} classes",
                    input.dataset.name(),
                    input.classes
                ),
                last.span,
                &format!("{width} units"),
                &format!("use {} units, one per class", input.classes),
                "the extra units never see a label: they only learn to predict probability 0",
            );
        }
    }

    // ----- training and evaluation ----------------------------------------------------------

    fn train(&mut self, spec: &Spec) -> Option<ir::TrainConfig> {
        let Some(t) = &spec.train else {
            self.missing(
                "train",
                "add a `train { optimizer: nadam { lr: 5e-5 }, epochs: 100 }` block",
            );
            return None;
        };
        self.check_u64(&t.batch, "batch size", 1, MAX_BATCH);
        self.check_u64(&t.epochs, "number of epochs", 1, MAX_EPOCHS);
        self.check_u64(&t.validation, "validation size", 0, CIFAR10_TRAIN - 1);
        let batch = t.batch.as_ref().map_or(32, |b| b.value.clamp(1, MAX_BATCH));
        let validation = t
            .validation
            .as_ref()
            .map_or(5_000, |v| v.value.min(CIFAR10_TRAIN - 1));
        if let Some(b) = &t.batch {
            if CIFAR10_TRAIN - validation < b.value && b.value <= MAX_BATCH {
                self.diags.push(
                    Diag::error("check::out_of_range", format!("a batch of {} is larger than the {} training examples left after validation", b.value, CIFAR10_TRAIN - validation))
                        .with_label(b.span, "too large")
                        .with_help("use a smaller batch or a smaller validation set"),
                );
            }
        }
        let Some(opt) = &t.optimizer else {
            if t.incomplete {
                return None;
            }
            self.diags.push(
                Diag::error(
                    "check::missing_value",
                    "the `train` block has no `optimizer`",
                )
                .with_label(t.span, "train with what?")
                .with_help("add `optimizer: nadam { lr: 5e-5 }`"),
            );
            return None;
        };
        let Some(epochs) = &t.epochs else {
            if t.incomplete {
                return None;
            }
            self.diags.push(
                Diag::error("check::missing_value", "the `train` block has no `epochs`")
                    .with_label(t.span, "train for how long?")
                    .with_help("add `epochs: 100` (early stopping may end it sooner)"),
            );
            return None;
        };
        let optimizer = self.optimizer(&opt.value);
        let needs_validation = t.early_stopping.as_ref().map(|e| e.span).into_iter().chain(
            t.schedule
                .as_ref()
                .filter(|s| matches!(s.value, ScheduleSpec::ReduceOnPlateau { .. }))
                .map(|s| s.span),
        );
        if validation == 0 {
            for span in needs_validation {
                self.diags.push(
                    Diag::error(
                        "check::needs_validation",
                        "this needs a validation set, and `validation` is 0",
                    )
                    .with_label(span, "monitors validation metrics")
                    .with_help("set `validation: 5000`"),
                );
            }
        }
        let early_stopping = t.early_stopping.as_ref().map(|e| {
            let s = &e.value;
            self.check_f64(&s.min_delta, "`min_delta`", |x| x >= 0.0, "at least 0");
            self.check_u64(&s.patience, "`patience`", 0, MAX_EPOCHS);
            ir::EarlyStopping {
                monitor: match s.monitor.as_ref().map(|m| m.value.as_str()) {
                    Some("val_accuracy") => ir::Monitor::ValAccuracy,
                    _ => ir::Monitor::ValLoss,
                },
                patience: s.patience.as_ref().map_or(10, |p| p.value.min(MAX_EPOCHS)) as usize,
                min_delta: s.min_delta.as_ref().map_or(0.0, |m| m.value) as f32,
                restore_best: s.restore_best.as_ref().is_none_or(|r| r.value),
            }
        });
        let augment = t.augment.as_ref().map_or(ir::Augment::default(), |a| {
            let a = &a.value;
            self.check_u64(&a.crop, "the crop padding", 0, MAX_CROP);
            ir::Augment {
                crop: a.crop.as_ref().map_or(0, |c| c.value.min(MAX_CROP)) as u32,
                flip_horizontal: a.flip.as_ref().is_some_and(|f| f.value == "horizontal"),
            }
        });
        let schedule = match &t.schedule {
            None => ir::Schedule::Constant,
            Some(s) => self.schedule(s, optimizer.as_ref().map_or(1e-3, |o| o.lr)),
        };
        Some(ir::TrainConfig {
            optimizer: optimizer?,
            schedule,
            batch: batch as usize,
            epochs: epochs.value.clamp(1, MAX_EPOCHS) as usize,
            validation: validation as usize,
            early_stopping,
            augment,
            seed: t.seed.as_ref().map_or(42, |s| s.value),
        })
    }

    fn optimizer(&mut self, o: &crate::ast::OptimizerSpec) -> Option<ir::Optimizer> {
        let unit = |x: f64| (0.0..1.0).contains(&x);
        self.check_f64(
            &o.lr,
            "learning rate",
            |x| x > 0.0 && x <= 10.0,
            "above 0 and at most 10",
        );
        self.check_f64(&o.momentum, "`momentum`", unit, "in [0, 1)");
        self.check_f64(&o.beta_1, "`beta_1`", unit, "in [0, 1)");
        self.check_f64(&o.beta_2, "`beta_2`", unit, "in [0, 1)");
        self.check_f64(&o.rho, "`rho`", unit, "in [0, 1)");
        self.check_f64(&o.epsilon, "`epsilon`", |x| x > 0.0, "above 0");
        self.check_f64(
            &o.weight_decay,
            "`weight_decay`",
            |x| x >= 0.0,
            "at least 0",
        );
        self.check_f64(
            &o.initial_accumulator,
            "`initial_accumulator`",
            |x| x >= 0.0,
            "at least 0",
        );
        self.check_f64(&o.clipnorm, "`clipnorm`", |x| x > 0.0, "above 0");
        let f = |v: &Option<Spanned<f64>>, d: f32| v.as_ref().map_or(d, |v| v.value as f32);
        let b = |v: &Option<Spanned<bool>>| v.as_ref().is_some_and(|v| v.value);
        let (beta_1, beta_2, epsilon) =
            (f(&o.beta_1, 0.9), f(&o.beta_2, 0.999), f(&o.epsilon, 1e-7));
        let (kind, default_lr) = match o.name.value.as_str() {
            "sgd" => (
                ir::OptimizerKind::Sgd {
                    momentum: f(&o.momentum, 0.0),
                    nesterov: b(&o.nesterov),
                },
                0.01,
            ),
            "adam" => (
                ir::OptimizerKind::Adam {
                    beta_1,
                    beta_2,
                    epsilon,
                },
                1e-3,
            ),
            "nadam" => (
                ir::OptimizerKind::Nadam {
                    beta_1,
                    beta_2,
                    epsilon,
                },
                1e-3,
            ),
            "adamw" => (
                ir::OptimizerKind::AdamW {
                    beta_1,
                    beta_2,
                    epsilon,
                    weight_decay: f(&o.weight_decay, 0.004),
                },
                1e-3,
            ),
            "rmsprop" => (
                ir::OptimizerKind::RmsProp {
                    rho: f(&o.rho, 0.9),
                    momentum: f(&o.momentum, 0.0),
                    epsilon,
                    centered: b(&o.centered),
                },
                1e-3,
            ),
            _ => (
                ir::OptimizerKind::Adagrad {
                    initial_accumulator: f(&o.initial_accumulator, 0.1),
                    epsilon,
                },
                1e-3,
            ),
        };
        Some(ir::Optimizer {
            kind,
            lr: f(&o.lr, default_lr),
            clipnorm: o.clipnorm.as_ref().map(|c| c.value as f32),
        })
    }

    fn schedule(&mut self, s: &Spanned<ScheduleSpec>, lr: f32) -> ir::Schedule {
        match &s.value {
            ScheduleSpec::Constant => ir::Schedule::Constant,
            ScheduleSpec::ExponentialDecay {
                rate,
                every,
                staircase,
            } => {
                self.check_f64(
                    &Some(rate.clone()),
                    "decay `rate`",
                    |x| x > 0.0 && x <= 1.0,
                    "in (0, 1]",
                );
                self.check_f64(
                    &Some(every.clone()),
                    "decay `every` (epochs)",
                    |x| x > 0.0,
                    "above 0",
                );
                ir::Schedule::ExponentialDecay {
                    rate: rate.value as f32,
                    every: every.value as f32,
                    staircase: *staircase,
                }
            }
            ScheduleSpec::PiecewiseConstant { boundaries, values } => {
                if boundaries.value.windows(2).any(|w| w[0] >= w[1]) {
                    self.diags.push(
                        Diag::error("check::out_of_range", "schedule boundaries must increase")
                            .with_label(boundaries.span, "not strictly increasing")
                            .with_help(
                                "list the epochs where the rate changes in increasing order",
                            ),
                    );
                }
                if values.value.len() != boundaries.value.len() + 1 {
                    self.diags.push(
                        Diag::error(
                            "check::out_of_range",
                            format!(
                                "{} boundaries need {} values, found {}",
                                boundaries.value.len(),
                                boundaries.value.len() + 1,
                                values.value.len()
                            ),
                        )
                        .with_label(values.span, format!("{} values", values.value.len()))
                        .with_label(
                            boundaries.span,
                            format!("{} boundaries", boundaries.value.len()),
                        )
                        .with_help("give one rate before the first boundary and one after each"),
                    );
                }
                if values.value.iter().any(|&v| v <= 0.0 || v > 10.0) {
                    self.range_error(
                        values.span,
                        "every learning rate",
                        "a value outside",
                        "above 0 and at most 10",
                    );
                }
                ir::Schedule::PiecewiseConstant {
                    boundaries: boundaries.value.iter().map(|&b| b as usize).collect(),
                    values: values.value.iter().map(|&v| v as f32).collect(),
                }
            }
            ScheduleSpec::OneCycle {
                max_lr,
                start_lr,
                end_lr,
                final_fraction,
            } => {
                for (v, what) in [
                    (max_lr, "`max_lr`"),
                    (start_lr, "`start_lr`"),
                    (end_lr, "`end_lr`"),
                ] {
                    self.check_f64(v, what, |x| x > 0.0 && x <= 10.0, "above 0 and at most 10");
                }
                if let (Some(start), Some(max)) = (start_lr, max_lr) {
                    if start.value >= max.value {
                        self.diags.push(
                            Diag::error("check::out_of_range", "1cycle must start below its peak")
                                .with_label(start.span, format!("starts at {}", start.value))
                                .with_label(max.span, format!("peaks at {}", max.value))
                                .with_help("make `start_lr` smaller than `max_lr` (by default it is a tenth of it)"),
                        );
                    }
                }
                self.check_f64(
                    final_fraction,
                    "`final_fraction`",
                    |x| x > 0.0 && x < 1.0,
                    "in (0, 1)",
                );
                let max = max_lr.as_ref().map_or(lr, |v| v.value as f32);
                let start = start_lr.as_ref().map_or(max / 10.0, |v| v.value as f32);
                ir::Schedule::OneCycle {
                    max_lr: max,
                    start_lr: start,
                    end_lr: end_lr.as_ref().map_or(start / 1000.0, |v| v.value as f32),
                    final_fraction: final_fraction.as_ref().map_or(0.1, |v| v.value as f32),
                }
            }
            ScheduleSpec::ReduceOnPlateau {
                factor,
                patience,
                min_lr,
            } => {
                self.check_f64(factor, "`factor`", |x| x > 0.0 && x < 1.0, "in (0, 1)");
                self.check_f64(min_lr, "`min_lr`", |x| x >= 0.0, "at least 0");
                self.check_u64(patience, "`patience`", 0, MAX_EPOCHS);
                ir::Schedule::ReduceOnPlateau {
                    factor: factor.as_ref().map_or(0.1, |v| v.value as f32),
                    patience: patience.as_ref().map_or(10, |v| v.value.min(MAX_EPOCHS)) as usize,
                    min_lr: min_lr.as_ref().map_or(0.0, |v| v.value as f32),
                }
            }
        }
    }

    fn eval(&mut self, spec: &Spec) -> ir::EvalConfig {
        let Some(e) = &spec.evaluate else {
            return ir::EvalConfig::default();
        };
        self.check_u64(
            &e.mc_dropout,
            "number of MC Dropout samples",
            1,
            MAX_MC_SAMPLES,
        );
        if let Some(p) = &e.prune {
            self.check_f64(
                &Some(p.value.sparsity.clone()),
                "target sparsity",
                |x| (0.0..1.0).contains(&x),
                "in [0, 1)",
            );
        }
        ir::EvalConfig {
            mc_dropout: e
                .mc_dropout
                .as_ref()
                .map(|m| m.value.clamp(1, MAX_MC_SAMPLES) as usize),
            prune: e.prune.as_ref().map(|p| ir::Prune {
                sparsity: p.value.sparsity.value as f32,
            }),
        }
    }

    // ----- lints ----------------------------------------------------------------------------

    fn lints(
        &mut self,
        spec: &Spec,
        layers: &[FlatLayer],
        input: &ir::Input,
        train: &ir::TrainConfig,
        eval: &ir::EvalConfig,
    ) {
        let denses: Vec<&FlatLayer> = layers
            .iter()
            .filter(|l| l.kind == LayerKindName::Dense)
            .collect();
        let kernels = layers
            .iter()
            .filter(|l| matches!(l.kind, LayerKindName::Dense | LayerKindName::Conv2d));
        for l in kernels {
            if let Some(init) = &l.props.init {
                if init.value.is_constant() {
                    self.lint(
                        "symmetric_init",
                        format!("every weight of `{}` starts at the same value", l.name),
                        init.span,
                        &format!("`{}` gives all weights one value", init.value.name()),
                        "use a random initializer such as `he_normal` (ReLU/ELU), `lecun_normal` (SELU) or `glorot_uniform`",
                        "neurons of a layer that start identical receive identical gradients and stay identical forever: the layer behaves like a single neuron. A constant bias is fine; the kernel must be random to break the symmetry",
                    );
                }
            }
        }
        self.lint_optimizer(spec);
        self.lint_selu(layers, input);
        self.lint_flatten(layers, input);
        for (i, l) in layers.iter().enumerate() {
            if l.activation == ActivationSpec::Softmax
                && i + 1 != layers.len()
                && matches!(l.kind, LayerKindName::Dense | LayerKindName::Activation)
            {
                let span = l.props.activation.as_ref().map_or(l.span, |a| a.span);
                self.lint("hidden_softmax", format!("softmax on `{}`, which is not the output layer", l.name), span, "softmax in a hidden layer", "use `elu`, `relu` or `selu` in hidden layers", "softmax squashes a layer into probabilities that sum to 1; in a hidden layer it couples all units and starves most of them of gradient");
            }
            if matches!(l.kind, LayerKindName::Dense | LayerKindName::Conv2d)
                && l.activation == ActivationSpec::Linear
                && l.props.use_bias.as_ref().is_none_or(|b| b.value)
            {
                if let Some(next) = layers
                    .get(i + 1)
                    .filter(|n| n.kind == LayerKindName::BatchNorm)
                {
                    self.lint("redundant_bias", format!("the bias of `{}` is cancelled by `{}`", l.name, next.name), l.span, "adds a bias", &format!("write `use_bias: false` on the {} layer", l.kind.name()), "batch normalization subtracts the batch mean, which removes any bias added just before it; its own `beta` plays that role");
                }
            }
        }
        let dropouts: Vec<(&FlatLayer, f64)> = layers
            .iter()
            .filter(|l| matches!(l.kind, LayerKindName::Dropout | LayerKindName::AlphaDropout))
            .filter_map(|l| l.props.rate.as_ref().map(|r| (l, r.value)))
            .collect();
        for (l, rate) in &dropouts {
            if *rate >= 0.8 {
                self.lint("heavy_dropout", format!("`{}` drops {:.0}% of its inputs", l.name, rate * 100.0), l.span, "rate ≥ 0.8", "use a rate between 0.1 and 0.5", "a layer that sees only a fifth of its inputs at each step learns very slowly; dropout rates of 10-50% are the useful range");
            }
        }
        if dropouts.len() >= 3 && dropouts.iter().all(|(_, r)| *r >= 0.5) {
            let (first, _) = dropouts[0];
            self.lint("heavy_dropout", format!("all {} dropout layers drop half or more of their inputs", dropouts.len()), first.span, "rate ≥ 0.5 on every layer", "lower the rates (10-30% is typical in deep nets), or keep dropout on the last hidden layers only", "stacked heavy dropout makes the network underfit: the signal that reaches the output is mostly noise");
        }
        if let Some(mc) = spec.evaluate.as_ref().and_then(|e| e.mc_dropout.as_ref()) {
            if dropouts.is_empty() && eval.mc_dropout.is_some() {
                self.lint("mc_dropout_without_dropout", "MC Dropout on a model without dropout", mc.span, "every sample would be identical", "add a `dropout` or `alpha_dropout` layer, or remove `mc_dropout`", "MC Dropout averages predictions with dropout active; without dropout layers each of the samples is the same deterministic pass, so it costs N times the inference for nothing");
            }
        }
        let hidden = denses.len().saturating_sub(1);
        if hidden >= 10 {
            if let Some(l) = denses
                .iter()
                .take(hidden)
                .find(|l| l.activation.saturates())
            {
                let span = l.props.activation.as_ref().map_or(l.span, |a| a.span);
                self.lint("saturating_deep", format!("`{}` in a stack of {hidden} hidden layers", l.activation.name()), span, "saturates", "use `elu` or `relu` with `he_normal`, or `selu` with `lecun_normal`", "sigmoid and tanh flatten out for large inputs; their small derivatives multiply layer after layer and the gradients vanish before reaching the first layers");
            }
        }
        if let (Some(es), Some(t)) = (&train.early_stopping, &spec.train) {
            if es.patience >= train.epochs {
                if let Some(e) = &t.early_stopping {
                    self.lint("ineffective_early_stopping", format!("patience {} is not less than the {} epochs", es.patience, train.epochs), e.span, "can never stop early", "lower `patience` or raise `epochs`", "early stopping waits `patience` epochs without improvement before stopping; with this many epochs it never gets the chance");
                }
            }
        }
    }

    /// `heavy_flatten`: a dense layer reading a flattened feature map (through element-wise
    /// layers at most) with more than `HEAVY_FLATTEN_WEIGHTS` weights.
    fn lint_flatten(&mut self, layers: &[FlatLayer], input: &ir::Input) {
        let mut shape = input.shape;
        let mut flattened: Option<ir::Shape> = None;
        for l in layers {
            match l.kind {
                LayerKindName::Flatten => flattened = Some(shape),
                LayerKindName::Dense => {
                    let weights = (shape.len() as u64).saturating_mul(l.units);
                    if let Some(map) = flattened.filter(|_| weights > HEAVY_FLATTEN_WEIGHTS) {
                        let (h, w, c) = map.image().unwrap_or((1, 1, map.len()));
                        let weights = thousands(weights as usize);
                        self.lint(
                            "heavy_flatten",
                            format!("`{}` has {weights} weights on a flattened {h}×{w}×{c} feature map", l.name),
                            l.span,
                            &format!("{weights} weights"),
                            "shrink the map first (more pooling, or `strides: 2`), or replace `flatten` with `global_avg_pool`",
                            "flattening keeps every pixel of every channel as an input of its own, so the dense layer after it holds most of the model's weights, overfits easily and learns where a feature is rather than whether it is there; global average pooling keeps one mean per channel",
                        );
                    }
                    flattened = None;
                }
                LayerKindName::BatchNorm
                | LayerKindName::Dropout
                | LayerKindName::AlphaDropout
                | LayerKindName::Activation => {}
                _ => flattened = None,
            }
            shape = l.output_shape(shape);
        }
    }

    fn lint_optimizer(&mut self, spec: &Spec) {
        let Some(o) = spec.train.as_ref().and_then(|t| t.optimizer.as_ref()) else {
            return;
        };
        let o = &o.value;
        let momentum = o.momentum.as_ref().filter(|m| m.value >= 0.99);
        let beta_1 = o.beta_1.as_ref().filter(|b| b.value >= 0.99);
        for (v, what) in [(momentum, "momentum"), (beta_1, "beta_1")] {
            if let Some(v) = v {
                self.lint("momentum_close_to_one", format!("{what} {} is too close to 1", v.value), v.span, "≥ 0.99", "use 0.9, the usual value", "with momentum this high, the velocity remembers almost every past gradient: the optimizer overshoots the minimum and oscillates around it, or diverges");
            }
        }
        if o.name.value == "sgd"
            && o.nesterov.as_ref().is_some_and(|n| n.value)
            && o.momentum.as_ref().is_none_or(|m| m.value == 0.0)
        {
            let span = o.nesterov.as_ref().map_or(o.name.span, |n| n.span);
            self.lint("nesterov_without_momentum", "Nesterov momentum with momentum 0 does nothing", span, "has no effect", "set `momentum: 0.9`", "Nesterov's method looks ahead along the momentum; without momentum there is nothing to look along");
        }
    }

    fn lint_selu(&mut self, layers: &[FlatLayer], input: &ir::Input) {
        let Some(first_selu) = layers.iter().find(|l| l.activation == ActivationSpec::Selu) else {
            return;
        };
        let note = "SELU keeps activations at mean 0 and variance 1 through a deep stack only if the inputs are standardized, every hidden layer is a plain dense SELU layer initialized with LeCun normal, and nothing else (batch norm, regular dropout, l1/l2 or max-norm) disturbs the statistics";
        let selu_span = first_selu
            .props
            .activation
            .as_ref()
            .map_or(first_selu.span, |a| a.span);
        if input.preprocess != ir::Preprocess::Standardize {
            self.lint(
                "selu_self_normalization",
                "SELU needs standardized inputs",
                selu_span,
                "SELU used here",
                "write `input cifar10 { standardize }`",
                note,
            );
        }
        // The output layer is the last dense layer (a standalone softmax may follow it).
        let last = layers
            .iter()
            .rposition(|l| l.kind == LayerKindName::Dense)
            .unwrap_or(0);
        for (i, l) in layers.iter().enumerate() {
            match l.kind {
                LayerKindName::Dense if i < last => {
                    if l.activation == ActivationSpec::Selu {
                        if let Some(init) = l
                            .props
                            .init
                            .as_ref()
                            .filter(|i| i.value != InitSpec::LecunNormal)
                        {
                            self.lint(
                                "selu_self_normalization",
                                format!("SELU with `{}` initialization", init.value.name()),
                                init.span,
                                "not LeCun normal",
                                "use `init: lecun_normal`",
                                note,
                            );
                        } else if l.props.init.is_none() {
                            self.lint(
                                "selu_self_normalization",
                                "SELU with the default `glorot_uniform` initialization",
                                l.span,
                                "not LeCun normal",
                                "use `init: lecun_normal`",
                                note,
                            );
                        }
                    } else {
                        let span = l.props.activation.as_ref().map_or(l.span, |a| a.span);
                        self.lint(
                            "selu_self_normalization",
                            format!("`{}` mixed into a SELU network", l.activation.name()),
                            span,
                            "not SELU",
                            "use `activation: selu` in every hidden layer",
                            note,
                        );
                    }
                    for (v, what) in [
                        (&l.props.l1, "l1"),
                        (&l.props.l2, "l2"),
                        (&l.props.max_norm, "max_norm"),
                    ] {
                        if let Some(v) = v {
                            self.lint(
                                "selu_self_normalization",
                                format!("`{what}` in a SELU network"),
                                v.span,
                                "disturbs self-normalization",
                                "drop it and regularize with `alpha_dropout`",
                                note,
                            );
                        }
                    }
                }
                LayerKindName::BatchNorm => self.lint(
                    "selu_self_normalization",
                    "batch normalization in a SELU network",
                    l.span,
                    "not needed with SELU",
                    "remove it: SELU normalizes by itself",
                    note,
                ),
                LayerKindName::Dropout => self.lint(
                    "selu_self_normalization",
                    "regular dropout in a SELU network",
                    l.span,
                    "breaks mean and variance",
                    "use `alpha_dropout` instead",
                    note,
                ),
                LayerKindName::Activation if i < last => self.lint(
                    "selu_self_normalization",
                    "a separate activation layer in a SELU network",
                    l.span,
                    "not a plain dense layer",
                    "put the activation on the dense layers",
                    note,
                ),
                _ => {}
            }
        }
    }

    fn apply_allow(&mut self, spec: &Spec) {
        let names: Vec<&str> = LINTS.iter().map(|(n, _)| *n).collect();
        for a in &spec.allow {
            if !names.contains(&a.value.as_str()) {
                let diag =
                    Diag::error("check::unknown_lint", format!("unknown lint `{}`", a.value));
                let diag = match did_you_mean(&a.value, names.iter().copied()) {
                    Some(s) => diag.with_label(a.span, format!("did you mean `{s}`?")),
                    None => diag.with_label(a.span, "not a lint"),
                };
                self.diags
                    .push(diag.with_help(format!("lints are {}", one_of(&names))));
            }
        }
        self.diags.retain(|d| {
            d.code
                .strip_prefix("lint::")
                .is_none_or(|name| !spec.allow.iter().any(|a| a.value == name))
        });
    }
}

/// Layers after expanding repeats, saturating instead of overflowing.
fn count_layers(stmts: &[LayerStmt]) -> u64 {
    stmts.iter().fold(0u64, |acc, s| {
        acc.saturating_add(match s {
            LayerStmt::Layer(_) => 1,
            LayerStmt::Repeat(r) => r.count.value.saturating_mul(count_layers(&r.body)),
        })
    })
}

/// Refuses a program whose training would need more than `MAX_TRAINING_MEMORY`, pointing at
/// the batch size (or the `train` block when the batch is the default), with the estimate and
/// the largest batch that fits.
pub fn memory(spec: &Spec, program: &ir::Program, diags: &mut Vec<Diag>) {
    let m = program.training_memory();
    if m.total() <= MAX_TRAINING_MEMORY {
        return;
    }
    let size = |b: u64| crate::print::bytes(usize::try_from(b).unwrap_or(usize::MAX));
    let batch = program.train.batch;
    let fixed = m.parameters.saturating_add(m.optimizer);
    let fits = MAX_TRAINING_MEMORY.saturating_sub(fixed) / m.per_row.max(1);
    let (span, label) = match &spec.train {
        Some(t) => match &t.batch {
            Some(b) => (
                b.span,
                format!("{} a row, {} a batch", size(m.per_row), size(m.activations)),
            ),
            None => (t.span, format!("at the default batch of {batch}")),
        },
        None => (Span::default(), String::new()),
    };
    let help = if fits >= 1 {
        format!(
            "use a batch of at most {fits}, or fewer or narrower layers (each value of a batch \
             is kept, with its gradient, for the backward pass)"
        )
    } else {
        "use fewer or narrower layers: the parameters and the optimizer's state alone exceed \
         the limit"
            .to_string()
    };
    diags.push(
        Diag::error(
            "check::too_much_memory",
            format!(
                "training this model needs about {} of memory; the limit is {}",
                size(m.total()),
                size(MAX_TRAINING_MEMORY)
            ),
        )
        .with_label(span, label)
        .with_help(help)
        .with_note(format!(
            "parameters and gradients {}, optimizer state {}, values and gradients of a batch \
             of {batch} {}",
            size(m.parameters),
            size(m.optimizer),
            size(m.activations)
        )),
    );
}
