//! `[[mqtt.acl]]`: who may publish and subscribe to what on the broker, and the device
//! accounts of `[[mqtt.users]]` (`device = "..."`). This module is the typed config and its
//! checks; how rules combine is `genba_broker::acl`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::topic::validate_acl_pattern;

/// One access rule. Patterns are MQTT topic filters (`+`, `#`) whose levels may also be
/// exactly `%u` (the client's user name) or `%c` (its client id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclRule {
    /// The `[[mqtt.users]]` name this rule is for; absent: every client, anonymous included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Topics the client may publish to.
    pub publish: Vec<String>,
    /// Filters the client may subscribe to (and every narrower filter).
    pub subscribe: Vec<String>,
    /// Topics the client may not publish to, whatever another rule grants.
    pub deny_publish: Vec<String>,
    /// Topics the client may not subscribe to, whatever another rule grants.
    pub deny_subscribe: Vec<String>,
}

impl AclRule {
    /// The pattern lists by field name, in file order.
    pub fn fields(&self) -> [(&'static str, &[String]); 4] {
        [
            ("publish", &self.publish),
            ("subscribe", &self.subscribe),
            ("deny_publish", &self.deny_publish),
            ("deny_subscribe", &self.deny_subscribe),
        ]
    }

    /// Checks what types cannot, given the `[[mqtt.users]]` names: returns where the fault is,
    /// as a key suffix (`.user`, `.publish[0]`, or empty for the rule as a whole), and why.
    pub fn check(&self, users: &HashSet<&str>) -> Result<(), (String, String)> {
        if let Some(user) = &self.user {
            if !users.contains(user.as_str()) {
                return Err((
                    ".user".into(),
                    format!("{user:?} is not a [[mqtt.users]] name"),
                ));
            }
        }
        if self
            .fields()
            .iter()
            .all(|(_, patterns)| patterns.is_empty())
        {
            return Err((
                String::new(),
                "the rule grants and denies nothing: give publish, subscribe, deny_publish or deny_subscribe".into(),
            ));
        }
        for (field, patterns) in self.fields() {
            for (j, pattern) in patterns.iter().enumerate() {
                validate_acl_pattern(pattern)
                    .map_err(|e| (format!(".{field}[{j}]"), e.to_string()))?;
            }
        }
        Ok(())
    }
}

/// Whether `id` can be a device account's device id: 1-32 characters from A-Z a-z 0-9 - _ .
/// (the device ids the registry accepts; in particular never empty, `/`, `+` or `#`).
pub fn is_device_id(id: &str) -> bool {
    crate::rules::name_ok(id, 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> AclRule {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn rules_read_from_toml_with_every_list_optional() {
        let r = rule("user = \"ops\"\nsubscribe = [\"#\"]\n");
        assert_eq!(r.user.as_deref(), Some("ops"));
        assert_eq!(r.subscribe, vec!["#".to_owned()]);
        assert!(r.publish.is_empty() && r.deny_publish.is_empty() && r.deny_subscribe.is_empty());
        assert!(toml::from_str::<AclRule>("publish = [\"a\"]\nbogus = 1\n").is_err());
    }

    #[test]
    fn checks_name_the_field_at_fault() {
        let users = HashSet::from(["ops"]);
        assert_eq!(
            rule("user = \"ops\"\npublish = [\"a/%u/#\"]").check(&users),
            Ok(())
        );
        assert_eq!(
            rule("user = \"ghost\"\npublish = [\"a\"]")
                .check(&users)
                .unwrap_err()
                .0,
            ".user"
        );
        assert_eq!(rule("").check(&users).unwrap_err().0, "");
        let bad = rule("publish = [\"a\"]\nsubscribe = [\"a\", \"a/#/b\"]");
        assert_eq!(bad.check(&users).unwrap_err().0, ".subscribe[1]");
        let bad = rule("deny_subscribe = [\"x%c\"]");
        assert_eq!(bad.check(&users).unwrap_err().0, ".deny_subscribe[0]");
        let bad = rule("deny_publish = [\"\"]");
        assert_eq!(bad.check(&users).unwrap_err().0, ".deny_publish[0]");
    }

    #[test]
    fn device_ids_are_registry_ids() {
        assert!(is_device_id("fridge-1"));
        assert!(is_device_id("esp32_kitchen.01"));
        for bad in ["", "a/b", "a+", "#", "a b", &"x".repeat(33)] {
            assert!(!is_device_id(bad), "{bad:?}");
        }
    }
}
