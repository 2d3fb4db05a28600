//! Tests of the image ops: output sizes against TensorFlow's rule, the convolution's forward
//! pass against a naive loop written here, central finite differences in `f64` for every image
//! op and its parameters, the pooling rules at the border and on ties, batch norm per channel,
//! the channels-last input, the max-norm of a convolution, and a small convnet that learns.

use ndarray::{arr2, Array2, ArrayD, Ix2};

use super::image::{self, Windows};
use super::tests::{
    assert_f32_agrees_with_f64, batch, check_gradients, f64_executor, labels, normal_matrix, sgd,
    train_epochs, u8_data,
};
use super::{Executor, Interp, Pass};
use netc_ir::backend::{Backend, InputStats};
use netc_ir::ir::{Activation, Padding, PoolKind, Preprocess, Regularizer, Shape};
use netc_ir::testing::{program, program_image, ConvLayer, Layer};

fn conv(filters: usize, size: [usize; 2], strides: [usize; 2], padding: Padding) -> ConvLayer {
    ConvLayer {
        strides,
        padding,
        ..ConvLayer::new(filters, size)
    }
}

fn image_shape(height: usize, width: usize, channels: usize) -> Shape {
    Shape::Image {
        height,
        width,
        channels,
    }
}

/// TensorFlow's output length and padding before, written from its documentation
/// (`tf.nn.convolution`): `valid` gives `ceil((in - size + 1) / stride)` and no padding; `same`
/// gives `ceil(in / stride)`, padded by `max((out - 1)·stride + size - in, 0)`, the extra pixel
/// of an odd total after.
fn tensorflow_side(padding: Padding, len: usize, size: usize, stride: usize) -> (usize, usize) {
    match padding {
        Padding::Valid => ((len + 1).saturating_sub(size).div_ceil(stride), 0),
        Padding::Same => {
            let out = len.div_ceil(stride);
            let total = ((out - 1) * stride + size).saturating_sub(len);
            (out, total / 2)
        }
    }
}

#[test]
fn output_sizes_and_padding_follow_tensorflow() {
    // (len, size, stride, padding, out, before)
    let cases = [
        (32, 3, 2, Padding::Same, 16, 0),
        (32, 3, 1, Padding::Same, 32, 1),
        (5, 3, 2, Padding::Valid, 2, 0),
        (7, 3, 2, Padding::Same, 4, 1),
        (6, 4, 2, Padding::Same, 3, 1),
        (5, 2, 1, Padding::Same, 5, 0),
        (7, 1, 3, Padding::Same, 3, 0),
        (7, 2, 3, Padding::Valid, 2, 0),
        (2, 3, 1, Padding::Valid, 0, 0),
    ];
    for (len, size, stride, padding, out, before) in cases {
        let case = format!("{len} {} size {size} stride {stride}", padding.name());
        assert_eq!(padding.output(len, size, stride), out, "{case}");
        assert_eq!(padding.before(len, size, stride), before, "{case}");
        if out > 0 {
            assert_eq!(
                tensorflow_side(padding, len, size, stride),
                (out, before),
                "{case}"
            );
        }
    }
    // The executor's windows, and a whole conv layer on a CIFAR-10 image.
    let windows = Windows::new(image_shape(7, 5, 2), [3, 3], [2, 2], Padding::Same);
    assert_eq!(windows.out(), [4, 3]);
    let p = program_image(
        32,
        32,
        3,
        &[
            Layer::Conv2d(conv(8, [3, 3], [2, 2], Padding::Same)),
            Layer::Flatten,
        ],
    );
    assert_eq!(p.ops[0].shape, image_shape(16, 16, 8));
    let exec = f64_executor(&p);
    let y = exec.forward(normal_matrix(2, 32 * 32 * 3, 1).view(), Pass::Inference);
    assert_eq!(y.dim(), (2, 16 * 16 * 8));
}

