//! `Executor<F>`: the forward pass, the loss and the backward pass of a program over ndarray, in
//! any `Real` float type. It holds the parameters and nothing else of the training state: the
//! optimizer, the step counter and the moving-average updates belong to `Interp`, so the same
//! code serves `f32` training and `f64` gradient checks.
//!
//! The backward pass is driven by `autodiff::GradProgram` and nothing else: the forward pass in
//! training keeps exactly the values the grad program lists as saved and drops the rest, so a
//! grad program that forgets a value fails here loudly rather than in the JIT.

use ndarray::{
    Array1, Array2, ArrayBase, ArrayD, ArrayView1, ArrayView2, Axis, CowArray, Data, Ix1, Ix2, Zip,
};

use super::image::{self, Windows};
use super::real::Real;
use netc_ir::autodiff::{
    alpha_dropout_affine, GradProgram, GradRule, SELU_ALPHA_F64, SELU_LAMBDA_F64,
};
use netc_ir::backend::{InputStats, Mode};
use netc_ir::ir::{
    Activation, Op, OpKind, ParamId, Preprocess, Program, Regularizer, Shape, ValueId,
};
use netc_ir::rng::{self, Stream};

/// How a forward pass treats the layers that behave differently in training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Batch statistics, dropout masks of stream `Train` at this step.
    Train { step: u64 },
    /// Moving averages, no dropout.
    Inference,
    /// Moving averages, dropout masks of stream `McDropout` for this sample.
    McDropout { sample: u32 },
}

impl From<Mode> for Pass {
    fn from(mode: Mode) -> Pass {
        match mode {
            Mode::Inference => Pass::Inference,
            Mode::McDropout { sample } => Pass::McDropout { sample },
        }
    }
}

/// What one training-mode pass over a batch measured, without updating anything.
#[derive(Clone, Debug, PartialEq)]
pub struct LossAndGrads<F> {
    /// Mean cross-entropy plus the regularization penalty.
    pub loss: F,
    /// Rows whose arg-max logit (the first one on ties) is the label.
    pub correct: usize,
    /// Gradient of `loss` per parameter, indexed like `Program::params`: `Some` for every
    /// trainable parameter, `None` for the others.
    pub grads: Vec<Option<ArrayD<F>>>,
    /// The batch statistics each batch-norm op normalized with, for the moving averages.
    pub batch_moments: Vec<BatchMoments<F>>,
}

/// Mean and biased variance of a batch-norm op's input over the batch (per channel, over the
/// batch and the pixels, for an image).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchMoments<F> {
    pub op: u32,
    pub mean: Array1<F>,
    pub variance: Array1<F>,
}

/// What a batch-norm op in training hands its backward step. An image's rows are kept as
/// `[n·pixels, channels]`, so that each column is one channel.
struct BatchNormRecord<F> {
    moments: BatchMoments<F>,
    x_hat: Array2<F>,
    inv_std: Array1<F>,
}

/// Which values a forward pass keeps besides the last one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    All,
    SavedForBackward,
    LastOnly,
}

/// The results of one forward pass.
struct Tape<F> {
    /// Indexed by `ValueId`; `Some` for the kept values.
    values: Vec<Option<Array2<F>>>,
    /// Indexed by op; `Some` for batch-norm ops in training.
    batch_norm: Vec<Option<BatchNormRecord<F>>>,
}

impl<F> Tape<F> {
    fn value(&self, v: ValueId) -> ArrayView2<'_, F> {
        self.values[v.0 as usize]
            .as_ref()
            .unwrap_or_else(|| panic!("the grad program reads {v}, which it did not save"))
            .view()
    }
}

/// The reference executor of one program in float type `F`.
#[derive(Clone, Debug)]
pub struct Executor<F> {
    program: Program,
    grad: GradProgram,
    stats: Option<InputStats>,
    params: Vec<ArrayD<F>>,
}

