//! The per-client upgrade rate limit: a token bucket per client address, kept in
//! a compare-and-swap store so that every worker thread of Envoy shares it (the
//! filter uses proxy-wasm shared data; tests use [`MemoryStore`]).
//!
//! Buckets hash into a fixed number of slots, so memory stays bounded however
//! many clients there are. A slot remembers its client: a different client
//! hashing to it starts a fresh bucket, so a collision can only loosen the limit
//! for a moment, never refuse an innocent client.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::config::RateLimit;

/// The state of one slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// The client the bucket belongs to (IPv4 as IPv4-mapped IPv6).
    pub client: [u8; 16],
    /// Tokens left; one upgrade takes one.
    pub tokens: f64,
    /// When `tokens` was last brought up to date, in milliseconds since the epoch.
    pub updated_ms: u64,
}

impl Bucket {
    const LEN: usize = 32;

    /// The bytes stored in the slot.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..16].copy_from_slice(&self.client);
        b[16..24].copy_from_slice(&self.tokens.to_bits().to_be_bytes());
        b[24..].copy_from_slice(&self.updated_ms.to_be_bytes());
        b
    }

    /// Reads a slot; anything of the wrong shape counts as empty.
    pub fn decode(bytes: &[u8]) -> Option<Bucket> {
        if bytes.len() != Self::LEN {
            return None;
        }
        let mut client = [0u8; 16];
        client.copy_from_slice(&bytes[..16]);
        let tokens = f64::from_bits(u64::from_be_bytes(bytes[16..24].try_into().ok()?));
        let updated_ms = u64::from_be_bytes(bytes[24..].try_into().ok()?);
        tokens.is_finite().then_some(Bucket {
            client,
            tokens,
            updated_ms,
        })
    }
}

/// A store whose writes succeed only if the slot is unchanged since it was read.
pub trait BucketStore {
    /// The slot's bucket, if any, and the token to write it back with.
    fn load(&mut self, slot: u32) -> (Option<Bucket>, Option<u32>);
    /// Writes the slot; `false` when someone else wrote it since `load`.
    fn store(&mut self, slot: u32, bucket: &Bucket, cas: Option<u32>) -> bool;
}

/// The answer of the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The upgrade may go ahead.
    Allowed,
    /// Over the limit: try again after this many seconds.
    Limited {
        /// Seconds until a token is back (at least 1).
        retry_after_s: u64,
    },
}

/// How often a write that lost a race is retried before the upgrade is allowed
/// anyway (failing open: a busy store must not lock everybody out).
const CAS_ATTEMPTS: usize = 8;

