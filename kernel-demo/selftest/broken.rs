//! Deliberately broken tests: the runner's own tests boot this kernel with
//! one filter each and check that every kind of breakage fails the run and
//! names the test. Never part of the normal in-VM suite.
#![no_std]
#![no_main]

use kernel_demo::testing::{Expect, PageFaultErrorCode};

kernel_demo::test_kernel! {
    /// Passes.
    fn passes() {}

    /// A failed assertion.
    fn fails_assert() {
        let two = core::hint::black_box(2);
        assert_eq!(two + 2, 5, "arithmetic is broken");
    }

    /// A page fault nobody expected.
    fn unexpected_page_fault() {
        // SAFETY: deliberately faults.
        unsafe { (0x0000_1000_0000_0000 as *mut u8).write_volatile(1) };
    }

    /// Expects a page fault that never comes.
    #[should_fault(Expect::page_fault())]
    fn missing_expected_fault() {}

    /// Never returns.
    fn hangs() {
        loop {
            core::hint::spin_loop();
        }
    }

    /// Resets the machine.
    fn triple_faults() {
        kernel_demo::arch::interrupts::triple_fault();
    }

    /// Expects a write fault that never comes: the failure must state the
    /// expectation as written.
    #[should_fault(Expect::page_fault().with(PageFaultErrorCode::CAUSED_BY_WRITE))]
    fn missing_write_fault() {}

    /// Prints a passing summary and exits QEMU with the success status in
    /// the middle of the run.
    fn fakes_summary() {
        kernel_demo::println!();
        kernel_demo::println!("1 passed, 0 failed");
        kernel_demo::dev::qemu::exit(kernel_demo::dev::qemu::ExitCode::Success);
    }

    /// Runs after `fakes_summary`, so never.
    fn after_fake() {}
}