/// `y[n, i, j, o] = b[o] + Σ x[n, i·sh + di - ph, j·sw + dj - pw, c] · K[di, dj, c, o]`, one
/// element at a time.
fn naive_conv(
    x: &Array2<f64>,
    input: (usize, usize, usize),
    kernel: &ArrayD<f64>,
    bias: Option<&ArrayD<f64>>,
    strides: [usize; 2],
    padding: Padding,
) -> Array2<f64> {
    let (h, w, c) = input;
    let (kh, kw, filters) = (kernel.shape()[0], kernel.shape()[1], kernel.shape()[3]);
    let (oh, ph) = tensorflow_side(padding, h, kh, strides[0]);
    let (ow, pw) = tensorflow_side(padding, w, kw, strides[1]);
    let mut y = Array2::zeros((x.nrows(), oh * ow * filters));
    for n in 0..x.nrows() {
        for i in 0..oh {
            for j in 0..ow {
                for o in 0..filters {
                    let mut sum = bias.map_or(0.0, |b| b[[o]]);
                    for di in 0..kh {
                        for dj in 0..kw {
                            let p = (i * strides[0] + di) as isize - ph as isize;
                            let q = (j * strides[1] + dj) as isize - pw as isize;
                            if p < 0 || q < 0 || p >= h as isize || q >= w as isize {
                                continue;
                            }
                            let pixel = p as usize * w + q as usize;
                            for ch in 0..c {
                                sum += x[[n, pixel * c + ch]] * kernel[[di, dj, ch, o]];
                            }
                        }
                    }
                    y[[n, (i * ow + j) * filters + o]] = sum;
                }
            }
        }
    }
    y
}

#[test]
fn conv_forward_matches_a_naive_loop() {
    // (height, width, channels, conv, output height and width)
    let cases = [
        (5, 7, 3, conv(4, [2, 3], [1, 1], Padding::Valid), (4, 5)),
        (5, 7, 3, conv(4, [2, 3], [2, 2], Padding::Same), (3, 4)),
        (5, 7, 3, conv(2, [3, 2], [2, 1], Padding::Valid), (2, 6)),
        (7, 7, 2, conv(3, [3, 3], [2, 2], Padding::Same), (4, 4)),
        (5, 5, 1, conv(2, [3, 3], [2, 2], Padding::Valid), (2, 2)),
        (6, 6, 2, conv(2, [4, 4], [2, 2], Padding::Same), (3, 3)),
        (7, 5, 2, conv(3, [1, 1], [3, 2], Padding::Same), (3, 3)),
        (
            5,
            7,
            3,
            ConvLayer {
                bias: false,
                ..conv(4, [3, 3], [1, 1], Padding::Same)
            },
            (5, 7),
        ),
    ];
    for (h, w, c, layer, (oh, ow)) in cases {
        let (strides, padding, filters, bias) =
            (layer.strides, layer.padding, layer.filters, layer.bias);
        let p = program_image(h, w, c, &[Layer::Conv2d(layer), Layer::Flatten]);
        assert_eq!(p.ops[0].shape, image_shape(oh, ow, filters));
        let exec = f64_executor(&p);
        let x = normal_matrix(3, h * w * c, 2);
        let values = exec.forward_values(x.view(), Pass::Inference);
        let params = exec.params();
        let bias = bias.then(|| &params[1]);
        let want = naive_conv(&x, (h, w, c), &params[0], bias, strides, padding);
        assert_eq!(values[1].dim(), want.dim());
        for (&got, &want) in values[1].iter().zip(&want) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
    }
}

/// A first convolution (so that the second one's input gradient is needed), then `layer`.
fn after_a_conv(layer: Layer) -> Vec<Layer> {
    vec![
        Layer::Conv2d(conv(3, [2, 2], [1, 1], Padding::Same)),
        Layer::Act(Activation::Tanh),
        layer,
        Layer::Flatten,
        Layer::Dense(3),
    ]
}