impl<F: Real> Executor<F> {
    /// An executor with the given parameter values (converted to `F`). `stats` must be given
    /// when the program standardizes its input.
    pub fn new(program: &Program, params: &[ArrayD<f32>], stats: Option<InputStats>) -> Self {
        assert!(
            program.input.preprocess != Preprocess::Standardize || stats.is_some(),
            "a standardized input needs the training split's statistics"
        );
        let mut executor = Executor {
            program: program.clone(),
            grad: GradProgram::new(program),
            stats,
            params: Vec::new(),
        };
        executor.set_params(params);
        executor
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    pub fn grad_program(&self) -> &GradProgram {
        &self.grad
    }

    pub fn params(&self) -> &[ArrayD<F>] {
        &self.params
    }

    /// Mutable parameters; each stays in standard (row-major) layout.
    pub fn params_mut(&mut self) -> &mut [ArrayD<F>] {
        &mut self.params
    }

    /// Replace every parameter (shapes must match the program's).
    pub fn set_params(&mut self, params: &[ArrayD<f32>]) {
        assert_eq!(params.len(), self.program.params.len(), "parameter count");
        self.params = params
            .iter()
            .zip(&self.program.params)
            .map(|(value, param)| {
                assert_eq!(value.shape(), &param.shape[..], "shape of {}", param.name);
                value.as_standard_layout().mapv(|x| F::of(f64::from(x)))
            })
            .collect();
    }

    /// The raw batch as the network's input `v0`: `x / 255`, or `(x - mean) / std` per feature
    /// in the data set's order; then, for an image input, each pixel's channels side by side
    /// (`image::planes_to_channels_last`).
    pub fn input(&self, pixels: &[u8]) -> Array2<F> {
        let x = self.preprocess(pixels);
        match self.program.input.shape {
            Shape::Image { .. } => {
                image::planes_to_channels_last(x.view(), self.program.input.shape)
            }
            Shape::Flat(_) => x,
        }
    }

    /// `x / 255`, or `(x - mean) / std` per feature, in the data set's order.
    fn preprocess(&self, pixels: &[u8]) -> Array2<F> {
        let features = self.program.input.features;
        let rows = pixels.len() / features;
        let raw = ArrayView2::from_shape((rows, features), &pixels[..rows * features])
            .expect("pixels are rows of `features` bytes");
        match (&self.program.input.preprocess, &self.stats) {
            (Preprocess::Standardize, Some(stats)) => {
                let mut x = Array2::zeros((rows, features));
                for (mut out, row) in x.rows_mut().into_iter().zip(raw.rows()) {
                    for (((o, &p), &mean), &std) in
                        out.iter_mut().zip(row).zip(&stats.mean).zip(&stats.std)
                    {
                        *o = F::of(f64::from((f32::from(p) - mean) / std));
                    }
                }
                x
            }
            // A division, not a multiplication by 1/255, which rounds differently in f32.
            _ => raw.mapv(|p| F::of(f64::from(p)) / F::of(255.0)),
        }
    }

    /// The logits of a forward pass over `x` (`[n, features]`); a `Train` pass uses batch
    /// statistics but updates nothing.
    pub fn forward(&self, x: ArrayView2<F>, pass: Pass) -> Array2<F> {
        self.forward_from_row(x, pass, 0)
    }

    /// Like `forward`, with the rows of `x` numbered from `first_row` for the dropout masks (so
    /// a large prediction can run in chunks and draw the masks of one big batch).
    pub fn forward_from_row(&self, x: ArrayView2<F>, pass: Pass, first_row: usize) -> Array2<F> {
        let mut tape = self.run(x, pass, first_row, Keep::LastOnly);
        let last = self.program.ops.last().map_or(0, |op| op.output.0 as usize);
        tape.values[last]
            .take()
            .expect("the last value is always kept")
    }

    /// Every value `v0..vN` of a forward pass, for comparisons with other backends.
    pub fn forward_values(&self, x: ArrayView2<F>, pass: Pass) -> Vec<Array2<F>> {
        let tape = self.run(x, pass, 0, Keep::All);
        tape.values
            .into_iter()
            .map(|v| v.expect("all values kept"))
            .collect()
    }

    /// The training loss (mean cross-entropy plus penalty) on a batch at `step`, without
    /// gradients.
    pub fn loss(&self, x: ArrayView2<F>, labels: &[u8], step: u64) -> F {
        let logits = self.forward(x, Pass::Train { step });
        let (loss, _, _) = softmax_cross_entropy(logits.view(), labels, false);
        loss + self.penalty()
    }

    /// Loss, accuracy count, and the gradient of every trainable parameter on a batch, with the
    /// dropout masks of training step `step`. Nothing is updated.
    pub fn loss_and_grads(&self, x: ArrayView2<F>, labels: &[u8], step: u64) -> LossAndGrads<F> {
        let pass = Pass::Train { step };
        let mut tape = self.run(x, pass, 0, Keep::SavedForBackward);
        let logits = tape.value(self.grad.head.logits);
        let (cross_entropy, correct, dlogits) = softmax_cross_entropy(logits, labels, true);
        let mut grads = self.backward(&tape, dlogits.expect("gradient asked"), pass);
        self.add_regularizer_grads(&mut grads);
        let batch_moments = tape
            .batch_norm
            .iter_mut()
            .filter_map(|r| r.take().map(|r| r.moments))
            .collect();
        LossAndGrads {
            loss: cross_entropy + self.penalty(),
            correct,
            grads,
            batch_moments,
        }
    }

    fn param1(&self, id: ParamId) -> ArrayView1<'_, F> {
        self.params[id.index()]
            .view()
            .into_dimensionality::<Ix1>()
            .expect("vector parameter")
    }

