//! In-process single-flight: concurrent loads of one key share one leader.
//!
//! The first caller for a key becomes the leader; later callers wait on a
//! `watch` channel for its outcome. Values are shared type-erased
//! (`Arc<dyn Any>`) so one map serves every value type. If the leader's
//! future is dropped before it finishes, the sender drops with it and the
//! waiters retry (one of them becomes the next leader), so a cancelled
//! request never strands the others.
//!
//! An invalidation detaches the flights it concerns ([`Flights::detach`]):
//! their waiters still get the leader's outcome (their reads began before the
//! invalidation), but a caller arriving after it starts a new flight instead
//! of taking a value loaded before the invalidation.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// What a leader hands to its waiters.
pub(crate) type Outcome =
    Result<Arc<dyn Any + Send + Sync>, Arc<dyn std::error::Error + Send + Sync>>;

type Slot = watch::Receiver<Option<Outcome>>;

#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, Slot>>,
}

pub(crate) enum Role<'a> {
    Leader(Leader<'a>),
    Waiter(Slot),
}

pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: String,
    tx: watch::Sender<Option<Outcome>>,
}

impl Flights {
    pub fn join(&self, key: &str) -> Role<'_> {
        let mut map = self.map.lock().expect("flight map poisoned");
        if let Some(rx) = map.get(key) {
            return Role::Waiter(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.to_owned(), rx);
        Role::Leader(Leader {
            flights: self,
            key: key.to_owned(),
            tx,
        })
    }

    /// New callers for `key` start a new flight (see the module docs).
    pub fn detach(&self, key: &str) {
        self.map.lock().expect("flight map poisoned").remove(key);
    }

    /// [`detach`](Self::detach) for every key (a tag invalidation: flights
    /// do not know their tags).
    pub fn detach_all(&self) {
        self.map.lock().expect("flight map poisoned").clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().expect("flight map poisoned").len()
    }
}

impl Leader<'_> {
    /// Publishes the outcome to the waiters and retires the flight.
    pub fn complete(self, outcome: Outcome) {
        let _ = self.tx.send(Some(outcome));
        // Drop removes the map entry.
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.map.lock().expect("flight map poisoned");
        if let Some(rx) = map.get(&self.key) {
            if rx.same_channel(&self.tx.subscribe()) {
                map.remove(&self.key);
            }
        }
    }
}

/// Waits for the leader. `None`: the leader went away without an outcome.
pub(crate) async fn wait(mut rx: Slot) -> Option<Outcome> {
    match rx.wait_for(|v| v.is_some()).await {
        Ok(v) => v.clone(),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_caller_waits_for_the_first() {
        let f = Flights::default();
        let Role::Leader(leader) = f.join("k") else {
            panic!("first is leader")
        };
        let Role::Waiter(rx) = f.join("k") else {
            panic!("second waits")
        };
        leader.complete(Ok(Arc::new(5_i32)));
        let got = wait(rx).await.unwrap().unwrap();
        assert_eq!(got.downcast_ref::<i32>(), Some(&5));
        assert_eq!(f.len(), 0);
        assert!(
            matches!(f.join("k"), Role::Leader(_)),
            "a new flight after completion"
        );
    }

    #[tokio::test]
    async fn a_caller_after_detach_starts_a_new_flight_and_the_old_waiters_still_get_theirs() {
        let f = Flights::default();
        let Role::Leader(old) = f.join("k") else {
            panic!("first is leader")
        };
        let Role::Waiter(rx) = f.join("k") else {
            panic!("second waits")
        };
        f.detach("k");
        let Role::Leader(new) = f.join("k") else {
            panic!("after detach: a new leader")
        };
        old.complete(Ok(Arc::new(1_i32)));
        let got = wait(rx).await.unwrap().unwrap();
        assert_eq!(got.downcast_ref::<i32>(), Some(&1));
        assert_eq!(f.len(), 1, "the old leader did not remove the new flight");
        drop(new);
        assert_eq!(f.len(), 0);
    }

    #[tokio::test]
    async fn dropped_leader_releases_waiters() {
        let f = Flights::default();
        let leader = f.join("k");
        let Role::Waiter(rx) = f.join("k") else {
            panic!("second waits")
        };
        drop(leader);
        assert!(wait(rx).await.is_none());
        assert_eq!(f.len(), 0);
    }
}
