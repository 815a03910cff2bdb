//! The `canopy` command: thin glue over the policy compiler (`canopy-policy`), the OS layer
//! (`canopy-sys`) and the BPF schedulers. Each subcommand lives in its own module.
mod scheduler;

fn main() -> anyhow::Result<()> {
    println!("canopy: not yet implemented");
    Ok(())
}
