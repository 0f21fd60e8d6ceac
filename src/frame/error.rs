//! Errors of the frame allocator.

use core::fmt;

use x86_64::structures::paging::PhysFrame;

/// Why a frame-allocator operation failed. After any error the allocator is
/// exactly as before. Addresses are physical.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// No run of `frames` free frames with this alignment (below `below`, if set).
    OutOfFrames {
        /// Frames requested.
        frames: u64,
        /// Alignment requested, in bytes.
        align: u64,
        /// Exclusive upper address limit requested.
        below: Option<u64>,
    },
    /// A request for zero frames.
    ZeroFrames,
    /// The alignment is not a power of two of at least 4 KiB.
    BadAlignment {
        /// The alignment given, in bytes.
        align: u64,
    },
    /// Freeing a frame that is already free.
    AlreadyFree {
        /// The first such frame.
        frame: PhysFrame,
    },
    /// Freeing or reserving a frame that is reserved (allocator storage or a reservation).
    Reserved {
        /// The first such frame.
        frame: PhysFrame,
    },
    /// The frame is not usable memory of the map this allocator was built from.
    OutsideMap {
        /// The first such frame.
        frame: PhysFrame,
    },
    /// Releasing frames that are in service (free or allocated), or a range
    /// not wholly inside one reservation or map hole.
    NotReserved {
        /// The first frame of the range outside that one reservation or hole.
        frame: PhysFrame,
    },
    /// Reserving a frame that is allocated.
    InUse {
        /// The first such frame.
        frame: PhysFrame,
    },
    /// The reservation table has no room for another separate range.
    ReservationTableFull {
        /// Its capacity in ranges (map holes included).
        capacity: usize,
    },
    /// The storage given to [`new`](super::BitmapFrameAllocator::new) is too small.
    StorageTooSmall {
        /// Words needed.
        needed: usize,
        /// Words given.
        given: usize,
    },
    /// No usable region can hold the allocator's own metadata.
    NoRoomForMetadata {
        /// Bytes needed.
        bytes: u64,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::OutOfFrames {
                frames,
                align,
                below,
            } => {
                write!(f, "no {frames} free frames aligned to {align:#x}")?;
                match below {
                    Some(limit) => write!(f, " below {limit:#x}"),
                    None => Ok(()),
                }
            }
            Self::ZeroFrames => write!(f, "request for zero frames"),
            Self::BadAlignment { align } => {
                write!(f, "alignment {align:#x} is not a power of two >= 4 KiB")
            }
            Self::AlreadyFree { frame } => write!(f, "frame {:#x} is already free", addr(frame)),
            Self::Reserved { frame } => write!(f, "frame {:#x} is reserved", addr(frame)),
            Self::NotReserved { frame } => write!(
                f,
                "frame {:#x} is in service or the range spans several reservations",
                addr(frame)
            ),
            Self::OutsideMap { frame } => {
                write!(f, "frame {:#x} is not usable memory", addr(frame))
            }
            Self::InUse { frame } => write!(f, "frame {:#x} is allocated", addr(frame)),
            Self::ReservationTableFull { capacity } => {
                write!(f, "reservation table full ({capacity} ranges)")
            }
            Self::StorageTooSmall { needed, given } => {
                write!(f, "storage of {given} words is too small, need {needed}")
            }
            Self::NoRoomForMetadata { bytes } => {
                write!(
                    f,
                    "no usable region holds {bytes} bytes of allocator metadata"
                )
            }
        }
    }
}

impl core::error::Error for FrameError {}

/// The start of `frame` as a number, for messages.
fn addr(frame: PhysFrame) -> u64 {
    frame.start_address().as_u64()
}
