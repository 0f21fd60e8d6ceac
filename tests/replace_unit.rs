//! `kmem::vm::replace` on small cases worked out by hand: OPT on the
//! textbook reference string, refaults seen and counted, CLOCK-Pro
//! resisting a loop and a scan, the trace format and its errors.

use kmem::vm::replace::sim;
use kmem::vm::replace::trace::{self, TraceError};
use kmem::vm::replace::{
    Adaptive, Clock, ClockPro, FaultIn, Removed, ReplaceError, ReplacementPolicy,
};

/// Silberschatz's reference string: OPT takes 9 faults with 3 frames.
const TEXTBOOK: [u64; 20] = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1];

#[test]
fn opt_on_the_textbook_string() {
    assert_eq!(sim::opt_faults(&TEXTBOOK, 3), 9);
    assert_eq!(sim::opt_faults(&TEXTBOOK, 4), 8);
    assert_eq!(sim::opt_faults(&[], 3), 0);
    assert_eq!(sim::opt_faults(&[1, 2, 3], 0), 3);
}

#[test]
fn insert_refuses_when_full_or_resident() {
    let mut p = ClockPro::new(1);
    assert_eq!(p.insert(5), Ok(FaultIn::Fresh));
    assert_eq!(p.insert(5), Err(ReplaceError::AlreadyResident { page: 5 }));
    assert_eq!(
        p.insert(6),
        Err(ReplaceError::Full {
            page: 6,
            capacity: 1
        })
    );
    assert_eq!(p.resident_len(), 1);
}

#[test]
fn clock_pro_sees_and_counts_refaults() {
    let mut p = ClockPro::new(4);
    for page in 0..4 {
        p.insert(page).unwrap();
    }
    let victim = p.evict().unwrap();
    p.insert(100).unwrap();
    let second = p.evict().unwrap();
    // A page evicted in its test period is remembered: its return is a refault.
    assert!(p.history_len() >= 1);
    let back = if p.history_len() == 2 { victim } else { second };
    assert_eq!(p.insert(back), Ok(FaultIn::Refault));
    assert_eq!(p.stats().refaults, 1);
    assert_eq!(p.stats().evictions, 2);
    // Forgetting a page in history makes its next insert fresh.
    let other = if back == victim { second } else { victim };
    if p.remove(other) == Removed::History {
        p.evict().unwrap();
        assert_eq!(p.insert(other), Ok(FaultIn::Fresh));
    }
}

#[test]
fn clock_forgets_evicted_pages() {
    let mut c = Clock::new(1);
    c.insert(1).unwrap();
    assert_eq!(c.evict(), Some(1));
    assert_eq!(c.evict(), None);
    assert_eq!(c.insert(1), Ok(FaultIn::Fresh));
    assert_eq!(c.remove(1), Removed::Resident);
    assert_eq!(c.remove(1), Removed::NotTracked);
}

#[test]
fn clock_pro_holds_part_of_a_loop_larger_than_memory() {
    let frames = 100;
    let trace: Vec<u64> = (0..20_000).map(|i| i % 120).collect();
    let clock = sim::replay(&mut Clock::new(frames), &trace).faults;
    let pro = sim::replay(&mut ClockPro::new(frames), &trace).faults;
    let opt = sim::opt_faults(&trace, frames);
    assert_eq!(clock, 20_000, "CLOCK faults on every reference of a loop");
    assert!(pro * 10 < clock * 2, "clock-pro {pro} vs clock {clock}");
    assert!(
        pro as f64 <= opt as f64 * 1.2,
        "clock-pro {pro} vs opt {opt}"
    );
}

#[test]
fn clock_pro_keeps_its_hot_pages_through_a_scan() {
    let frames = 100;
    let mut trace = Vec::new();
    for round in 0..50u64 {
        trace.extend(0..80); // a hot set
        trace.extend((0..200).map(|i| 1_000 + round * 200 + i)); // one-time scan
    }
    let clock = sim::replay(&mut Clock::new(frames), &trace).faults;
    let pro = sim::replay(&mut ClockPro::new(frames), &trace).faults;
    assert!(pro < clock * 9 / 10, "clock-pro {pro} vs clock {clock}");
}

