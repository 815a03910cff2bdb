//! Fuzz target: the control protocol, parse + authorize + handle, against an in-memory
//! controller (`canopy_controller::fuzzing::ControlTarget`: byte 0 picks the caller, the rest is a
//! request line). No panic, one-line replies, and no non-root caller ever given `tag`, `reload`,
//! another user's cgroup or another user's task.
#![no_main]

use std::cell::RefCell;

use canopy_controller::fuzzing::ControlTarget;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static TARGET: RefCell<ControlTarget> = RefCell::new(ControlTarget::new());
}

fuzz_target!(|data: &[u8]| {
    TARGET.with(|t| t.borrow_mut().run(data));
});
