//! Who may publish and subscribe to what: the `[[mqtt.acl]]` rules and the device accounts
//! (`[[mqtt.users]]` with `device = "..."`), read once from the config into an [`Acl`] that
//! answers [`Acl::may_publish`] and [`Acl::may_subscribe`] without I/O.
//!
//! # Which rules apply to a client
//!
//! A rule with `user = "name"` applies to the client logged in as that user; a rule without
//! `user` applies to every client, anonymous ones included. Genba's own roles (user
//! [`crate::INTERNAL_USER`], which only the internal secret opens) are never restricted.
//!
//! # Patterns
//!
//! MQTT topic filters (`+`, `#`). A level that is exactly `%u` is replaced by the client's user
//! name, one that is exactly `%c` by its client id, before matching:
//! - a pattern with `%u` never applies to an anonymous client (neither as a grant nor as a deny);
//! - in a grant, a value that is empty, starts with `$`, or contains `/`, `+`, `#` or a control
//!   character makes the pattern match nothing, so a client cannot widen a grant with a client
//!   id such as `a/b` or `#`;
//! - in a deny, the value is put in as it is (client id `a/b` makes `clients/%c/#` deny
//!   `clients/a/b/#`; a `+` or `#` in it can only make the deny wider).
//!
//! # Decisions, in this order
//!
//! 1. No `[[mqtt.acl]]` rule at all and no device account: everything is allowed (Genba's
//!    behaviour before access rules).
//! 2. Denies of the applicable rules win over every grant. A publish is refused when a
//!    `deny_publish` pattern matches the topic. A subscription is refused when a
//!    `deny_subscribe` pattern *covers* the filter (everything it could receive is denied:
//!    `test/#` covers `test/nosubscribe` and `test/+`). A filter that merely overlaps a deny
//!    (`#`, `test/+` against `test/nosubscribe`) is granted, and the messages on denied topics
//!    are not delivered to that client ([`Acl::read_denials`], checked for every delivery), as
//!    Mosquitto's `acl_file` does.
//! 3. A device account (`device = "fridge-1"`, or a client that logged in as `fridge-1` with
//!    one of that device's keys, which is a device account even with no rule at all) may
//!    publish to topics matched by
//!    `devices/fridge-1/#` and subscribe to filters covered by `devices/fridge-1/commands` or
//!    `devices/fridge-1/commands/#`, plus what the applicable rules grant it; nothing else, in
//!    every case below.
//! 4. Every other client, when some `[[mqtt.acl]]` rule (for any user) has a `publish` or
//!    `subscribe` pattern: exactly what its applicable rules grant. A publish is allowed when a
//!    `publish` pattern matches the topic; a subscription when a `subscribe` pattern covers the
//!    filter. A client no rule applies to may do nothing.
//! 5. Every other client, when no rule anywhere has a `publish` or `subscribe` pattern (there
//!    are deny rules only): everything not denied in step 2. So `deny_subscribe =
//!    ["test/nosubscribe"]` alone refuses just the filters that can receive that topic.
//!
//! A pattern *covers* a filter when every topic the filter can match is matched by the pattern:
//! `a/#` covers `a`, `a/+/b` and `a/#`; `a/+` covers `a/b` and `a/+` but not `a/#` (nor `a`);
//! a `+` in the filter is covered by `+` or `#` in the pattern, never by a literal level.
//!
//! # `$` topics, shared subscriptions, bad input
//!
//! As MQTT says (3.1.1 section 4.7.2), `+` or `#` as the first level never match a topic or
//! filter whose first level starts with `$`: `#` grants nothing under `$SYS/` and a deny of `#`
//! does not deny it; only patterns that start with the literal level (`$SYS/#`) do.
//!
//! A shared subscription `$share/{group}/{filter}` is checked as `{filter}`.
//!
//! Once rules or device accounts exist, a topic name that is empty or contains `+`, `#` or NUL,
//! and a filter that is not a valid MQTT filter, are refused (the front door refuses them
//! before asking anyway). A client without a client id matches no `%c` grant.

use std::borrow::Cow;
use std::collections::HashMap;

use genba_config::acl::is_device_id;
use genba_config::topic::{matches, validate_filter};
use genba_config::{AclRule, MqttConfig};

