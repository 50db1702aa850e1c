//! Write leases and prune fences: how writers and `prune` keep out of each other's way
//! (`docs/format.md`, "Deletion and retention").
//!
//! The store has no lock that writers wait on. Instead, before it writes anything, a
//! writer (`ecr-backup backup`, the fan-out, the worker) creates a **lease**
//! (`locks/writers/<id>.json`), and then lists the **fences** (`locks/prune/`); a prune
//! creates its fence first and then lists the leases. Both write before they read, and
//! S3 (like a file system) lists what was written before the listing began, so at least
//! one of the two sees the other: either the writer sees the fence and stops before it
//! relies on anything in the store, or the prune sees the lease and waits until it is
//! released or has expired. A lease lasts a bounded time and is renewed while its writer
//! runs; a writer whose lease can no longer be renewed stops writing records when the
//! lease it holds runs out, so a prune that waited for that lease's end never deletes
//! what such a writer still relies on.
//!
//! Writers never delete: a finished writer creates `locks/released/<id>.json`, and the
//! prune removes old lock objects under its retention role.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{stream_of, Backend, ObjectInfo, Store, StoreError, WriteOutcome};
use crate::oci::digest::Digest;

/// Prefix of every lock object.
pub const LOCKS_PREFIX: &str = "locks/";
/// Writers' leases.
pub const LEASES_PREFIX: &str = "locks/writers/";
/// Markers of leases whose writer finished.
pub const RELEASED_PREFIX: &str = "locks/released/";
/// Prune fences.
pub const FENCES_PREFIX: &str = "locks/prune/";

/// How long a lease lasts unless renewed. Longer than the worst delay between two
/// renewals (one slow S3 request), short enough that a prune waits little for a writer
/// that died.
pub const LEASE_DURATION: Duration = Duration::from_secs(600);
/// How often a running writer renews its lease.
pub const LEASE_RENEWAL: Duration = Duration::from_secs(180);
/// How far the clocks of a writer, a prune and the store may disagree. A writer stops
/// this long before its lease ends by its own clock; a prune waits this long past a
/// lease's end by the store's clock.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// How long a prune's fence lasts: a prune stops deleting before then.
pub const FENCE_DURATION: Duration = Duration::from_secs(3600);

/// The body of a lease or a fence; readers take its start from the object's write time
/// by the store's clock, not from `createdAt`, which is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// Record format version.
    pub version: u32,
    /// `write` (a lease) or `prune` (a fence).
    pub kind: String,
    /// Who holds it (`backup`, `fan-out`, `worker`, `prune`, …).
    pub holder: String,
    /// How long after its write time it ends, unless released (or renewed, for a lease:
    /// a renewal is a new object `<id>.<n>.json`).
    #[serde(rename = "expiresAfterSeconds")]
    pub expires_after_seconds: u64,
    /// When the holder wrote it, by its own clock.
    #[serde(rename = "createdAt")]
    pub created_at: DateTime<Utc>,
}

/// What the store's record writes check: whether this handle's writer still holds a
/// lease that a prune respects.
#[derive(Debug, Default)]
pub(super) struct WriteGate {
    state: Mutex<GateState>,
}

#[derive(Debug, Default, Clone)]
enum GateState {
    /// No lease taken through this handle: writes are not checked (tests, tools that
    /// write a store no prune runs on).
    #[default]
    Unleased,
    /// Writes are allowed until `until` by the local clock.
    Leased { id: String, until: SystemTime },
    /// The lease ran out or a fence was seen: no record may be written.
    Stopped { id: String, why: String },
}

impl WriteGate {
    /// Fails unless a record may be written now.
    pub(super) fn check(&self, key: &str) -> Result<(), StoreError> {
        let state = self.state.lock().expect("write gate").clone();
        match state {
            GateState::Unleased => Ok(()),
            GateState::Leased { id, until } => {
                if SystemTime::now() < until {
                    Ok(())
                } else {
                    Err(StoreError::LeaseLost {
                        key: key.into(),
                        lease: id,
                        why: "the lease ran out before it could be renewed".into(),
                    })
                }
            }
            GateState::Stopped { id, why } => Err(StoreError::LeaseLost {
                key: key.into(),
                lease: id,
                why,
            }),
        }
    }

