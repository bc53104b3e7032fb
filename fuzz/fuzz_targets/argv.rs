//! A call's arguments (JSON) through schema validation and argv templating,
//! as a command tool runs them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use std::sync::OnceLock;

/// The template and schema of a tool like the shipped ones: a string with a
/// pattern, a free string after `--`, an integer behind literal text.
const TEMPLATE: [&str; 5] = ["-x", "{word}", "--count={n}", "--", "{path}"];

fn validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        jsonschema::validator_for(&json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["word"],
            "properties": {
                "word": {"type": "string", "pattern": "^[a-z-]{0,16}$"},
                "n": {"type": "integer", "minimum": -5},
                "path": {"type": "string", "maxLength": 300}
            }
        }))
        .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(args)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if warden::core::runtime::check_args(validator(), &Value::Object(args.clone())).is_err() {
        return;
    }
    let cmd = warden::config::CommandSpec {
        program: "true".into(),
        args: TEMPLATE
            .iter()
            .map(|s| warden::config::ArgTemplate::parse(s).unwrap())
            .collect(),
        cwd: std::env::temp_dir(),
        env: vec![],
        limits: Default::default(),
        paths: vec!["path".to_string()],
    };
    let result = warden::backends::command::prepare(&cmd, &args);
    let Ok(argv) = result else { return };
    // The value of `word` is one element, and not an option.
    let word = args["word"].as_str().unwrap();
    assert_eq!(argv[1], word);
    assert!(!word.starts_with('-'));
    assert!(argv.iter().all(|a| !a.contains('\0')));
    if let Some(Value::String(p)) = args.get("path") {
        assert_eq!(argv.last().unwrap(), p);
    }
});
