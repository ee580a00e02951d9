//! The rules engine (requirement P4): pure logic over what the consumer tells it. It sees
//! every new value once ([`Engine::observe`]) and the passing of time ([`Engine::tick`]), and
//! answers with [`Effect`]s that the store applies in the same transaction as the values and
//! the consumer's cursor. Its memory (open alarms, pending durations, last values) is loaded
//! from the store at start ([`Snapshot`]), so a restart continues where the last commit was:
//! an alarm due during downtime is raised once after start.

use std::collections::{HashMap, HashSet};

use genba_config::rules::{Condition, Rule};
use genba_store::{Effect, FieldValue};

/// (rule, device, stream)
type Key = (String, String, String);
/// (device, stream)
type StreamKey = (String, String);

/// What the engine remembers, as loaded from the store.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Tags per device.
    pub devices: HashMap<String, Vec<String>>,
    /// Last numeric value (or None for text) and its time, and the unit, per device stream.
    pub last: HashMap<StreamKey, (i64, Option<f64>, String)>,
    /// Duration rules whose condition holds, since when.
    pub pending: HashMap<Key, i64>,
    /// Alarms not cleared yet.
    pub open: HashSet<Key>,
}

/// An alarm that may need escalating: (id, rule, device, raised at).
pub type Unacknowledged = (i64, String, String, i64);

pub struct Engine {
    rules: Vec<Rule>,
    state: Snapshot,
}

fn condition_name(c: Condition) -> &'static str {
    match c {
        Condition::Above => ">",
        Condition::AtOrAbove => ">=",
        Condition::Below => "<",
        Condition::AtOrBelow => "<=",
        Condition::Equal => "=",
        Condition::NotEqual => "!=",
        Condition::Silent => "silent",
        Condition::Rate => "rate",
    }
}

fn severity_name(r: &Rule) -> &'static str {
    match r.severity {
        genba_config::rules::Severity::Warning => "warning",
        genba_config::rules::Severity::Critical => "critical",
    }
}

/// Whether `v` is a deviation, and whether it is far enough back to clear one.
fn holds(rule: &Rule, v: f64) -> bool {
    let t = rule.threshold.unwrap_or(0.0);
    match rule.condition {
        Condition::Above | Condition::Rate => v > t,
        Condition::AtOrAbove => v >= t,
        Condition::Below => v < t,
        Condition::AtOrBelow => v <= t,
        Condition::Equal => v == t,
        Condition::NotEqual => v != t,
        Condition::Silent => false,
    }
}

fn clears(rule: &Rule, v: f64) -> bool {
    let (t, h) = (rule.threshold.unwrap_or(0.0), rule.hysteresis);
    match rule.condition {
        Condition::Above | Condition::Rate => v <= t - h,
        Condition::AtOrAbove => v < t - h,
        Condition::Below => v >= t + h,
        Condition::AtOrBelow => v > t + h,
        Condition::Equal | Condition::NotEqual => !holds(rule, v),
        Condition::Silent => true,
    }
}

fn fmt_value(v: f64, unit: &str) -> String {
    let n = format!("{}", (v * 1000.0).round() / 1000.0);
    if unit.is_empty() {
        n
    } else {
        format!("{n} {unit}")
    }
}