    fn set(&self, state: GateState) {
        *self.state.lock().expect("write gate") = state;
    }

    fn extend(&self, id: &str, until: SystemTime) {
        let mut state = self.state.lock().expect("write gate");
        if matches!(&*state, GateState::Leased { id: held, .. } if held == id) {
            *state = GateState::Leased {
                id: id.to_owned(),
                until,
            };
        }
    }

    fn stop(&self, id: &str, why: String) {
        let mut state = self.state.lock().expect("write gate");
        if matches!(&*state, GateState::Leased { id: held, .. } if held == id) {
            *state = GateState::Stopped {
                id: id.to_owned(),
                why,
            };
        }
    }
}

/// A writer's hold on the store, from [`Store::begin_writes`] to [`WriteLease::release`].
/// While it is held (and renewed in the background), the store handle's record writes
/// succeed; once it is lost they fail with [`StoreError::LeaseLost`].
#[derive(Debug)]
pub struct WriteLease {
    store: Store,
    id: String,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

/// Timings of leases and fences; the defaults are the constants above (tests shorten
/// them).
#[derive(Debug, Clone, Copy)]
pub struct LockTimings {
    /// [`LEASE_DURATION`].
    pub lease: Duration,
    /// [`LEASE_RENEWAL`].
    pub renewal: Duration,
    /// [`CLOCK_SKEW`].
    pub skew: Duration,
    /// [`FENCE_DURATION`].
    pub fence: Duration,
}

impl Default for LockTimings {
    fn default() -> Self {
        LockTimings {
            lease: LEASE_DURATION,
            renewal: LEASE_RENEWAL,
            skew: CLOCK_SKEW,
            fence: FENCE_DURATION,
        }
    }
}

/// A new lock id: the second it was taken (so ids sort by age), then random hex.
fn lock_id() -> String {
    let random: u64 = rand::random();
    format!(
        "{}-{:012x}",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        random >> 16
    )
}

fn lock_bytes(kind: &str, holder: &str, expires: Duration) -> Bytes {
    let record = LockRecord {
        version: 1,
        kind: kind.into(),
        holder: holder.into(),
        expires_after_seconds: expires.as_secs(),
        created_at: Utc::now(),
    };
    Bytes::from(serde_json::to_vec_pretty(&record).expect("lock records serialize"))
}

/// Creates `key` with `bytes`, create-only (so the bucket policy's If-None-Match rule
/// holds for lock objects too).
async fn create(backend: &dyn Backend, key: &str, bytes: Bytes) -> Result<(), StoreError> {
    let digest = Digest::of(&bytes);
    let size = bytes.len() as u64;
    match backend
        .write_verified(key, &digest, Some(size), stream_of(bytes))
        .await?
    {
        WriteOutcome::Written => Ok(()),
        WriteOutcome::AlreadyExists => Err(StoreError::Conflict { key: key.into() }),
    }
}

/// A fence that is in force: written, not removed, not yet expired.
#[derive(Debug, Clone)]
pub struct ActiveFence {
    /// Its key.
    pub key: String,
    /// When it ends, by the store's clock, unless its prune removes it first.
    pub until: DateTime<Utc>,
}

/// The fences in force now (with `skew` of allowance), other than `except`.
async fn active_fences(
    store: &Store,
    skew: Duration,
    except: Option<&str>,
) -> Result<Vec<ActiveFence>, StoreError> {
    let now = Utc::now();
    let mut active = Vec::new();
    for object in store.backend().list(FENCES_PREFIX).await? {
        if Some(object.key.as_str()) == except || !object.key.ends_with(".json") {
            continue;
        }
        let Some(record) = read_lock(store, &object.key).await? else {
            continue; // removed since the listing: its prune is done
        };
        let until = end_of(&object, &record);
        if until + chrono::Duration::from_std(skew).unwrap_or_default() > now {
            active.push(ActiveFence {
                key: object.key,
                until,
            });
        }
    }
    Ok(active)
}

/// A lock's end by the store's clock.
fn end_of(object: &ObjectInfo, record: &LockRecord) -> DateTime<Utc> {
    object.modified + chrono::Duration::seconds(record.expires_after_seconds as i64)
}

async fn read_lock(store: &Store, key: &str) -> Result<Option<LockRecord>, StoreError> {
    let Some(bytes) = store.backend().read(key).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StoreError::CorruptRecord {
            key: key.into(),
            source,
        })
}