    fn param2(&self, id: ParamId) -> ArrayView2<'_, F> {
        self.params[id.index()]
            .view()
            .into_dimensionality::<Ix2>()
            .expect("kernel parameter")
    }

    /// A convolution kernel `[kh, kw, cin, cout]` as the `[kh·kw·cin, cout]` matrix its patches
    /// are multiplied by (the same floats: parameters are kept in standard layout).
    fn kernel_matrix(&self, id: ParamId) -> ArrayView2<'_, F> {
        let kernel = &self.params[id.index()];
        let filters = *kernel.shape().last().expect("a kernel has axes");
        kernel
            .view()
            .into_shape_with_order((kernel.len() / filters, filters))
            .expect("parameters are kept in standard layout")
    }

    /// Where the windows of a convolution or pooling op fall on its input.
    fn windows(&self, op: &Op) -> Windows {
        let windows = match op.kind {
            OpKind::Conv2d {
                kernel,
                strides,
                padding,
                ..
            } => {
                let shape = &self.program.param(kernel).shape;
                Windows::new(op.shape_in, [shape[0], shape[1]], strides, padding)
            }
            OpKind::Pool {
                size,
                strides,
                padding,
                ..
            } => Windows::new(op.shape_in, size, strides, padding),
            _ => unreachable!("only convolutions and pooling slide windows"),
        };
        let (height, width, _) = op.shape.image().expect("a windowed op writes an image");
        assert_eq!(windows.out(), [height, width], "{}'s output size", op.layer);
        windows
    }

    fn run(&self, x: ArrayView2<F>, pass: Pass, first_row: usize, keep: Keep) -> Tape<F> {
        let value_count = self.program.ops.len() + 1;
        let mut tape = Tape {
            values: (0..value_count).map(|_| None).collect(),
            batch_norm: (0..self.program.ops.len()).map(|_| None).collect(),
        };
        let mut current = x.to_owned();
        for op in &self.program.ops {
            let next = self.apply(op, current.view(), pass, first_row, &mut tape);
            let kept = match keep {
                Keep::All => true,
                Keep::SavedForBackward => self.grad.keeps_value(op.input),
                Keep::LastOnly => false,
            };
            if kept {
                tape.values[op.input.0 as usize] = Some(current);
            }
            current = next;
        }
        tape.values[value_count - 1] = Some(current);
        tape
    }

    fn apply(
        &self,
        op: &Op,
        x: ArrayView2<F>,
        pass: Pass,
        first_row: usize,
        tape: &mut Tape<F>,
    ) -> Array2<F> {
        match op.kind {
            OpKind::Dense { kernel, bias, .. } => {
                let mut y = x.dot(&self.param2(kernel));
                if let Some(bias) = bias {
                    y += &self.param1(bias);
                }
                y
            }
            OpKind::Activation(activation) => activate(activation, x),
            OpKind::Conv2d { kernel, bias, .. } => image::conv2d(
                x,
                &self.windows(op),
                self.kernel_matrix(kernel),
                bias.map(|b| self.param1(b)),
            ),
            OpKind::Pool { kind, .. } => image::pool(kind, x, &self.windows(op)),
            OpKind::GlobalAvgPool => image::global_avg_pool(x, op.shape_in),
            OpKind::Flatten => x.to_owned(),
            OpKind::Prelu { alpha } => {
                let mut y = x.to_owned();
                let alpha = self.param1(alpha);
                for mut row in y.rows_mut() {
                    Zip::from(&mut row).and(&alpha).for_each(|v, &a| {
                        if *v < F::zero() {
                            *v = a * *v;
                        }
                    });
                }
                y
            }
            OpKind::BatchNorm {
                gamma,
                beta,
                moving_mean,
                moving_variance,
                epsilon,
                ..
            } => {
                let (gamma, beta) = (self.param1(gamma), self.param1(beta));
                let epsilon = F::of(f64::from(epsilon));
                let x = channel_rows(&x, op.shape_in);
                let y = if let Pass::Train { .. } = pass {
                    let record = batch_norm_train(x.view(), epsilon, op.index);
                    let y = &record.x_hat * &gamma + beta;
                    tape.batch_norm[op.index as usize] = Some(record);
                    y
                } else {
                    let mean = self.param1(moving_mean);
                    let inv_std = self
                        .param1(moving_variance)
                        .mapv(|v| F::one() / (v + epsilon).sqrt());
                    (&x - &mean) * &inv_std * gamma + beta
                };
                value_rows(y, op.width)
            }
            OpKind::Dropout { rate } => match self.dropout_key(pass, op) {
                None => x.to_owned(),
                Some(key) => {
                    let scale = F::of(1.0 / (1.0 - f64::from(rate)));
                    let mut y = x.to_owned();
                    for_each_mask(&mut y, key, rate, first_row, |v, kept| {
                        *v = if kept { *v * scale } else { F::zero() };
                    });
                    y
                }
            },
            OpKind::AlphaDropout { rate } => match self.dropout_key(pass, op) {
                None => x.to_owned(),
                Some(key) => {
                    let (a, b) = alpha_dropout_affine(rate);
                    let (a, b) = (F::of(a), F::of(b));
                    let dropped = F::of(-SELU_LAMBDA_F64 * SELU_ALPHA_F64);
                    let mut y = x.to_owned();
                    for_each_mask(&mut y, key, rate, first_row, |v, kept| {
                        *v = a * if kept { *v } else { dropped } + b;
                    });
                    y
                }
            },
        }
    }

    /// The mask key of a dropout op in this pass, or `None` when dropout is off.
    fn dropout_key(&self, pass: Pass, op: &Op) -> Option<u32> {
        let seed = self.program.train.seed;
        match pass {
            Pass::Train { step } => Some(rng::dropout_key(seed, Stream::Train, step, op.index)),
            Pass::McDropout { sample } => Some(rng::dropout_key(
                seed,
                Stream::McDropout,
                u64::from(sample),
                op.index,
            )),
            Pass::Inference => None,
        }
    }

    fn backward(&self, tape: &Tape<F>, dlogits: Array2<F>, pass: Pass) -> Vec<Option<ArrayD<F>>> {
        let mut grads: Vec<Option<ArrayD<F>>> = vec![None; self.params.len()];
        let mut dy = dlogits;
        for step in &self.grad.steps {
            let op = &self.program.ops[step.op as usize];
            let needs_dx = step.dx.is_some();
            let dx =
                match step.rule {
                    GradRule::Dense { x, kernel, bias } => {
                        let x = tape.value(x);
                        grads[kernel.index()] = Some(x.t().dot(&dy).into_dyn());
                        if let Some(bias) = bias {
                            grads[bias.index()] = Some(dy.sum_axis(Axis(0)).into_dyn());
                        }
                        needs_dx.then(|| dy.dot(&self.param2(kernel).t()))
                    }
                    GradRule::Activation { activation, reads } => {
                        let v = reads.map(|v| tape.value(v));
                        Some(activation_backward(activation, dy, v))
                    }
                    GradRule::Prelu { x, alpha } => {
                        let x = tape.value(x);
                        let mut dalpha = Array1::zeros(op.width);
                        for (dy_row, x_row) in dy.rows().into_iter().zip(x.rows()) {
                            Zip::from(&mut dalpha).and(&dy_row).and(&x_row).for_each(
                                |da, &d, &x| {
                                    if x <= F::zero() {
                                        *da += d * x;
                                    }
                                },
                            );
                        }
                        grads[alpha.index()] = Some(dalpha.into_dyn());
                        needs_dx.then(|| {
                            let alpha = self.param1(alpha);
                            let mut dx = dy;
                            for (mut d_row, x_row) in dx.rows_mut().into_iter().zip(x.rows()) {
                                Zip::from(&mut d_row).and(&x_row).and(&alpha).for_each(
                                    |d, &x, &a| {
                                        if x <= F::zero() {
                                            *d *= a;
                                        }
                                    },
                                );
                            }
                            dx
                        })
                    }
                    GradRule::BatchNorm { gamma, beta } => {
                        let record = tape.batch_norm[step.op as usize]
                            .as_ref()
                            .expect("batch norm ran in training mode");
                        let dy = channel_rows(&dy, op.shape);
                        grads[beta.index()] = Some(dy.sum_axis(Axis(0)).into_dyn());
                        let dgamma = (&dy * &record.x_hat).sum_axis(Axis(0));
                        grads[gamma.index()] = Some(dgamma.into_dyn());
                        needs_dx.then(|| {
                            let dx = batch_norm_dx(dy.view(), self.param1(gamma), record);
                            value_rows(dx, op.width_in)
                        })
                    }
                    GradRule::Dropout { rate } => {
                        let key = self.dropout_key(pass, op).expect("training pass");
                        let scale = F::of(1.0 / (1.0 - f64::from(rate)));
                        let mut dx = dy;
                        for_each_mask(&mut dx, key, rate, 0, |d, kept| {
                            *d = if kept { *d * scale } else { F::zero() };
                        });
                        Some(dx)
                    }
                    GradRule::AlphaDropout { rate, a } => {
                        let key = self.dropout_key(pass, op).expect("training pass");
                        let a = F::of(a);
                        let mut dx = dy;
                        for_each_mask(&mut dx, key, rate, 0, |d, kept| {
                            *d = if kept { *d * a } else { F::zero() };
                        });
                        Some(dx)
                    }
                    GradRule::Conv2d { x, kernel, bias } => {
                        let conv = image::conv2d_backward(
                            tape.value(x),
                            dy.view(),
                            &self.windows(op),
                            self.kernel_matrix(kernel),
                            needs_dx,
                        );
                        let shape = self.program.param(kernel).shape.clone();
                        let dk = conv.kernel.into_shape_with_order(shape);
                        grads[kernel.index()] = Some(dk.expect("dK has the kernel's floats"));
                        if let Some(bias) = bias {
                            grads[bias.index()] = Some(conv.bias.into_dyn());
                        }
                        conv.x
                    }
                    GradRule::Pool { kind, x } => Some(image::pool_backward(
                        kind,
                        x.map(|x| tape.value(x)),
                        dy.view(),
                        &self.windows(op),
                    )),
                    GradRule::GlobalAvgPool => {
                        Some(image::global_avg_pool_backward(dy.view(), op.shape_in))
                    }
                    GradRule::Flatten => Some(dy),
                };
            match dx {
                Some(dx) => dy = dx,
                // Only the first trained op's step has no dx, and it is the last step.
                None => break,
            }
        }
        grads
    }

    /// `Σ over regularized kernels of l1 Σ|w| + l2 Σw²`, summed in `f64` as
    /// `optim::regularizer_penalty` does: a running `f32` sum over the 30,000 weights of a
    /// 3,072-input kernel is off by about 1e-4 of the total, more than the JIT's error.
    fn penalty(&self) -> F {
        let mut total = 0.0f64;
        for (kernel, regularizer) in self.regularized_kernels() {
            let (l1, l2) = (f64::from(regularizer.l1), f64::from(regularizer.l2));
            let w = &self.params[kernel.index()];
            total += w.fold(0.0, |sum, &x| {
                let x = x.to_f64();
                sum + l1 * x.abs() + l2 * x * x
            });
        }
        F::of(total)
    }

    /// Adds `l1 sign(w) + 2 l2 w` (sign(0) = 0) to each regularized kernel's gradient, as
    /// `optim::add_regularizer_grad` does in f32.
    fn add_regularizer_grads(&self, grads: &mut [Option<ArrayD<F>>]) {
        for (kernel, regularizer) in self.regularized_kernels() {
            let (l1, l2) = (F::of(regularizer.l1.into()), F::of(regularizer.l2.into()));
            let two = F::of(2.0);
            if let Some(g) = grads[kernel.index()].as_mut() {
                Zip::from(g)
                    .and(&self.params[kernel.index()])
                    .for_each(|g, &w| *g += l1 * sign(w) + two * l2 * w);
            }
        }
    }

    /// The kernels of dense and convolution ops with a non-zero penalty, with their penalty.
    fn regularized_kernels(&self) -> impl Iterator<Item = (ParamId, Regularizer)> + '_ {
        self.program.ops.iter().filter_map(|op| match op.kind {
            OpKind::Dense {
                kernel,
                regularizer,
                ..
            }
            | OpKind::Conv2d {
                kernel,
                regularizer,
                ..
            } if !regularizer.is_zero() => Some((kernel, regularizer)),
            _ => None,
        })
    }
}

