//! The store conformance suite against the memory store, whose lock is in-process (no lease).

use session_core::store::MemoryStore;

session_core::store_conformance_tests!(in_process_locks: async { Some(MemoryStore::new()) });