impl Store {
    /// Takes a write lease for `holder` (see the module's documentation): fails with
    /// [`StoreError::Fenced`] when a prune is running, having written nothing but the
    /// lease. The lease is renewed in the background until [`WriteLease::release`] (or
    /// until it is dropped, when it simply runs out).
    pub async fn begin_writes(&self, holder: &str) -> Result<WriteLease, StoreError> {
        self.begin_writes_with(holder, LockTimings::default()).await
    }

    /// [`Store::begin_writes`] with other timings (tests).
    pub async fn begin_writes_with(
        &self,
        holder: &str,
        timings: LockTimings,
    ) -> Result<WriteLease, StoreError> {
        let id = lock_id();
        let started = SystemTime::now();
        create(
            self.backend(),
            &format!("{LEASES_PREFIX}{id}.json"),
            lock_bytes("write", holder, timings.lease),
        )
        .await?;
        // Written first, listed second: see the module's documentation.
        if let Some(fence) = active_fences(self, timings.skew, None)
            .await?
            .into_iter()
            .next()
        {
            self.gate.set(GateState::Stopped {
                id: id.clone(),
                why: format!("a prune is running ({})", fence.key),
            });
            return Err(StoreError::Fenced {
                fence: fence.key,
                until: fence.until,
            });
        }
        self.gate.set(GateState::Leased {
            id: id.clone(),
            until: started + timings.lease.saturating_sub(timings.skew),
        });
        let renewer = tokio::spawn(renew(self.clone(), id.clone(), holder.to_owned(), timings));
        Ok(WriteLease {
            store: self.clone(),
            id,
            renewer: Some(renewer),
        })
    }
}

/// Renews lease `id` every `timings.renewal` while its writer runs; stops extending it
/// (so writes stop when it runs out) when a renewal fails or finds a fence.
async fn renew(store: Store, id: String, holder: String, timings: LockTimings) {
    for n in 1.. {
        tokio::time::sleep(timings.renewal).await;
        let started = SystemTime::now();
        let key = format!("{LEASES_PREFIX}{id}.{n}.json");
        let written = create(
            store.backend(),
            &key,
            lock_bytes("write", &holder, timings.lease),
        )
        .await;
        let fenced = match written {
            Ok(()) => active_fences(&store, timings.skew, None).await,
            Err(e) => Err(e),
        };
        match fenced {
            Ok(fences) if fences.is_empty() => store
                .gate
                .extend(&id, started + timings.lease.saturating_sub(timings.skew)),
            Ok(fences) => {
                tracing::warn!(lease = %id, fence = %fences[0].key, "a prune started; this writer stops when its lease runs out");
                store
                    .gate
                    .stop(&id, format!("a prune is running ({})", fences[0].key));
                return;
            }
            Err(e) => {
                tracing::warn!(lease = %id, error = %crate::error::error_chain(&e), "could not renew the write lease; writes stop when it runs out");
                return;
            }
        }
    }
}

impl WriteLease {
    /// The lease's id (`locks/writers/<id>.json`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Ends the lease: stops renewing it and marks it released, so a prune need not wait
    /// for it to run out. Record writes through the store handle are refused afterwards.
    pub async fn release(mut self) -> Result<(), StoreError> {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        self.store
            .gate
            .stop(&self.id, "the lease was released".into());
        create(
            self.store.backend(),
            &format!("{RELEASED_PREFIX}{}.json", self.id),
            Bytes::from_static(b"{\"version\": 1}"),
        )
        .await
    }
}

impl Drop for WriteLease {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}

/// A prune's fence, from [`PruneFence::raise`] to [`PruneFence::lower`].
#[derive(Debug)]
pub struct PruneFence {
    store: Store,
    key: String,
    raised: SystemTime,
    timings: LockTimings,
}