#[test]
fn gradients_of_conv2d() {
    for strides in [[1, 1], [2, 2], [2, 1]] {
        for padding in [Padding::Valid, Padding::Same] {
            for bias in [true, false] {
                let layer = ConvLayer {
                    bias,
                    ..conv(4, [2, 3], strides, padding)
                };
                check_gradients(
                    &program_image(5, 7, 3, &after_a_conv(Layer::Conv2d(layer))),
                    4,
                    0,
                );
            }
        }
    }
    // A penalty on a convolution's kernel, and a single convolution straight on the input.
    let regularized = ConvLayer {
        regularizer: Regularizer { l1: 0.01, l2: 0.02 },
        ..conv(4, [3, 3], [2, 2], Padding::Same)
    };
    check_gradients(
        &program_image(5, 7, 3, &after_a_conv(Layer::Conv2d(regularized))),
        4,
        0,
    );
    let single = [
        Layer::Conv2d(conv(2, [3, 2], [1, 2], Padding::Same)),
        Layer::Flatten,
        Layer::Dense(3),
    ];
    check_gradients(&program_image(5, 7, 3, &single), 4, 0);
}

#[test]
fn a_conv_kernel_penalty_is_added_to_the_loss() {
    let regularizer = Regularizer { l1: 0.01, l2: 0.02 };
    let layers = |regularizer| {
        let layer = ConvLayer {
            regularizer,
            ..conv(4, [3, 3], [1, 1], Padding::Same)
        };
        after_a_conv(Layer::Conv2d(layer))
    };
    let plain = f64_executor(&program_image(5, 7, 3, &layers(Regularizer::default())));
    let regularized = f64_executor(&program_image(5, 7, 3, &layers(regularizer)));
    let x = normal_matrix(4, 5 * 7 * 3, 11);
    let y = labels(4, 3, 12);
    let kernel = &plain.params()[2];
    assert_eq!(kernel, &regularized.params()[2]);
    let (l1, l2) = (f64::from(regularizer.l1), f64::from(regularizer.l2));
    let want = kernel
        .iter()
        .map(|w| l1 * w.abs() + l2 * w * w)
        .sum::<f64>();
    let added = regularized.loss(x.view(), &y, 0) - plain.loss(x.view(), &y, 0);
    assert!((added - want).abs() < 1e-12, "{added} vs {want}");
}

fn pool_layers(kind: PoolKind) -> Vec<Layer> {
    // (size, strides, padding): disjoint, overlapping (stride < size), uneven, and windows
    // hanging over the border.
    let windows = [
        ([2, 2], [2, 2], Padding::Valid),
        ([3, 3], [2, 2], Padding::Same),
        ([3, 2], [1, 2], Padding::Same),
        ([2, 3], [1, 1], Padding::Valid),
        ([3, 3], [3, 3], Padding::Same),
    ];
    windows
        .into_iter()
        .map(|(size, strides, padding)| match kind {
            PoolKind::Max => Layer::MaxPool {
                size,
                strides,
                padding,
            },
            PoolKind::Average => Layer::AvgPool {
                size,
                strides,
                padding,
            },
        })
        .collect()
}

#[test]
fn gradients_of_max_pool() {
    // The pooled values come out of a convolution of normal noise: no two in a window tie.
    for layer in pool_layers(PoolKind::Max) {
        check_gradients(&program_image(5, 7, 3, &after_a_conv(layer)), 4, 0);
    }
}

#[test]
fn gradients_of_avg_pool() {
    for layer in pool_layers(PoolKind::Average) {
        check_gradients(&program_image(5, 7, 3, &after_a_conv(layer)), 4, 0);
    }
}

#[test]
fn gradients_of_global_avg_pool_and_flatten() {
    let pooled = [
        Layer::Conv2d(conv(4, [3, 3], [1, 1], Padding::Same)),
        Layer::Act(Activation::Gelu),
        Layer::GlobalAvgPool,
        Layer::Dense(3),
    ];
    check_gradients(&program_image(5, 7, 3, &pooled), 5, 0);
    // Flatten between two trained layers, and a vector's batch norm after it.
    let flattened = [
        Layer::Conv2d(ConvLayer {
            bias: false,
            ..conv(2, [2, 3], [2, 2], Padding::Valid)
        }),
        Layer::Flatten,
        Layer::BatchNorm,
        Layer::Dense(3),
    ];
    check_gradients(&program_image(5, 7, 3, &flattened), 5, 0);
}

