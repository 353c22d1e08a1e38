//! The secrets this deployment holds, as the needles every answer is screened for: tollgate's own provider
//! credentials and the secret of every token held in the vault (sealed, not deleted), whoever's call the
//! answer is to. A provider can write a minted secret anywhere an agent reads back — a DNS record's
//! content, a KV value, an error quoting another call — and the agent reading it may hold its own key, or
//! another token's handle, not the handle of the token whose secret it is; so no answer is screened for
//! the credential its own request carried alone.
//!
//! Owns: opening the vaulted secrets from the store (every replica, when the agents table changes — every
//! mint, roll, update and delete in vault mode changes a handle's agent — and at least every
//! [`FULL_RELOAD`]), and the prepared [`Needles`] the proxy screens with. A token minted on this replica is
//! screened for before its answer leaves ([`HeldSecrets::hold`]); one minted on another, within the
//! identity refresh (a second by default). Until then the answers to its handle's own requests are screened
//! for it still ([`HeldSecrets::needles_with`]).
//! A secret held here is screened for from the moment its answer is read, before it is sealed and
//! recorded; until the store has it (a reading may run between), it is kept aside, for at most
//! [`PENDING_FOR`].
//! Must not: log a secret or keep one outside the needles (the opened secrets are dropped once prepared;
//! a pending one is kept zeroized-on-drop until the store has it).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ring::digest::{SHA256, digest};
use secrecy::{ExposeSecret, SecretString};

use super::Vault;
use super::screen::{NeedleSource, Needles, secret_of};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// The longest the secrets are kept without reading them again, agents table unchanged or not (a row
/// written by hand, a token rolled while its handle stayed).
pub const FULL_RELOAD: Duration = Duration::from_secs(30);

/// The longest a secret held by this replica is kept aside waiting for the store to have it (a token
/// whose recording failed is withheld, and its secret need not be screened for long after).
pub const PENDING_FOR: Duration = Duration::from_secs(120);

/// How many answers to one agent (with its handles) may carry a secret tollgate holds within
/// [`TRIP_WINDOW`] before its requests are refused, on this replica, unless `[vault] screen_trips` says. An answer cut off for a secret is
/// also an answer to "does my text hold a piece of a secret?": an agent that writes guesses where a
/// provider echoes them could learn a secret a character at a time. Legitimate traffic never trips it.
pub const TRIPS_ALLOWED: usize = 3;
pub const TRIP_WINDOW: Duration = Duration::from_secs(3600);

/// A secret's SHA-256: how the set tells whether it already holds a secret, without keeping it.
type Fingerprint = [u8; 32];

fn fingerprint(secret: &[u8]) -> Fingerprint {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, secret).as_ref());
    out
}

/// One prepared set.
struct Prepared {
    needles: Arc<Needles>,
    held: HashSet<Fingerprint>,
}

/// The secrets every answer is screened for, kept current.
pub struct HeldSecrets {
    store: Store,
    vault: Arc<Vault>,
    /// tollgate's own credentials, in every spelling it forwards them in.
    own: Vec<SecretString>,
    metrics: Arc<Metrics>,
    current: RwLock<Arc<Prepared>>,
    /// Moves whenever `current` is replaced: an answer streaming meanwhile picks the new set up.
    generation: std::sync::atomic::AtomicU64,
    /// The agents table's version and when the secrets were last read.
    read: tokio::sync::Mutex<(i64, Option<Instant>)>,
    /// When answers to each agent (its principal: a handle counts as its minter) carried a held secret,
    /// within the last [`TRIP_WINDOW`].
    trips: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, Vec<Instant>>>,
    /// How many agents `trips` holds: while none, [`HeldSecrets::tripped_out`] answers without the lock
    /// (it is asked for every chunk of every answer).
    tripping: std::sync::atomic::AtomicUsize,
    /// Secrets held by [`HeldSecrets::hold`] that the store may not have yet, with when.
    pending: std::sync::Mutex<Vec<(secrecy::SecretSlice<u8>, Fingerprint, Instant)>>,
    wake: tokio::sync::Notify,
}

impl HeldSecrets {
    pub fn new(
        store: Store,
        vault: Arc<Vault>,
        own: Vec<SecretString>,
        metrics: Arc<Metrics>,
    ) -> HeldSecrets {
        let prepared = prepare(&own, &[]);
        metrics
            .screened_secrets
            .with_label_values(&["held"])
            .set(prepared.held.len() as i64);
        HeldSecrets {
            store,
            vault,
            own,
            metrics,
            current: RwLock::new(Arc::new(prepared)),
            generation: Default::default(),
            read: tokio::sync::Mutex::new((i64::MIN, None)),
            pending: Default::default(),
            trips: Default::default(),
            tripping: Default::default(),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// The needles for one answer: every held secret, and `extra` (the secrets the request itself went out
    /// with) when the set does not hold them yet.
    pub fn needles_with(&self, extra: &[Vec<u8>]) -> Arc<Needles> {
        let current = Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()));
        let missing: Vec<&[u8]> = extra
            .iter()
            .filter(|s| !s.is_empty() && !current.held.contains(&fingerprint(s)))
            .map(Vec::as_slice)
            .collect();
        if missing.is_empty() {
            Arc::clone(&current.needles)
        } else {
            Arc::new(current.needles.with(missing))
        }
    }

