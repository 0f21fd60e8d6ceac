//! Text without a heap: a fixed-capacity string and byte counts with binary units.

use core::fmt;

/// Formats into a fixed buffer (so `pad` can align it without a heap).
pub fn alloc_free_fmt<const N: usize>(args: fmt::Arguments<'_>) -> FixedStr<N> {
    let mut s = FixedStr::<N>::new();
    let _ = fmt::write(&mut s, args);
    s
}

/// A small string on the stack.
pub struct FixedStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> FixedStr<N> {
    /// An empty string.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> Default for FixedStr<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::ops::Deref for FixedStr<N> {
    type Target = str;
    fn deref(&self) -> &str {
        // Only whole `str`s are ever appended, so the prefix is UTF-8.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> fmt::Write for FixedStr<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - self.len;
        if s.len() > room {
            return Err(fmt::Error);
        }
        self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
        self.len += s.len();
        Ok(())
    }
}

/// A byte count printed with a binary unit (`4 KiB`, `127 MiB`).
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut unit = 0;
        while unit < UNITS.len() - 1 && self.0 >= 1u64 << (10 * (unit + 1)) {
            unit += 1;
        }
        let scale = 1u64 << (10 * unit);
        let (whole, tenths) = (self.0 / scale, (self.0 % scale) * 10 / scale);
        let text = if tenths == 0 {
            alloc_free_fmt::<24>(format_args!("{whole} {}", UNITS[unit]))
        } else {
            alloc_free_fmt::<24>(format_args!("{whole}.{tenths} {}", UNITS[unit]))
        };
        f.pad(&text)
    }
}
