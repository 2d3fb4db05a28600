//! The image ops of the reference executor, forward and backward, in any `Real` float type:
//! 2-D convolution (an im2col per example, then a matrix product), max and average pooling,
//! global average pooling, and the permutation of CIFAR-10's colour planes into the
//! channels-last rows of an image value.
//!
//! Every function reads and writes `[batch, width]` values as the rest of `exec` does, an image
//! row being its pixels in row-major order, channels last; `Windows` says where an op's windows
//! fall. This file is arithmetic only: which values are saved, which parameter gets which
//! gradient and when a step needs its input's gradient are `exec`'s business.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use super::real::Real;
use netc_ir::ir::{Padding, PoolKind, Shape};

/// Where the windows of a convolution or a pooling op fall on its input image: sizes, strides
/// and padding resolved into pixel counts (`Padding::output` and `Padding::before`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    /// Rows of pixels of the input image.
    height: usize,
    /// Pixels per row of the input image.
    width: usize,
    /// Channels per pixel of the input image.
    channels: usize,
    /// Output pixels down and across: one per window.
    out: [usize; 2],
    /// The window's height and width.
    size: [usize; 2],
    /// Pixels between windows, down and across.
    strides: [usize; 2],
    /// Padding before the first pixel, down and across.
    before: [usize; 2],
}

impl Windows {
    /// The windows of `size` moved by `strides` over an image of shape `input`.
    pub fn new(input: Shape, size: [usize; 2], strides: [usize; 2], padding: Padding) -> Windows {
        let (height, width, channels) = input.image().expect("an image op reads an image");
        let along = |side: usize, len: usize| {
            (
                padding.output(len, size[side], strides[side]),
                padding.before(len, size[side], strides[side]),
            )
        };
        let ((out_h, before_h), (out_w, before_w)) = (along(0, height), along(1, width));
        Windows {
            height,
            width,
            channels,
            out: [out_h, out_w],
            size,
            strides,
            before: [before_h, before_w],
        }
    }

    /// Output pixels down and across.
    pub fn out(&self) -> [usize; 2] {
        self.out
    }

    /// Number of windows (output pixels) per image.
    fn out_pixels(&self) -> usize {
        self.out[0] * self.out[1]
    }

    /// The input pixel (`row · width + column`) under each tap of output pixel `r`'s window, in
    /// row-major tap order, `None` for the taps on the padding.
    fn taps(&self, r: usize) -> impl Iterator<Item = Option<usize>> + '_ {
        let (i, j) = (r / self.out[1], r % self.out[1]);
        let (top, left) = (i * self.strides[0], j * self.strides[1]);
        (0..self.size[0]).flat_map(move |di| {
            (0..self.size[1]).map(move |dj| {
                let p = (top + di).checked_sub(self.before[0])?;
                let q = (left + dj).checked_sub(self.before[1])?;
                (p < self.height && q < self.width).then_some(p * self.width + q)
            })
        })
    }
}

/// The im2col of one example: row `r` of `patches` becomes output pixel `r`'s window, its taps
/// in row-major order and each tap's channels side by side (the order of a `[kh, kw, cin, cout]`
/// kernel's rows), zeros where the window covers padding.
fn im2col<F: Real>(windows: &Windows, x: &[F], patches: &mut Array2<F>) {
    let c = windows.channels;
    for (r, mut patch) in patches.rows_mut().into_iter().enumerate() {
        let patch = patch.as_slice_mut().expect("rows of a fresh array");
        for (tap, pixel) in patch.chunks_mut(c).zip(windows.taps(r)) {
            match pixel {
                Some(p) => tap.copy_from_slice(&x[p * c..(p + 1) * c]),
                None => tap.fill(F::zero()),
            }
        }
    }
}

/// The inverse gather of `im2col`: adds each tap of each row of `patches` to the input pixel it
/// was read from (taps on the padding are dropped).
fn col2im_add<F: Real>(windows: &Windows, patches: &Array2<F>, dx: &mut [F]) {
    let c = windows.channels;
    for (r, patch) in patches.rows().into_iter().enumerate() {
        let patch = patch.as_slice().expect("rows of a fresh array");
        for (tap, pixel) in patch.chunks(c).zip(windows.taps(r)) {
            if let Some(p) = pixel {
                for (d, &g) in dx[p * c..(p + 1) * c].iter_mut().zip(tap) {
                    *d += g;
                }
            }
        }
    }
}

