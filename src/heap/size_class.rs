//! Size classes for the slabs.
//!
//! 8-byte steps to 64, 16-byte steps to 128, then four classes per doubling
//! up to [`MAX_SMALL`]. Objects sit at multiples of their class size from a
//! slab's aligned base, so a class is aligned to its largest power-of-two
//! factor (power-of-two classes are naturally aligned).

use core::alloc::Layout;

/// Largest object served by a slab; anything bigger goes to the large heap.
pub const MAX_SMALL: usize = 1024;

/// Object sizes of the classes, ascending.
pub const CLASS_SIZES: [usize; NUM_CLASSES] = [
    8, 16, 24, 32, 40, 48, 56, 64, // 8-byte steps
    80, 96, 112, 128, // 16-byte steps
    160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024, // 4 per doubling
];

/// Number of size classes.
pub const NUM_CLASSES: usize = 24;

/// `CLASS_OF[(size + 7) / 8]` = smallest class holding `size` bytes.
static CLASS_OF: [u8; MAX_SMALL / 8 + 1] = build_lookup();

const fn build_lookup() -> [u8; MAX_SMALL / 8 + 1] {
    let mut table = [0u8; MAX_SMALL / 8 + 1];
    let mut i = 0;
    let mut class = 0;
    while i < table.len() {
        while CLASS_SIZES[class] < i * 8 {
            class += 1;
        }
        table[i] = class as u8;
        i += 1;
    }
    table
}

/// The class serving `layout`, or `None` if it belongs to the large heap.
///
/// A zero-size request is served as one byte so every pointer is unique.
///
/// Size decides first, so a large request takes the same branches whatever
/// its alignment, and the alignment branch is predictable.
#[inline(always)]
pub fn class_of(layout: Layout) -> Option<usize> {
    let (size, align) = (layout.size(), layout.align());
    if size > MAX_SMALL {
        return None;
    }
    if align <= 8 {
        return Some(CLASS_OF[(size + 7) >> 3] as usize);
    }
    aligned_class_of(size, align)
}

#[inline]
fn aligned_class_of(size: usize, align: usize) -> Option<usize> {
    // `align` is a power of two (a `Layout` invariant): masks, no division.
    let mask = align - 1;
    let rounded = size.max(1).checked_add(mask)? & !mask;
    if rounded > MAX_SMALL {
        return None;
    }
    let mut class = CLASS_OF[rounded >> 3] as usize;
    while CLASS_SIZES[class] & mask != 0 {
        class += 1;
        if class == NUM_CLASSES {
            return None;
        }
    }
    Some(class)
}

/// The alignment every object of `class` has.
pub fn class_align(class: usize) -> usize {
    1 << CLASS_SIZES[class].trailing_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_small_layout_gets_a_fitting_aligned_class() {
        let mut align = 1;
        while align <= 4096 {
            for size in 0..=2048 {
                let layout = Layout::from_size_align(size, align).unwrap();
                match class_of(layout) {
                    Some(c) => {
                        assert!(CLASS_SIZES[c] >= size.max(1), "{layout:?}");
                        assert!(class_align(c) >= align, "{layout:?}");
                        // smallest such class
                        assert!(
                            c == 0
                                || CLASS_SIZES[c - 1] < size.max(1)
                                || class_align(c - 1) < align,
                            "{layout:?}"
                        );
                    }
                    None => assert!(
                        size.max(1).next_multiple_of(align) > MAX_SMALL,
                        "{layout:?}"
                    ),
                }
            }
            align *= 2;
        }
    }

    #[test]
    fn classes_ascend() {
        assert!(CLASS_SIZES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(CLASS_SIZES[NUM_CLASSES - 1], MAX_SMALL);
    }
}
