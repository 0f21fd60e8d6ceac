//! The in-VM test framework.
//!
//! A test kernel is one [`test_kernel!`](crate::test_kernel) invocation
//! listing its tests. Each test runs inside [`recover::protect`], so a
//! panic or a fault fails that test and the run goes on with the next one.
//! Every test prints one line, `test <name> ... ok` or `... FAILED` plus
//! the reason, and the run ends with `N passed, N failed` and an exit
//! status the host runner checks. A test can expect a fault: it passes only
//! if exactly that fault happens.
//!
//! The host runner first boots a test kernel with `list=1` to learn its
//! tests, then with `only=<hex mask>` to run the ones it selected, and
//! checks that every one of them, and nothing else, printed a result.
//! `-append "filter=<substring>"` runs only the tests whose name contains
//! it (for booting a test kernel by hand).

use crate::arch::recover::{self, Outcome};
use crate::arch::trap::{vector, Fault};
use crate::{print, println};
use core::sync::atomic::{AtomicUsize, Ordering};

/// Counts started tests: state abandoned by a failed test (a lock held
/// when it faulted) can be told from state in use.
static TESTS_STARTED: AtomicUsize = AtomicUsize::new(0);

/// Which test is running: 0 before the first, then 1, 2, ...
pub fn current_test() -> usize {
    TESTS_STARTED.load(Ordering::SeqCst)
}
pub use x86_64::structures::idt::PageFaultErrorCode;

/// One in-VM test.
pub struct Test {
    /// `module::name`, as printed.
    pub name: &'static str,
    /// The test body.
    pub run: fn(),
    /// What must happen for the test to pass.
    pub expect: Expect,
}

/// What a test must do to pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Return normally.
    Return,
    /// Raise a page fault matching the pattern.
    PageFault {
        /// The faulting address (CR2), when it matters.
        addr: Option<u64>,
        /// Error-code bits that must be set.
        set: PageFaultErrorCode,
        /// Error-code bits that must be clear.
        clear: PageFaultErrorCode,
    },
    /// Raise a double fault (e.g. a stack overflow into a guard page).
    DoubleFault,
}

impl Expect {
    /// Any page fault.
    pub const fn page_fault() -> Self {
        Self::PageFault {
            addr: None,
            set: PageFaultErrorCode::empty(),
            clear: PageFaultErrorCode::empty(),
        }
    }

    /// A double fault.
    pub const fn double_fault() -> Self {
        Self::DoubleFault
    }

    /// Narrows a page-fault expectation to one faulting address.
    pub const fn at(self, addr: u64) -> Self {
        match self {
            Self::PageFault { set, clear, .. } => Self::PageFault {
                addr: Some(addr),
                set,
                clear,
            },
            other => other,
        }
    }

    /// Requires these error-code bits to be set.
    pub const fn with(self, bits: PageFaultErrorCode) -> Self {
        match self {
            Self::PageFault { addr, set, clear } => Self::PageFault {
                addr,
                set: PageFaultErrorCode::from_bits_retain(set.bits() | bits.bits()),
                clear,
            },
            other => other,
        }
    }

    /// Requires these error-code bits to be clear.
    pub const fn without(self, bits: PageFaultErrorCode) -> Self {
        match self {
            Self::PageFault { addr, set, clear } => Self::PageFault {
                addr,
                set,
                clear: PageFaultErrorCode::from_bits_retain(clear.bits() | bits.bits()),
            },
            other => other,
        }
    }

    /// Whether `fault` is the expected one.
    pub fn matches(&self, fault: &Fault) -> bool {
        match *self {
            Self::Return => false,
            Self::DoubleFault => fault.vector == vector::DOUBLE_FAULT,
            Self::PageFault { addr, set, clear } => {
                let bits = fault.page_fault_bits();
                fault.vector == vector::PAGE_FAULT
                    && addr.is_none_or(|a| a == fault.addr)
                    && bits.contains(set)
                    && !bits.intersects(clear)
            }
        }
    }
}

