//! The per-field decoder on arbitrary stored text: as fourteen field types, and split at `\n`
//! into the fields of a derived view.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| session_core::fuzzing::field(data));