/// A lease a prune must wait for.
#[derive(Debug, Clone)]
pub struct HeldLease {
    /// The lease object's key.
    pub key: String,
    /// Who holds it.
    pub holder: String,
    /// When it ends by the store's clock, unless released first.
    pub until: DateTime<Utc>,
}

impl PruneFence {
    /// Writes a fence, then lists the leases: returns the fence and the leases it must
    /// wait for (neither released nor run out). Fails with [`StoreError::Fenced`] when
    /// another prune's fence is in force.
    pub async fn raise(
        store: &Store,
        timings: LockTimings,
    ) -> Result<(PruneFence, Vec<HeldLease>), StoreError> {
        let key = format!("{FENCES_PREFIX}{}.json", lock_id());
        let raised = SystemTime::now();
        create(
            store.backend(),
            &key,
            lock_bytes("prune", "prune", timings.fence),
        )
        .await?;
        let fence = PruneFence {
            store: store.clone(),
            key,
            raised,
            timings,
        };
        if let Some(other) = active_fences(store, timings.skew, Some(&fence.key))
            .await?
            .into_iter()
            .next()
        {
            fence.lower().await?;
            return Err(StoreError::Fenced {
                fence: other.key,
                until: other.until,
            });
        }
        let held = fence.held_leases().await?;
        Ok((fence, held))
    }

    /// The fence's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Leases neither released nor run out (with the clock allowance), now.
    pub async fn held_leases(&self) -> Result<Vec<HeldLease>, StoreError> {
        let backend = self.store.backend();
        let (leases, released) =
            futures::try_join!(backend.list(LEASES_PREFIX), backend.list(RELEASED_PREFIX))?;
        let released: std::collections::HashSet<String> = released
            .iter()
            .filter_map(|o| o.key.strip_prefix(RELEASED_PREFIX))
            .filter_map(|name| name.strip_suffix(".json"))
            .map(str::to_owned)
            .collect();
        let now = Utc::now();
        let skew = chrono::Duration::from_std(self.timings.skew).unwrap_or_default();
        let mut held = Vec::new();
        for object in leases {
            let Some(id) = lease_id(&object.key) else {
                continue;
            };
            if released.contains(id) {
                continue;
            }
            let Some(record) = read_lock(&self.store, &object.key).await? else {
                continue;
            };
            let until = end_of(&object, &record);
            if until + skew > now {
                held.push(HeldLease {
                    key: object.key,
                    holder: record.holder,
                    until,
                });
            }
        }
        Ok(held)
    }

    /// Fails unless the fence is still in force for long enough to delete one more
    /// batch: a prune never deletes after its fence may have ended.
    pub fn check(&self) -> Result<(), StoreError> {
        let elapsed = self.raised.elapsed().unwrap_or(Duration::MAX);
        if elapsed + self.timings.skew < self.timings.fence {
            Ok(())
        } else {
            Err(StoreError::LeaseLost {
                key: self.key.clone(),
                lease: self.key.clone(),
                why: "the prune's fence ran out; run prune again".into(),
            })
        }
    }

    /// Removes the fence (writers may go on at once).
    pub async fn lower(self) -> Result<(), StoreError> {
        self.store
            .backend()
            .delete(std::slice::from_ref(&self.key))
            .await
    }
}

/// The lease id of a lease object's key (`locks/writers/<id>.json` or
/// `locks/writers/<id>.<n>.json`).
pub(crate) fn lease_id(key: &str) -> Option<&str> {
    let name = key.strip_prefix(LEASES_PREFIX)?.strip_suffix(".json")?;
    Some(name.split_once('.').map_or(name, |(id, _)| id))
}

/// Lock objects a prune may remove: leases released or run out, their release markers,
/// and fences that ran out, all older than `older_than`.
pub(crate) async fn stale_locks(
    store: &Store,
    older_than: DateTime<Utc>,
    own_fence: &str,
) -> Result<Vec<String>, StoreError> {
    let objects = store.backend().list(LOCKS_PREFIX).await?;
    Ok(objects
        .into_iter()
        .filter(|o| o.key != own_fence && o.modified < older_than)
        .map(|o| o.key)
        .collect())
}

/// Shared so the gate can be held by every clone of a store handle.
pub(super) type SharedGate = Arc<WriteGate>;
