//! The file store's record parser on arbitrary bytes: a record file holding them is loaded
//! and swept (in a folder under the system's temporary directory).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| session_core::fuzzing::file_record(data));
