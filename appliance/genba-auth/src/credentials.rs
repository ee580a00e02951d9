//! Checking user names and passwords against argon2 hashes, with a cache of what verified
//! (argon2 runs once per client, not once per request) and a bound on concurrent hashing
//! (a flood of bad passwords cannot take every core).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::passwords::verify_password;

#[derive(Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
}

struct Inner {
    users: HashMap<String, String>,
    verified: Mutex<HashSet<[u8; 32]>>,
    hashing: Semaphore,
}

impl Credentials {
    /// From (user name, argon2 PHC string) pairs.
    pub fn new<'a>(users: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Credentials {
            inner: Arc::new(Inner {
                users: users
                    .into_iter()
                    .map(|(name, phc)| (name.to_owned(), phc.to_owned()))
                    .collect(),
                verified: Mutex::new(HashSet::new()),
                hashing: Semaphore::new(1),
            }),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.inner.users.is_empty()
    }

    /// Whether `user` exists and `password` matches its hash.
    pub async fn verify(&self, user: &str, password: &[u8]) -> bool {
        let Some(phc) = self.inner.users.get(user).cloned() else {
            return false;
        };
        let key: [u8; 32] = {
            let mut h = Sha256::new();
            for part in [user.as_bytes(), password, phc.as_bytes()] {
                h.update(part);
                h.update([0]);
            }
            h.finalize().into()
        };
        if self.lock().contains(&key) {
            return true;
        }
        let Ok(_permit) = self.inner.hashing.acquire().await else {
            return false;
        };
        let Ok(password) = String::from_utf8(password.to_vec()) else {
            return false;
        };
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &phc))
            .await
            .unwrap_or(false);
        if ok {
            let mut cache = self.lock();
            if cache.len() > 4096 {
                cache.clear();
            }
            cache.insert(key);
        }
        ok
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.inner
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// Compares secrets without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passwords::hash_password;

    #[tokio::test]
    async fn right_password_verifies_and_is_cached_wrong_one_does_not() {
        let phc = hash_password("pw").unwrap();
        let creds = Credentials::new([("sensor", phc.as_str())]);
        assert!(creds.verify("sensor", b"pw").await);
        assert!(creds.verify("sensor", b"pw").await);
        assert_eq!(creds.lock().len(), 1);
        assert!(!creds.verify("sensor", b"nope").await);
        assert!(!creds.verify("ghost", b"pw").await);
        assert!(constant_time_eq(b"ab", b"ab"));
        assert!(!constant_time_eq(b"ab", b"abc"));
    }
}