/// Takes a token for `client` at time `now_ms`.
pub fn admit(
    limit: &RateLimit,
    store: &mut dyn BucketStore,
    client: IpAddr,
    now_ms: u64,
) -> Admission {
    let key = match client {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let slot = slot_of(&key, limit.slots);
    let capacity = f64::from(limit.upgrades);
    let per_ms = capacity / (f64::from(limit.per_seconds) * 1000.0);
    for _ in 0..CAS_ATTEMPTS {
        let (current, cas) = store.load(slot);
        let mut bucket = match current {
            Some(b) if b.client == key => {
                let elapsed = now_ms.saturating_sub(b.updated_ms) as f64;
                Bucket {
                    tokens: (b.tokens + elapsed * per_ms).min(capacity),
                    updated_ms: now_ms,
                    ..b
                }
            }
            _ => Bucket {
                client: key,
                tokens: capacity,
                updated_ms: now_ms,
            },
        };
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        if store.store(slot, &bucket, cas) {
            if allowed {
                return Admission::Allowed;
            }
            let wait_ms = (1.0 - bucket.tokens) / per_ms;
            return Admission::Limited {
                retry_after_s: ((wait_ms / 1000.0).ceil() as u64).max(1),
            };
        }
    }
    Admission::Allowed
}

/// FNV-1a: small, stable across builds and good enough to spread addresses.
fn slot_of(key: &[u8; 16], slots: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in key {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % slots
}

/// An in-process store, for tests and for hosts without shared data.
#[derive(Debug, Default)]
pub struct MemoryStore {
    slots: HashMap<u32, (Bucket, u32)>,
}

impl BucketStore for MemoryStore {
    fn load(&mut self, slot: u32) -> (Option<Bucket>, Option<u32>) {
        match self.slots.get(&slot) {
            Some((b, cas)) => (Some(*b), Some(*cas)),
            None => (None, None),
        }
    }

    fn store(&mut self, slot: u32, bucket: &Bucket, cas: Option<u32>) -> bool {
        let current = self.slots.get(&slot).map(|(_, c)| *c);
        if cas.is_some() && cas != current {
            return false;
        }
        self.slots.insert(slot, (*bucket, current.unwrap_or(0) + 1));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        upgrades: 3,
        per_seconds: 60,
        slots: 1024,
    };

    #[test]
    fn bursts_to_the_limit_then_refuses_with_a_retry_time() {
        let mut store = MemoryStore::default();
        let c: IpAddr = "203.0.113.7".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(admit(&LIMIT, &mut store, c, 1_000), Admission::Allowed);
        }
        assert_eq!(
            admit(&LIMIT, &mut store, c, 1_000),
            Admission::Limited { retry_after_s: 20 }
        );
    }

    #[test]
    fn tokens_come_back_with_time() {
        let mut store = MemoryStore::default();
        let c: IpAddr = "203.0.113.7".parse().unwrap();
        for _ in 0..3 {
            admit(&LIMIT, &mut store, c, 0);
        }
        assert_ne!(admit(&LIMIT, &mut store, c, 19_000), Admission::Allowed);
        assert_eq!(admit(&LIMIT, &mut store, c, 40_000), Admission::Allowed);
    }

    #[test]
    fn clients_do_not_share_buckets() {
        let mut store = MemoryStore::default();
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "2001:db8::7".parse().unwrap();
        for _ in 0..3 {
            admit(&LIMIT, &mut store, a, 0);
        }
        assert_eq!(admit(&LIMIT, &mut store, b, 0), Admission::Allowed);
    }

    #[test]
    fn a_colliding_client_never_inherits_an_empty_bucket() {
        let one_slot = RateLimit { slots: 1, ..LIMIT };
        let mut store = MemoryStore::default();
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "203.0.113.8".parse().unwrap();
        for _ in 0..3 {
            admit(&one_slot, &mut store, a, 0);
        }
        assert_eq!(admit(&one_slot, &mut store, b, 0), Admission::Allowed);
    }

    #[test]
    fn a_lost_race_is_retried_against_the_new_state() {
        struct Racy(MemoryStore, bool);
        impl BucketStore for Racy {
            fn load(&mut self, slot: u32) -> (Option<Bucket>, Option<u32>) {
                self.0.load(slot)
            }
            fn store(&mut self, slot: u32, bucket: &Bucket, cas: Option<u32>) -> bool {
                if !self.1 {
                    // Another worker takes the last token between our load and store.
                    self.1 = true;
                    let stolen = Bucket {
                        tokens: 0.0,
                        ..*bucket
                    };
                    self.0.store(slot, &stolen, cas);
                    return false;
                }
                self.0.store(slot, bucket, cas)
            }
        }
        let mut store = Racy(MemoryStore::default(), false);
        let c: IpAddr = "203.0.113.7".parse().unwrap();
        assert!(matches!(
            admit(&LIMIT, &mut store, c, 0),
            Admission::Limited { .. }
        ));
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let b = Bucket {
            client: [7; 16],
            tokens: 2.5,
            updated_ms: 42,
        };
        assert_eq!(Bucket::decode(&b.encode()), Some(b));
        assert_eq!(Bucket::decode(b"short"), None);
    }
}
