//! Who may connect to the broker: configured users, the appliance's own roles (internal
//! secret), and anonymous clients when the config allows them.

use std::collections::HashSet;
use std::sync::Arc;

use genba_auth::credentials::{constant_time_eq, Credentials};

/// The user name genba's own roles (bridge, recorder) connect with.
pub const INTERNAL_USER: &str = "genba-internal";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A configured user or an anonymous client: its publishes are journaled.
    Client,
    /// A genba role that journals on its own: its publishes are not journaled twice.
    Internal,
    Denied,
}

/// The accounts in force: who may connect ([`Verifier`]) and what they may do ([`Acl`]), from
/// the config's `[[mqtt.users]]`, `[[mqtt.acl]]` and `allow_anonymous`. Replaced whole by
/// [`Accounts::replace`] when the config file changes, so a device account that
/// `genba devices provision` adds logs in without a broker restart. Connections read the
/// current rules at each check: a changed rule applies to clients already connected too.
#[derive(Clone)]
pub struct Accounts {
    now: Arc<std::sync::RwLock<Arc<Rules>>>,
    internal_secret: String,
}

/// One version of the accounts.
pub struct Rules {
    pub verifier: Verifier,
    pub acl: crate::acl::Acl,
}

impl Accounts {
    pub fn new(cfg: &genba_config::MqttConfig, internal_secret: String) -> Accounts {
        let rules = Self::rules(cfg, &internal_secret);
        Accounts {
            now: Arc::new(std::sync::RwLock::new(Arc::new(rules))),
            internal_secret,
        }
    }

    fn rules(cfg: &genba_config::MqttConfig, internal_secret: &str) -> Rules {
        Rules {
            verifier: Verifier::new(
                &cfg.users,
                internal_secret.to_owned(),
                cfg.anonymous_allowed(),
            ),
            acl: crate::acl::Acl::new(cfg),
        }
    }

    /// The rules in force now.
    pub fn now(&self) -> Arc<Rules> {
        match self.now.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts the accounts of `cfg` in force (a checked config: `Config::validate` passed).
    pub fn replace(&self, cfg: &genba_config::MqttConfig) {
        let rules = Arc::new(Self::rules(cfg, &self.internal_secret));
        match self.now.write() {
            Ok(mut w) => *w = rules,
            Err(poisoned) => *poisoned.into_inner() = rules,
        }
    }
}

#[derive(Clone)]
pub struct Verifier {
    users: Credentials,
    names: Arc<HashSet<String>>,
    /// A configured user whose hash an unknown user's password is checked against (and
    /// refused whatever the result), so an unknown name costs the same argon2 run as a wrong
    /// password: user names cannot be told apart by timing.
    stand_in: Option<String>,
    internal_secret: String,
    anonymous: bool,
}

impl Verifier {
    pub fn new(users: &[genba_config::MqttUser], internal_secret: String, anonymous: bool) -> Self {
        Verifier {
            users: genba_config::credentials(users),
            names: Arc::new(users.iter().map(|u| u.name.clone()).collect()),
            stand_in: users.first().map(|u| u.name.clone()),
            internal_secret,
            anonymous,
        }
    }

    pub fn anonymous_allowed(&self) -> bool {
        self.anonymous
    }

    pub async fn check(&self, username: Option<&str>, password: Option<&[u8]>) -> Access {
        let Some(user) = username else {
            return if self.anonymous {
                Access::Client
            } else {
                Access::Denied
            };
        };
        let password = password.unwrap_or_default();
        if user == INTERNAL_USER {
            let ok = constant_time_eq(password, self.internal_secret.as_bytes());
            return if ok { Access::Internal } else { Access::Denied };
        }
        match self.name_to_verify(user) {
            Some(name) if name == user => {
                if self.users.verify(user, password).await {
                    Access::Client
                } else {
                    Access::Denied
                }
            }
            Some(stand_in) => {
                // Same work as a wrong password; the result does not matter.
                let _ = self.users.verify(stand_in, password).await;
                Access::Denied
            }
            None => Access::Denied,
        }
    }

    /// Whose hash `user`'s password is checked against: its own, or the stand-in's for an
    /// unknown user (`None` when no user is configured, so there is no name to guess).
    fn name_to_verify<'a>(&'a self, user: &'a str) -> Option<&'a str> {
        if self.names.contains(user) {
            Some(user)
        } else {
            self.stand_in.as_deref()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genba_auth::passwords::hash_password;

    #[tokio::test]
    async fn users_internal_role_and_anonymous_are_told_apart() {
        let users = vec![genba_config::MqttUser {
            device: None,
            name: "sensor".into(),
            password_hash: hash_password("pw").unwrap(),
        }];
        let v = Verifier::new(&users, "inner".into(), false);
        assert_eq!(v.check(Some("sensor"), Some(b"pw")).await, Access::Client);
        assert_eq!(v.check(Some("sensor"), Some(b"nope")).await, Access::Denied);
        assert_eq!(v.check(None, None).await, Access::Denied);
        assert_eq!(
            v.check(Some(INTERNAL_USER), Some(b"inner")).await,
            Access::Internal
        );
        assert_eq!(
            v.check(Some(INTERNAL_USER), Some(b"inne")).await,
            Access::Denied
        );
        let anon = Verifier::new(&[], "inner".into(), true);
        assert_eq!(anon.check(None, None).await, Access::Client);
    }

    #[tokio::test]
    async fn unknown_users_are_checked_against_a_real_hash_and_refused() {
        let users = vec![genba_config::MqttUser {
            device: None,
            name: "sensor".into(),
            password_hash: hash_password("pw").unwrap(),
        }];
        let v = Verifier::new(&users, "inner".into(), false);
        // An unknown name runs argon2 on the stand-in's hash, like a wrong password does.
        assert_eq!(v.name_to_verify("ghost"), Some("sensor"));
        assert_eq!(v.name_to_verify("sensor"), Some("sensor"));
        // Even with the stand-in's own password, an unknown name is refused.
        assert_eq!(v.check(Some("ghost"), Some(b"pw")).await, Access::Denied);
        assert_eq!(v.check(Some("ghost"), Some(b"x")).await, Access::Denied);
        let none = Verifier::new(&[], "inner".into(), false);
        assert_eq!(none.name_to_verify("ghost"), None);
        assert_eq!(none.check(Some("ghost"), Some(b"x")).await, Access::Denied);
    }
}
