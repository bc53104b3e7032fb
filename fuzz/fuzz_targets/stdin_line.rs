//! One line from the MCP client, as the stdio transport decides it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden::mcp::stdio::{decide, Verdict};

fuzz_target!(|line: &[u8]| {
    for initialized in [false, true] {
        let mut init = initialized;
        if let Verdict::Answer(answer) = decide(line, &mut init) {
            // An answer is one line of JSON-RPC.
            let text = serde_json::to_string(&answer).unwrap();
            assert!(!text.contains('\n'));
        }
    }
});
