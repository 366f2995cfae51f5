//! Who gets a place: the connection cap shared by the upgrade and direct
//! listeners, and the optional limit per client address, so that no single
//! source can take every place. A full cap is answered at once (never a queue
//! of accepted connections that hang), and reported by `/readyz`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The places of one router process.
#[derive(Debug)]
pub(crate) struct Places {
    cap: Arc<Semaphore>,
    max: usize,
    per_client: Option<usize>,
    /// Places held per client address; an address is present only while it
    /// holds one, so the map is bounded by the cap.
    clients: Mutex<HashMap<IpAddr, usize>>,
}

/// A client's share of the per-client limit, given back when dropped.
#[derive(Debug)]
pub(crate) struct ClientPlace {
    places: Arc<Places>,
    ip: IpAddr,
}

impl Places {
    /// `max` places, at most `per_client` of them for one address.
    pub(crate) fn new(max: usize, per_client: Option<usize>) -> Arc<Places> {
        Arc::new(Places {
            cap: Arc::new(Semaphore::new(max)),
            max,
            per_client,
            clients: Mutex::default(),
        })
    }

    /// A place under the cap, if one is free now.
    pub(crate) fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.cap.clone().try_acquire_owned().ok()
    }

    /// The cap.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Places taken now.
    pub(crate) fn active(&self) -> usize {
        self.max - self.cap.available_permits()
    }

    /// Whether every place is taken.
    pub(crate) fn full(&self) -> bool {
        self.cap.available_permits() == 0
    }

    /// A place for client `ip` under the per-client limit: `Ok(None)` when there
    /// is no limit, `Err(limit)` when `ip` holds all it may.
    pub(crate) fn take_client(self: &Arc<Self>, ip: IpAddr) -> Result<Option<ClientPlace>, usize> {
        let Some(limit) = self.per_client else {
            return Ok(None);
        };
        let ip = ip.to_canonical();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let held = clients.entry(ip).or_default();
        if *held >= limit {
            return Err(limit);
        }
        *held += 1;
        Ok(Some(ClientPlace {
            places: self.clone(),
            ip,
        }))
    }
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        let mut clients = self
            .places
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(held) = clients.get_mut(&self.ip) {
            *held -= 1;
            if *held == 0 {
                clients.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_cannot_take_more_than_its_share() {
        let places = Places::new(10, Some(2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = places.take_client(a).unwrap();
        let _second = places.take_client(a).unwrap();
        assert_eq!(places.take_client(a).unwrap_err(), 2);
        assert!(
            places.take_client(b).unwrap().is_some(),
            "others still get in"
        );
        drop(first);
        let _third = places
            .take_client(a)
            .expect("a place given back is free again");
        // An IPv4-mapped address is the same client.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(places.take_client(mapped).is_err());
    }

    #[test]
    fn no_limit_means_no_bookkeeping_and_the_cap_is_reported() {
        let places = Places::new(1, None);
        assert!(places
            .take_client("192.0.2.1".parse().unwrap())
            .unwrap()
            .is_none());
        assert!(!places.full());
        let held = places.try_take().unwrap();
        assert!(places.full() && places.active() == 1);
        assert!(
            places.try_take().is_none(),
            "no waiting: the cap answers now"
        );
        drop(held);
        assert!(!places.full());
    }
}
