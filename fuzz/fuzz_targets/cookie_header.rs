//! The `Cookie` header scan on arbitrary bytes: `\n` separates header values, and bytes
//! 0x01-0x04 stand for valid, old-key, foreign-key and truncated signed values (see
//! `session_core::fuzzing::token`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| session_core::fuzzing::cookie_header(data));
