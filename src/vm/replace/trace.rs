//! The text trace format: one page number per line, decimal or `0x` hex;
//! `#` starts a comment that runs to the end of the line; blank lines are
//! skipped.

use super::PageId;
use alloc::vec::Vec;
use core::fmt;

/// Why a trace could not be read: the line (1-based) and what was on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    /// The line number, counting from 1.
    pub line: usize,
    /// The text that is not a page number (at most 40 bytes of it).
    pub text: alloc::string::String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: {:?} is not a page number (decimal or 0x hex, below 2^64)",
            self.line, self.text
        )
    }
}

impl core::error::Error for TraceError {}

/// Parses one line: `Ok(None)` for blank and comment lines.
fn parse_line(line: &str) -> Result<Option<PageId>, ()> {
    let text = line.split('#').next().unwrap_or("").trim();
    if text.is_empty() {
        return Ok(None);
    }
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse::<u64>(),
    };
    parsed.map(Some).map_err(|_| ())
}

/// Parses a whole trace.
pub fn parse(text: &str) -> Result<Vec<PageId>, TraceError> {
    let mut pages = Vec::with_capacity(text.len() / 6);
    for (i, line) in text.lines().enumerate() {
        match parse_line(line) {
            Ok(Some(page)) => pages.push(page),
            Ok(None) => {}
            Err(()) => {
                let bad = line.split('#').next().unwrap_or("").trim();
                let mut end = bad.len().min(40);
                while !bad.is_char_boundary(end) {
                    end -= 1;
                }
                return Err(TraceError {
                    line: i + 1,
                    text: bad[..end].into(),
                });
            }
        }
    }
    Ok(pages)
}
