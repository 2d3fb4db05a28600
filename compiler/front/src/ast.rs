//! The typed AST: what a spec says, with a span on everything a diagnostic may point at.
//!
//! `build` turns the generic syntax tree into these types, reporting unknown names (with "did
//! you mean"), values of the wrong type, duplicates and misplaced entries, all at once. It checks
//! only what a single entry can tell; cross-entry rules, limits and lints belong to `check`.
//! Nothing here has defaults applied: an absent property is `None`.

use crate::syntax::{Block, Entry, EntryKind, Value, ValueKind};
use netc_diagnostics::{did_you_mean, one_of, Diag, Span};

#[derive(Clone, Debug, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(value: T, span: Span) -> Self {
        Spanned { value, span }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Spec {
    pub model: Option<Spanned<String>>,
    pub input: Option<InputDecl>,
    pub defaults: Vec<DefaultsDecl>,
    pub layers: Vec<LayerStmt>,
    pub train: Option<TrainDecl>,
    pub evaluate: Option<EvalDecl>,
    /// Lints switched off with `allow name...`.
    pub allow: Vec<Spanned<String>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InputDecl {
    pub dataset: Spanned<String>,
    pub standardize: Option<Span>,
    /// `standardize { per: feature|channel }`: over which pixels the statistics are taken.
    pub standardize_per: Option<Spanned<String>>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKindName {
    Dense,
    BatchNorm,
    Dropout,
    AlphaDropout,
    Activation,
    Conv2d,
    MaxPool,
    AvgPool,
    GlobalAvgPool,
    Flatten,
}

impl LayerKindName {
    pub const ALL: [(&'static str, LayerKindName); 10] = [
        ("dense", LayerKindName::Dense),
        ("batch_norm", LayerKindName::BatchNorm),
        ("dropout", LayerKindName::Dropout),
        ("alpha_dropout", LayerKindName::AlphaDropout),
        ("activation", LayerKindName::Activation),
        ("conv2d", LayerKindName::Conv2d),
        ("max_pool", LayerKindName::MaxPool),
        ("avg_pool", LayerKindName::AvgPool),
        ("global_avg_pool", LayerKindName::GlobalAvgPool),
        ("flatten", LayerKindName::Flatten),
    ];

    /// Number of layer kinds: the length of per-kind counters.
    pub const COUNT: usize = Self::ALL.len();

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("?", |(n, _)| n)
    }

    /// The kind's position in `ALL`, which indexes per-kind counters.
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|(_, k)| *k == self).unwrap_or(0)
    }

    /// Properties a layer of this kind (or its `defaults`) accepts.
    pub fn properties(self) -> &'static [&'static str] {
        match self {
            LayerKindName::Dense => &[
                "activation",
                "init",
                "bias_init",
                "use_bias",
                "l1",
                "l2",
                "max_norm",
            ],
            LayerKindName::Conv2d => &[
                "size",
                "strides",
                "padding",
                "activation",
                "init",
                "bias_init",
                "use_bias",
                "l1",
                "l2",
                "max_norm",
            ],
            LayerKindName::MaxPool | LayerKindName::AvgPool => &["size", "strides", "padding"],
            LayerKindName::BatchNorm => &["momentum", "epsilon"],
            LayerKindName::Dropout | LayerKindName::AlphaDropout => &["rate"],
            LayerKindName::Activation | LayerKindName::GlobalAvgPool | LayerKindName::Flatten => {
                &[]
            }
        }
    }

    /// The layers that only read images; a spec with one of them reads its input as an image.
    pub fn reads_image(self) -> bool {
        matches!(
            self,
            LayerKindName::Conv2d
                | LayerKindName::MaxPool
                | LayerKindName::AvgPool
                | LayerKindName::GlobalAvgPool
                | LayerKindName::Flatten
        )
    }

    /// The layers that slide a window over an image (`size`, `strides`, `padding`).
    pub fn has_window(self) -> bool {
        matches!(
            self,
            LayerKindName::Conv2d | LayerKindName::MaxPool | LayerKindName::AvgPool
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DefaultsDecl {
    pub kind: Spanned<LayerKindName>,
    pub props: LayerProps,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum LayerStmt {
    Layer(Box<LayerDecl>),
    Repeat(RepeatDecl),
}

#[derive(Clone, Debug, PartialEq)]
pub struct RepeatDecl {
    pub count: Spanned<u64>,
    pub body: Vec<LayerStmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerDecl {
    pub kind: Spanned<LayerKindName>,
    /// Units of a dense layer, filters of a `conv2d`.
    pub units: Option<Spanned<u64>>,
    /// The activation of a standalone `activation` layer.
    pub activation: Option<Spanned<ActivationSpec>>,
    pub props: LayerProps,
    pub span: Span,
}

/// Properties of a layer or of a `defaults` block; every one optional.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerProps {
    pub activation: Option<Spanned<ActivationSpec>>,
    pub init: Option<Spanned<InitSpec>>,
    pub bias_init: Option<Spanned<InitSpec>>,
    pub use_bias: Option<Spanned<bool>>,
    pub l1: Option<Spanned<f64>>,
    pub l2: Option<Spanned<f64>>,
    pub max_norm: Option<Spanned<f64>>,
    pub momentum: Option<Spanned<f64>>,
    pub epsilon: Option<Spanned<f64>>,
    pub rate: Option<Spanned<f64>>,
    /// A window's `[height, width]` (one number stands for both).
    pub size: Option<Spanned<[u64; 2]>>,
    /// Pixels between windows, `[down, across]` (one number stands for both).
    pub strides: Option<Spanned<[u64; 2]>>,
    pub padding: Option<Spanned<PaddingSpec>>,
}

impl LayerProps {
    /// `self` with every absent property taken from `defaults`.
    pub fn or(&self, defaults: &LayerProps) -> LayerProps {
        LayerProps {
            activation: self.activation.clone().or(defaults.activation.clone()),
            init: self.init.clone().or(defaults.init.clone()),
            bias_init: self.bias_init.clone().or(defaults.bias_init.clone()),
            use_bias: self.use_bias.clone().or(defaults.use_bias.clone()),
            l1: self.l1.clone().or(defaults.l1.clone()),
            l2: self.l2.clone().or(defaults.l2.clone()),
            max_norm: self.max_norm.clone().or(defaults.max_norm.clone()),
            momentum: self.momentum.clone().or(defaults.momentum.clone()),
            epsilon: self.epsilon.clone().or(defaults.epsilon.clone()),
            rate: self.rate.clone().or(defaults.rate.clone()),
            size: self.size.clone().or(defaults.size.clone()),
            strides: self.strides.clone().or(defaults.strides.clone()),
            padding: self.padding.clone().or(defaults.padding.clone()),
        }
    }
}

/// How a window treats the image's border (Keras' `padding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaddingSpec {
    Valid,
    Same,
}

impl PaddingSpec {
    pub const NAMES: [&'static str; 2] = ["valid", "same"];

    pub fn name(self) -> &'static str {
        match self {
            PaddingSpec::Valid => "valid",
            PaddingSpec::Same => "same",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActivationSpec {
    Linear,
    Relu,
    LeakyRelu { alpha: f64 },
    Prelu,
    Elu { alpha: f64 },
    Selu,
    Gelu,
    Swish,
    Tanh,
    Sigmoid,
    Softmax,
}

impl ActivationSpec {
    pub const NAMES: [&'static str; 13] = [
        "linear",
        "relu",
        "leaky_relu",
        "prelu",
        "elu",
        "selu",
        "gelu",
        "swish",
        "silu",
        "tanh",
        "sigmoid",
        "logistic",
        "softmax",
    ];

    pub fn name(self) -> &'static str {
        match self {
            ActivationSpec::Linear => "linear",
            ActivationSpec::Relu => "relu",
            ActivationSpec::LeakyRelu { .. } => "leaky_relu",
            ActivationSpec::Prelu => "prelu",
            ActivationSpec::Elu { .. } => "elu",
            ActivationSpec::Selu => "selu",
            ActivationSpec::Gelu => "gelu",
            ActivationSpec::Swish => "swish",
            ActivationSpec::Tanh => "tanh",
            ActivationSpec::Sigmoid => "sigmoid",
            ActivationSpec::Softmax => "softmax",
        }
    }

    /// Saturating activations whose gradients vanish in deep stacks.
    pub fn saturates(self) -> bool {
        matches!(self, ActivationSpec::Tanh | ActivationSpec::Sigmoid)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InitSpec {
    Zeros,
    Ones,
    Constant { value: f64 },
    Normal { mean: f64, stddev: f64 },
    Uniform { min: f64, max: f64 },
    TruncatedNormal { mean: f64, stddev: f64 },
    GlorotNormal,
    GlorotUniform,
    HeNormal,
    HeUniform,
    LecunNormal,
    LecunUniform,
}

impl InitSpec {
    pub const NAMES: [&'static str; 14] = [
        "zeros",
        "ones",
        "constant",
        "normal",
        "uniform",
        "truncated_normal",
        "glorot_normal",
        "glorot_uniform",
        "xavier_normal",
        "xavier_uniform",
        "he_normal",
        "he_uniform",
        "lecun_normal",
        "lecun_uniform",
    ];

    pub fn name(self) -> &'static str {
        match self {
            InitSpec::Zeros => "zeros",
            InitSpec::Ones => "ones",
            InitSpec::Constant { .. } => "constant",
            InitSpec::Normal { .. } => "normal",
            InitSpec::Uniform { .. } => "uniform",
            InitSpec::TruncatedNormal { .. } => "truncated_normal",
            InitSpec::GlorotNormal => "glorot_normal",
            InitSpec::GlorotUniform => "glorot_uniform",
            InitSpec::HeNormal => "he_normal",
            InitSpec::HeUniform => "he_uniform",
            InitSpec::LecunNormal => "lecun_normal",
            InitSpec::LecunUniform => "lecun_uniform",
        }
    }

    /// Gives every weight the same value: a layer initialized so never breaks symmetry.
    pub fn is_constant(self) -> bool {
        matches!(
            self,
            InitSpec::Zeros | InitSpec::Ones | InitSpec::Constant { .. }
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainDecl {
    pub loss: Option<Spanned<String>>,
    pub optimizer: Option<Spanned<OptimizerSpec>>,
    pub schedule: Option<Spanned<ScheduleSpec>>,
    pub batch: Option<Spanned<u64>>,
    pub epochs: Option<Spanned<u64>>,
    pub validation: Option<Spanned<u64>>,
    pub early_stopping: Option<Spanned<EarlyStoppingSpec>>,
    pub augment: Option<Spanned<AugmentSpec>>,
    pub seed: Option<Spanned<u64>>,
    pub span: Span,
    /// Some entry of the block was present but invalid (already reported), so "missing"
    /// errors about this block would only repeat it.
    pub incomplete: bool,
}

pub const OPTIMIZERS: [&str; 6] = ["sgd", "adam", "nadam", "adamw", "rmsprop", "adagrad"];

/// An optimizer and the hyper-parameters the spec sets (absent ones take Keras' defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerSpec {
    pub name: Spanned<String>,
    pub lr: Option<Spanned<f64>>,
    pub momentum: Option<Spanned<f64>>,
    pub nesterov: Option<Spanned<bool>>,
    pub beta_1: Option<Spanned<f64>>,
    pub beta_2: Option<Spanned<f64>>,
    pub epsilon: Option<Spanned<f64>>,
    pub weight_decay: Option<Spanned<f64>>,
    pub rho: Option<Spanned<f64>>,
    pub centered: Option<Spanned<bool>>,
    pub initial_accumulator: Option<Spanned<f64>>,
    pub clipnorm: Option<Spanned<f64>>,
}

impl OptimizerSpec {
    /// Hyper-parameters each optimizer accepts.
    pub fn properties(name: &str) -> &'static [&'static str] {
        match name {
            "sgd" => &["lr", "momentum", "nesterov", "clipnorm"],
            "adam" | "nadam" => &["lr", "beta_1", "beta_2", "epsilon", "clipnorm"],
            "adamw" => &[
                "lr",
                "beta_1",
                "beta_2",
                "epsilon",
                "weight_decay",
                "clipnorm",
            ],
            "rmsprop" => &["lr", "rho", "momentum", "epsilon", "centered", "clipnorm"],
            "adagrad" => &["lr", "initial_accumulator", "epsilon", "clipnorm"],
            _ => &[],
        }
    }
}

pub const SCHEDULES: [&str; 5] = [
    "constant",
    "exponential_decay",
    "piecewise_constant",
    "one_cycle",
    "reduce_on_plateau",
];

#[derive(Clone, Debug, PartialEq)]
pub enum ScheduleSpec {
    Constant,
    ExponentialDecay {
        rate: Spanned<f64>,
        every: Spanned<f64>,
        staircase: bool,
    },
    PiecewiseConstant {
        boundaries: Spanned<Vec<u64>>,
        values: Spanned<Vec<f64>>,
    },
    OneCycle {
        max_lr: Option<Spanned<f64>>,
        start_lr: Option<Spanned<f64>>,
        end_lr: Option<Spanned<f64>>,
        final_fraction: Option<Spanned<f64>>,
    },
    ReduceOnPlateau {
        factor: Option<Spanned<f64>>,
        patience: Option<Spanned<u64>>,
        min_lr: Option<Spanned<f64>>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct EarlyStoppingSpec {
    pub monitor: Option<Spanned<String>>,
    pub patience: Option<Spanned<u64>>,
    pub min_delta: Option<Spanned<f64>>,
    pub restore_best: Option<Spanned<bool>>,
}

/// `augment { crop: P, flip: horizontal|none }`: random changes to the training images.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AugmentSpec {
    /// Zero padding on each side before the random crop.
    pub crop: Option<Spanned<u64>>,
    /// `horizontal` or `none`.
    pub flip: Option<Spanned<String>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalDecl {
    pub mc_dropout: Option<Spanned<u64>>,
    pub prune: Option<Spanned<PruneSpec>>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PruneSpec {
    pub sparsity: Spanned<f64>,
}

/// Builds the typed AST from the syntax tree, adding every problem found to `diags`.
pub fn build(entries: &[Entry], diags: &mut Vec<Diag>) -> Spec {
    let mut b = Builder { diags };
    let mut spec = Spec::default();
    for entry in entries {
        b.top_level(entry, &mut spec);
    }
    spec
}

const TOP_LEVEL: [&str; 7] = [
    "model", "input", "defaults", "repeat", "train", "evaluate", "allow",
];

struct Builder<'d> {
    diags: &'d mut Vec<Diag>,
}

/// The entries of a block, by name, after unknown and duplicate names were reported.
struct Props<'e> {
    entries: Vec<&'e Entry>,
}

impl<'e> Props<'e> {
    fn get(&self, name: &str) -> Option<&'e Entry> {
        self.entries.iter().copied().find(|e| e.name.text == name)
    }
}

impl Builder<'_> {
    fn push(&mut self, diag: Diag) {
        self.diags.push(diag);
    }

    fn top_level(&mut self, entry: &Entry, spec: &mut Spec) {
        let name = entry.name.text.as_str();
        if let Some(kind) = layer_kind(name) {
            if let Some(layer) = self.layer(entry, kind) {
                spec.layers.push(LayerStmt::Layer(Box::new(layer)));
            }
            return;
        }
        match name {
            "model" => {
                self.expect_item(entry);
                if let Some(v) = self.single_item_arg(entry, "a model name, like `model baseline`")
                {
                    if let Some(id) = self.ident_value(v, "a model name") {
                        self.set_once(&mut spec.model, id, entry, "model");
                    }
                }
                self.no_block(entry);
            }
            "input" => {
                let input = self.input(entry);
                if let Some(input) = input {
                    if let Some(prev) = &spec.input {
                        self.duplicate(entry.span, prev.span, "input");
                    } else {
                        spec.input = Some(input);
                    }
                }
            }
            "defaults" => {
                if let Some(d) = self.defaults(entry) {
                    spec.defaults.push(d);
                }
            }
            "repeat" => {
                if let Some(r) = self.repeat(entry) {
                    spec.layers.push(LayerStmt::Repeat(r));
                }
            }
            "train" => {
                let train = self.train(entry);
                if let Some(prev) = &spec.train {
                    self.duplicate(entry.span, prev.span, "train");
                } else {
                    spec.train = Some(train);
                }
            }
            "evaluate" => {
                let eval = self.evaluate(entry);
                if let Some(prev) = &spec.evaluate {
                    self.duplicate(entry.span, prev.span, "evaluate");
                } else {
                    spec.evaluate = Some(eval);
                }
            }
            "allow" => {
                self.expect_item(entry);
                self.no_block(entry);
                if entry.args.is_empty() {
                    self.push(
                        Diag::error("check::missing_value", "`allow` names no lint")
                            .with_label(entry.span, "allow what?")
                            .with_help("write `allow symmetric_init`, naming one or more lints"),
                    );
                }
                for v in &entry.args {
                    if let Some(id) = self.ident_value(v, "a lint name") {
                        spec.allow.push(id);
                    }
                }
            }
            _ => {
                let candidates = TOP_LEVEL
                    .iter()
                    .copied()
                    .chain(LayerKindName::ALL.iter().map(|(n, _)| *n));
                self.unknown(&entry.name.text, entry.name.span, "statement", candidates);
            }
        }
    }

    fn layer_stmt(&mut self, entry: &Entry) -> Option<LayerStmt> {
        let name = entry.name.text.as_str();
        if let Some(kind) = layer_kind(name) {
            return self
                .layer(entry, kind)
                .map(|l| LayerStmt::Layer(Box::new(l)));
        }
        if name == "repeat" {
            return self.repeat(entry).map(LayerStmt::Repeat);
        }
        let candidates = LayerKindName::ALL.iter().map(|(n, _)| *n).chain(["repeat"]);
        self.unknown(name, entry.name.span, "layer", candidates);
        None
    }

    fn repeat(&mut self, entry: &Entry) -> Option<RepeatDecl> {
        self.expect_item(entry);
        let count = self
            .single_item_arg(entry, "a count, like `repeat 20 { dense 100 }`")
            .and_then(|v| self.integer_value(v));
        let Some(block) = &entry.block else {
            self.push(
                Diag::error("check::missing_block", "`repeat` needs a block of layers")
                    .with_label(entry.span, "repeat what?")
                    .with_help("write `repeat 20 { dense 100 }`"),
            );
            return None;
        };
        let body: Vec<LayerStmt> = block
            .entries
            .iter()
            .filter_map(|e| self.layer_stmt(e))
            .collect();
        if block.entries.is_empty() {
            self.push(
                Diag::error("check::missing_block", "`repeat` has no layers to repeat")
                    .with_label(block.span, "empty")
                    .with_help("put the layers to repeat in the block: `repeat 20 { dense 100 }`"),
            );
        }
        Some(RepeatDecl {
            count: count?,
            body,
            span: entry.span,
        })
    }

    fn layer(&mut self, entry: &Entry, kind: LayerKindName) -> Option<LayerDecl> {
        self.expect_item(entry);
        let kind_spanned = Spanned::new(kind, entry.name.span);
        let mut units = None;
        let mut activation = None;
        let mut rate_arg = None;
        let usage = match kind {
            LayerKindName::Dense => "a unit count, like `dense 100`",
            LayerKindName::Conv2d => "a filter count, like `conv2d 32 { size: 3 }`",
            LayerKindName::Dropout => "a rate, like `dropout 0.2`",
            LayerKindName::AlphaDropout => "a rate, like `alpha_dropout 0.1`",
            LayerKindName::Activation => "an activation, like `activation elu`",
            LayerKindName::BatchNorm
            | LayerKindName::MaxPool
            | LayerKindName::AvgPool
            | LayerKindName::GlobalAvgPool
            | LayerKindName::Flatten => "",
        };
        match kind {
            LayerKindName::BatchNorm
            | LayerKindName::MaxPool
            | LayerKindName::AvgPool
            | LayerKindName::GlobalAvgPool
            | LayerKindName::Flatten => {
                if let Some(extra) = entry.args.first() {
                    let help = match kind {
                        LayerKindName::BatchNorm => {
                            "set its options in a block: `batch_norm { momentum: 0.99 }`"
                                .to_string()
                        }
                        LayerKindName::MaxPool | LayerKindName::AvgPool => format!(
                            "set its options in a block: `{} {{ size: 2 }}`",
                            kind.name()
                        ),
                        _ => format!("write `{}` alone", kind.name()),
                    };
                    self.push(
                        Diag::error(
                            "check::unexpected_value",
                            format!("`{}` takes no value", kind.name()),
                        )
                        .with_label(extra.span, "not expected here")
                        .with_help(help),
                    );
                }
            }
            LayerKindName::Dense | LayerKindName::Conv2d => {
                units = self
                    .single_item_arg(entry, usage)
                    .and_then(|v| self.integer_value(v));
                units.as_ref()?;
            }
            LayerKindName::Dropout | LayerKindName::AlphaDropout => {
                // Without a value, the rate may come from a `defaults` block or `{ rate: ... }`.
                // A value that is not a rate was reported; the layer is dropped so the checker
                // does not also call its rate missing.
                if !entry.args.is_empty() {
                    rate_arg = Some(
                        self.single_item_arg(entry, usage)
                            .and_then(|v| self.number_value(v))?,
                    );
                }
            }
            LayerKindName::Activation => {
                let v = self.single_item_arg(entry, usage)?;
                let name = self.ident_value(v, "an activation name")?;
                activation = self.activation_named(&name, entry.block.as_ref());
                let props = self.layer_props(None, kind);
                return Some(LayerDecl {
                    kind: kind_spanned,
                    units,
                    activation,
                    props,
                    span: entry.span,
                });
            }
        }
        let mut props = self.layer_props(entry.block.as_ref(), kind);
        // A `size` that is not a size was reported; the layer is dropped so the checker does not
        // also call its size missing.
        let given = |name: &str| {
            entry
                .block
                .iter()
                .flat_map(|b| &b.entries)
                .any(|e| e.name.text == name)
        };
        if kind == LayerKindName::Conv2d && props.size.is_none() && given("size") {
            return None;
        }
        if let Some(rate) = rate_arg {
            if let Some(prev) = &props.rate {
                self.duplicate(prev.span, rate.span, "rate");
            }
            props.rate = Some(rate);
        }
        Some(LayerDecl {
            kind: kind_spanned,
            units,
            activation,
            props,
            span: entry.span,
        })
    }

    fn defaults(&mut self, entry: &Entry) -> Option<DefaultsDecl> {
        self.expect_item(entry);
        let v = self.single_item_arg(
            entry,
            "a layer kind, like `defaults dense { init: he_normal }`",
        )?;
        let name = self.ident_value(v, "a layer kind")?;
        let Some(kind) = layer_kind(&name.value) else {
            self.unknown(
                &name.value,
                name.span,
                "layer kind",
                LayerKindName::ALL.iter().map(|(n, _)| *n),
            );
            return None;
        };
        if kind == LayerKindName::Activation {
            self.push(
                Diag::error("check::misplaced", "`activation` layers have no defaults")
                    .with_label(name.span, "nothing to default here")
                    .with_help("set a default activation for dense layers: `defaults dense { activation: elu }`"),
            );
            return None;
        }
        if kind.properties().is_empty() {
            self.push(
                Diag::error(
                    "check::misplaced",
                    format!("`{}` layers have no defaults", kind.name()),
                )
                .with_label(name.span, "nothing to default here")
                .with_help(format!("`{}` takes no options", kind.name())),
            );
            return None;
        }
        let props = self.layer_props(entry.block.as_ref(), kind);
        Some(DefaultsDecl {
            kind: Spanned::new(kind, name.span),
            props,
            span: entry.span,
        })
    }

    fn layer_props(&mut self, block: Option<&Block>, kind: LayerKindName) -> LayerProps {
        let context = format!("`{}` layer", kind.name());
        let props = self.props(block, kind.properties(), &[], &context);
        LayerProps {
            activation: props.get("activation").and_then(|e| self.activation(e)),
            init: props.get("init").and_then(|e| self.initializer(e)),
            bias_init: props.get("bias_init").and_then(|e| self.initializer(e)),
            use_bias: props.get("use_bias").and_then(|e| self.bool_prop(e)),
            l1: props.get("l1").and_then(|e| self.number_prop(e)),
            l2: props.get("l2").and_then(|e| self.number_prop(e)),
            max_norm: props.get("max_norm").and_then(|e| self.number_prop(e)),
            momentum: props.get("momentum").and_then(|e| self.number_prop(e)),
            epsilon: props.get("epsilon").and_then(|e| self.number_prop(e)),
            rate: props.get("rate").and_then(|e| self.number_prop(e)),
            size: props.get("size").and_then(|e| self.pair_prop(e)),
            strides: props.get("strides").and_then(|e| self.pair_prop(e)),
            padding: props.get("padding").and_then(|e| self.padding(e)),
        }
    }

    fn input(&mut self, entry: &Entry) -> Option<InputDecl> {
        self.expect_item(entry);
        let v = self.single_item_arg(entry, "a data set, like `input cifar10`")?;
        let dataset = self.ident_value(v, "a data set name")?;
        if dataset.value != "cifar10" {
            self.unknown(&dataset.value, dataset.span, "data set", ["cifar10"]);
        }
        let props = self.props(
            entry.block.as_ref(),
            &[],
            &["standardize", "scale"],
            "`input`",
        );
        if let Some(scale) = props.get("scale") {
            self.no_block(scale);
        }
        let standardize_per = props.get("standardize").and_then(|e| {
            let options = self.props(e.block.as_ref(), &["per"], &[], "`standardize` flag");
            let per = options.get("per")?;
            self.no_block(per);
            self.named_prop(per, &["feature", "channel"])
                .map(|(n, _)| n)
        });
        let standardize = props.get("standardize").map(|e| e.span);
        if let (Some(s), Some(scale)) = (standardize, props.get("scale")) {
            self.push(
                Diag::error(
                    "check::conflict",
                    "`standardize` and `scale` exclude each other",
                )
                .with_label(
                    s,
                    format!(
                        "standardize per {}",
                        standardize_per
                            .as_ref()
                            .map_or("feature", |p| p.value.as_str())
                    ),
                )
                .with_label(scale.span, "or scale to [0, 1]")
                .with_help("keep one of them"),
            );
        }
        Some(InputDecl {
            dataset,
            standardize,
            standardize_per,
            span: entry.span,
        })
    }

    fn train(&mut self, entry: &Entry) -> TrainDecl {
        let errors_before = self.diags.len();
        self.expect_item(entry);
        self.no_args(entry);
        const KEYS: [&str; 7] = [
            "loss",
            "optimizer",
            "schedule",
            "batch",
            "epochs",
            "validation",
            "seed",
        ];
        let props = self.props(
            entry.block.as_ref(),
            &KEYS,
            &["early_stopping", "augment"],
            "`train` block",
        );
        let loss = props.get("loss").and_then(|e| {
            self.no_block(e);
            let (name, _) = self.named_prop(e, &[])?;
            if name.value != "cross_entropy" {
                self.unknown(&name.value, name.span, "loss", ["cross_entropy"]);
                return None;
            }
            Some(name)
        });
        let train = TrainDecl {
            loss,
            optimizer: props.get("optimizer").and_then(|e| self.optimizer(e)),
            schedule: props.get("schedule").and_then(|e| self.schedule(e)),
            batch: props.get("batch").and_then(|e| self.integer_prop(e)),
            epochs: props.get("epochs").and_then(|e| self.integer_prop(e)),
            validation: props.get("validation").and_then(|e| self.integer_prop(e)),
            early_stopping: props.get("early_stopping").map(|e| self.early_stopping(e)),
            augment: props.get("augment").map(|e| self.augment(e)),
            seed: props.get("seed").and_then(|e| self.integer_prop(e)),
            span: entry.span,
            incomplete: false,
        };
        let incomplete = (props.get("optimizer").is_some() && train.optimizer.is_none())
            || (props.get("epochs").is_some() && train.epochs.is_none())
            || self.diags.len() > errors_before;
        TrainDecl {
            incomplete,
            ..train
        }
    }

    fn optimizer(&mut self, entry: &Entry) -> Option<Spanned<OptimizerSpec>> {
        let (name, block) = self.named_prop(entry, &OPTIMIZERS)?;
        let context = format!("`{}` optimizer", name.value);
        let props = self.props(block, OptimizerSpec::properties(&name.value), &[], &context);
        let spec = OptimizerSpec {
            lr: props.get("lr").and_then(|e| self.number_prop(e)),
            momentum: props.get("momentum").and_then(|e| self.number_prop(e)),
            nesterov: props.get("nesterov").and_then(|e| self.bool_prop(e)),
            beta_1: props.get("beta_1").and_then(|e| self.number_prop(e)),
            beta_2: props.get("beta_2").and_then(|e| self.number_prop(e)),
            epsilon: props.get("epsilon").and_then(|e| self.number_prop(e)),
            weight_decay: props.get("weight_decay").and_then(|e| self.number_prop(e)),
            rho: props.get("rho").and_then(|e| self.number_prop(e)),
            centered: props.get("centered").and_then(|e| self.bool_prop(e)),
            initial_accumulator: props
                .get("initial_accumulator")
                .and_then(|e| self.number_prop(e)),
            clipnorm: props.get("clipnorm").and_then(|e| self.number_prop(e)),
            name,
        };
        Some(Spanned::new(spec, entry.span))
    }

    fn schedule(&mut self, entry: &Entry) -> Option<Spanned<ScheduleSpec>> {
        let (name, block) = self.named_prop(entry, &SCHEDULES)?;
        let context = format!("`{}` schedule", name.value);
        let spec = match name.value.as_str() {
            "constant" => {
                self.props(block, &[], &[], &context);
                ScheduleSpec::Constant
            }
            "exponential_decay" => {
                let props = self.props(block, &["rate", "every", "staircase"], &[], &context);
                let rate = props.get("rate").and_then(|e| self.number_prop(e));
                let every = props.get("every").and_then(|e| self.number_prop(e));
                let staircase = props.get("staircase").and_then(|e| self.bool_prop(e));
                let (rate, every) =
                    self.required2(entry, &name.value, ("rate", rate), ("every", every))?;
                ScheduleSpec::ExponentialDecay {
                    rate,
                    every,
                    staircase: staircase.is_some_and(|s| s.value),
                }
            }
            "piecewise_constant" => {
                let props = self.props(block, &["boundaries", "values"], &[], &context);
                let boundaries = props
                    .get("boundaries")
                    .and_then(|e| self.list_prop(e, true));
                let values = props.get("values").and_then(|e| self.list_prop(e, false));
                let (boundaries, values) = self.required2(
                    entry,
                    &name.value,
                    ("boundaries", boundaries),
                    ("values", values),
                )?;
                ScheduleSpec::PiecewiseConstant {
                    boundaries: Spanned::new(
                        boundaries.value.iter().map(|&b| b as u64).collect(),
                        boundaries.span,
                    ),
                    values,
                }
            }
            "one_cycle" => {
                let keys = ["max_lr", "start_lr", "end_lr", "final_fraction"];
                let props = self.props(block, &keys, &[], &context);
                ScheduleSpec::OneCycle {
                    max_lr: props.get("max_lr").and_then(|e| self.number_prop(e)),
                    start_lr: props.get("start_lr").and_then(|e| self.number_prop(e)),
                    end_lr: props.get("end_lr").and_then(|e| self.number_prop(e)),
                    final_fraction: props
                        .get("final_fraction")
                        .and_then(|e| self.number_prop(e)),
                }
            }
            _ => {
                let props = self.props(block, &["factor", "patience", "min_lr"], &[], &context);
                ScheduleSpec::ReduceOnPlateau {
                    factor: props.get("factor").and_then(|e| self.number_prop(e)),
                    patience: props.get("patience").and_then(|e| self.integer_prop(e)),
                    min_lr: props.get("min_lr").and_then(|e| self.number_prop(e)),
                }
            }
        };
        Some(Spanned::new(spec, entry.span))
    }

    fn early_stopping(&mut self, entry: &Entry) -> Spanned<EarlyStoppingSpec> {
        let keys = ["monitor", "patience", "min_delta", "restore_best"];
        let props = self.props(entry.block.as_ref(), &keys, &[], "`early_stopping`");
        let monitor = props.get("monitor").and_then(|e| {
            self.no_block(e);
            let (name, _) = self.named_prop(e, &[])?;
            if !["val_loss", "val_accuracy"].contains(&name.value.as_str()) {
                self.unknown(
                    &name.value,
                    name.span,
                    "metric",
                    ["val_loss", "val_accuracy"],
                );
                return None;
            }
            Some(name)
        });
        let spec = EarlyStoppingSpec {
            monitor,
            patience: props.get("patience").and_then(|e| self.integer_prop(e)),
            min_delta: props.get("min_delta").and_then(|e| self.number_prop(e)),
            restore_best: props.get("restore_best").and_then(|e| self.bool_prop(e)),
        };
        Spanned::new(spec, entry.span)
    }

    fn augment(&mut self, entry: &Entry) -> Spanned<AugmentSpec> {
        let props = self.props(
            entry.block.as_ref(),
            &["crop", "flip"],
            &[],
            "`augment` block",
        );
        let flip = props.get("flip").and_then(|e| {
            self.no_block(e);
            self.named_prop(e, &["horizontal", "none"]).map(|(n, _)| n)
        });
        let spec = AugmentSpec {
            crop: props.get("crop").and_then(|e| self.integer_prop(e)),
            flip,
        };
        Spanned::new(spec, entry.span)
    }

    fn evaluate(&mut self, entry: &Entry) -> EvalDecl {
        self.expect_item(entry);
        self.no_args(entry);
        let props = self.props(
            entry.block.as_ref(),
            &["mc_dropout"],
            &["prune"],
            "`evaluate` block",
        );
        let prune = props.get("prune").and_then(|e| {
            let props = self.props(e.block.as_ref(), &["sparsity", "method"], &[], "`prune`");
            if let Some(m) = props.get("method") {
                // Magnitude pruning is the only method; naming it is allowed for clarity.
                self.no_block(m);
                self.named_prop(m, &["magnitude"]);
            }
            let Some(sparsity) = props.get("sparsity").and_then(|s| self.number_prop(s)) else {
                self.push(
                    Diag::error("check::missing_value", "`prune` needs a target `sparsity`")
                        .with_label(e.span, "prune how much?")
                        .with_help(
                            "write `prune { sparsity: 0.9 }` to zero the 90% smallest weights",
                        ),
                );
                return None;
            };
            Some(Spanned::new(PruneSpec { sparsity }, e.span))
        });
        EvalDecl {
            mc_dropout: props.get("mc_dropout").and_then(|e| self.integer_prop(e)),
            prune,
            span: entry.span,
        }
    }

    // ----- values -------------------------------------------------------------------------

    fn activation(&mut self, entry: &Entry) -> Option<Spanned<ActivationSpec>> {
        let (name, block) = self.named_prop(entry, &[])?;
        self.activation_named(&name, block)
    }

    fn activation_named(
        &mut self,
        name: &Spanned<String>,
        block: Option<&Block>,
    ) -> Option<Spanned<ActivationSpec>> {
        let context = format!("`{}` activation", name.value);
        let spec = match name.value.as_str() {
            "leaky_relu" | "elu" => {
                let props = self.props(block, &["alpha"], &[], &context);
                let alpha = props.get("alpha").and_then(|e| self.number_prop(e));
                if let Some(a) = alpha
                    .as_ref()
                    .filter(|a| a.value <= 0.0 && name.value == "elu")
                {
                    self.push(
                        Diag::error(
                            "check::out_of_range",
                            format!("ELU `alpha` must be above 0, not {}", a.value),
                        )
                        .with_label(a.span, "must be above 0")
                        .with_help("use 1.0, the usual value"),
                    );
                }
                if let Some(a) = alpha
                    .as_ref()
                    .filter(|a| a.value < 0.0 && name.value == "leaky_relu")
                {
                    self.push(
                        Diag::error(
                            "check::out_of_range",
                            format!("leaky ReLU `alpha` must be at least 0, not {}", a.value),
                        )
                        .with_label(a.span, "the slope for negative inputs")
                        .with_help("use a small positive slope such as 0.2"),
                    );
                }
                if name.value == "elu" {
                    ActivationSpec::Elu {
                        alpha: alpha.map_or(1.0, |a| a.value),
                    }
                } else {
                    ActivationSpec::LeakyRelu {
                        alpha: alpha.map_or(0.2, |a| a.value),
                    }
                }
            }
            other => {
                let spec = match other {
                    "linear" => ActivationSpec::Linear,
                    "relu" => ActivationSpec::Relu,
                    "prelu" => ActivationSpec::Prelu,
                    "selu" => ActivationSpec::Selu,
                    "gelu" => ActivationSpec::Gelu,
                    "swish" | "silu" => ActivationSpec::Swish,
                    "tanh" => ActivationSpec::Tanh,
                    "sigmoid" | "logistic" => ActivationSpec::Sigmoid,
                    "softmax" => ActivationSpec::Softmax,
                    _ => {
                        self.unknown(other, name.span, "activation", ActivationSpec::NAMES);
                        return None;
                    }
                };
                self.props(block, &[], &[], &context);
                spec
            }
        };
        let span = block.map_or(name.span, |b| name.span.to(b.span));
        Some(Spanned::new(spec, span))
    }

    fn initializer(&mut self, entry: &Entry) -> Option<Spanned<InitSpec>> {
        let (name, block) = self.named_prop(entry, &InitSpec::NAMES)?;
        let context = format!("`{}` initializer", name.value);
        let spec = match name.value.as_str() {
            "constant" => {
                let props = self.props(block, &["value"], &[], &context);
                let value = props.get("value").and_then(|e| self.number_prop(e));
                let Some(value) = value else {
                    self.push(
                        Diag::error("check::missing_value", "`constant` needs a `value`")
                            .with_label(name.span, "constant what?")
                            .with_help("write `constant { value: 0.1 }`"),
                    );
                    return None;
                };
                InitSpec::Constant { value: value.value }
            }
            "normal" | "truncated_normal" => {
                let props = self.props(block, &["mean", "stddev"], &[], &context);
                let mean = props
                    .get("mean")
                    .and_then(|e| self.number_prop(e))
                    .map_or(0.0, |v| v.value);
                let stddev = props
                    .get("stddev")
                    .and_then(|e| self.number_prop(e))
                    .map_or(0.05, |v| v.value);
                if name.value == "normal" {
                    InitSpec::Normal { mean, stddev }
                } else {
                    InitSpec::TruncatedNormal { mean, stddev }
                }
            }
            "uniform" => {
                let props = self.props(block, &["min", "max"], &[], &context);
                let min = props
                    .get("min")
                    .and_then(|e| self.number_prop(e))
                    .map_or(-0.05, |v| v.value);
                let max = props
                    .get("max")
                    .and_then(|e| self.number_prop(e))
                    .map_or(0.05, |v| v.value);
                if min >= max {
                    self.push(
                        Diag::error("check::out_of_range", "`uniform` needs `min` below `max`")
                            .with_label(entry.span, format!("[{min}, {max}) is empty"))
                            .with_help("swap them, or widen the range"),
                    );
                }
                InitSpec::Uniform { min, max }
            }
            other => {
                self.props(block, &[], &[], &context);
                match other {
                    "zeros" => InitSpec::Zeros,
                    "ones" => InitSpec::Ones,
                    "glorot_normal" | "xavier_normal" => InitSpec::GlorotNormal,
                    "glorot_uniform" | "xavier_uniform" => InitSpec::GlorotUniform,
                    "he_normal" => InitSpec::HeNormal,
                    "he_uniform" => InitSpec::HeUniform,
                    "lecun_normal" => InitSpec::LecunNormal,
                    _ => InitSpec::LecunUniform,
                }
            }
        };
        let span = block.map_or(name.span, |b| name.span.to(b.span));
        Some(Spanned::new(spec, span))
    }

    // ----- generic helpers ----------------------------------------------------------------

    /// Reads a block's entries: every one must be a property named in `keys` (or a bare flag
    /// item named in `flags`), each at most once.
    fn props<'e>(
        &mut self,
        block: Option<&'e Block>,
        keys: &[&str],
        flags: &[&str],
        context: &str,
    ) -> Props<'e> {
        let mut seen: Vec<&'e Entry> = Vec::new();
        let Some(block) = block else {
            return Props { entries: seen };
        };
        for entry in &block.entries {
            let name = entry.name.text.as_str();
            let is_key = keys.contains(&name);
            let is_flag = flags.contains(&name);
            if !is_key && !is_flag {
                if keys.is_empty() && flags.is_empty() {
                    self.push(
                        Diag::error(
                            "check::unknown_property",
                            format!("{context} takes no options"),
                        )
                        .with_label(entry.name.span, format!("`{name}` is not an option here"))
                        .with_help("remove the block"),
                    );
                } else {
                    let all: Vec<&str> = keys.iter().chain(flags).copied().collect();
                    let mut diag = Diag::error(
                        "check::unknown_property",
                        format!("unknown option `{name}` for the {context}"),
                    );
                    diag = match did_you_mean(name, all.iter().copied()) {
                        Some(s) => diag
                            .with_label(entry.name.span, format!("did you mean `{s}`?"))
                            .with_help(format!("the {context} accepts {}", one_of(&all))),
                        None => diag
                            .with_label(entry.name.span, "not an option here")
                            .with_help(format!("the {context} accepts {}", one_of(&all))),
                    };
                    self.push(diag);
                }
                continue;
            }
            if is_flag && (entry.kind == EntryKind::Property || !entry.args.is_empty()) {
                self.push(
                    Diag::error(
                        "check::unexpected_value",
                        format!("`{name}` takes no value"),
                    )
                    .with_label(entry.span, "no colon or value expected")
                    .with_help(format!(
                        "write `{name}` alone, or `{name} {{ ... }}` where it has options"
                    )),
                );
                continue;
            }
            if is_key && entry.kind == EntryKind::Item {
                self.push(
                    Diag::error(
                        "check::expected_colon",
                        format!("`{name}` needs a colon before its value"),
                    )
                    .with_label(entry.name.span, format!("write `{name}: ...`"))
                    .with_help("options are written `name: value`"),
                );
                continue;
            }
            if let Some(prev) = seen.iter().find(|e| e.name.text == name) {
                self.duplicate(entry.span, prev.span, name);
                continue;
            }
            seen.push(entry);
        }
        Props { entries: seen }
    }

    /// `name: ident { block }` → the ident (checked against `allowed` when not empty).
    fn named_prop<'e>(
        &mut self,
        entry: &'e Entry,
        allowed: &[&str],
    ) -> Option<(Spanned<String>, Option<&'e Block>)> {
        let v = entry.args.first()?;
        let name = self.ident_value(v, "a name")?;
        if !allowed.is_empty() && !allowed.contains(&name.value.as_str()) {
            self.unknown(
                &name.value,
                name.span,
                describe_key(&entry.name.text),
                allowed.iter().copied(),
            );
            return None;
        }
        Some((name, entry.block.as_ref()))
    }

    fn number_prop(&mut self, entry: &Entry) -> Option<Spanned<f64>> {
        self.no_block(entry);
        self.number_value(entry.args.first()?)
    }

    fn integer_prop(&mut self, entry: &Entry) -> Option<Spanned<u64>> {
        self.no_block(entry);
        self.integer_value(entry.args.first()?)
    }

    fn bool_prop(&mut self, entry: &Entry) -> Option<Spanned<bool>> {
        self.no_block(entry);
        let v = entry.args.first()?;
        match v.kind {
            ValueKind::Bool(b) => Some(Spanned::new(b, v.span)),
            _ => {
                self.wrong_type(v, "`true` or `false`");
                None
            }
        }
    }

    /// A list of numbers (`integers` requires whole, non-negative ones).
    fn list_prop(&mut self, entry: &Entry, integers: bool) -> Option<Spanned<Vec<f64>>> {
        self.no_block(entry);
        let v = entry.args.first()?;
        let ValueKind::List(items) = &v.kind else {
            self.wrong_type(v, "a list like `[10, 20]`");
            return None;
        };
        let mut out = Vec::new();
        for item in items {
            if integers {
                out.push(self.integer_value(item)?.value as f64);
            } else {
                out.push(self.number_value(item)?.value);
            }
        }
        Some(Spanned::new(out, v.span))
    }

    /// A window's size or strides: one whole number for both sides, or `[height, width]`.
    fn pair_prop(&mut self, entry: &Entry) -> Option<Spanned<[u64; 2]>> {
        self.no_block(entry);
        let v = entry.args.first()?;
        match &v.kind {
            ValueKind::List(items) => {
                let [h, w] = items.as_slice() else {
                    self.push(
                        Diag::error(
                            "check::wrong_type",
                            format!(
                                "expected `[height, width]`, found a list of {} values",
                                items.len()
                            ),
                        )
                        .with_label(v.span, "expected two whole numbers")
                        .with_help(format!(
                            "write `{name}: [3, 3]`, or `{name}: 3` for both sides",
                            name = entry.name.text
                        )),
                    );
                    return None;
                };
                let (h, w) = (self.integer_value(h), self.integer_value(w));
                Some(Spanned::new([h?.value, w?.value], v.span))
            }
            ValueKind::Number(_) => {
                let n = self.integer_value(v)?;
                Some(Spanned::new([n.value, n.value], v.span))
            }
            _ => {
                self.wrong_type(v, "a whole number or `[height, width]`");
                None
            }
        }
    }

    fn padding(&mut self, entry: &Entry) -> Option<Spanned<PaddingSpec>> {
        self.no_block(entry);
        let (name, _) = self.named_prop(entry, &PaddingSpec::NAMES)?;
        let spec = match name.value.as_str() {
            "same" => PaddingSpec::Same,
            _ => PaddingSpec::Valid,
        };
        Some(Spanned::new(spec, name.span))
    }

    fn number_value(&mut self, v: &Value) -> Option<Spanned<f64>> {
        let ValueKind::Number(text) = &v.kind else {
            self.wrong_type(v, "a number");
            return None;
        };
        match text.parse::<f64>() {
            Ok(x) if x.is_finite() => Some(Spanned::new(x, v.span)),
            _ => {
                self.push(
                    Diag::error(
                        "check::out_of_range",
                        format!("`{text}` is too large to be a number here"),
                    )
                    .with_label(v.span, "out of range")
                    .with_help("write a finite number"),
                );
                None
            }
        }
    }

    fn integer_value(&mut self, v: &Value) -> Option<Spanned<u64>> {
        let ValueKind::Number(text) = &v.kind else {
            self.wrong_type(v, "a whole number");
            return None;
        };
        if let Ok(n) = text.parse::<u64>() {
            return Some(Spanned::new(n, v.span));
        }
        let x = text
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x < 1.8e19);
        match x {
            Some(x) if x >= 0.0 && x.fract() == 0.0 => Some(Spanned::new(x as u64, v.span)),
            Some(x) if x < 0.0 => {
                self.push(
                    Diag::error("check::out_of_range", format!("`{text}` is negative"))
                        .with_label(v.span, "expected a whole number of at least 0")
                        .with_help("write a positive whole number"),
                );
                None
            }
            Some(_) => {
                self.push(
                    Diag::error(
                        "check::expected_integer",
                        format!("`{text}` is not a whole number"),
                    )
                    .with_label(v.span, "expected a whole number")
                    .with_help(format!("write `{}`", x.map_or(0.0, f64::round))),
                );
                None
            }
            None => {
                self.push(
                    Diag::error("check::out_of_range", format!("`{text}` is too large"))
                        .with_label(v.span, "out of range")
                        .with_help("write a smaller whole number"),
                );
                None
            }
        }
    }

    fn ident_value(&mut self, v: &Value, what: &str) -> Option<Spanned<String>> {
        match &v.kind {
            ValueKind::Ident(s) => Some(Spanned::new(s.clone(), v.span)),
            _ => {
                self.wrong_type(v, what);
                None
            }
        }
    }

    fn single_item_arg<'e>(&mut self, entry: &'e Entry, usage: &str) -> Option<&'e Value> {
        match entry.args.as_slice() {
            [one] => Some(one),
            [] => {
                self.push(
                    Diag::error(
                        "check::missing_value",
                        format!("`{}` needs {usage}", entry.name.text),
                    )
                    .with_label(entry.name.span, "missing its value")
                    .with_help(format!("write {usage}")),
                );
                None
            }
            [first, .., last] => {
                self.push(
                    Diag::error(
                        "check::unexpected_value",
                        format!("`{}` takes one value", entry.name.text),
                    )
                    .with_label(
                        first.span.to(last.span),
                        format!("{} values", entry.args.len()),
                    )
                    .with_help(format!("write {usage}; options go in a block `{{ ... }}`")),
                );
                None
            }
        }
    }

    fn expect_item(&mut self, entry: &Entry) {
        if entry.kind == EntryKind::Property {
            self.push(
                Diag::error(
                    "check::unexpected_colon",
                    format!("`{}` is a statement, not an option", entry.name.text),
                )
                .with_label(entry.name.span, "remove the colon after this")
                .with_help(format!("write `{} ...` without `:`", entry.name.text)),
            );
        }
    }

    fn no_args(&mut self, entry: &Entry) {
        if let Some(v) = entry.args.first() {
            self.push(
                Diag::error(
                    "check::unexpected_value",
                    format!("`{}` takes no value", entry.name.text),
                )
                .with_label(v.span, "not expected here")
                .with_help(format!("write `{} {{ ... }}`", entry.name.text)),
            );
        }
    }

    fn no_block(&mut self, entry: &Entry) {
        if let Some(b) = &entry.block {
            self.push(
                Diag::error(
                    "check::unexpected_block",
                    format!("`{}` takes no block", entry.name.text),
                )
                .with_label(b.span, "not expected here")
                .with_help("remove the block"),
            );
        }
    }

    fn wrong_type(&mut self, v: &Value, expected: &str) {
        self.push(
            Diag::error(
                "check::wrong_type",
                format!("expected {expected}, found {}", v.kind.describe()),
            )
            .with_label(v.span, format!("expected {expected}"))
            .with_help(format!("write {expected} here")),
        );
    }

    fn unknown<'a>(
        &mut self,
        name: &str,
        span: Span,
        what: &str,
        candidates: impl IntoIterator<Item = &'a str> + Clone,
    ) {
        let all: Vec<&str> = candidates.clone().into_iter().collect();
        let code = format!("check::unknown_{}", what.replace(' ', "_"));
        let diag = Diag::error(&code, format!("unknown {what} `{name}`"));
        let diag = match did_you_mean(name, all.iter().copied()) {
            Some(s) => diag
                .with_label(span, format!("did you mean `{s}`?"))
                .with_help(format!("write `{s}`; known: {}", one_of(&all))),
            None => diag
                .with_label(span, format!("not a known {what}"))
                .with_help(format!("known: {}", one_of(&all))),
        };
        self.push(diag);
    }

    fn duplicate(&mut self, again: Span, first: Span, what: &str) {
        self.push(
            Diag::error("check::duplicate", format!("`{what}` is given twice"))
                .with_label(again, "given again here")
                .with_label(first, "first given here")
                .with_help("keep one of them"),
        );
    }

    fn set_once(
        &mut self,
        slot: &mut Option<Spanned<String>>,
        value: Spanned<String>,
        entry: &Entry,
        what: &str,
    ) {
        if let Some(prev) = slot {
            self.duplicate(entry.span, prev.span, what);
        } else {
            *slot = Some(value);
        }
    }

    fn required2<A, B>(
        &mut self,
        entry: &Entry,
        what: &str,
        a: (&str, Option<A>),
        b: (&str, Option<B>),
    ) -> Option<(A, B)> {
        for (name, present) in [(a.0, a.1.is_some()), (b.0, b.1.is_some())] {
            if !present {
                self.push(
                    Diag::error("check::missing_value", format!("`{what}` needs `{name}`"))
                        .with_label(entry.span, format!("`{name}` is missing"))
                        .with_help(format!("add `{name}: ...` to its block")),
                );
            }
        }
        Some((a.1?, b.1?))
    }
}

/// What the value of a property is called in "unknown X" messages.
fn describe_key(key: &str) -> &str {
    match key {
        "init" | "bias_init" => "initializer",
        "method" => "pruning method",
        "per" => "scope",
        other => other,
    }
}

fn layer_kind(name: &str) -> Option<LayerKindName> {
    LayerKindName::ALL
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, k)| *k)
}