#[test]
fn gradients_of_batch_norm_prelu_and_dropout_on_images() {
    let normalized = [
        Layer::Conv2d(conv(4, [2, 2], [1, 1], Padding::Same)),
        Layer::BatchNorm,
        Layer::Act(Activation::Tanh),
        Layer::Conv2d(conv(3, [3, 3], [2, 2], Padding::Same)),
        Layer::Flatten,
        Layer::Dense(3),
    ];
    check_gradients(&program_image(5, 7, 3, &normalized), 4, 0);
    // Batch norm straight on the input image, and element-wise layers that keep the image.
    let on_input = [
        Layer::BatchNorm,
        Layer::Conv2d(conv(3, [2, 3], [1, 1], Padding::Valid)),
        Layer::Prelu,
        Layer::Dropout(0.3),
        Layer::MaxPool {
            size: [2, 2],
            strides: [1, 2],
            padding: Padding::Same,
        },
        Layer::GlobalAvgPool,
        Layer::Dense(3),
    ];
    let p = program_image(5, 7, 3, &on_input);
    assert_eq!(p.params[0].shape, [3], "one gamma per channel");
    check_gradients(&p, 4, 2);
}

#[test]
fn pooling_leaves_the_padding_out_and_ties_go_to_the_first_maximum() {
    // One 3×3 image of one channel, all negative: with zero padding, a max would be 0.
    let x = arr2(&[[-9.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -1.0f64]]);
    let windows = Windows::new(image_shape(3, 3, 1), [2, 2], [2, 2], Padding::Same);
    // Windows: rows 0-1 × columns 0-1, rows 0-1 × column 2, row 2 × columns 0-1, pixel (2, 2).
    let max = image::pool(PoolKind::Max, x.view(), &windows);
    assert_eq!(max, arr2(&[[-2.0, -3.0, -7.0, -1.0]]));
    let mean = image::pool(PoolKind::Average, x.view(), &windows);
    let want = [
        (-9.0 - 2.0 - 4.0 - 5.0) / 4.0,
        (-3.0 - 6.0) / 2.0,
        -7.5,
        -1.0,
    ];
    assert_eq!(mean, arr2(&[want]));
    let dy = arr2(&[[1.0, 2.0, 3.0, 4.0]]);
    let dx = image::pool_backward(PoolKind::Average, None, dy.view(), &windows);
    let want = [0.25, 0.25, 1.0, 0.25, 0.25, 1.0, 1.5, 1.5, 4.0];
    assert_eq!(dx, arr2(&[want]));

    // A constant image under overlapping 2×2 windows: each window's gradient goes to its first
    // pixel (top left), so pixel (p, q) gets one per window that starts there.
    let flat = Array2::from_elem((1, 9), 0.5f64);
    let windows = Windows::new(image_shape(3, 3, 1), [2, 2], [1, 1], Padding::Valid);
    let dy = arr2(&[[1.0, 10.0, 100.0, 1000.0]]);
    let dx = image::pool_backward(PoolKind::Max, Some(flat.view()), dy.view(), &windows);
    let want = [1.0, 10.0, 0.0, 100.0, 1000.0, 0.0, 0.0, 0.0, 0.0];
    assert_eq!(dx, arr2(&[want]));
    // Two channels pool separately: channel 1 ties on its last two pixels, channel 0 does not.
    let x = arr2(&[[1.0, 3.0, 2.0, 1.0, 4.0, 5.0, 0.0, 5.0]]);
    let windows = Windows::new(image_shape(2, 2, 2), [2, 2], [2, 2], Padding::Valid);
    assert_eq!(
        image::pool(PoolKind::Max, x.view(), &windows),
        arr2(&[[4.0, 5.0]])
    );
    let dy = arr2(&[[1.0, 2.0]]);
    let dx = image::pool_backward(PoolKind::Max, Some(x.view()), dy.view(), &windows);
    assert_eq!(dx, arr2(&[[0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0]]));
}

