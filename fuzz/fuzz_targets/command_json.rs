//! Bytes into the command decoder: a command or an error naming a field, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match commands::decode(data) {
        Ok(command) => {
            // A decoded command serialises and decodes to the same command.
            let json = serde_json::to_vec(&command).expect("commands serialise");
            let again = commands::decode(&json).expect("a serialised command decodes");
            assert_eq!(again.body_sha256(), command.body_sha256());
        }
        Err(e) => assert!(!e.field.is_empty() && !e.message.is_empty()),
    }
});