impl core::fmt::Display for Expect {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Return => f.write_str("a normal return"),
            Self::DoubleFault => f.write_str("a double fault"),
            Self::PageFault { addr, set, clear } => {
                f.write_str("a page fault")?;
                if let Some(a) = addr {
                    write!(f, " at {a:#x}")?;
                }
                if !set.is_empty() {
                    write!(f, " with ")?;
                    write_flag_names(f, *set)?;
                }
                if !clear.is_empty() {
                    write!(f, " without ")?;
                    write_flag_names(f, *clear)?;
                }
                Ok(())
            }
        }
    }
}

/// Writes the error-code bits as the `PageFaultErrorCode` names a test
/// used (`CAUSED_BY_WRITE | USER_MODE`): an expectation states only what
/// it asked for, never the complement of the bits it left open.
fn write_flag_names(
    f: &mut core::fmt::Formatter<'_>,
    bits: PageFaultErrorCode,
) -> core::fmt::Result {
    for (i, (name, _)) in bits.iter_names().enumerate() {
        if i > 0 {
            f.write_str(" | ")?;
        }
        f.write_str(name)?;
    }
    let unnamed = bits.bits() & !PageFaultErrorCode::all().bits();
    if unnamed != 0 {
        if bits.iter_names().next().is_some() {
            f.write_str(" | ")?;
        }
        write!(f, "{unnamed:#x}")?;
    }
    Ok(())
}

/// Why a test failed, or the note to print after `ok`.
fn judge(expect: Expect, outcome: Outcome) -> Result<Option<Fault>, Failure> {
    match (outcome, expect) {
        (Outcome::Returned, Expect::Return) => Ok(None),
        (Outcome::Returned, e) => Err(Failure::Returned(e)),
        (Outcome::Faulted(fault), e) if e.matches(&fault) => Ok(Some(fault)),
        (Outcome::Faulted(fault), e) => Err(Failure::Fault(fault, e)),
        (Outcome::Panicked, _) => Err(Failure::Panic),
    }
}

enum Failure {
    Returned(Expect),
    Fault(Fault, Expect),
    Panic,
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Returned(e) => write!(f, "expected {e}, but the test returned"),
            Self::Fault(fault, Expect::Return) => write!(f, "unexpected {fault}"),
            Self::Fault(fault, e) => write!(f, "unexpected {fault}; expected {e}"),
            Self::Panic => write!(f, "{}", &*recover::panic_message()),
        }
    }
}