fn duration_text(ms: i64) -> String {
    let secs = ms / 1000;
    if secs >= 3600 {
        format!("{} h {} min", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

fn time_text(ms: i64) -> String {
    crate::query::format_time(ms)
}

impl Engine {
    pub fn new(rules: Vec<Rule>, state: Snapshot) -> Engine {
        Engine { rules, state }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Replaces the rules (edited through the API); state of removed rules is forgotten.
    pub fn set_rules(&mut self, rules: Vec<Rule>) -> Vec<Effect> {
        let names: HashSet<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        let mut effects = Vec::new();
        let gone: Vec<Key> = self
            .state
            .pending
            .keys()
            .filter(|k| !names.contains(k.0.as_str()))
            .cloned()
            .collect();
        for k in gone {
            self.state.pending.remove(&k);
            effects.push(Effect::Pending {
                rule: k.0,
                device_id: k.1,
                stream: k.2,
                since_ms: None,
            });
        }
        self.rules = rules;
        effects
    }

    /// Tags of a device as the store knows them (new devices have none).
    pub fn set_device(&mut self, device: &str, tags: Vec<String>) {
        self.state.devices.insert(device.to_owned(), tags);
    }

    pub fn knows_device(&self, device: &str) -> bool {
        self.state.devices.contains_key(device)
    }

    /// One new value of a device stream; `unit` is the stream's unit when it is new.
    pub fn observe(
        &mut self,
        device: &str,
        stream: &str,
        at: i64,
        value: &FieldValue,
        unit: Option<&str>,
    ) -> Vec<Effect> {
        let stream_key = (device.to_owned(), stream.to_owned());
        let previous = self.state.last.get(&stream_key).cloned();
        let number = match value {
            FieldValue::Number(n) => Some(*n),
            FieldValue::Text(_) => None,
        };
        let unit = previous
            .as_ref()
            .map(|p| p.2.clone())
            .or_else(|| unit.map(str::to_owned))
            .unwrap_or_default();
        // An older value (a late resend) does not move the stream's latest value.
        if previous.as_ref().is_none_or(|p| at >= p.0) {
            self.state
                .last
                .insert(stream_key, (at, number, unit.clone()));
        }
        let tags = self.state.devices.get(device).cloned().unwrap_or_default();
        let mut effects = Vec::new();
        for i in 0..self.rules.len() {
            let rule = &self.rules[i];
            if !rule.selects(device, &tags, stream) {
                continue;
            }
            let key: Key = (rule.name.clone(), device.to_owned(), stream.to_owned());
            if rule.condition == Condition::Silent {
                if self.state.open.remove(&key) {
                    effects.push(Effect::Clear {
                        rule: key.0,
                        device_id: key.1,
                        stream: key.2,
                        value: number,
                        at_ms: at,
                        message: format!(
                            "CLEARED {device} {stream}: reporting again ({}) [rule {}]",
                            number
                                .map(|n| fmt_value(n, &unit))
                                .unwrap_or_else(|| "text".into()),
                            rule.name
                        ),
                    });
                }
                continue;
            }
            let Some(v) = number else { continue };
            let observed = if rule.condition == Condition::Rate {
                // Change per minute since the previous value.
                match &previous {
                    Some((p_at, Some(p), _)) if at > *p_at => {
                        (v - p).abs() / ((at - p_at) as f64 / 60_000.0)
                    }
                    _ => continue,
                }
            } else {
                v
            };
            let rule = rule.clone();
            effects.extend(self.judge(&rule, key, observed, v, at, &unit));
        }
        effects
    }

    /// Decides about one observation of a threshold or rate rule.
    fn judge(
        &mut self,
        rule: &Rule,
        key: Key,
        observed: f64,
        value: f64,
        at: i64,
        unit: &str,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.state.open.contains(&key) {
            if clears(rule, observed) {
                self.state.open.remove(&key);
                effects.push(Effect::Clear {
                    message: format!(
                        "CLEARED {} {}: {} [rule {}]",
                        key.1,
                        key.2,
                        fmt_value(value, unit),
                        rule.name
                    ),
                    rule: key.0,
                    device_id: key.1,
                    stream: key.2,
                    value: Some(value),
                    at_ms: at,
                });
            }
            return effects;
        }
        if !holds(rule, observed) {
            if self.state.pending.remove(&key).is_some() {
                effects.push(pending(&key, None));
            }
            return effects;
        }
        let since = match self.state.pending.get(&key) {
            Some(s) => *s,
            None => {
                if rule.for_secs > 0 {
                    self.state.pending.insert(key.clone(), at);
                    effects.push(pending(&key, Some(at)));
                }
                at
            }
        };
        if at - since >= rule.for_secs as i64 * 1000 {
            effects.extend(self.raise(rule, &key, Some(value), Some(observed), at, since));
        }
        effects
    }

    fn raise(
        &mut self,
        rule: &Rule,
        key: &Key,
        value: Option<f64>,
        observed: Option<f64>,
        at: i64,
        since: i64,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.state.pending.remove(key).is_some() {
            effects.push(pending(key, None));
        }
        let unit = self
            .state
            .last
            .get(&(key.1.clone(), key.2.clone()))
            .map(|l| l.2.clone())
            .unwrap_or_default();
        let what = match (rule.condition, observed) {
            (Condition::Silent, _) => format!(
                "no value for {} (last at {})",
                duration_text(at - since),
                time_text(since)
            ),
            (Condition::Rate, Some(r)) => format!(
                "changing {}/min (limit {}/min)",
                fmt_value(r, &unit),
                fmt_value(rule.threshold.unwrap_or(0.0), &unit)
            ),
            (c, _) => {
                let mut s = format!(
                    "{} {} {}",
                    value.map(|v| fmt_value(v, &unit)).unwrap_or_default(),
                    condition_name(c),
                    fmt_value(rule.threshold.unwrap_or(0.0), &unit)
                );
                if rule.for_secs > 0 {
                    s.push_str(&format!(" for {}", duration_text(at - since)));
                }
                s
            }
        };
        let label = if rule.severity == genba_config::rules::Severity::Critical {
            "ALARM"
        } else {
            "WARNING"
        };
        self.state.open.insert(key.clone());
        effects.push(Effect::Raise {
            rule: key.0.clone(),
            device_id: key.1.clone(),
            stream: key.2.clone(),
            condition: condition_name(rule.condition).into(),
            severity: severity_name(rule).into(),
            threshold: rule.threshold,
            value,
            at_ms: at,
            message: format!("{label} {} {}: {what} [rule {}]", key.1, key.2, rule.name),
            command: rule.command.clone(),
        });
        effects
    }

    /// Time passed: silent streams, durations that ran out without a new value, and
    /// escalation of alarms nobody acknowledged (`unacked`: from the store).
    pub fn tick(&mut self, now: i64, unacked: &[Unacknowledged]) -> Vec<Effect> {
        let mut effects = Vec::new();
        let rules = self.rules.clone();
        for rule in &rules {
            match rule.condition {
                Condition::Silent => {
                    let limit = minutes_ms(rule.silent_minutes.unwrap_or(525_600.0));
                    let streams: Vec<(StreamKey, i64)> = self
                        .state
                        .last
                        .iter()
                        .map(|(k, v)| (k.clone(), v.0))
                        .collect();
                    for ((device, stream), last_at) in streams {
                        let tags = self.state.devices.get(&device).cloned().unwrap_or_default();
                        if !rule.selects(&device, &tags, &stream) || now - last_at < limit {
                            continue;
                        }
                        let key = (rule.name.clone(), device, stream);
                        if !self.state.open.contains(&key) {
                            effects.extend(self.raise(rule, &key, None, None, now, last_at));
                        }
                    }
                }
                _ if rule.for_secs > 0 => {
                    let due: Vec<(Key, i64)> = self
                        .state
                        .pending
                        .iter()
                        .filter(|(k, since)| {
                            k.0 == rule.name && now - **since >= rule.for_secs as i64 * 1000
                        })
                        .map(|(k, s)| (k.clone(), *s))
                        .collect();
                    for (key, since) in due {
                        // Still deviating by the latest value: the duration ran out without news.
                        let last = self
                            .state
                            .last
                            .get(&(key.1.clone(), key.2.clone()))
                            .and_then(|l| l.1);
                        if rule.condition != Condition::Rate && last.is_some_and(|v| holds(rule, v))
                        {
                            effects.extend(self.raise(rule, &key, last, last, now, since));
                        }
                    }
                }
                _ => {}
            }
        }
        for (id, rule_name, device, raised_at) in unacked {
            let Some(rule) = rules.iter().find(|r| &r.name == rule_name) else {
                continue;
            };
            let Some(minutes) = rule.escalate_after_minutes else {
                continue;
            };
            if now - raised_at >= minutes_ms(minutes) {
                effects.push(Effect::Escalate {
                    alarm_id: *id,
                    rule: rule_name.clone(),
                    device_id: device.clone(),
                    at_ms: now,
                    message: format!(
                        "ESCALATED {device}: alarm #{id} of rule {rule_name} not acknowledged for {}",
                        duration_text(now - raised_at)
                    ),
                });
            }
        }
        effects
    }
}

fn minutes_ms(minutes: f64) -> i64 {
    (minutes * 60_000.0).round() as i64
}

fn pending(key: &Key, since: Option<i64>) -> Effect {
    Effect::Pending {
        rule: key.0.clone(),
        device_id: key.1.clone(),
        stream: key.2.clone(),
        since_ms: since,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(toml_text: &str) -> Rule {
        toml::from_str(toml_text).unwrap()
    }

    fn n(v: f64) -> FieldValue {
        FieldValue::Number(v)
    }

    fn kinds(effects: &[Effect]) -> Vec<&'static str> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Raise { .. } => "raise",
                Effect::Clear { .. } => "clear",
                Effect::Escalate { .. } => "escalate",
                Effect::Pending {
                    since_ms: Some(_), ..
                } => "pending",
                Effect::Pending { since_ms: None, .. } => "unpending",
            })
            .filter(|k| *k != "pending" && *k != "unpending")
            .collect()
    }

    const WARM: &str = "name = \"warm\"\nstream = \"t\"\ncondition = \"above\"\nthreshold = 8.0\nfor_secs = 300\nhysteresis = 0.5\nescalate_after_minutes = 30";
    const MIN: i64 = 60_000;

    #[test]
    fn raises_after_the_duration_not_before_once_and_clears_with_hysteresis() {
        let mut e = Engine::new(vec![rule(WARM)], Snapshot::default());
        assert!(kinds(&e.observe("f1", "t", 0, &n(9.0), None)).is_empty());
        assert!(
            kinds(&e.observe("f1", "t", 4 * MIN, &n(9.5), None)).is_empty(),
            "not before 5 min"
        );
        assert_eq!(
            kinds(&e.observe("f1", "t", 5 * MIN, &n(9.1), None)),
            ["raise"]
        );
        assert!(
            kinds(&e.observe("f1", "t", 6 * MIN, &n(10.0), None)).is_empty(),
            "one raise per crossing"
        );
        assert!(
            kinds(&e.observe("f1", "t", 7 * MIN, &n(7.8), None)).is_empty(),
            "inside the hysteresis"
        );
        assert_eq!(
            kinds(&e.observe("f1", "t", 8 * MIN, &n(7.5), None)),
            ["clear"]
        );
        // A short excursion does not raise.
        assert!(kinds(&e.observe("f1", "t", 9 * MIN, &n(9.0), None)).is_empty());
        assert!(kinds(&e.observe("f1", "t", 10 * MIN, &n(7.0), None)).is_empty());
        assert!(kinds(&e.observe("f1", "t", 16 * MIN, &n(7.0), None)).is_empty());
    }

    #[test]
    fn a_duration_that_runs_out_without_news_raises_on_tick() {
        let mut e = Engine::new(vec![rule(WARM)], Snapshot::default());
        e.observe("f1", "t", 0, &n(9.0), None);
        assert!(kinds(&e.tick(4 * MIN, &[])).is_empty());
        assert_eq!(kinds(&e.tick(5 * MIN, &[])), ["raise"]);
        assert!(kinds(&e.tick(6 * MIN, &[])).is_empty());
    }

    #[test]
    fn silent_streams_raise_once_and_clear_when_a_value_comes() {
        let silent =
            rule("name = \"quiet\"\nstream = \"*\"\ncondition = \"silent\"\nsilent_minutes = 15");
        let mut e = Engine::new(vec![silent], Snapshot::default());
        e.observe("f1", "t", 0, &n(4.0), None);
        assert!(kinds(&e.tick(14 * MIN, &[])).is_empty());
        assert_eq!(kinds(&e.tick(15 * MIN, &[])), ["raise"]);
        assert!(kinds(&e.tick(30 * MIN, &[])).is_empty());
        assert_eq!(
            kinds(&e.observe("f1", "t", 31 * MIN, &n(4.0), None)),
            ["clear"]
        );
    }

    #[test]
    fn a_restart_continues_from_the_snapshot() {
        // The value went high before the restart; the store kept the pending time.
        let mut snap = Snapshot::default();
        snap.last
            .insert(("f1".into(), "t".into()), (0, Some(9.0), "°C".into()));
        snap.pending
            .insert(("warm".into(), "f1".into(), "t".into()), 0);
        let mut e = Engine::new(vec![rule(WARM)], snap);
        let effects = e.tick(10 * MIN, &[]);
        assert_eq!(kinds(&effects), ["raise"]);
        let Effect::Raise { message, .. } = &effects[1] else {
            panic!("{effects:?}")
        };
        assert!(message.contains("9 °C > 8 °C for 10 min"), "{message}");
        // An open alarm in the snapshot is not raised again.
        let mut snap = Snapshot::default();
        snap.last
            .insert(("f1".into(), "t".into()), (0, Some(9.0), String::new()));
        snap.open.insert(("warm".into(), "f1".into(), "t".into()));
        let mut e = Engine::new(vec![rule(WARM)], snap);
        assert!(kinds(&e.observe("f1", "t", MIN, &n(9.9), None)).is_empty());
        assert!(kinds(&e.tick(20 * MIN, &[])).is_empty());
    }

    #[test]
    fn rate_of_change_and_escalation() {
        let rate = rule("name = \"jump\"\nstream = \"t\"\ncondition = \"rate\"\nthreshold = 2.0");
        let mut e = Engine::new(vec![rate, rule(WARM)], Snapshot::default());
        e.observe("f1", "t", 0, &n(4.0), None);
        assert!(kinds(&e.observe("f1", "t", MIN, &n(5.0), None)).is_empty());
        assert_eq!(
            kinds(&e.observe("f1", "t", 2 * MIN, &n(7.5), None)),
            ["raise"]
        );
        assert_eq!(
            kinds(&e.observe("f1", "t", 3 * MIN, &n(7.6), None)),
            ["clear"]
        );
        let unacked = vec![(7, "warm".to_string(), "f1".to_string(), 0)];
        assert!(kinds(&e.tick(29 * MIN, &unacked)).is_empty());
        assert_eq!(kinds(&e.tick(30 * MIN, &unacked)), ["escalate"]);
    }

    #[test]
    fn rules_select_by_tag_and_ignore_text() {
        let tagged = rule(
            "name = \"r\"\nstream = \"t\"\ncondition = \">\"\nthreshold = 1\ntag = \"fridge\"",
        );
        let mut e = Engine::new(vec![tagged], Snapshot::default());
        assert!(
            kinds(&e.observe("f1", "t", 0, &n(5.0), None)).is_empty(),
            "untagged device"
        );
        e.set_device("f1", vec!["fridge".into()]);
        assert!(kinds(&e.observe("f1", "t", 1, &FieldValue::Text("hot".into()), None)).is_empty());
        assert_eq!(kinds(&e.observe("f1", "t", 2, &n(5.0), None)), ["raise"]);
    }
}
