//! Fuzz target: any bytes as a policy file. Compiling must never panic; a policy that compiles
//! must print canonically and recompile to the same plan hash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(compiled) = canopy_policy::compile_str("fuzz.toml", text) else { return };
    let printed = canopy_policy::to_toml(&compiled.plan);
    let again = canopy_policy::compile_str("printed.toml", &printed).expect("canonical print compiles");
    assert_eq!(compiled.plan.hash(), again.plan.hash());
});
