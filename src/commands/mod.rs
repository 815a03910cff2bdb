//! One module per `canopy` subcommand.
pub mod ctl;
