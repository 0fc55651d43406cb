//! Bytes into the stored-event decoder: an envelope or an error, never a panic; whatever
//! decodes re-encodes to bytes that decode to the same envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = ledger::codec::decode_envelope(data) {
        let bytes = ledger::codec::encode_envelope(&decoded.envelope).expect("re-encodes");
        let again = ledger::codec::decode_envelope(&bytes).expect("decodes again");
        assert_eq!(again.envelope, decoded.envelope);
    }
    let _ = ledger::codec::decode_marker(data);
});
