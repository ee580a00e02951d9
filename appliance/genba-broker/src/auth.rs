//! Who may connect to the broker: configured users, the appliance's own roles (internal
//! secret), and anonymous clients when the config allows them.

use genba_config::credentials::{constant_time_eq, Credentials};

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

#[derive(Clone)]
pub struct Verifier {
    users: Credentials,
    internal_secret: String,
    anonymous: bool,
}

impl Verifier {
    pub fn new(users: &[genba_config::MqttUser], internal_secret: String, anonymous: bool) -> Self {
        Verifier {
            users: Credentials::new(users),
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
        if self.users.verify(user, password).await {
            Access::Client
        } else {
            Access::Denied
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genba_config::passwords::hash_password;

    #[tokio::test]
    async fn users_internal_role_and_anonymous_are_told_apart() {
        let users = vec![genba_config::MqttUser {
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
}