/// `OpKind::Conv2d` forward: per example, the im2col of `x` times `kernel` (the
/// `[kh·kw·cin, cout]` matrix of the `[kh, kw, cin, cout]` parameter), plus `bias`.
pub fn conv2d<F: Real>(
    x: ArrayView2<F>,
    windows: &Windows,
    kernel: ArrayView2<F>,
    bias: Option<ArrayView1<F>>,
) -> Array2<F> {
    let x = x.as_standard_layout();
    let (pixels, filters) = (windows.out_pixels(), kernel.ncols());
    let mut y = Array2::zeros((x.nrows(), pixels * filters));
    let mut patches = Array2::zeros((pixels, kernel.nrows()));
    for (x_row, y_row) in x.rows().into_iter().zip(y.rows_mut()) {
        im2col(
            windows,
            x_row.as_slice().expect("standard layout"),
            &mut patches,
        );
        let mut out = y_row
            .into_shape_with_order((pixels, filters))
            .expect("an output row is its pixels' filters");
        general_mat_mul(F::one(), &patches, &kernel, F::zero(), &mut out);
        if let Some(bias) = bias {
            out += &bias;
        }
    }
    y
}

/// What the backward step of a convolution computes (`autodiff::GradRule::Conv2d`).
pub struct ConvGrads<F> {
    /// `dK` as the `[kh·kw·cin, cout]` matrix (the kernel parameter's floats in its order).
    pub kernel: Array2<F>,
    /// `db`: `dy` summed over the batch and the output pixels, per filter.
    pub bias: Array1<F>,
    /// `dx`, when asked for.
    pub x: Option<Array2<F>>,
}

/// `OpKind::Conv2d` backward, with the patches of the saved input `x`: `dK = Σ patchesᵀ · dy`,
/// `db = Σ dy`, and (if `needs_dx`) `dx` as the col2im of `dy · Kᵀ`.
pub fn conv2d_backward<F: Real>(
    x: ArrayView2<F>,
    dy: ArrayView2<F>,
    windows: &Windows,
    kernel: ArrayView2<F>,
    needs_dx: bool,
) -> ConvGrads<F> {
    let (x, dy) = (x.as_standard_layout(), dy.as_standard_layout());
    let (pixels, filters) = (windows.out_pixels(), kernel.ncols());
    let mut dk = Array2::zeros(kernel.raw_dim());
    let mut bias = Array1::zeros(filters);
    let mut dx = needs_dx.then(|| Array2::zeros(x.raw_dim()));
    let mut patches = Array2::zeros((pixels, kernel.nrows()));
    let mut dpatches = Array2::zeros((pixels, kernel.nrows()));
    for (n, (x_row, dy_row)) in x.rows().into_iter().zip(dy.rows()).enumerate() {
        let dy_row = dy_row
            .into_shape_with_order((pixels, filters))
            .expect("a gradient row is its pixels' filters");
        im2col(
            windows,
            x_row.as_slice().expect("standard layout"),
            &mut patches,
        );
        general_mat_mul(F::one(), &patches.t(), &dy_row, F::one(), &mut dk);
        bias += &dy_row.sum_axis(Axis(0));
        if let Some(dx) = dx.as_mut() {
            general_mat_mul(F::one(), &dy_row, &kernel.t(), F::zero(), &mut dpatches);
            let mut dx_row = dx.row_mut(n);
            let dx_row = dx_row.as_slice_mut().expect("rows of a fresh array");
            col2im_add(windows, &dpatches, dx_row);
        }
    }
    ConvGrads {
        kernel: dk,
        bias,
        x: dx,
    }
}

/// `OpKind::Pool` forward: per channel, the largest value or the mean of each window's pixels
/// inside the image (padding never takes part).
pub fn pool<F: Real>(kind: PoolKind, x: ArrayView2<F>, windows: &Windows) -> Array2<F> {
    let x = x.as_standard_layout();
    let c = windows.channels;
    let mut y = Array2::zeros((x.nrows(), windows.out_pixels() * c));
    let mut pixels = Vec::with_capacity(windows.size[0] * windows.size[1]);
    for (x_row, mut y_row) in x.rows().into_iter().zip(y.rows_mut()) {
        let x_row = x_row.as_slice().expect("standard layout");
        let y_row = y_row.as_slice_mut().expect("rows of a fresh array");
        for (r, out) in y_row.chunks_mut(c).enumerate() {
            pixels.clear();
            pixels.extend(windows.taps(r).flatten());
            for (channel, out) in out.iter_mut().enumerate() {
                *out = match kind {
                    PoolKind::Max => x_row[window_argmax(x_row, &pixels, c, channel)],
                    PoolKind::Average => window_mean(x_row, &pixels, c, channel),
                };
            }
        }
    }
    y
}