use crate::INTERNAL_USER;

/// The client a decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Who<'a> {
    /// The CONNECT user name; `None` for an anonymous client.
    pub user: Option<&'a str>,
    pub client_id: &'a str,
    /// The device whose key this client logged in with (user name = device id, password = one
    /// of its enabled `telemetry:write` keys): a device account, whatever the config says.
    pub device: Option<&'a str>,
}

/// The access rules of one broker, built once from its config.
#[derive(Debug, Clone)]
pub struct Acl {
    /// No rule and no device account: every check passes without looking further.
    unrestricted: bool,
    /// No rule grants anything: clients other than devices may do what is not denied.
    no_grants: bool,
    /// The rules without `user`.
    everyone: Patterns,
    /// For each user named by a rule: its own rules, then those without `user`.
    users: HashMap<String, Patterns>,
    /// For each device account: what it may do as a device.
    devices: HashMap<String, Patterns>,
}

#[derive(Debug, Clone, Default)]
struct Patterns {
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
    deny_publish: Vec<Pattern>,
    deny_subscribe: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    text: String,
    /// Has a `%u` or `%c` level.
    placeholders: bool,
}

impl Acl {
    pub fn new(cfg: &MqttConfig) -> Acl {
        let mut everyone = Patterns::default();
        for rule in cfg.acl.iter().filter(|r| r.user.is_none()) {
            everyone.add(rule);
        }
        let mut users: HashMap<String, Patterns> = HashMap::new();
        for rule in &cfg.acl {
            if let Some(user) = &rule.user {
                users.entry(user.clone()).or_default().add(rule);
            }
        }
        for patterns in users.values_mut() {
            patterns.extend(&everyone);
        }
        let devices: HashMap<String, Patterns> = cfg
            .users
            .iter()
            .filter_map(|u| Some((u.name.clone(), device_grants(u.device.as_deref()?))))
            .collect();
        Acl {
            unrestricted: cfg.acl.is_empty() && devices.is_empty(),
            no_grants: cfg
                .acl
                .iter()
                .all(|r| r.publish.is_empty() && r.subscribe.is_empty()),
            everyone,
            users,
            devices,
        }
    }

    /// Whether `who` may publish to the topic name `topic`.
    pub fn may_publish(&self, who: &Who<'_>, topic: &str) -> bool {
        if self.unrestricted(who) {
            return true;
        }
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            return false;
        }
        let rules = self.rules_for(who);
        let denied = rules
            .deny_publish
            .iter()
            .any(|p| p.as_deny(who).is_some_and(|p| matches(&p, topic)));
        if denied {
            return false;
        }
        let granted = |list: &[Pattern]| {
            list.iter()
                .any(|p| p.as_grant(who).is_some_and(|p| matches(&p, topic)))
        };
        match self.device_of(who) {
            Some(device) => granted(&device.publish) || granted(&rules.publish),
            None => self.no_grants || granted(&rules.publish),
        }
    }

    /// Whether `who` may subscribe to `filter` (a shared subscription as its inner filter).
    pub fn may_subscribe(&self, who: &Who<'_>, filter: &str) -> bool {
        if self.unrestricted(who) {
            return true;
        }
        let filter = unshared(filter);
        if validate_filter(filter).is_err() {
            return false;
        }
        let rules = self.rules_for(who);
        let denied = rules
            .deny_subscribe
            .iter()
            .any(|p| p.as_deny(who).is_some_and(|p| covers(&p, filter)));
        if denied {
            return false;
        }
        let granted = |list: &[Pattern]| {
            list.iter()
                .any(|p| p.as_grant(who).is_some_and(|p| covers(&p, filter)))
        };
        match self.device_of(who) {
            Some(device) => granted(&device.subscribe) || granted(&rules.subscribe),
            None => self.no_grants || granted(&rules.subscribe),
        }
    }

    /// The `deny_subscribe` patterns that apply to `who`, placeholders filled in: topics it
    /// must not receive through a subscription that only overlaps them. Empty for most clients.
    pub fn read_denials(&self, who: &Who<'_>) -> Vec<String> {
        if self.unrestricted(who) {
            return Vec::new();
        }
        self.rules_for(who)
            .deny_subscribe
            .iter()
            .filter_map(|p| p.as_deny(who).map(|p| p.into_owned()))
            .collect()
    }

    fn rules_for(&self, who: &Who<'_>) -> &Patterns {
        who.user
            .and_then(|u| self.users.get(u))
            .unwrap_or(&self.everyone)
    }

    /// Nothing to check: Genba's own roles, or no rule and no device account at all (a device
    /// key login is a device account even then).
    fn unrestricted(&self, who: &Who<'_>) -> bool {
        who.user == Some(INTERNAL_USER) || (self.unrestricted && who.device.is_none())
    }

    fn device_of(&self, who: &Who<'_>) -> Option<Cow<'_, Patterns>> {
        match who.device {
            Some(device) => Some(Cow::Owned(device_grants(device))),
            None => who
                .user
                .and_then(|u| self.devices.get(u))
                .map(Cow::Borrowed),
        }
    }
}

