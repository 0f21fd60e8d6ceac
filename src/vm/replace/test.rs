//! CLOCK-Pro's internal invariants after every operation of random
//! sequences (`cargo test --lib vm::replace`), and the index under churn.

use super::index::Index;
use super::{Adaptive, Clock, ClockPro, ReplacementPolicy};
use std::collections::HashMap;

/// SplitMix64, so the runs are reproducible.
fn rng(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn clock_pro_invariants_hold_under_random_operations() {
    for run in 0..200u64 {
        let mut seed = run;
        let frames = (rng(&mut seed) % 12) as usize;
        let history = (rng(&mut seed) % 14) as usize;
        let pages = 1 + rng(&mut seed) % 30;
        let mut p = ClockPro::with_history(frames, history);
        p.check();
        for _ in 0..2_000 {
            let page = rng(&mut seed) % pages;
            match rng(&mut seed) % 10 {
                0..=3 => {
                    if p.resident_len() == frames {
                        p.evict();
                    }
                    let _ = p.insert(page);
                }
                4..=7 => {
                    p.referenced(page);
                }
                8 => {
                    p.evict();
                }
                9 if page.is_multiple_of(2) => {
                    p.demote(page);
                }
                _ => {
                    p.remove(page);
                }
            }
            p.check();
        }
    }
}

#[test]
fn adaptive_invariants_hold_under_random_operations() {
    for run in 0..200u64 {
        let mut seed = run;
        let frames = (rng(&mut seed) % 12) as usize;
        let history = (rng(&mut seed) % 14) as usize;
        let pages = 1 + rng(&mut seed) % 30;
        let mut p =
            Adaptive::with_experts(ClockPro::with_history(frames, history), Clock::new(frames));
        p.check();
        // Phases that favour one expert, then the other, so the lead moves.
        for step in 0..4_000u64 {
            let page = if (step / 500) % 2 == 0 {
                step % (frames as u64 + 2)
            } else {
                rng(&mut seed) % pages
            };
            match rng(&mut seed) % 12 {
                0..=4 => {
                    if !p.referenced(page) {
                        if p.resident_len() == frames {
                            p.evict();
                        }
                        let _ = p.insert(page);
                        p.referenced(page);
                    }
                }
                5..=8 => {
                    p.referenced(page);
                }
                9 => {
                    p.evict();
                }
                10 => {
                    p.demote(page);
                }
                _ => {
                    p.remove(page);
                }
            }
            p.check();
        }
    }
}

#[test]
fn index_finds_what_it_holds_under_churn() {
    let mut keys: Vec<u64> = Vec::new();
    let mut index = Index::with_capacity(4);
    let mut model: HashMap<u64, u32> = HashMap::new();
    let mut seed = 7;
    for _ in 0..50_000 {
        // Few distinct keys inserted and removed often: probe runs form and break.
        let key = (rng(&mut seed) % 64) << 40;
        if let Some(&n) = model.get(&key) {
            assert_eq!(index.find(key, |m| keys[m as usize]), Some(n));
            if rng(&mut seed).is_multiple_of(2) {
                assert_eq!(index.remove(key, |m| keys[m as usize]), Some(n));
                model.remove(&key);
            }
        } else {
            assert_eq!(index.find(key, |m| keys[m as usize]), None);
            let n = keys.len() as u32;
            keys.push(key);
            index.reserve_one(|m| keys[m as usize]);
            index.insert(key, n);
            model.insert(key, n);
        }
    }
}
