//! Text dumps for `netc compile --emit ast|ir|summary` and the golden tests. Output is stable:
//! no addresses, no hash-map order, numbers printed the same way on every machine.

use std::fmt::Write as _;

use crate::ast::{ActivationSpec, InitSpec, LayerProps, LayerStmt, ScheduleSpec, Spanned, Spec};
use netc_ir::ir::{
    Distribution, FanMode, Init, OpKind, OptimizerKind, Preprocess, Program, Regularizer, Schedule,
    Shape, StatsScope,
};

// ----- AST ---------------------------------------------------------------------------------

/// The AST as an indented tree with the byte span of every declaration.
pub fn ast(spec: &Spec) -> String {
    let mut out = String::new();
    let sp = |s: netc_diagnostics::Span| format!("@{}..{}", s.start, s.end);
    out.push_str("spec\n");
    if let Some(m) = &spec.model {
        let _ = writeln!(out, "  model {} {}", m.value, sp(m.span));
    }
    if let Some(i) = &spec.input {
        let pre = match (&i.standardize, &i.standardize_per) {
            (Some(_), Some(per)) => format!(" standardize per {}", per.value),
            (Some(_), None) => " standardize".to_string(),
            (None, _) => String::new(),
        };
        let _ = writeln!(out, "  input {}{pre} {}", i.dataset.value, sp(i.span));
    }
    for d in &spec.defaults {
        let _ = writeln!(
            out,
            "  defaults {} {}{}",
            d.kind.value.name(),
            sp(d.span),
            props(&d.props)
        );
    }
    fn stmts(out: &mut String, list: &[LayerStmt], depth: usize) {
        let pad = "  ".repeat(depth);
        for s in list {
            match s {
                LayerStmt::Repeat(r) => {
                    let _ = writeln!(
                        out,
                        "{pad}repeat {} @{}..{}",
                        r.count.value, r.span.start, r.span.end
                    );
                    stmts(out, &r.body, depth + 1);
                }
                LayerStmt::Layer(l) => {
                    let mut head = l.kind.value.name().to_string();
                    if let Some(u) = &l.units {
                        let _ = write!(head, " {}", u.value);
                    }
                    if let Some(a) = &l.activation {
                        let _ = write!(head, " {}", activation(a.value));
                    }
                    let _ = writeln!(
                        out,
                        "{pad}{head} @{}..{}{}",
                        l.span.start,
                        l.span.end,
                        props(&l.props)
                    );
                }
            }
        }
    }
    stmts(&mut out, &spec.layers, 1);
    if let Some(t) = &spec.train {
        let _ = writeln!(out, "  train {}", sp(t.span));
        let opt = |v: &Option<Spanned<f64>>| v.as_ref().map(|v| num(v.value));
        if let Some(o) = &t.optimizer {
            let o = &o.value;
            let mut fields = Vec::new();
            for (name, v) in [
                ("lr", opt(&o.lr)),
                ("momentum", opt(&o.momentum)),
                ("beta_1", opt(&o.beta_1)),
                ("beta_2", opt(&o.beta_2)),
                ("epsilon", opt(&o.epsilon)),
                ("weight_decay", opt(&o.weight_decay)),
                ("rho", opt(&o.rho)),
                ("initial_accumulator", opt(&o.initial_accumulator)),
                ("clipnorm", opt(&o.clipnorm)),
                ("nesterov", o.nesterov.as_ref().map(|b| b.value.to_string())),
                ("centered", o.centered.as_ref().map(|b| b.value.to_string())),
            ] {
                if let Some(v) = v {
                    fields.push(format!("{name}: {v}"));
                }
            }
            let _ = writeln!(
                out,
                "    optimizer {} {{ {} }}",
                o.name.value,
                fields.join(", ")
            );
        }
        if let Some(s) = &t.schedule {
            let _ = writeln!(out, "    schedule {}", schedule_ast(&s.value));
        }
        for (name, v) in [
            ("batch", &t.batch),
            ("epochs", &t.epochs),
            ("validation", &t.validation),
            ("seed", &t.seed),
        ] {
            if let Some(v) = v {
                let _ = writeln!(out, "    {name} {}", v.value);
            }
        }
        if let Some(l) = &t.loss {
            let _ = writeln!(out, "    loss {}", l.value);
        }
        if let Some(e) = &t.early_stopping {
            let e = &e.value;
            let mut fields = Vec::new();
            if let Some(m) = &e.monitor {
                fields.push(format!("monitor: {}", m.value));
            }
            if let Some(p) = &e.patience {
                fields.push(format!("patience: {}", p.value));
            }
            if let Some(d) = &e.min_delta {
                fields.push(format!("min_delta: {}", num(d.value)));
            }
            if let Some(r) = &e.restore_best {
                fields.push(format!("restore_best: {}", r.value));
            }
            let _ = writeln!(out, "    early_stopping {{ {} }}", fields.join(", "));
        }
        if let Some(a) = &t.augment {
            let mut fields = Vec::new();
            if let Some(c) = &a.value.crop {
                fields.push(format!("crop: {}", c.value));
            }
            if let Some(f) = &a.value.flip {
                fields.push(format!("flip: {}", f.value));
            }
            let _ = writeln!(out, "    augment {{ {} }}", fields.join(", "));
        }
    }
    if let Some(e) = &spec.evaluate {
        let _ = writeln!(out, "  evaluate {}", sp(e.span));
        if let Some(m) = &e.mc_dropout {
            let _ = writeln!(out, "    mc_dropout {}", m.value);
        }
        if let Some(p) = &e.prune {
            let _ = writeln!(out, "    prune sparsity {}", num(p.value.sparsity.value));
        }
    }
    for a in &spec.allow {
        let _ = writeln!(out, "  allow {} {}", a.value, sp(a.span));
    }
    out
}

