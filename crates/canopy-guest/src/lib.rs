//! canopy-guest: the guest side of the VM harness: the scenario runner and the test workloads.