/// A batch norm's input or output gradient as rows of one float per channel: itself for a
/// vector, `[n·pixels, channels]` for an image (the same floats, so no copy in standard layout).
fn channel_rows<F: Real, S: Data<Elem = F>>(
    x: &ArrayBase<S, Ix2>,
    shape: Shape,
) -> CowArray<'_, F, Ix2> {
    let channels = shape.channels();
    x.to_shape((x.len() / channels.max(1), channels))
        .expect("a row is its pixels' channels")
}

/// The inverse of `channel_rows`: `[n·pixels, channels]` back into rows of `width` floats.
fn value_rows<F: Real>(x: Array2<F>, width: usize) -> Array2<F> {
    let rows = x.len() / width.max(1);
    let x = if x.is_standard_layout() {
        x
    } else {
        x.as_standard_layout().into_owned()
    };
    x.into_shape_with_order((rows, width))
        .expect("rows of `width` floats")
}

fn sign<F: Real>(x: F) -> F {
    if x > F::zero() {
        F::one()
    } else if x < F::zero() {
        -F::one()
    } else {
        F::zero()
    }
}

/// Calls `f(element, kept)` on every element of `y`, with the keep decision of the dropout mask
/// `key` at row-major element `(first_row + row) * width + col` (wrapping in u32, as the JIT).
fn for_each_mask<F>(
    y: &mut Array2<F>,
    key: u32,
    rate: f32,
    first_row: usize,
    mut f: impl FnMut(&mut F, bool),
) {
    let width = y.ncols();
    for (r, mut row) in y.rows_mut().into_iter().enumerate() {
        let base = ((first_row + r) * width) as u32;
        for (c, v) in row.iter_mut().enumerate() {
            f(v, rng::keep(key, base.wrapping_add(c as u32), rate));
        }
    }
}

