//! What is measured: the server variants and the scenarios.

use std::fmt;

/// One server: a session implementation with one store, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Bare axum: the same handlers without sessions.
    Bare,
    /// tower-sessions with its memory store.
    TowerMem,
    /// tower-sessions with tower-sessions-redis-store.
    TowerRedis,
    /// session-core with its memory store.
    OursMem,
    /// session-core with its Redis store.
    OursRedis,
    /// session-core with its memory store and the per-session lock.
    OursMemLocked,
    /// session-core with its Redis store and the per-session lock (a lease key).
    OursRedisLocked,
    /// session-core with a 15-minute `max_age`, as the counter app sets it: a persistent
    /// cookie, so `Set-Cookie` goes out on every change, as tower-sessions does.
    OursMemMaxAge,
    /// The same on Redis.
    OursRedisMaxAge,
}

impl Variant {
    pub const ALL: [Variant; 9] = [
        Variant::Bare,
        Variant::TowerMem,
        Variant::OursMem,
        Variant::OursMemMaxAge,
        Variant::OursMemLocked,
        Variant::TowerRedis,
        Variant::OursRedis,
        Variant::OursRedisMaxAge,
        Variant::OursRedisLocked,
    ];

    /// The name on the command line (`session-bench serve NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Variant::Bare => "bare",
            Variant::TowerMem => "tower-mem",
            Variant::TowerRedis => "tower-redis",
            Variant::OursMem => "ours-mem",
            Variant::OursRedis => "ours-redis",
            Variant::OursMemLocked => "ours-mem-lock",
            Variant::OursRedisLocked => "ours-redis-lock",
            Variant::OursMemMaxAge => "ours-mem-maxage",
            Variant::OursRedisMaxAge => "ours-redis-maxage",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == name)
    }

    /// The name in the tables.
    pub fn label(self) -> &'static str {
        match self {
            Variant::Bare => "bare axum (no sessions)",
            Variant::TowerMem => "tower-sessions, memory",
            Variant::TowerRedis => "tower-sessions, Redis",
            Variant::OursMem => "session-core, memory",
            Variant::OursRedis => "session-core, Redis",
            Variant::OursMemLocked => "session-core, memory, per-session lock",
            Variant::OursRedisLocked => "session-core, Redis, per-session lock",
            Variant::OursMemMaxAge => "session-core, memory, max_age (Set-Cookie on every change)",
            Variant::OursRedisMaxAge => "session-core, Redis, max_age (Set-Cookie on every change)",
        }
    }

    pub fn uses_redis(self) -> bool {
        matches!(
            self,
            Variant::TowerRedis
                | Variant::OursRedis
                | Variant::OursRedisLocked
                | Variant::OursRedisMaxAge
        )
    }

    /// The variant this one is compared with: tower-sessions on the same store for ours.
    pub fn peer(self) -> Option<Variant> {
        match self {
            Variant::OursMem | Variant::OursMemLocked | Variant::OursMemMaxAge => {
                Some(Variant::TowerMem)
            }
            Variant::OursRedis | Variant::OursRedisLocked | Variant::OursRedisMaxAge => {
                Some(Variant::TowerRedis)
            }
            _ => None,
        }
    }

    /// The session cookie's name, if the variant has sessions.
    pub fn cookie_name(self) -> Option<&'static str> {
        match self {
            Variant::Bare => None,
            Variant::TowerMem | Variant::TowerRedis => Some("id"),
            Variant::OursMem
            | Variant::OursRedis
            | Variant::OursMemLocked
            | Variant::OursRedisLocked
            | Variant::OursMemMaxAge
            | Variant::OursRedisMaxAge => Some("sid"),
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One request pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// A returning visitor on a route whose handler never takes the session.
    Lazy,
    /// A new visitor (no cookie) on `/`: a session is created and saved.
    NewVisitor,
    /// A returning visitor on `/peek`: read only.
    ReadOnly,
    /// A returning visitor on `/`: the counter goes up.
    Counter,
    /// A returning visitor with a 64 KB cart on `/`: only `views` changes.
    BigSession,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::Lazy,
        Scenario::NewVisitor,
        Scenario::ReadOnly,
        Scenario::Counter,
        Scenario::BigSession,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Lazy => "lazy",
            Scenario::NewVisitor => "new",
            Scenario::ReadOnly => "peek",
            Scenario::Counter => "counter",
            Scenario::BigSession => "big",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn title(self) -> &'static str {
        match self {
            Scenario::Lazy => "1. Lazy path: the handler never touches the session (`GET /lazy`, returning visitor)",
            Scenario::NewVisitor => "2. New visitor: session created and saved (`GET /`, no cookie)",
            Scenario::ReadOnly => "3. Returning visitor, read only (`GET /peek`)",
            Scenario::Counter => "4. Returning visitor, counter increment (`GET /`)",
            Scenario::BigSession => "5. Returning visitor with a 64 KB `cart`, changing only `views` (`GET /`)",
        }
    }

    /// The measured request's path.
    pub fn path(self) -> &'static str {
        match self {
            Scenario::Lazy => "/lazy",
            Scenario::NewVisitor | Scenario::Counter | Scenario::BigSession => "/",
            Scenario::ReadOnly => "/peek",
        }
    }

    /// Whether each connection gets a session of its own before the run.
    pub fn returning(self) -> bool {
        self != Scenario::NewVisitor
    }

    /// The variants the wrk mode runs in this scenario: the five servers where they
    /// apply (no per-session lock or `max_age` rows, no Redis on the lazy path or for new
    /// visitors, no bare axum with a large session).
    pub fn wrk_variants(self) -> Vec<Variant> {
        let memory = [Variant::Bare, Variant::TowerMem, Variant::OursMem];
        let redis = [Variant::TowerRedis, Variant::OursRedis];
        match self {
            Scenario::Lazy | Scenario::NewVisitor => memory.to_vec(),
            Scenario::ReadOnly | Scenario::Counter => memory.into_iter().chain(redis).collect(),
            Scenario::BigSession => vec![Variant::TowerMem, Variant::OursMem],
        }
    }

    /// The variants this scenario runs. Redis adds nothing to the lazy path (no store call
    /// is made), bare axum has no session to make large, and the per-session lock and the
    /// `max_age` cookie are measured where they matter, on the counter.
    pub fn variants(self) -> Vec<Variant> {
        Variant::ALL
            .into_iter()
            .filter(|v| {
                let locked = matches!(
                    v,
                    Variant::OursMemLocked
                        | Variant::OursRedisLocked
                        | Variant::OursMemMaxAge
                        | Variant::OursRedisMaxAge
                );
                match self {
                    Scenario::Lazy => !v.uses_redis() && !locked,
                    Scenario::BigSession => *v != Variant::Bare && !locked,
                    Scenario::Counter => true,
                    _ => !locked,
                }
            })
            .collect()
    }
}
