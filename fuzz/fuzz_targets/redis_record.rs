//! The Redis store's reading of an `HGETALL` reply, from its RESP bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| session_core::fuzzing::redis_record(data));