/// `OpKind::Pool` backward: each window's `dy` to its maximum (found again in the saved input
/// `x`, which max pooling needs), or shared equally by its pixels inside the image.
pub fn pool_backward<F: Real>(
    kind: PoolKind,
    x: Option<ArrayView2<F>>,
    dy: ArrayView2<F>,
    windows: &Windows,
) -> Array2<F> {
    let dy = dy.as_standard_layout();
    let c = windows.channels;
    let width_in = windows.height * windows.width * c;
    let x = x.as_ref().map(|x| x.as_standard_layout());
    let mut dx = Array2::zeros((dy.nrows(), width_in));
    let mut pixels = Vec::with_capacity(windows.size[0] * windows.size[1]);
    for (n, (dy_row, mut dx_row)) in dy.rows().into_iter().zip(dx.rows_mut()).enumerate() {
        let dy_row = dy_row.as_slice().expect("standard layout");
        let dx_row = dx_row.as_slice_mut().expect("rows of a fresh array");
        let x_row = x
            .as_ref()
            .map(|x| x.row(n).to_slice().expect("standard layout"));
        for (r, d) in dy_row.chunks(c).enumerate() {
            pixels.clear();
            pixels.extend(windows.taps(r).flatten());
            for (channel, &d) in d.iter().enumerate() {
                match kind {
                    PoolKind::Max => {
                        let x_row = x_row.expect("max pooling reads its saved input");
                        dx_row[window_argmax(x_row, &pixels, c, channel)] += d;
                    }
                    PoolKind::Average => {
                        let share = d / F::of(pixels.len() as f64);
                        for &p in &pixels {
                            dx_row[p * c + channel] += share;
                        }
                    }
                }
            }
        }
    }
    dx
}

/// The element of `x` (an image row of `c` channels) holding the largest value of `channel`
/// over `pixels`, the first one in their order on ties.
fn window_argmax<F: Real>(x: &[F], pixels: &[usize], c: usize, channel: usize) -> usize {
    pixels
        .iter()
        .map(|&p| p * c + channel)
        .reduce(|best, e| if x[e] > x[best] { e } else { best })
        .expect("every window covers a pixel of the image")
}

/// The mean of `channel` over `pixels` of `x` (an image row of `c` channels).
fn window_mean<F: Real>(x: &[F], pixels: &[usize], c: usize, channel: usize) -> F {
    let sum = pixels
        .iter()
        .fold(F::zero(), |sum, &p| sum + x[p * c + channel]);
    sum / F::of(pixels.len() as f64)
}

/// `OpKind::GlobalAvgPool` forward: the mean of each channel over the pixels of `shape`.
pub fn global_avg_pool<F: Real>(x: ArrayView2<F>, shape: Shape) -> Array2<F> {
    let (height, width, channels) = shape.image().expect("global pooling reads an image");
    let pixels = height * width;
    let x = x
        .to_shape((x.nrows(), pixels, channels))
        .expect("an image row is its pixels' channels");
    x.sum_axis(Axis(1)) / F::of(pixels as f64)
}

/// `OpKind::GlobalAvgPool` backward: `dx[p, c] = dy[c] / pixels` for every pixel of `shape`.
pub fn global_avg_pool_backward<F: Real>(dy: ArrayView2<F>, shape: Shape) -> Array2<F> {
    let (height, width, channels) = shape.image().expect("global pooling reads an image");
    let count = F::of((height * width) as f64);
    Array2::from_shape_fn((dy.nrows(), shape.len()), |(n, e)| {
        dy[[n, e % channels]] / count
    })
}

/// CIFAR-10 stores an image as colour planes (every red byte, then every green, then every
/// blue); an image value is channels last. Element `(i, j, c)` of each output row, at
/// `(i·width + j)·channels + c`, is element `c·height·width + i·width + j` of the input row.
pub fn planes_to_channels_last<F: Real>(x: ArrayView2<F>, shape: Shape) -> Array2<F> {
    let (height, width, channels) = shape.image().expect("an image input");
    let pixels = height * width;
    Array2::from_shape_fn((x.nrows(), shape.len()), |(n, e)| {
        x[[n, (e % channels) * pixels + e / channels]]
    })
}
