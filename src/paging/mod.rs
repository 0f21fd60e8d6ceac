//! The 4-level page-table mapper: single pages, ranges, address spaces.
