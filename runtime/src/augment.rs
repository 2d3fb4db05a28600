//! Data augmentation (`ir::Augment`): the random crops and flips the training loop makes to the
//! u8 pixels of each training batch, in the data set's byte layout (`ir::Planes`), before the
//! backend sees them. So every backend trains on the same pixels, and dense and convolutional
//! programs alike.
//!
//! What an image becomes is a pure function of `(seed, epoch, image index)` through
//! `rng::augment_key`: no state is kept from batch to batch, so a resumed run changes the images
//! exactly as the uninterrupted one did. Nothing here touches validation or test images; the
//! caller hands only training batches to `Augmenter::apply`.

use netc_ir::backend::Batch;
use netc_ir::ir::{Augment, Planes, Program};
use netc_ir::rng::{self, augment_key, AUGMENT_CROP_COLUMN, AUGMENT_CROP_ROW, AUGMENT_FLIP};

/// What one image's augmentation does, once drawn: move the picture by `(down, right)` pixels,
/// filling what comes in from outside with zeros, then mirror it if `flip`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draw {
    /// Rows the picture moves down (negative: up); `crop − row offset` of the padded image.
    pub down: i32,
    /// Columns the picture moves right (negative: left).
    pub right: i32,
    /// Mirror left to right after the move.
    pub flip: bool,
}

impl Draw {
    /// The draw that leaves an image as it is.
    pub const IDENTITY: Draw = Draw {
        down: 0,
        right: 0,
        flip: false,
    };

    /// The draw of `augment` for the image whose key is `key` (`rng::augment_key`). The crop
    /// cuts the original size out of the image padded by `crop` on every side, at offsets drawn
    /// uniformly in `0..=2 · crop`; offset `o` moves the picture by `crop − o`.
    pub fn of(augment: Augment, key: u32) -> Draw {
        let crop = augment.crop as i32;
        let offset = |element| rng::below(key, element, augment.crop * 2 + 1) as i32;
        let (down, right) = if augment.crop == 0 {
            (0, 0)
        } else {
            (
                crop - offset(AUGMENT_CROP_ROW),
                crop - offset(AUGMENT_CROP_COLUMN),
            )
        };
        Draw {
            down,
            right,
            flip: augment.flip_horizontal && rng::uniform(key, AUGMENT_FLIP) < 0.5,
        }
    }

    /// The draw for the crop at offsets `(row, column)` into the padded image, then the flip.
    pub fn at_offset(crop: u32, row: u32, column: u32, flip: bool) -> Draw {
        Draw {
            down: crop as i32 - row as i32,
            right: crop as i32 - column as i32,
            flip,
        }
    }
}

/// Applies `draw` to one image of `planes`' layout in place; `scratch` is reused between
/// calls. Pixel `(y, x)` of every plane becomes the old pixel `(y − down, x − right)`, or 0 when
/// that is outside the image; then, with `flip`, every row is reversed.
pub fn apply_draw(image: &mut [u8], planes: Planes, draw: Draw, scratch: &mut Vec<u8>) {
    debug_assert_eq!(image.len(), planes.bytes());
    let (height, width) = (planes.height as i32, planes.width as i32);
    if draw.down != 0 || draw.right != 0 {
        scratch.clear();
        scratch.extend_from_slice(image);
        for (plane, old) in image
            .chunks_exact_mut(planes.plane())
            .zip(scratch.chunks_exact(planes.plane()))
        {
            for (y, row) in plane.chunks_exact_mut(planes.width).enumerate() {
                let from_y = y as i32 - draw.down;
                if !(0..height).contains(&from_y) {
                    row.fill(0);
                    continue;
                }
                let old_row = &old[from_y as usize * planes.width..][..planes.width];
                for (x, pixel) in row.iter_mut().enumerate() {
                    let from_x = x as i32 - draw.right;
                    *pixel = if (0..width).contains(&from_x) {
                        old_row[from_x as usize]
                    } else {
                        0
                    };
                }
            }
        }
    }
    if draw.flip {
        for row in image.chunks_exact_mut(planes.width) {
            row.reverse();
        }
    }
}

/// Augments the training batches of one program: holds the batch it hands out.
pub struct Augmenter {
    augment: Augment,
    planes: Planes,
    seed: u64,
    pixels: Vec<u8>,
    scratch: Vec<u8>,
}

