//! Boot memory maps: region kinds, the sanitizer, bootloader adapters.
