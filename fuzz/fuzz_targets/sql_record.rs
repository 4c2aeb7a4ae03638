//! The SQL stores' row decoder: two time columns and the `data` column.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| session_core::fuzzing::sql_record(data));
