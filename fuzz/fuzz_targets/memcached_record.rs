//! The memcached store's item decoder.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| session_core::fuzzing::memcached_record(data));