fn batch_norm_train<F: Real>(x: ArrayView2<F>, epsilon: F, op: u32) -> BatchNormRecord<F> {
    let n = F::of(x.nrows() as f64);
    let mean = x.sum_axis(Axis(0)) / n;
    let centered = &x - &mean;
    let variance = centered.mapv(|c| c * c).sum_axis(Axis(0)) / n;
    let inv_std = variance.mapv(|v| F::one() / (v + epsilon).sqrt());
    let x_hat = centered * &inv_std;
    BatchNormRecord {
        moments: BatchMoments { op, mean, variance },
        x_hat,
        inv_std,
    }
}

/// `dx = inv · (g - mean(g) - x̂ ⊙ mean(g ⊙ x̂))` with `g = dy ⊙ γ`, means over rows.
fn batch_norm_dx<F: Real>(
    dy: ArrayView2<F>,
    gamma: ArrayView1<F>,
    record: &BatchNormRecord<F>,
) -> Array2<F> {
    let n = F::of(dy.nrows() as f64);
    let g = &dy * &gamma;
    let mean_g = g.sum_axis(Axis(0)) / n;
    let mean_g_xhat = (&g * &record.x_hat).sum_axis(Axis(0)) / n;
    (g - &mean_g - &record.x_hat * &mean_g_xhat) * &record.inv_std
}

