//! A config file and an actor file, as `warden check` reads them. The input
//! is split at the first NUL: config text before it, actor text after.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (config, actor) = text.split_once('\0').unwrap_or(("", &text));
    let _ = warden::config::check_texts(config, &[("fuzz.toml", actor)]);
});