/// What a device account may do as a device; nothing for an id that is not a device id (the
/// config check refuses those, so only an unchecked config has one).
fn device_grants(device: &str) -> Patterns {
    let fixed = |text: String| Pattern {
        text,
        placeholders: false,
    };
    if !is_device_id(device) {
        return Patterns::default();
    }
    Patterns {
        publish: vec![fixed(format!("devices/{device}/#"))],
        subscribe: vec![
            fixed(format!("devices/{device}/commands")),
            fixed(format!("devices/{device}/commands/#")),
        ],
        ..Patterns::default()
    }
}

impl Patterns {
    fn add(&mut self, rule: &AclRule) {
        let read = |list: &[String]| list.iter().map(|p| Pattern::new(p)).collect::<Vec<_>>();
        self.publish.extend(read(&rule.publish));
        self.subscribe.extend(read(&rule.subscribe));
        self.deny_publish.extend(read(&rule.deny_publish));
        self.deny_subscribe.extend(read(&rule.deny_subscribe));
    }

    fn extend(&mut self, other: &Patterns) {
        self.publish.extend_from_slice(&other.publish);
        self.subscribe.extend_from_slice(&other.subscribe);
        self.deny_publish.extend_from_slice(&other.deny_publish);
        self.deny_subscribe.extend_from_slice(&other.deny_subscribe);
    }
}

impl Pattern {
    fn new(text: &str) -> Pattern {
        Pattern {
            text: text.to_owned(),
            placeholders: text.split('/').any(|l| l == "%u" || l == "%c"),
        }
    }