/// `activation(x)`, element-wise or (softmax) row-wise.
pub fn activate<F: Real>(activation: Activation, x: ArrayView2<F>) -> Array2<F> {
    let half = F::of(0.5);
    match activation {
        Activation::Linear => x.to_owned(),
        Activation::Relu => x.mapv(|v| if v > F::zero() { v } else { F::zero() }),
        Activation::LeakyRelu { alpha } => {
            let alpha = F::of(alpha.into());
            x.mapv(|v| if v >= F::zero() { v } else { alpha * v })
        }
        Activation::Elu { alpha } => {
            let alpha = F::of(alpha.into());
            x.mapv(|v| if v > F::zero() { v } else { alpha * v.exp_m1() })
        }
        Activation::Selu => {
            let (lambda, alpha) = (F::of(SELU_LAMBDA_F64), F::of(SELU_ALPHA_F64));
            x.mapv(|v| lambda * if v > F::zero() { v } else { alpha * v.exp_m1() })
        }
        Activation::Gelu => {
            let inv_sqrt2 = F::of(std::f64::consts::FRAC_1_SQRT_2);
            x.mapv(|v| half * v * (F::one() + (v * inv_sqrt2).erf()))
        }
        Activation::Swish => x.mapv(|v| v * sigmoid(v)),
        Activation::Tanh => x.mapv(F::tanh),
        Activation::Sigmoid => x.mapv(sigmoid),
        Activation::Softmax => {
            let mut y = x.to_owned();
            for mut row in y.rows_mut() {
                softmax_in_place(row.as_slice_mut().expect("rows of a fresh array"));
            }
            y
        }
    }
}

