//! Fuzz target: any bytes as a schedqos app config. Converting must never panic, and what it
//! converts must compile.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(toml) = canopy_policy::schedqos::import(None, &[("fuzz.json", text)]) {
        if let Err(error) = canopy_policy::compile_str("imported.toml", &toml) {
            panic!("converted policy does not compile: {:?}\n{toml}", error.diagnostics);
        }
    }
});
