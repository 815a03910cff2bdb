//! The `canopy` command: thin glue over the policy compiler (`canopy-policy`), the OS layer
//! (`canopy-sys`) and the BPF schedulers. Each subcommand lives in its own module.
mod scheduler;

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("scheduler") {
        return scheduler::cli::main(std::env::args_os().skip(1));
    }
    println!("canopy: not yet implemented");
    Ok(())
}