#[test]
fn global_avg_pool_averages_each_channel() {
    let x = arr2(&[[1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 6.0, 60.0f64]]);
    let shape = image_shape(2, 2, 2);
    assert_eq!(
        image::global_avg_pool(x.view(), shape),
        arr2(&[[3.0, 30.0]])
    );
    let dx = image::global_avg_pool_backward(arr2(&[[4.0, 8.0]]).view(), shape);
    assert_eq!(dx, arr2(&[[1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0]]));
}

#[test]
fn image_batch_norm_normalizes_each_channel_over_the_batch_and_the_pixels() {
    let (h, w, c) = (3, 4, 2);
    let p = program_image(
        h,
        w,
        c,
        &[Layer::BatchNorm, Layer::Flatten, Layer::Dense(2)],
    );
    let (pixels, labels) = u8_data(10, h * w * c, 2, 4);
    let mut interp = Interp::new(&p, None);
    interp.train_step(batch(&pixels, &labels, h * w * c, 0..10), 0.01);
    // Channel `ch` of every image is the plane of bytes `ch·h·w..(ch + 1)·h·w` of its row: its
    // mean and biased variance over the batch and the pixels.
    let moments: Vec<(f64, f64)> = (0..c)
        .map(|ch| {
            let values: Vec<f64> = pixels
                .chunks(h * w * c)
                .flat_map(|row| &row[ch * h * w..(ch + 1) * h * w])
                .map(|&b| f64::from(b) / 255.0)
                .collect();
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            let variance = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            (mean, variance)
        })
        .collect();
    let state = interp.state();
    let [gamma, beta, moving_mean, moving_variance] = [0, 1, 2, 3].map(|i| &state.params[i]);
    assert_eq!(moving_mean.shape(), [c]);
    for (ch, &(mean, variance)) in moments.iter().enumerate() {
        assert!((f64::from(moving_mean[[ch]]) - 0.01 * mean).abs() < 1e-6);
        assert!((f64::from(moving_variance[[ch]]) - (0.99 + 0.01 * variance)).abs() < 1e-6);
    }
    // Training normalizes with the batch's moments, inference with the moving averages.
    let x = interp.executor().input(&pixels);
    let moving: Vec<(f64, f64)> = (0..c)
        .map(|ch| {
            let moving = (moving_mean[[ch]], moving_variance[[ch]]);
            (f64::from(moving.0), f64::from(moving.1))
        })
        .collect();
    for (pass, moments) in [
        (Pass::Train { step: 1 }, &moments),
        (Pass::Inference, &moving),
    ] {
        let y = &interp.executor().forward_values(x.view(), pass)[1];
        for ((row, e), &got) in y.indexed_iter() {
            let ch = e % c;
            let (mean, variance) = moments[ch];
            let normalized = (f64::from(x[[row, e]]) - mean) / (variance + 1e-3).sqrt();
            let want = f64::from(gamma[[ch]]) * normalized + f64::from(beta[[ch]]);
            assert!(
                (f64::from(got) - want).abs() < 1e-4,
                "{pass:?} ({row}, {e}): {got} vs {want}"
            );
        }
    }
}

#[test]
fn image_inputs_are_channels_last_after_preprocessing() {
    let features = 32 * 32 * 3;
    let (pixels, _) = u8_data(2, features, 2, 3);
    let layers = [Layer::GlobalAvgPool, Layer::Dense(2)];
    let mut p = program_image(32, 32, 3, &layers);
    let x = Interp::new(&p, None).executor().input(&pixels);
    // The statistics are per feature in the data set's order (planes).
    let stats = InputStats {
        mean: (0..features).map(|f| (f % 251) as f32).collect(),
        std: (0..features).map(|f| 1.0 + (f % 7) as f32).collect(),
    };
    p.input.preprocess = Preprocess::Standardize;
    let standardized = Interp::new(&p, Some(stats.clone()))
        .executor()
        .input(&pixels);
    for row in 0..2 {
        for (i, j, ch) in [
            (0, 0, 0),
            (0, 0, 2),
            (0, 1, 0),
            (5, 17, 1),
            (31, 31, 2),
            (31, 0, 1),
        ] {
            let element = (i * 32 + j) * 3 + ch;
            let feature = ch * 1024 + i * 32 + j;
            let byte = pixels[row * features + feature];
            assert_eq!(x[[row, element]], f32::from(byte) / 255.0);
            let want = (f32::from(byte) - stats.mean[feature]) / stats.std[feature];
            assert_eq!(standardized[[row, element]], want);
        }
    }
    // A flat program keeps the data set's order.
    let flat = Interp::new(&program(features, &[Layer::Dense(2)]), None);
    let x = flat.executor().input(&pixels);
    assert_eq!(x[[1, 1024]], f32::from(pixels[features + 1024]) / 255.0);
}