/// Runs the tests the command line selects, prints the report and exits
/// QEMU: success only when every test passed.
///
/// Command-line arguments: `list=1` prints every test as `<name>: test`
/// and a count instead of running them; `only=<hex>` runs test `i` only if
/// bit `i` of the hex number is set (the host runner's selection);
/// `filter=<substring>` runs the tests whose name contains it.
pub fn run(tests: &[Test]) -> ! {
    let info = crate::boot::info();
    if info.cmdline_arg("list").is_some() {
        for test in tests {
            println!("{}: test", test.name);
        }
        println!("{} tests", tests.len());
        crate::dev::qemu::exit(crate::dev::qemu::ExitCode::Success)
    }
    let filter = info.cmdline_arg("filter");
    let only = info.cmdline_arg("only");
    let selected = || {
        tests.iter().enumerate().filter_map(|(i, t)| {
            let wanted = filter.is_none_or(|f| t.name.contains(f))
                && only.is_none_or(|mask| mask_has(mask, i));
            wanted.then_some(t)
        })
    };
    println!("running {} tests", selected().count());
    let (mut passed, mut failed) = (0usize, 0usize);
    for test in selected() {
        print!("test {} ... ", test.name);
        let mark = crate::dev::console::bytes_written();
        TESTS_STARTED.fetch_add(1, Ordering::SeqCst);
        crate::mm::lock::abandon_holders();
        let verdict = judge(test.expect, recover::protect(test.run));
        if crate::dev::console::bytes_written() != mark {
            // The test printed: the verdict gets a whole line of its own,
            // so the runner reads it as it reads any other.
            print!("\ntest {} ... ", test.name);
        }
        match verdict {
            Ok(None) => {
                println!("ok");
                passed += 1;
            }
            Ok(Some(fault)) => {
                println!("ok (expected {fault})");
                passed += 1;
            }
            Err(why) => {
                println!("FAILED");
                let _ = core::fmt::write(&mut Indented, format_args!("    {why}"));
                println!();
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    let code = if failed == 0 {
        crate::dev::qemu::ExitCode::Success
    } else {
        crate::dev::qemu::ExitCode::Failure
    };
    crate::dev::qemu::exit(code)
}

/// Whether bit `i` of the hex number `mask` is set (digits beyond the
/// number, and anything that is not a hex digit, count as clear).
fn mask_has(mask: &str, i: usize) -> bool {
    let digits = mask.as_bytes();
    let Some(pos) = digits.len().checked_sub(1 + i / 4) else {
        return false;
    };
    (digits[pos] as char)
        .to_digit(16)
        .is_some_and(|d| d & (1 << (i % 4)) != 0)
}

/// Declares a test kernel: its tests, one function each, and its entry
/// point. A test expecting a fault carries `#[should_fault(<Expect>)]`
/// after its doc comment. A first line `setup = path;` names a function
/// `fn(extern "C" fn() -> !) -> !` that prepares the machine (e.g.
/// [`kernel_space::enter`](crate::mm::kernel_space::enter)) and then calls the
/// function it is given, which runs the tests.
///
/// ```ignore
/// #![no_std]
/// #![no_main]
/// use kernel_demo::testing::{Expect, PageFaultErrorCode};
///
/// kernel_demo::test_kernel! {
///     /// Arithmetic works.
///     fn adds() { assert_eq!(1 + 1, 2); }
///
///     /// Writing to an unmapped page faults with the write bit.
///     #[should_fault(Expect::page_fault().at(0xdead_b000).with(PageFaultErrorCode::CAUSED_BY_WRITE))]
///     fn write_unmapped() { unsafe { (0xdead_b000 as *mut u8).write_volatile(1) } }
/// }
/// ```
#[macro_export]
macro_rules! test_kernel {
    (setup = $setup:path; $($tests:tt)*) => {
        $crate::__test_kernel_body!($($tests)*);

        $crate::entry_point!(__setup_kernel);

        fn __setup_kernel() -> ! {
            let setup: fn(extern "C" fn() -> !) -> ! = $setup;
            setup(__run_tests_after_setup)
        }

        extern "C" fn __run_tests_after_setup() -> ! {
            $crate::testing::run(__KERNEL_TESTS)
        }
    };
    (own_heap; $($tests:tt)*) => {
        $crate::__test_kernel_body!($($tests)*);

        $crate::entry_point!(own_heap; __run_kernel_tests);

        fn __run_kernel_tests() -> ! {
            $crate::testing::run(__KERNEL_TESTS)
        }
    };
    ($($tests:tt)*) => {
        $crate::__test_kernel_body!($($tests)*);

        $crate::entry_point!(__run_kernel_tests);

        fn __run_kernel_tests() -> ! {
            $crate::testing::run(__KERNEL_TESTS)
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __test_kernel_body {
    ($(
        $(#[doc = $doc:literal])*
        $(#[should_fault($expect:expr)])?
        fn $name:ident() $body:block
    )*) => {
        $(
            $(#[doc = $doc])*
            fn $name() $body
        )*

        static __KERNEL_TESTS: &[$crate::testing::Test] = &[$(
            $crate::testing::Test {
                name: concat!(module_path!(), "::", stringify!($name)),
                run: $name,
                expect: $crate::__expectation!($($expect)?),
            },
        )*];
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __expectation {
    () => {
        $crate::testing::Expect::Return
    };
    ($e:expr) => {
        $e
    };
}

/// Serial output with every line after the first indented, so a
/// multi-line failure reason stays attached to its test.
struct Indented;

impl core::fmt::Write for Indented {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for (i, part) in s.split('\n').enumerate() {
            if i > 0 {
                print!("\n    ");
            }
            print!("{part}");
        }
        Ok(())
    }
}
