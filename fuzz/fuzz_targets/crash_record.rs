//! Fuzz target: crash-record adoption, parse + validate
//! (`canopy_controller::fuzzing::CrashRecordTarget`). No panic, and nothing adopted that the
//! rules refuse: no RT/DL original unless RT/DL is managed, no cgroup key outside the root or
//! missing, no unknown knob.
#![no_main]

use std::cell::RefCell;

use canopy_controller::fuzzing::CrashRecordTarget;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static TARGET: RefCell<CrashRecordTarget> = RefCell::new(CrashRecordTarget::new());
}

fuzz_target!(|data: &[u8]| {
    TARGET.with(|t| t.borrow_mut().run(data));
});