fn props(p: &LayerProps) -> String {
    let mut fields = Vec::new();
    if let Some(a) = &p.activation {
        fields.push(format!("activation: {}", activation(a.value)));
    }
    if let Some(i) = &p.init {
        fields.push(format!("init: {}", init_spec(i.value)));
    }
    if let Some(i) = &p.bias_init {
        fields.push(format!("bias_init: {}", init_spec(i.value)));
    }
    if let Some(b) = &p.use_bias {
        fields.push(format!("use_bias: {}", b.value));
    }
    for (name, v) in [
        ("l1", &p.l1),
        ("l2", &p.l2),
        ("max_norm", &p.max_norm),
        ("momentum", &p.momentum),
        ("epsilon", &p.epsilon),
        ("rate", &p.rate),
    ] {
        if let Some(v) = v {
            fields.push(format!("{name}: {}", num(v.value)));
        }
    }
    for (name, v) in [("size", &p.size), ("strides", &p.strides)] {
        if let Some(v) = v {
            fields.push(format!("{name}: [{}, {}]", v.value[0], v.value[1]));
        }
    }
    if let Some(pad) = &p.padding {
        fields.push(format!("padding: {}", pad.value.name()));
    }
    if fields.is_empty() {
        String::new()
    } else {
        format!(" {{ {} }}", fields.join(", "))
    }
}

fn activation(a: ActivationSpec) -> String {
    match a {
        ActivationSpec::LeakyRelu { alpha } | ActivationSpec::Elu { alpha } => {
            format!("{}(alpha={})", a.name(), num(alpha))
        }
        _ => a.name().to_string(),
    }
}

fn init_spec(i: InitSpec) -> String {
    match i {
        InitSpec::Constant { value } => format!("constant(value={})", num(value)),
        InitSpec::Normal { mean, stddev } | InitSpec::TruncatedNormal { mean, stddev } => {
            format!("{}(mean={}, stddev={})", i.name(), num(mean), num(stddev))
        }
        InitSpec::Uniform { min, max } => format!("uniform(min={}, max={})", num(min), num(max)),
        _ => i.name().to_string(),
    }
}