/// Where CLOCK-Pro loses to CLOCK (zigzag passes over 3x memory: the
/// reversal hands CLOCK the pages it is about to need), the adaptive
/// policy follows CLOCK; on a loop it follows CLOCK-Pro.
#[test]
fn adaptive_follows_the_better_expert() {
    let frames = 100;
    let zigzag: Vec<u64> = (0..40_000u64)
        .map(|i| {
            if (i / 300) % 2 == 0 {
                i % 300
            } else {
                299 - i % 300
            }
        })
        .collect();
    let clock = sim::replay(&mut Clock::new(frames), &zigzag).faults;
    let pro = sim::replay(&mut ClockPro::new(frames), &zigzag).faults;
    let mut adaptive = Adaptive::new(frames);
    let ad = sim::replay(&mut adaptive, &zigzag).faults;
    assert!(pro > clock * 11 / 10, "clock-pro {pro} vs clock {clock}");
    assert!(ad * 1000 <= clock * 1005, "adaptive {ad} vs clock {clock}");
    assert!(adaptive.second_leads());

    let looping: Vec<u64> = (0..40_000).map(|i| i % 120).collect();
    let clock = sim::replay(&mut Clock::new(frames), &looping).faults;
    let pro = sim::replay(&mut ClockPro::new(frames), &looping).faults;
    let mut adaptive = Adaptive::new(frames);
    let ad = sim::replay(&mut adaptive, &looping).faults;
    assert!(ad * 100 <= pro * 102, "adaptive {ad} vs clock-pro {pro}");
    assert!(ad * 4 < clock, "adaptive {ad} vs clock {clock}");
    assert!(!adaptive.second_leads());
    assert!(adaptive.switches() >= 1);
}

#[test]
fn trace_format() {
    let text = "# a comment\n1\n\n  0x10  # hex\n0X1f\n18446744073709551615\n";
    assert_eq!(trace::parse(text).unwrap(), vec![1, 16, 31, u64::MAX]);
    let err = trace::parse("1\n2\nthree\n").unwrap_err();
    assert_eq!(
        err,
        TraceError {
            line: 3,
            text: "three".into()
        }
    );
    assert!(err.to_string().starts_with("line 3: \"three\""));
    assert_eq!(trace::parse("18446744073709551616").unwrap_err().line, 1);
    assert_eq!(trace::parse("-1").unwrap_err().line, 1);
}

/// The bookkeeping the module docs state: CLOCK-Pro 56 to 88 bytes a
/// frame (nodes for twice the frames, an index rounded to a power of
/// two), the adaptive duel 104 to 160.
#[test]
fn footprints_are_as_documented() {
    for frames in [1000, 3000, 4096, 5000, 100_000] {
        let pro = ClockPro::new(frames).footprint() / frames;
        let adaptive = Adaptive::new(frames).footprint() / frames;
        println!("{frames} frames, bytes a frame: clock-pro {pro}, adaptive {adaptive}");
        assert!((56..=88).contains(&pro), "clock-pro {pro} bytes a frame");
        assert!(
            (104..=160).contains(&adaptive),
            "adaptive {adaptive} bytes a frame"
        );
    }
}

#[test]
fn interleave_takes_turns_and_refuses_pages_above_2_48() {
    use kmem::vm::replace::multi::{interleave, PageTooLarge};
    let refs = interleave(&[vec![1, 2, 3], vec![7], vec![8, 9]], 2).unwrap();
    assert_eq!(
        refs,
        vec![(0, 1), (0, 2), (1, 7), (2, 8), (2, 9), (0, 3)],
        "two of each in turn, an ended trace drops out"
    );
    assert_eq!(
        interleave(&[vec![1], vec![1 << 48]], 1),
        Err(PageTooLarge {
            process: 1,
            page: 1 << 48
        })
    );
}

/// One process: global and per-process replacement are the single-trace
/// simulator.
#[test]
fn one_process_replays_like_the_simulator() {
    use kmem::vm::replace::multi;
    let trace: Vec<u64> = (0..5_000u64).map(|i| (i * 7919) % 150 + i % 3).collect();
    let refs = multi::interleave(std::slice::from_ref(&trace), 8).unwrap();
    let alone = sim::replay(&mut ClockPro::new(64), &trace).faults;
    assert_eq!(
        multi::replay_global(&mut ClockPro::new(64), &refs).faults,
        alone
    );
    let mut own: Vec<Box<dyn ReplacementPolicy>> = vec![Box::new(ClockPro::new(64))];
    assert_eq!(multi::replay_per_process(&mut own, 64, &refs).faults, alone);
    assert_eq!(multi::opt_faults(&refs, 64), sim::opt_faults(&trace, 64));
}

/// Two processes take turns being busy: per-process replacement keeps each
/// at the share it had when memory filled, global replacement gives the
/// busy one the idle one's frames.
#[test]
fn global_replacement_follows_a_shifting_working_set() {
    use kmem::vm::replace::multi;
    let frames = 100;
    let mut refs = Vec::new();
    for p in 0..2u32 {
        refs.extend((0..60).map(|page| (p, page))); // both fill memory
    }
    for round in 0..40 {
        let busy = round % 2;
        for i in 0..2_000u64 {
            refs.push((busy, i % 80)); // 80 pages: fits only with the other's frames
        }
    }
    let global = multi::replay_global(&mut Clock::new(frames), &refs).faults;
    let mut own: Vec<Box<dyn ReplacementPolicy>> =
        vec![Box::new(Clock::new(frames)), Box::new(Clock::new(frames))];
    let local = multi::replay_per_process(&mut own, frames, &refs);
    let opt = multi::opt_faults(&refs, frames);
    assert!(
        global * 4 < local.faults,
        "global {global} vs local {}",
        local.faults
    );
    assert!(opt <= global);
    assert_eq!(local.borrowed, 0);
}