    /// The needles of one answer to `principal`'s request, kept current while it streams: every held
    /// secret (a token minted after the answer began included, from then on) and `extra`, the secrets its
    /// request went out with. An answer cut off for a secret counts as one of the agent's trips.
    pub fn for_answer(
        self: &Arc<Self>,
        principal: uuid::Uuid,
        extra: Vec<Vec<u8>>,
    ) -> Arc<dyn NeedleSource> {
        Arc::new(AnswerNeedles {
            held: Arc::clone(self),
            principal,
            extra,
        })
    }

    /// Counts an answer to `principal` that carried a held secret (cut off or withheld).
    pub fn tripped(&self, principal: uuid::Uuid) {
        self.metrics.screen_trips_total.inc();
        let mut trips = self.trips.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        trips.retain(|_, at| {
            at.retain(|t| now.duration_since(*t) < TRIP_WINDOW);
            !at.is_empty()
        });
        trips.entry(principal).or_default().push(now);
        self.tripping
            .store(trips.len(), std::sync::atomic::Ordering::Release);
    }

    /// Whether answers to `principal` carried a held secret `[vault] screen_trips` times within the last
    /// [`TRIP_WINDOW`] (on this replica): its requests are then refused until the oldest of them ages out.
    pub fn tripped_out(&self, principal: uuid::Uuid) -> bool {
        if self.tripping.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return false;
        }
        let trips = self.trips.lock().unwrap_or_else(|e| e.into_inner());
        trips.get(&principal).is_some_and(|at| {
            at.iter().filter(|t| t.elapsed() < TRIP_WINDOW).count() >= self.vault.screen_trips
        })
    }

    /// How many secrets the set holds (tollgate's own spellings included).
    pub fn len(&self) -> usize {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .held
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Holds one more secret from now on (a token minted or rolled on this replica, as soon as its answer
    /// is read), and reads the rest again soon. Waits for a reading in progress, and keeps the secret aside
    /// until the store has it, so that no reading can put back a set without it.
    pub async fn hold(&self, secret: &[u8]) {
        let _reading = self.read.lock().await;
        let print = fingerprint(secret);
        if !secret.is_empty() {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if !pending.iter().any(|(_, p, _)| *p == print) {
                pending.push((secret.to_vec().into(), print, Instant::now()));
            }
        }
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if !secret.is_empty() && !current.held.contains(&print) {
            let mut held = current.held.clone();
            held.insert(print);
            self.set_held(held.len());
            *current = Arc::new(Prepared {
                needles: Arc::new(current.needles.with([secret])),
                held,
            });
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        drop(current);
        self.wake.notify_one();
    }

    /// Reads the vaulted secrets again if the agents table changed since the last reading, `force`d, or
    /// the last was [`FULL_RELOAD`] ago.
    pub async fn refresh(&self, force: bool) -> Result<(), StoreError> {
        let mut read = self.read.lock().await;
        let version = self.store.agents_version().await?;
        let stale = read.1.is_none_or(|at| at.elapsed() >= FULL_RELOAD);
        if !force && !stale && read.0 == version {
            return Ok(());
        }
        let rows = self.store.vaulted_tokens().await?;
        let mut secrets = Vec::with_capacity(rows.len());
        let mut unopened = 0;
        for row in &rows {
            let Some(sealed) = &row.sealed else { continue };
            let opened = self
                .vault
                .open(&row.provider, &row.token_id, sealed)
                .ok()
                .and_then(|s| s.bearer())
                .and_then(|b| secret_of(&b));
            match opened {
                Some(secret) => secrets.push(secret),
                None => {
                    unopened += 1;
                    tracing::error!(provider = %row.provider, token_id = %row.token_id, "a vaulted secret does not open with the configured keys; answers cannot be screened for it");
                }
            }
        }
        self.metrics
            .screened_secrets
            .with_label_values(&["unopened"])
            .set(unopened as i64);
        // Secrets held here that the store does not have yet (or no longer, when recording failed: kept
        // for a while all the same).
        {
            let stored: HashSet<Fingerprint> = secrets.iter().map(|s| fingerprint(s)).collect();
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.retain(|(_, print, at)| !stored.contains(print) && at.elapsed() < PENDING_FOR);
            secrets.extend(pending.iter().map(|(s, _, _)| s.expose_secret().to_vec()));
        }
        let wanted: HashSet<Fingerprint> = self
            .own
            .iter()
            .map(|s| fingerprint(s.expose_secret().as_bytes()))
            .chain(secrets.iter().map(|s| fingerprint(s)))
            .collect();
        let unchanged = self.current.read().unwrap_or_else(|e| e.into_inner()).held == wanted;
        if !unchanged {
            let own = self.own.clone();
            // Preparing a thousand secrets' windows takes milliseconds: off the runtime's threads.
            match tokio::task::spawn_blocking(move || prepare(&own, &secrets)).await {
                Ok(prepared) => {
                    self.set_held(prepared.held.len());
                    *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(prepared);
                    self.generation
                        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                }
                Err(e) => {
                    // The last set stays; the next tick tries again.
                    tracing::error!(error = %e, "preparing the held secrets failed");
                    return Ok(());
                }
            }
        }
        *read = (version, Some(Instant::now()));
        Ok(())
    }

    fn set_held(&self, held: usize) {
        self.metrics
            .screened_secrets
            .with_label_values(&["held"])
            .set(held as i64);
    }

    /// Runs [`HeldSecrets::refresh`] every `every`, and at once when woken, until the task is aborted.
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let held = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let woken = tokio::select! {
                    _ = tick.tick() => false,
                    () = held.wake.notified() => true,
                };
                if let Err(e) = held.refresh(woken).await {
                    tracing::warn!(error = %e, "reading the vaulted secrets failed; answers are screened for those read before");
                }
            }
        })
    }
}