fn schedule_ast(s: &ScheduleSpec) -> String {
    let o = |v: &Option<Spanned<f64>>| v.as_ref().map_or("default".to_string(), |v| num(v.value));
    match s {
        ScheduleSpec::Constant => "constant".to_string(),
        ScheduleSpec::ExponentialDecay {
            rate,
            every,
            staircase,
        } => format!(
            "exponential_decay(rate={}, every={}, staircase={staircase})",
            num(rate.value),
            num(every.value)
        ),
        ScheduleSpec::PiecewiseConstant { boundaries, values } => format!(
            "piecewise_constant(boundaries={:?}, values=[{}])",
            boundaries.value,
            values
                .value
                .iter()
                .map(|v| num(*v))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        ScheduleSpec::OneCycle {
            max_lr,
            start_lr,
            end_lr,
            final_fraction,
        } => format!(
            "one_cycle(max_lr={}, start_lr={}, end_lr={}, final_fraction={})",
            o(max_lr),
            o(start_lr),
            o(end_lr),
            o(final_fraction)
        ),
        ScheduleSpec::ReduceOnPlateau {
            factor,
            patience,
            min_lr,
        } => format!(
            "reduce_on_plateau(factor={}, patience={}, min_lr={})",
            o(factor),
            patience
                .as_ref()
                .map_or("default".to_string(), |p| p.value.to_string()),
            o(min_lr)
        ),
    }
}

/// A value's dimensions after the batch, as the IR dump and the summary write them: `100` for
/// a vector, `32, 32, 3` for an image (height, width, channels).
pub fn dims(shape: Shape) -> String {
    match shape {
        Shape::Flat(n) => n.to_string(),
        Shape::Image {
            height,
            width,
            channels,
        } => format!("{height}, {width}, {channels}"),
    }
}

/// A kernel's penalty and constraint in an IR dump, ` l1=… l2=… max_norm=…`, each when set.
fn write_kernel_terms(s: &mut String, regularizer: &Regularizer, max_norm: Option<f32>) {
    if regularizer.l1 != 0.0 {
        let _ = write!(s, " l1={}", num(f64::from(regularizer.l1)));
    }
    if regularizer.l2 != 0.0 {
        let _ = write!(s, " l2={}", num(f64::from(regularizer.l2)));
    }
    if let Some(m) = max_norm {
        let _ = write!(s, " max_norm={}", num(f64::from(m)));
    }
}

/// Shortest text that reads back as the same f32 (`5e-5`, `0.9`, `100`).
pub fn num(x: f64) -> String {
    let x32 = x as f32;
    let plain = format!("{x32}");
    let sci = format!("{x32:e}");
    if sci.len() < plain.len() {
        sci
    } else {
        plain
    }
}

// ----- IR ----------------------------------------------------------------------------------

/// The IR in a line-per-item text form (naga/cranelift style ids: `p3`, `v7`).
pub fn ir(p: &Program) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "program {}", p.name);
    let pre = match (p.input.preprocess, p.input.stats_scope) {
        (Preprocess::Scale01, _) => "scale 1/255",
        (Preprocess::Standardize, StatsScope::Feature) => {
            "standardize (training-split mean and std per feature)"
        }
        (Preprocess::Standardize, StatsScope::Channel) => {
            "standardize (training-split mean and std per channel)"
        }
    };
    let _ = writeln!(
        out,
        "input v0: f32[B, {}] = {} u8, {pre}",
        dims(p.input.shape),
        p.input.dataset.name()
    );
    let _ = writeln!(out, "labels: u8[B] in 0..{}", p.input.classes);
    out.push('\n');
    for (i, param) in p.params.iter().enumerate() {
        let shape: Vec<String> = param.shape.iter().map(ToString::to_string).collect();
        let frozen = if param.trainable {
            ""
        } else {
            " non_trainable"
        };
        let _ = writeln!(
            out,
            "p{i}: f32[{}] {} = {}{frozen}",
            shape.join(", "),
            param.name,
            init(param.init)
        );
    }
    out.push('\n');
    for op in &p.ops {
        let rhs = match &op.kind {
            OpKind::Dense { kernel, bias, regularizer, max_norm } => {
                let mut s = format!("dense {}, {kernel}", op.input);
                if let Some(b) = bias {
                    let _ = write!(s, ", {b}");
                }
                write_kernel_terms(&mut s, regularizer, *max_norm);
                s
            }
            OpKind::Activation(a) => match a {
                netc_ir::ir::Activation::LeakyRelu { alpha } | netc_ir::ir::Activation::Elu { alpha } => {
                    format!("{}(alpha={}) {}", a.name(), num(f64::from(*alpha)), op.input)
                }
                _ => format!("{} {}", a.name(), op.input),
            },
            OpKind::Prelu { alpha } => format!("prelu {}, {alpha}", op.input),
            OpKind::BatchNorm { gamma, beta, moving_mean, moving_variance, momentum, epsilon } => format!(
                "batch_norm {}, {gamma}, {beta}, {moving_mean}, {moving_variance} momentum={} epsilon={}",
                op.input,
                num(f64::from(*momentum)),
                num(f64::from(*epsilon))
            ),
            OpKind::Dropout { rate } => format!("dropout {} rate={}", op.input, num(f64::from(*rate))),
            OpKind::AlphaDropout { rate } => format!("alpha_dropout {} rate={}", op.input, num(f64::from(*rate))),
            OpKind::Conv2d { kernel, bias, strides, padding, regularizer, max_norm } => {
                let mut s = format!("conv2d {}, {kernel}", op.input);
                if let Some(b) = bias {
                    let _ = write!(s, ", {b}");
                }
                let _ = write!(s, " strides={}x{} padding={}", strides[0], strides[1], padding.name());
                write_kernel_terms(&mut s, regularizer, *max_norm);
                s
            }
            OpKind::Pool { size, strides, padding, .. } => format!(
                "{} {} size={}x{} strides={}x{} padding={}",
                op.kind.mnemonic(),
                op.input,
                size[0],
                size[1],
                strides[0],
                strides[1],
                padding.name()
            ),
            OpKind::GlobalAvgPool | OpKind::Flatten => format!("{} {}", op.kind.mnemonic(), op.input),
        };
        let _ = writeln!(
            out,
            "{}: f32[B, {}] = {rhs}  ; {}",
            op.output,
            dims(op.shape),
            op.layer
        );
    }
    let last = p
        .ops
        .last()
        .map_or("v0".to_string(), |o| o.output.to_string());
    let _ = writeln!(out, "loss = softmax_cross_entropy {last}, labels");
    out.push('\n');
    let t = &p.train;
    let _ = writeln!(
        out,
        "optimizer {}",
        optimizer(&t.optimizer.kind, t.optimizer.lr, t.optimizer.clipnorm)
    );
    let _ = writeln!(out, "schedule {}", schedule(&t.schedule));
    let _ = writeln!(
        out,
        "batch {} epochs {} validation {} seed {}",
        t.batch, t.epochs, t.validation, t.seed
    );
    if let Some(e) = &t.early_stopping {
        let _ = writeln!(
            out,
            "early_stopping monitor={} patience={} min_delta={} restore_best={}",
            e.monitor.name(),
            e.patience,
            num(f64::from(e.min_delta)),
            e.restore_best
        );
    }
    let a = &t.augment;
    if !a.is_identity() {
        let flip = if a.flip_horizontal {
            "horizontal"
        } else {
            "none"
        };
        let _ = writeln!(
            out,
            "augment crop={} flip={flip} (training batches, u8 pixels)",
            a.crop
        );
    }
    if let Some(n) = p.eval.mc_dropout {
        let _ = writeln!(out, "evaluate mc_dropout={n}");
    }
    if let Some(pr) = p.eval.prune {
        let _ = writeln!(
            out,
            "evaluate prune magnitude sparsity={}",
            num(f64::from(pr.sparsity))
        );
    }
    out
}

