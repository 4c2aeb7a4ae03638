//! Per-session locks: the handle the layer holds, and an in-process implementation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::OwnedMutexGuard;

use super::memory::shard_index;
use super::StoreError;
use crate::id::StoreKey;

/// How a store gives a per-session lock back.
#[async_trait]
pub trait Release: Send + Sync + 'static {
    /// Frees the lock.
    async fn release(self: Box<Self>) -> Result<(), StoreError>;
}

/// A held per-session lock, returned by [`Store::lock`](super::Store::lock).
///
/// Release it with [`release`](Self::release). A lock dropped without being released is
/// released by a background task when a Tokio runtime is available, and otherwise lapses when
/// its lease runs out.
pub struct SessionLock {
    release: Option<Box<dyn Release>>,
}

impl SessionLock {
    /// Wraps a store's release action.
    pub fn new(release: impl Release) -> Self {
        Self {
            release: Some(Box::new(release)),
        }
    }

    /// Frees the lock.
    ///
    /// # Errors
    /// The store's error; the lock then lapses when its lease runs out.
    pub async fn release(mut self) -> Result<(), StoreError> {
        match self.release.take() {
            Some(release) => release.release().await,
            None => Ok(()),
        }
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(error) = release.release().await {
                        tracing::warn!(%error, "could not release a dropped session lock; it lapses with its lease");
                    }
                });
            }
        }
    }
}

impl std::fmt::Debug for SessionLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLock")
            .field("held", &self.release.is_some())
            .finish()
    }
}

/// A random token naming one holder of a lease lock, so a holder whose lease ran out cannot
/// free the lock its successor holds.
#[cfg(any(feature = "redis", feature = "postgres", feature = "mongodb"))]
pub(crate) fn lock_token() -> Result<String, StoreError> {
    crate::id::SessionId::generate()
        .map(|id| id.as_str().to_owned())
        .map_err(|e| StoreError::backend(format!("no randomness for a lock token: {e}")))
}

/// Tries to take a lock kept in a remote store until `wait` runs out, pausing 2 ms, 4 ms, …
/// up to 25 ms between tries. `attempt` makes one try: `Some` lock when it got it.
#[cfg(any(feature = "redis", feature = "postgres", feature = "mongodb"))]
pub(crate) async fn retry_lock<F, Fut>(
    wait: Duration,
    mut attempt: F,
) -> Result<Option<SessionLock>, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<SessionLock>, StoreError>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(lock) = attempt().await? {
            return Ok(Some(lock));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

const SHARDS: usize = 64;
type Shard = HashMap<StoreKey, Arc<tokio::sync::Mutex<()>>>;

/// Per-session locks inside one process: the memory store's, and usable by any store whose
/// sessions are only ever served by one process.
#[derive(Clone)]
pub struct LocalLocks {
    shards: Arc<[Mutex<Shard>]>,
}

impl LocalLocks {
    /// No locks held.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
        }
    }

    fn shard(&self, key: &StoreKey) -> MutexGuard<'_, Shard> {
        self.shards[shard_index(key, SHARDS)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the lock of `key`, waiting at most `wait`.
    pub async fn lock(&self, key: &StoreKey, wait: Duration) -> Option<SessionLock> {
        let mutex = self.shard(key).entry(*key).or_default().clone();
        let guard = tokio::time::timeout(wait, mutex.clone().lock_owned()).await;
        match guard {
            Ok(guard) => Some(SessionLock::new(LocalRelease {
                locks: self.clone(),
                key: *key,
                mutex,
                guard,
            })),
            Err(_) => {
                drop(mutex);
                self.forget_if_unused(key);
                None
            }
        }
    }

    /// How many keys have a lock entry (held or waited on).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether no lock is held or waited on.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the entry of `key` if nobody holds or waits for it. Entries are cloned only
    /// under the shard lock, so the count cannot grow while we look at it.
    fn forget_if_unused(&self, key: &StoreKey) {
        let mut shard = self.shard(key);
        if shard.get(key).is_some_and(|m| Arc::strong_count(m) == 1) {
            shard.remove(key);
        }
    }
}

impl Default for LocalLocks {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for LocalLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLocks")
            .field("keys", &self.len())
            .finish()
    }
}

struct LocalRelease {
    locks: LocalLocks,
    key: StoreKey,
    mutex: Arc<tokio::sync::Mutex<()>>,
    guard: OwnedMutexGuard<()>,
}

#[async_trait]
impl Release for LocalRelease {
    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        let Self {
            locks,
            key,
            mutex,
            guard,
        } = *self;
        drop(guard);
        drop(mutex);
        locks.forget_if_unused(&key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionId;

    #[tokio::test]
    async fn second_locker_waits_until_the_first_releases() {
        let locks = LocalLocks::new();
        let key = SessionId::generate().unwrap().store_key();
        let first = locks.lock(&key, Duration::from_secs(1)).await.unwrap();
        assert!(locks.lock(&key, Duration::from_millis(30)).await.is_none());
        first.release().await.unwrap();
        let second = locks.lock(&key, Duration::from_millis(30)).await;
        assert!(second.is_some());
        second.unwrap().release().await.unwrap();
        assert!(locks.is_empty(), "entries are cleaned up");
    }

    #[tokio::test]
    async fn dropped_lock_is_released() {
        let locks = LocalLocks::new();
        let key = SessionId::generate().unwrap().store_key();
        drop(locks.lock(&key, Duration::from_secs(1)).await.unwrap());
        tokio::task::yield_now().await;
        assert!(locks.lock(&key, Duration::from_millis(100)).await.is_some());
    }
}
