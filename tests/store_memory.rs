//! The store conformance suite against the memory store.

use session_core::store::MemoryStore;

session_core::store_conformance_tests!(async { Some(MemoryStore::new()) });