fn init(i: Init) -> String {
    let n = |x: f32| num(f64::from(x));
    match i {
        Init::Zeros => "zeros".into(),
        Init::Ones => "ones".into(),
        Init::Constant(v) => format!("constant({})", n(v)),
        Init::Normal { mean, stddev } => format!("normal(mean={}, stddev={})", n(mean), n(stddev)),
        Init::Uniform { min, max } => format!("uniform({}, {})", n(min), n(max)),
        Init::TruncatedNormal { mean, stddev } => {
            format!("truncated_normal(mean={}, stddev={})", n(mean), n(stddev))
        }
        Init::VarianceScaling {
            scale,
            mode,
            distribution,
        } => {
            let mode = match mode {
                FanMode::FanIn => "fan_in",
                FanMode::FanOut => "fan_out",
                FanMode::FanAvg => "fan_avg",
            };
            let dist = match distribution {
                Distribution::TruncatedNormal => "truncated_normal",
                Distribution::Uniform => "uniform",
            };
            format!("variance_scaling(scale={}, {mode}, {dist})", n(scale))
        }
    }
}

fn optimizer(k: &OptimizerKind, lr: f32, clipnorm: Option<f32>) -> String {
    let n = |x: f32| num(f64::from(x));
    let mut s = format!("{} lr={}", k.name(), n(lr));
    match *k {
        OptimizerKind::Sgd { momentum, nesterov } => {
            let _ = write!(s, " momentum={} nesterov={nesterov}", n(momentum));
        }
        OptimizerKind::Adam {
            beta_1,
            beta_2,
            epsilon,
        }
        | OptimizerKind::Nadam {
            beta_1,
            beta_2,
            epsilon,
        } => {
            let _ = write!(
                s,
                " beta_1={} beta_2={} epsilon={}",
                n(beta_1),
                n(beta_2),
                n(epsilon)
            );
        }
        OptimizerKind::AdamW {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
        } => {
            let _ = write!(
                s,
                " beta_1={} beta_2={} epsilon={} weight_decay={}",
                n(beta_1),
                n(beta_2),
                n(epsilon),
                n(weight_decay)
            );
        }
        OptimizerKind::RmsProp {
            rho,
            momentum,
            epsilon,
            centered,
        } => {
            let _ = write!(
                s,
                " rho={} momentum={} epsilon={} centered={centered}",
                n(rho),
                n(momentum),
                n(epsilon)
            );
        }
        OptimizerKind::Adagrad {
            initial_accumulator,
            epsilon,
        } => {
            let _ = write!(
                s,
                " initial_accumulator={} epsilon={}",
                n(initial_accumulator),
                n(epsilon)
            );
        }
    }
    if let Some(c) = clipnorm {
        let _ = write!(s, " clipnorm={}", n(c));
    }
    s
}