fn prepare(own: &[SecretString], minted: &[Vec<u8>]) -> Prepared {
    let secrets: Vec<&[u8]> = own
        .iter()
        .map(|s| s.expose_secret().as_bytes())
        .chain(minted.iter().map(Vec::as_slice))
        .filter(|s| !s.is_empty())
        .collect();
    Prepared {
        held: secrets.iter().map(|s| fingerprint(s)).collect(),
        needles: Arc::new(Needles::new(secrets)),
    }
}

/// One answer's needles ([`HeldSecrets::for_answer`]).
struct AnswerNeedles {
    held: Arc<HeldSecrets>,
    principal: uuid::Uuid,
    extra: Vec<Vec<u8>>,
}

impl NeedleSource for AnswerNeedles {
    fn generation(&self) -> u64 {
        self.held
            .generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn needles(&self) -> Arc<Needles> {
        self.held.needles_with(&self.extra)
    }

    fn found(&self) {
        self.held.tripped(self.principal);
    }

    fn closed(&self) -> bool {
        self.held.tripped_out(self.principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VaultConfig;

    /// A secret held before its token is recorded survives every reading until the store has it, and
    /// one the store never gets is let go after [`PENDING_FOR`] (attack round 14: the window between an
    /// answer being read and its token being recorded).
    #[tokio::test]
    async fn a_secret_held_before_it_is_recorded_survives_readings() {
        let dir = tempfile::tempdir().unwrap();
        let url = SecretString::from(format!("sqlite:{}", dir.path().join("t.db").display()));
        let store = Store::connect(&url, 1).await.unwrap();
        store.migrate().await.unwrap();
        let vault = Vault::from_config(&VaultConfig {
            enabled: false,
            keys: vec![],
            pass_through_labels: vec![],
            screen_trips: TRIPS_ALLOWED,
        })
        .unwrap();
        let held = HeldSecrets::new(
            store,
            Arc::new(vault),
            vec![SecretString::from("own-credential-Xq7Lm2Pz9Rt4")],
            Arc::new(Metrics::new()),
        );
        let minted = b"Mn2pQr5tUv8xYz1bCd4fGh7jKl0nAb3dEf6hIj9l";
        let answer = |text: &[u8]| held.needles_with(&[]).found_in(text);
        assert!(!answer(minted));
        held.hold(minted).await;
        assert!(answer(minted));
        assert_eq!(held.len(), 2);
        // Readings forced while the store does not have it yet keep it.
        held.refresh(true).await.unwrap();
        held.refresh(true).await.unwrap();
        assert!(
            answer(minted),
            "a reading dropped a secret not yet recorded"
        );
        assert!(answer(b"own-credential-Xq7Lm2Pz9Rt4"));
        // Past PENDING_FOR without the store having it, it is let go.
        held.pending.lock().unwrap()[0].2 = Instant::now() - PENDING_FOR;
        held.refresh(true).await.unwrap();
        assert!(!answer(minted));
        assert!(held.pending.lock().unwrap().is_empty());
    }
}