impl Augmenter {
    /// The augmenter of `program`'s training (`program.train.augment`, keyed by its seed).
    pub fn new(program: &Program) -> Self {
        Augmenter {
            augment: program.train.augment,
            planes: program.input.dataset.planes(),
            seed: program.train.seed,
            pixels: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// `batch`, whose rows are the training examples `images` (their indices among the
    /// training files), augmented for the 0-based `epoch`; `batch` itself when the program does
    /// not augment. The result is borrowed from the augmenter until the next call.
    pub fn apply<'b>(&'b mut self, batch: Batch<'b>, images: &[u32], epoch: usize) -> Batch<'b> {
        if self.augment.is_identity() {
            return batch;
        }
        debug_assert_eq!(images.len(), batch.len());
        debug_assert_eq!(batch.pixels.len(), images.len() * self.planes.bytes());
        self.pixels.clear();
        self.pixels.extend_from_slice(batch.pixels);
        for (image, &index) in self
            .pixels
            .chunks_exact_mut(self.planes.bytes())
            .zip(images)
        {
            let draw = Draw::of(self.augment, augment_key(self.seed, epoch as u64, index));
            apply_draw(image, self.planes, draw, &mut self.scratch);
        }
        Batch {
            pixels: &self.pixels,
            labels: batch.labels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netc_ir::ir::Dataset;

    const CIFAR: Planes = Planes {
        channels: 3,
        height: 32,
        width: 32,
    };

    /// An image whose every byte is different from its neighbours (and never 0), so a moved,
    /// mirrored or zeroed pixel shows.
    fn image(planes: Planes) -> Vec<u8> {
        (0..planes.bytes()).map(|i| (i % 251 + 1) as u8).collect()
    }

    fn applied(planes: Planes, draw: Draw, mut image: Vec<u8>) -> Vec<u8> {
        apply_draw(&mut image, planes, draw, &mut Vec::new());
        image
    }

    #[test]
    fn cifar10_is_three_planes_of_32_by_32() {
        assert_eq!(Dataset::Cifar10.planes(), CIFAR);
        assert_eq!(CIFAR.bytes(), crate::data::IMAGE_BYTES);
    }

    #[test]
    fn a_flip_is_its_own_inverse_and_reverses_every_row_of_every_plane() {
        let original = image(CIFAR);
        let flip = Draw {
            flip: true,
            ..Draw::IDENTITY
        };
        let once = applied(CIFAR, flip, original.clone());
        assert_ne!(once, original);
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    let at = |x: usize| (c * 32 + y) * 32 + x;
                    assert_eq!(once[at(x)], original[at(31 - x)]);
                }
            }
        }
        assert_eq!(applied(CIFAR, flip, once), original);
    }

    #[test]
    fn a_crop_at_offset_padding_padding_is_the_identity() {
        let original = image(CIFAR);
        for crop in [1, 4, 16] {
            let draw = Draw::at_offset(crop, crop, crop, false);
            assert_eq!(draw, Draw::IDENTITY);
            assert_eq!(applied(CIFAR, draw, original.clone()), original);
        }
    }

    #[test]
    fn the_padding_is_black_and_the_rest_moves() {
        // Offset (0, 2 · 4) into the image padded by 4: the picture moves 4 down and 4 left.
        let original = image(CIFAR);
        let draw = Draw::at_offset(4, 0, 8, false);
        assert_eq!((draw.down, draw.right), (4, -4));
        let out = applied(CIFAR, draw, original.clone());
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    let at = |y: usize, x: usize| (c * 32 + y) * 32 + x;
                    let expected = if y < 4 || x >= 28 {
                        0
                    } else {
                        original[at(y - 4, x + 4)]
                    };
                    assert_eq!(out[at(y, x)], expected, "channel {c} pixel ({y}, {x})");
                }
            }
        }
    }

    #[test]
    fn the_largest_crop_draws_every_offset_and_flips_about_half_the_images() {
        let augment = Augment {
            crop: 4,
            flip_horizontal: true,
        };
        let draws: Vec<Draw> = (0..2_000)
            .map(|i| Draw::of(augment, augment_key(42, 0, i)))
            .collect();
        for shift in -4..=4 {
            assert!(
                draws.iter().any(|d| d.down == shift),
                "no move down by {shift}"
            );
            assert!(
                draws.iter().any(|d| d.right == shift),
                "no move right by {shift}"
            );
        }
        assert!(draws
            .iter()
            .all(|d| d.down.abs() <= 4 && d.right.abs() <= 4));
        let flipped = draws.iter().filter(|d| d.flip).count();
        assert!((900..1_100).contains(&flipped), "{flipped} of 2000 flipped");
        let plain = Augment::default();
        assert!((0..100).all(|i| Draw::of(plain, augment_key(42, 0, i)) == Draw::IDENTITY));
    }

    fn program(augment: Augment, seed: u64) -> Program {
        let mut program = crate::train::fake::program(CIFAR.bytes(), 10, 4, 1);
        program.train.augment = augment;
        program.train.seed = seed;
        program
    }

    fn batch_of(images: &[u32]) -> (Vec<u8>, Vec<u8>) {
        let pixels = images
            .iter()
            .flat_map(|&i| {
                image(CIFAR)
                    .into_iter()
                    .map(move |p| p.wrapping_add(i as u8))
            })
            .map(|p| p.max(1))
            .collect();
        (pixels, vec![0; images.len()])
    }

    #[test]
    fn the_same_key_changes_an_image_the_same_way_and_another_epoch_differently() {
        let augment = Augment {
            crop: 4,
            flip_horizontal: true,
        };
        let images = [7u32, 3, 12, 40];
        let (pixels, labels) = batch_of(&images);
        let batch = Batch {
            pixels: &pixels,
            labels: &labels,
        };
        let run = |seed: u64, epoch: usize| {
            let mut augmenter = Augmenter::new(&program(augment, seed));
            augmenter.apply(batch, &images, epoch).pixels.to_vec()
        };
        let first = run(1, 0);
        assert_ne!(first, pixels);
        assert_eq!(first, run(1, 0));
        assert_ne!(first, run(1, 1));
        assert_ne!(first, run(2, 0));
        // One image's result depends on its index, not on where it sits in the batch.
        let mut augmenter = Augmenter::new(&program(augment, 1));
        let alone = augmenter
            .apply(
                Batch {
                    pixels: &pixels[CIFAR.bytes()..2 * CIFAR.bytes()],
                    labels: &labels[..1],
                },
                &images[1..2],
                0,
            )
            .pixels
            .to_vec();
        assert_eq!(alone, first[CIFAR.bytes()..2 * CIFAR.bytes()]);
    }

    #[test]
    fn without_augmentation_the_batch_is_handed_through() {
        let images = [0u32, 1];
        let (pixels, labels) = batch_of(&images);
        let batch = Batch {
            pixels: &pixels,
            labels: &labels,
        };
        let mut augmenter = Augmenter::new(&program(Augment::default(), 1));
        let out = augmenter.apply(batch, &images, 3);
        assert!(std::ptr::eq(out.pixels, pixels.as_slice()));
    }
}