    /// The pattern for `who` as a grant: `None` when it cannot apply.
    fn as_grant(&self, who: &Who<'_>) -> Option<Cow<'_, str>> {
        self.substitute(who, grantable)
    }

    /// The pattern for `who` as a deny: `None` when it cannot apply.
    fn as_deny(&self, who: &Who<'_>) -> Option<Cow<'_, str>> {
        self.substitute(who, |_| true)
    }

    fn substitute(&self, who: &Who<'_>, usable: fn(&str) -> bool) -> Option<Cow<'_, str>> {
        if !self.placeholders {
            return Some(Cow::Borrowed(&self.text));
        }
        let mut levels = Vec::new();
        for level in self.text.split('/') {
            let value = match level {
                "%u" => who.user?,
                "%c" => who.client_id,
                literal => literal,
            };
            if (level == "%u" || level == "%c") && !usable(value) {
                return None;
            }
            levels.push(value);
        }
        Some(Cow::Owned(levels.join("/")))
    }
}

/// Whether a user name or client id can stand for one level in a grant.
fn grantable(value: &str) -> bool {
    !value.is_empty()
        && !value.starts_with('$')
        && !value.contains(['/', '+', '#'])
        && !value.chars().any(char::is_control)
}

/// `$share/{group}/{filter}` as `{filter}`; anything else as it is.
fn unshared(filter: &str) -> &str {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return filter;
    };
    match rest.split_once('/') {
        Some((group, inner)) if !group.is_empty() && !group.contains(['+', '#']) => inner,
        _ => filter,
    }
}

fn starts_with_wildcard(filter: &str) -> bool {
    filter.starts_with(['+', '#'])
}

/// Whether every topic `filter` matches is matched by `pattern`.
fn covers(pattern: &str, filter: &str) -> bool {
    if filter.starts_with('$') && starts_with_wildcard(pattern) {
        return false;
    }
    let mut p = pattern.split('/');
    let mut f = filter.split('/');
    loop {
        match (p.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genba_config::MqttUser;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn user(name: &str, device: Option<&str>) -> MqttUser {
        MqttUser {
            name: name.into(),
            password_hash: String::new(),
            device: device.map(Into::into),
        }
    }

    fn acl(users: Vec<MqttUser>, acl: Vec<AclRule>) -> Acl {
        Acl::new(&MqttConfig {
            users,
            acl,
            ..MqttConfig::default()
        })
    }

    fn anon(client_id: &str) -> Who<'_> {
        Who {
            user: None,
            client_id,
            device: None,
        }
    }

    fn as_user<'a>(name: &'a str, client_id: &'a str) -> Who<'a> {
        Who {
            user: Some(name),
            client_id,
            device: None,
        }
    }

    fn fridge_acl(rules: Vec<AclRule>) -> Acl {
        acl(
            vec![user("fridge", Some("fridge-1")), user("ops", None)],
            rules,
        )
    }

    #[test]
    fn no_rules_and_no_device_users_allow_everything() {
        let a = acl(vec![user("ops", None)], vec![]);
        for who in [anon("c"), as_user("ops", "c"), as_user("ghost", "c")] {
            assert!(a.may_publish(&who, "anything/at/all"));
            assert!(a.may_publish(&who, "$SYS/x"));
            assert!(a.may_subscribe(&who, "#"));
            assert!(a.may_subscribe(&who, "$SYS/#"));
        }
    }

    #[test]
    fn device_user_may_publish_only_under_its_own_device() {
        let a = fridge_acl(vec![]);
        let fridge = as_user("fridge", "esp-1");
        assert!(a.may_publish(&fridge, "devices/fridge-1/telemetry"));
        assert!(a.may_publish(&fridge, "devices/fridge-1/telemetry/probe-a"));
        assert!(a.may_publish(&fridge, "devices/fridge-1"));
        assert!(!a.may_publish(&fridge, "devices/fridge-2/telemetry"));
        assert!(!a.may_publish(&fridge, "devices/fridge-10/telemetry"));
        assert!(!a.may_publish(&fridge, "notify/slack"));
        assert!(!a.may_publish(&fridge, "$SYS/x"));
    }

    #[test]
    fn device_user_may_subscribe_only_to_its_own_commands() {
        let a = fridge_acl(vec![]);
        let fridge = as_user("fridge", "esp-1");
        assert!(a.may_subscribe(&fridge, "devices/fridge-1/commands"));
        assert!(a.may_subscribe(&fridge, "devices/fridge-1/commands/#"));
        assert!(a.may_subscribe(&fridge, "devices/fridge-1/commands/+"));
        assert!(!a.may_subscribe(&fridge, "devices/fridge-1/telemetry"));
        assert!(!a.may_subscribe(&fridge, "devices/fridge-1/#"));
        assert!(!a.may_subscribe(&fridge, "devices/+/commands"));
        assert!(!a.may_subscribe(&fridge, "devices/fridge-2/commands"));
        assert!(!a.may_subscribe(&fridge, "#"));
    }

    #[test]
    fn device_users_restrict_only_themselves_when_there_are_no_rules() {
        let a = fridge_acl(vec![]);
        for who in [anon("c"), as_user("ops", "c")] {
            assert!(a.may_publish(&who, "devices/fridge-2/telemetry"));
            assert!(a.may_subscribe(&who, "#"));
        }
    }

    #[test]
    fn device_user_also_gets_what_acl_rules_grant_it() {
        let a = fridge_acl(vec![
            AclRule {
                user: Some("fridge".into()),
                publish: list(&["alert/kitchen"]),
                ..AclRule::default()
            },
            AclRule {
                subscribe: list(&["time/now"]),
                ..AclRule::default()
            },
        ]);
        let fridge = as_user("fridge", "esp-1");
        assert!(a.may_publish(&fridge, "alert/kitchen"));
        assert!(a.may_publish(&fridge, "devices/fridge-1/telemetry"));
        assert!(!a.may_publish(&fridge, "alert/office"));
        assert!(a.may_subscribe(&fridge, "time/now"));
        assert!(a.may_subscribe(&fridge, "devices/fridge-1/commands"));
        assert!(!a.may_subscribe(&fridge, "time/#"));
    }

    #[test]
    fn with_grant_rules_a_client_gets_exactly_what_its_rules_grant() {
        let a = acl(
            vec![user("ops", None), user("viewer", None)],
            vec![
                AclRule {
                    user: Some("ops".into()),
                    publish: list(&["notify/#"]),
                    subscribe: list(&["#"]),
                    ..AclRule::default()
                },
                AclRule {
                    publish: list(&["public/+"]),
                    subscribe: list(&["public/#"]),
                    ..AclRule::default()
                },
            ],
        );
        let ops = as_user("ops", "c1");
        assert!(a.may_publish(&ops, "notify/slack"));
        assert!(a.may_publish(&ops, "public/x"), "rules without user apply");
        assert!(!a.may_publish(&ops, "alert/x"));
        assert!(a.may_subscribe(&ops, "anything/+/deep/#"));
        for other in [anon("c2"), as_user("viewer", "c3"), as_user("ghost", "c4")] {
            assert!(a.may_publish(&other, "public/x"));
            assert!(!a.may_publish(&other, "public/x/y"));
            assert!(
                !a.may_publish(&other, "notify/slack"),
                "ops' rule is not theirs"
            );
            assert!(a.may_subscribe(&other, "public/#"));
            assert!(!a.may_subscribe(&other, "#"));
        }
    }

    #[test]
    fn user_placeholder_is_the_user_name_and_never_matches_anonymous_clients() {
        let a = acl(
            vec![user("ops", None)],
            vec![AclRule {
                publish: list(&["home/%u/#"]),
                subscribe: list(&["home/%u/#"]),
                deny_publish: list(&["home/%u/locked"]),
                ..AclRule::default()
            }],
        );
        let ops = as_user("ops", "c");
        assert!(a.may_publish(&ops, "home/ops/x"));
        assert!(!a.may_publish(&ops, "home/other/x"));
        assert!(!a.may_publish(&ops, "home/ops/locked"));
        assert!(a.may_subscribe(&ops, "home/ops/+"));
        assert!(!a.may_subscribe(&ops, "home/+/x"));
        let nobody = anon("ops");
        assert!(!a.may_publish(&nobody, "home/ops/x"));
        assert!(!a.may_publish(&nobody, "home/%u/x"));
        assert!(!a.may_subscribe(&nobody, "home/ops/x"));
    }

    #[test]
    fn client_id_placeholder_is_the_client_id_and_odd_ids_get_no_grant() {
        let a = acl(
            vec![],
            vec![AclRule {
                publish: list(&["clients/%c/#"]),
                subscribe: list(&["clients/%c/#", "%c/in"]),
                ..AclRule::default()
            }],
        );
        assert!(a.may_publish(&anon("pump-7"), "clients/pump-7/state"));
        assert!(!a.may_publish(&anon("pump-7"), "clients/pump-8/state"));
        assert!(a.may_subscribe(&anon("pump-7"), "clients/pump-7/#"));
        assert!(a.may_subscribe(&as_user("u", "pump-7"), "pump-7/in"));
        // A client id cannot reach into another level or become a wildcard.
        assert!(!a.may_publish(&anon("pump/8"), "clients/pump/8/state"));
        assert!(!a.may_publish(&anon("+"), "clients/x/state"));
        assert!(!a.may_subscribe(&anon("#"), "clients/#"));
        assert!(!a.may_subscribe(&anon("$SYS"), "$SYS/in"));
        assert!(!a.may_publish(&anon(""), "clients//state"));
    }

    #[test]
    fn deny_with_placeholders_uses_the_value_as_it_is() {
        let a = acl(
            vec![],
            vec![AclRule {
                publish: list(&["clients/#"]),
                deny_publish: list(&["clients/%c/secret"]),
                ..AclRule::default()
            }],
        );
        assert!(!a.may_publish(&anon("a/b"), "clients/a/b/secret"));
        assert!(a.may_publish(&anon("a/b"), "clients/a/b/open"));
        assert!(!a.may_publish(&anon("+"), "clients/x/secret"));
        assert!(a.may_publish(&anon("x"), "clients/y/secret"));
    }

    #[test]
    fn subscribe_is_allowed_only_when_a_pattern_covers_the_whole_filter() {
        let a = acl(
            vec![],
            vec![AclRule {
                subscribe: list(&["a/#", "b/+", "c/+/d", "e/x"]),
                ..AclRule::default()
            }],
        );
        let c = anon("c");
        for ok in [
            "a", "a/+/b", "a/#", "a/x/y", "b/x", "b/+", "c/+/d", "c/x/d", "e/x",
        ] {
            assert!(a.may_subscribe(&c, ok), "{ok}");
        }
        for no in [
            "b/#", "b", "b/x/y", "c/#", "c/+/+", "e/+", "e/#", "+/x", "#", "x",
        ] {
            assert!(!a.may_subscribe(&c, no), "{no}");
        }
    }

    #[test]
    fn publish_is_allowed_when_a_pattern_matches_the_topic() {
        let a = acl(
            vec![],
            vec![AclRule {
                publish: list(&["a/#", "+/status"]),
                ..AclRule::default()
            }],
        );
        let c = anon("c");
        assert!(a.may_publish(&c, "a"));
        assert!(a.may_publish(&c, "a/b/c"));
        assert!(a.may_publish(&c, "pump/status"));
        assert!(!a.may_publish(&c, "pump/x/status"));
        assert!(!a.may_publish(&c, "b"));
    }

    #[test]
    fn deny_publish_wins_over_every_grant() {
        let a = fridge_acl(vec![
            AclRule {
                publish: list(&["#"]),
                deny_publish: list(&["alarms/#"]),
                ..AclRule::default()
            },
            AclRule {
                user: Some("fridge".into()),
                deny_publish: list(&["devices/fridge-1/commands"]),
                ..AclRule::default()
            },
        ]);
        assert!(a.may_publish(&anon("c"), "notify/x"));
        assert!(!a.may_publish(&anon("c"), "alarms/d/r"));
        assert!(!a.may_publish(&as_user("ops", "c"), "alarms"));
        let fridge = as_user("fridge", "esp-1");
        assert!(a.may_publish(&fridge, "devices/fridge-1/telemetry"));
        assert!(!a.may_publish(&fridge, "devices/fridge-1/commands"));
        assert!(!a.may_publish(&fridge, "alarms/fridge-1/warm"));
    }

    #[test]
    fn deny_subscribe_refuses_covered_filters_and_holds_back_denied_topics_of_wider_ones() {
        let a = acl(
            vec![],
            vec![AclRule {
                subscribe: list(&["#"]),
                deny_subscribe: list(&["test/nosubscribe", "x/+"]),
                ..AclRule::default()
            }],
        );
        let c = anon("c");
        // Refused: filters whose every topic is denied.
        for no in [
            "test/nosubscribe",
            "x/y",
            "x/+",
            "$share/g/test/nosubscribe",
        ] {
            assert!(!a.may_subscribe(&c, no), "{no}");
        }
        // Granted: filters that only overlap a deny; the denied topics are held back at
        // delivery instead.
        for ok in [
            "#",
            "test/#",
            "test/+",
            "+/+",
            "x/#",
            "test/other",
            "x/y/z",
            "x",
        ] {
            assert!(a.may_subscribe(&c, ok), "{ok}");
        }
        assert_eq!(a.read_denials(&c), ["test/nosubscribe", "x/+"]);
    }

    #[test]
    fn deny_only_rules_leave_everything_else_allowed() {
        let a = acl(
            vec![user("ops", None)],
            vec![AclRule {
                deny_subscribe: list(&["test/nosubscribe"]),
                ..AclRule::default()
            }],
        );
        for who in [anon("c"), as_user("ops", "c")] {
            assert!(!a.may_subscribe(&who, "test/nosubscribe"));
            assert!(a.may_subscribe(&who, "#"));
            assert!(a.may_subscribe(&who, "test/other"));
            assert!(a.may_subscribe(&who, "notify/#"));
            assert!(a.may_publish(&who, "test/nosubscribe"));
        }
    }

    #[test]
    fn deny_only_rules_do_not_widen_device_accounts() {
        let a = fridge_acl(vec![AclRule {
            deny_publish: list(&["devices/+/config"]),
            ..AclRule::default()
        }]);
        let fridge = as_user("fridge", "esp-1");
        assert!(!a.may_publish(&fridge, "notify/x"));
        assert!(!a.may_publish(&fridge, "devices/fridge-1/config"));
        assert!(a.may_publish(&fridge, "devices/fridge-1/telemetry"));
        assert!(a.may_publish(&as_user("ops", "c"), "notify/x"));
    }

    #[test]
    fn dollar_topics_match_only_patterns_that_start_with_the_dollar_level() {
        let a = acl(
            vec![user("ops", None)],
            vec![
                AclRule {
                    publish: list(&["#", "+/x"]),
                    subscribe: list(&["#", "+/broker/#"]),
                    ..AclRule::default()
                },
                AclRule {
                    user: Some("ops".into()),
                    subscribe: list(&["$SYS/#"]),
                    ..AclRule::default()
                },
            ],
        );
        let c = anon("c");
        assert!(!a.may_publish(&c, "$SYS/x"));
        assert!(!a.may_subscribe(&c, "$SYS/#"));
        assert!(!a.may_subscribe(&c, "$SYS/broker/load"));
        assert!(a.may_subscribe(&c, "sys/broker/load"));
        let ops = as_user("ops", "c");
        assert!(a.may_subscribe(&ops, "$SYS/broker/+"));
        assert!(a.may_subscribe(&ops, "$SYS/#"));
        // A deny of # does not reach $ topics either.
        let deny_all = acl(
            vec![],
            vec![AclRule {
                deny_subscribe: list(&["#"]),
                deny_publish: list(&["+/#"]),
                ..AclRule::default()
            }],
        );
        assert!(!deny_all.may_subscribe(&c, "a/b"));
        assert!(deny_all.may_subscribe(&c, "$SYS/broker/load"));
        assert!(!deny_all.may_publish(&c, "a/b"));
        assert!(deny_all.may_publish(&c, "$app/x"));
    }

    #[test]
    fn shared_subscriptions_are_checked_as_their_inner_filter() {
        let a = acl(
            vec![],
            vec![AclRule {
                subscribe: list(&["jobs/#"]),
                ..AclRule::default()
            }],
        );
        let c = anon("worker-1");
        assert!(a.may_subscribe(&c, "$share/workers/jobs/+"));
        assert!(a.may_subscribe(&c, "$share/workers/jobs/#"));
        assert!(!a.may_subscribe(&c, "$share/workers/other/#"));
        assert!(!a.may_subscribe(&c, "$share/workers/#"));
        assert!(!a.may_subscribe(&c, "$share/jobs"));
        assert!(!a.may_subscribe(&c, "$share/+/jobs/#"));
    }

    #[test]
    fn internal_user_is_never_restricted() {
        let a = fridge_acl(vec![AclRule {
            deny_publish: list(&["#"]),
            deny_subscribe: list(&["#"]),
            ..AclRule::default()
        }]);
        let internal = as_user(INTERNAL_USER, "genba-bridge");
        assert!(a.may_publish(&internal, "devices/fridge-1/commands"));
        assert!(a.may_subscribe(&internal, "#"));
    }

    #[test]
    fn bad_topics_and_filters_are_refused_once_rules_apply() {
        let a = acl(
            vec![],
            vec![AclRule {
                deny_publish: list(&["never"]),
                ..AclRule::default()
            }],
        );
        let c = anon("c");
        assert!(a.may_publish(&c, "ok/topic"));
        for bad in ["", "a/+", "a/#", "a\0b"] {
            assert!(!a.may_publish(&c, bad), "{bad:?}");
        }
        for bad in ["", "a/#/b", "a+", "a\0b"] {
            assert!(!a.may_subscribe(&c, bad), "{bad:?}");
        }
    }

    #[test]
    fn covering_follows_the_topic_sets() {
        assert!(covers("a/#", "a"));
        assert!(covers("a/+/#", "a/+"));
        assert!(!covers("a/+/#", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("+", "#"));
        assert!(covers("#", "#"));
    }
}
