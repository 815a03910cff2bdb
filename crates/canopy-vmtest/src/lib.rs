//! canopy-vmtest: the host side of the VM test harness: fetches and checks the test kernel, builds
//! an initramfs, boots it under qemu, streams the serial log and parses CANOPY-RESULT lines.