fn sigmoid<F: Real>(v: F) -> F {
    F::one() / (F::one() + (-v).exp())
}

fn softmax_in_place<F: Real>(row: &mut [F]) {
    let max = row.iter().copied().fold(F::neg_infinity(), F::max);
    let mut sum = F::zero();
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// `dy ⊙ f'(v)` (softmax: the row-wise JVP), as `autodiff::GradRule::Activation` defines it;
/// `v` is the input or the output as `autodiff::activation_reads` says.
fn activation_backward<F: Real>(
    activation: Activation,
    dy: Array2<F>,
    v: Option<ArrayView2<F>>,
) -> Array2<F> {
    let mut dx = dy;
    let Some(v) = v else {
        return dx;
    };
    let one = F::one();
    let zero = F::zero();
    match activation {
        Activation::Linear => {}
        Activation::Relu => scale_by_derivative(&mut dx, v, |x| if x > zero { one } else { zero }),
        Activation::LeakyRelu { alpha } => {
            let alpha = F::of(alpha.into());
            scale_by_derivative(&mut dx, v, |x| if x > zero { one } else { alpha });
        }
        Activation::Elu { alpha } => {
            let alpha = F::of(alpha.into());
            scale_by_derivative(&mut dx, v, |x| if x > zero { one } else { alpha * x.exp() });
        }
        Activation::Selu => {
            let (lambda, alpha) = (F::of(SELU_LAMBDA_F64), F::of(SELU_ALPHA_F64));
            scale_by_derivative(&mut dx, v, |x| {
                lambda * if x > zero { one } else { alpha * x.exp() }
            });
        }
        Activation::Gelu => {
            let inv_sqrt2 = F::of(std::f64::consts::FRAC_1_SQRT_2);
            // 1/√(2π) = (2/√π) · (1/√2) / 2.
            let inv_sqrt_2pi =
                F::of(0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
            let half = F::of(0.5);
            scale_by_derivative(&mut dx, v, |x| {
                let cdf = half * (one + (x * inv_sqrt2).erf());
                cdf + x * inv_sqrt_2pi * (-half * x * x).exp()
            });
        }
        Activation::Swish => scale_by_derivative(&mut dx, v, |x| {
            let s = sigmoid(x);
            s * (one + x * (one - s))
        }),
        Activation::Tanh => scale_by_derivative(&mut dx, v, |y| one - y * y),
        Activation::Sigmoid => scale_by_derivative(&mut dx, v, |y| y * (one - y)),
        Activation::Softmax => {
            for (mut d_row, y_row) in dx.rows_mut().into_iter().zip(v.rows()) {
                let dot = d_row.dot(&y_row);
                Zip::from(&mut d_row)
                    .and(&y_row)
                    .for_each(|d, &y| *d = y * (*d - dot));
            }
        }
    }
    dx
}

fn scale_by_derivative<F: Real>(dx: &mut Array2<F>, v: ArrayView2<F>, derivative: impl Fn(F) -> F) {
    Zip::from(dx).and(&v).for_each(|d, &x| *d *= derivative(x));
}

/// Mean cross-entropy of `softmax(logits)` against `labels` by log-sum-exp, the number of rows
/// whose first arg-max is the label, and (if asked) `dlogits = (p - onehot) / n`.
pub fn softmax_cross_entropy<F: Real>(
    logits: ArrayView2<F>,
    labels: &[u8],
    want_grad: bool,
) -> (F, usize, Option<Array2<F>>) {
    let n = logits.nrows();
    assert_eq!(labels.len(), n, "one label per row");
    let inv_n = F::one() / F::of(n as f64);
    let mut total = F::zero();
    let mut correct = 0;
    let mut grad = want_grad.then(|| Array2::zeros(logits.raw_dim()));
    for (i, (row, &label)) in logits.rows().into_iter().zip(labels).enumerate() {
        let label = usize::from(label);
        let (argmax, max) =
            row.iter()
                .enumerate()
                .fold((0, F::neg_infinity()), |(bi, bv), (i, &v)| {
                    if v > bv {
                        (i, v)
                    } else {
                        (bi, bv)
                    }
                });
        correct += usize::from(argmax == label);
        let lse = max + row.iter().fold(F::zero(), |s, &v| s + (v - max).exp()).ln();
        total += lse - row[label];
        if let Some(grad) = grad.as_mut() {
            let mut g = grad.row_mut(i);
            Zip::from(&mut g)
                .and(&row)
                .for_each(|g, &z| *g = (z - lse).exp() * inv_n);
            g[label] -= inv_n;
        }
    }
    (total * inv_n, correct, grad)
}

/// Row-wise softmax of `logits`, for predictions.
pub fn softmax_rows<F: Real>(logits: ArrayView2<F>) -> Array2<F> {
    activate(Activation::Softmax, logits)
}
