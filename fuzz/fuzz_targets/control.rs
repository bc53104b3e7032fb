//! One line of the control protocol, and a signal name.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = warden::ops::control::parse_request(&text);
    let _ = warden::ops::control::parse_signal(&text);
});