fn schedule(s: &Schedule) -> String {
    let n = |x: f32| num(f64::from(x));
    match s {
        Schedule::Constant => "constant".into(),
        Schedule::ExponentialDecay {
            rate,
            every,
            staircase,
        } => {
            format!(
                "exponential_decay rate={} every={} staircase={staircase}",
                n(*rate),
                n(*every)
            )
        }
        Schedule::PiecewiseConstant { boundaries, values } => format!(
            "piecewise_constant boundaries={boundaries:?} values=[{}]",
            values.iter().map(|v| n(*v)).collect::<Vec<_>>().join(", ")
        ),
        Schedule::OneCycle {
            max_lr,
            start_lr,
            end_lr,
            final_fraction,
        } => format!(
            "one_cycle max_lr={} start_lr={} end_lr={} final_fraction={}",
            n(*max_lr),
            n(*start_lr),
            n(*end_lr),
            n(*final_fraction)
        ),
        Schedule::ReduceOnPlateau {
            factor,
            patience,
            min_lr,
        } => {
            format!(
                "reduce_on_plateau factor={} patience={patience} min_lr={}",
                n(*factor),
                n(*min_lr)
            )
        }
    }
}

// ----- summary -----------------------------------------------------------------------------

/// A Keras-style summary: one row per spec layer, with output shape and parameter count.
pub fn summary(p: &Program) -> String {
    struct Row {
        name: String,
        kind: String,
        shape: Shape,
        params: usize,
    }
    let mut rows: Vec<Row> = Vec::new();
    for op in &p.ops {
        let params: usize = match &op.kind {
            OpKind::Dense { kernel, bias, .. } | OpKind::Conv2d { kernel, bias, .. } => {
                p.param(*kernel).len() + bias.map_or(0, |b| p.param(b).len())
            }
            OpKind::Prelu { alpha } => p.param(*alpha).len(),
            OpKind::BatchNorm {
                gamma,
                beta,
                moving_mean,
                moving_variance,
                ..
            } => [gamma, beta, moving_mean, moving_variance]
                .iter()
                .map(|id| p.param(**id).len())
                .sum(),
            _ => 0,
        };
        match rows.last_mut() {
            Some(row) if row.name == op.layer => {
                row.kind = format!("{}, {}", row.kind, op.kind.mnemonic());
                row.shape = op.shape;
                row.params += params;
            }
            _ => rows.push(Row {
                name: op.layer.clone(),
                kind: op.kind.mnemonic().to_string(),
                shape: op.shape,
                params,
            }),
        }
    }
    if let Some(last) = rows.last_mut() {
        last.kind.push_str(", softmax");
    }
    let mut out = String::new();
    let _ = writeln!(out, "Model: \"{}\"", p.name);
    let line = "─".repeat(68);
    let _ = writeln!(out, "{line}");
    out.push_str(&summary_row("Layer (type)", "Output Shape", "Param #"));
    let _ = writeln!(out, "{}", "═".repeat(68));
    out.push_str(&summary_row(
        "input (cifar10)",
        &format!("(None, {})", dims(p.input.shape)),
        "0",
    ));
    for r in &rows {
        out.push_str(&summary_row(
            &format!("{} ({})", r.name, r.kind),
            &format!("(None, {})", dims(r.shape)),
            &thousands(r.params),
        ));
    }
    let _ = writeln!(out, "{line}");
    let total = p.param_count();
    let trainable = p.trainable_param_count();
    let _ = writeln!(
        out,
        "Total params: {} ({})",
        thousands(total),
        bytes(total * 4)
    );
    let _ = writeln!(
        out,
        "Trainable params: {} ({})",
        thousands(trainable),
        bytes(trainable * 4)
    );
    let _ = writeln!(
        out,
        "Non-trainable params: {} ({})",
        thousands(total - trainable),
        bytes((total - trainable) * 4)
    );
    let m = p.training_memory();
    let size = |b: u64| bytes(usize::try_from(b).unwrap_or(usize::MAX));
    let _ = writeln!(
        out,
        "Training memory at batch {}: {} (parameters and gradients {}, optimizer state {}, \
         values and gradients of a batch {})",
        p.train.batch,
        size(m.total()),
        size(m.parameters),
        size(m.optimizer),
        size(m.activations)
    );
    out
}

/// One line of the summary's table: the name in 34 columns, the shape in 20, the parameter count
/// right-aligned in 14. A name too long for its column (`global_avg_pool_1 (global_avg_pool)`)
/// takes what it needs from the shape's, one space kept, so the counts stay aligned.
fn summary_row(name: &str, shape: &str, params: &str) -> String {
    let name = format!("{name:<33} ");
    let shape_width = 54usize.saturating_sub(name.chars().count());
    format!("{name}{shape:<shape_width$}{params:>14}\n")
}

/// `500210` → `500,210`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A byte count as Keras' `model.summary()` writes it (`204.48 KB`, powers of 1024).
pub fn bytes(n: usize) -> String {
    if n >= 1 << 30 {
        format!("{:.2} GB", n as f64 / (1u64 << 30) as f64)
    } else if n >= 1 << 20 {
        format!("{:.2} MB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.2} KB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}