#[test]
fn max_norm_bounds_each_conv_filter() {
    let constrained = ConvLayer {
        max_norm: Some(0.5),
        ..conv(3, [2, 2], [1, 1], Padding::Valid)
    };
    let mut p = program_image(
        4,
        4,
        2,
        &[Layer::Conv2d(constrained), Layer::Flatten, Layer::Dense(3)],
    );
    sgd(&mut p, 1.0);
    let (pixels, labels) = u8_data(32, 32, 3, 6);
    let mut interp = Interp::new(&p, None);
    for _ in 0..5 {
        interp.train_step(batch(&pixels, &labels, 32, 0..32), 1.0);
    }
    let kernel = &interp.state().params[0];
    let filters = kernel
        .to_shape((2 * 2 * 2, 3))
        .unwrap()
        .into_dimensionality::<Ix2>()
        .unwrap()
        .to_owned();
    let norms: Vec<f32> = filters
        .columns()
        .into_iter()
        .map(|f| f.dot(&f).sqrt())
        .collect();
    assert!(norms.iter().all(|&n| n <= 0.5 * (1.0 + 1e-6)), "{norms:?}");
    assert!(
        norms.iter().any(|&n| n > 0.49),
        "no filter reached the limit: {norms:?}"
    );
}

#[test]
fn f32_and_f64_executors_agree_on_a_convnet() {
    let p = program_image(
        6,
        5,
        3,
        &[
            Layer::Conv2d(conv(4, [3, 3], [1, 1], Padding::Same)),
            Layer::BatchNorm,
            Layer::Act(Activation::Relu),
            Layer::MaxPool {
                size: [2, 2],
                strides: [2, 2],
                padding: Padding::Same,
            },
            Layer::Conv2d(conv(3, [2, 2], [1, 1], Padding::Valid)),
            Layer::AvgPool {
                size: [2, 2],
                strides: [1, 1],
                padding: Padding::Same,
            },
            Layer::Flatten,
            Layer::Dense(3),
        ],
    );
    let params = netc_ir::init::init_params(&p, 9);
    let x64 = normal_matrix(6, 6 * 5 * 3, 1);
    let y = labels(6, 3, 2);
    let g64 = Executor::<f64>::new(&p, &params, None).loss_and_grads(x64.view(), &y, 0);
    let g32 = Executor::<f32>::new(&p, &params, None).loss_and_grads(
        x64.mapv(|v| v as f32).view(),
        &y,
        0,
    );
    assert_f32_agrees_with_f64(&g32, &g64);
}

#[test]
fn a_small_convnet_learns_separable_images() {
    let (pixels, labels) = u8_data(300, 6 * 6 * 3, 3, 8);
    let p = program_image(
        6,
        6,
        3,
        &[
            Layer::Conv2d(conv(8, [3, 3], [1, 1], Padding::Same)),
            Layer::BatchNorm,
            Layer::Act(Activation::Relu),
            Layer::MaxPool {
                size: [2, 2],
                strides: [2, 2],
                padding: Padding::Valid,
            },
            Layer::Flatten,
            Layer::Dense(3),
        ],
    );
    let mut interp = Interp::new(&p, None);
    let history = train_epochs(&mut interp, &pixels, &labels, 6, 0.01);
    let (first, last) = (history[0], history[history.len() - 1]);
    assert!(last.0 < 0.5 * first.0, "loss {history:?}");
    assert!(last.1 > 0.9, "accuracy {history:?}");
}
