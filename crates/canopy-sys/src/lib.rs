//! canopy-sys: every OS edge canopy touches: /proc reading, cgroupfs, sched_setattr, the proc
//! connector and inotify. Typed errors; a task that exited mid-operation (ESRCH) is normal flow.
