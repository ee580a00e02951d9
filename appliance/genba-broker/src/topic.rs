//! Topic names, topic filters and the subscription tree: who gets a message published on a
//! topic. A node exists only while some subscription needs it, so memory follows the
//! subscriptions in force, not every filter ever used.

use std::collections::HashMap;
use std::sync::Arc;

/// A topic name a client may publish to: not empty, no wildcard, no NUL.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// A topic filter: not empty, `#` only as the whole last level, `+` only as a whole level.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

/// `$share/{group}/{filter}`: the group and the filter of a shared subscription.
pub fn shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix("$share/")?;
    let (group, filter) = rest.split_once('/')?;
    Some((group, filter))
}

/// A valid shared subscription: a group name without wildcards and a valid filter.
pub fn valid_shared(group: &str, filter: &str) -> bool {
    !group.is_empty() && !group.contains(['+', '#']) && valid_filter(filter)
}

/// Whether `filter` matches `topic` (MQTT 4.7; wildcards never match topics that start with
/// `$`): the one matcher the config's access rules use too.
pub use genba_config::topic::matches;

/// What one subscriber asked for with one filter.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SubOptions {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub id: Option<u32>,
}

/// A subscriber as the tree knows it: its client id.
pub type ClientId = Arc<str>;

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Ordinary subscriptions ending here.
    subscribers: HashMap<ClientId, SubOptions>,
    /// Shared subscriptions ending here, by group: members and the next one to get a message.
    groups: HashMap<Box<str>, Group>,
}

#[derive(Default)]
struct Group {
    members: Vec<(ClientId, SubOptions)>,
    next: usize,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.groups.is_empty()
    }
}

/// One match of a published topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub client: ClientId,
    pub options: SubOptions,
    /// A shared subscription: one member of the group gets the message.
    pub shared: bool,
}

/// Every subscription in force, by filter level.
#[derive(Default)]
pub struct Tree {
    root: Node,
    filters: usize,
}

impl Tree {
    /// Adds or replaces `client`'s subscription to `filter` (`$share/...` included); returns
    /// whether it existed before.
    pub fn subscribe(&mut self, client: &ClientId, filter: &str, options: SubOptions) -> bool {
        let (group, path) = match shared(filter) {
            Some((g, f)) => (Some(g), f),
            None => (None, filter),
        };
        let mut node = &mut self.root;
        for level in path.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let existed = match group {
            None => node.subscribers.insert(client.clone(), options).is_some(),
            Some(g) => {
                let group = node.groups.entry(g.into()).or_default();
                match group.members.iter_mut().find(|(c, _)| c == client) {
                    Some(m) => {
                        m.1 = options;
                        true
                    }
                    None => {
                        group.members.push((client.clone(), options));
                        false
                    }
                }
            }
        };
        if !existed {
            self.filters += 1;
        }
        existed
    }

    /// Removes `client`'s subscription to `filter`; returns whether there was one. Nodes left
    /// without subscriptions are freed.
    pub fn unsubscribe(&mut self, client: &ClientId, filter: &str) -> bool {
        let (group, path) = match shared(filter) {
            Some((g, f)) => (Some(g), f),
            None => (None, filter),
        };
        let levels: Vec<&str> = path.split('/').collect();
        let removed = remove(&mut self.root, &levels, client, group);
        if removed {
            self.filters -= 1;
        }
        removed
    }

    /// Subscriptions in force (all clients).
    pub fn len(&self) -> usize {
        self.filters
    }

    pub fn is_empty(&self) -> bool {
        self.filters == 0
    }

    /// Every subscription matching `topic`; for each shared group, its next member that
    /// `online` accepts (round robin), else its next member.
    pub fn matches(&mut self, topic: &str, online: impl Fn(&ClientId) -> bool) -> Vec<Match> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = Vec::new();
        let dollar = topic.starts_with('$');
        collect(&mut self.root, &levels, 0, dollar, &online, &mut out);
        out
    }
}

fn remove(node: &mut Node, levels: &[&str], client: &ClientId, group: Option<&str>) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return match group {
            None => node.subscribers.remove(client).is_some(),
            Some(g) => {
                let Some(grp) = node.groups.get_mut(g) else {
                    return false;
                };
                let before = grp.members.len();
                grp.members.retain(|(c, _)| c != client);
                let removed = grp.members.len() != before;
                if grp.members.is_empty() {
                    node.groups.remove(g);
                }
                removed
            }
        };
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let removed = remove(child, rest, client, group);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

fn collect(
    node: &mut Node,
    levels: &[&str],
    depth: usize,
    dollar: bool,
    online: &impl Fn(&ClientId) -> bool,
    out: &mut Vec<Match>,
) {
    let wildcards_ok = !(depth == 0 && dollar);
    if wildcards_ok {
        if let Some(hash) = node.children.get_mut("#") {
            take(hash, online, out);
        }
    }
    let Some((first, rest)) = levels.split_first() else {
        take(node, online, out);
        return;
    };
    if wildcards_ok {
        if let Some(plus) = node.children.get_mut("+") {
            collect(plus, rest, depth + 1, dollar, online, out);
        }
    }
    if *first != "+" && *first != "#" {
        if let Some(child) = node.children.get_mut(*first) {
            collect(child, rest, depth + 1, dollar, online, out);
        }
    }
}

fn take(node: &mut Node, online: &impl Fn(&ClientId) -> bool, out: &mut Vec<Match>) {
    for (client, options) in &node.subscribers {
        out.push(Match {
            client: client.clone(),
            options: options.clone(),
            shared: false,
        });
    }
    for group in node.groups.values_mut() {
        let n = group.members.len();
        if n == 0 {
            continue;
        }
        let start = group.next % n;
        let pick = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| online(&group.members[i].0))
            .unwrap_or(start);
        group.next = pick + 1;
        let (client, options) = &group.members[pick];
        out.push(Match {
            client: client.clone(),
            options: options.clone(),
            shared: true,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(qos: u8) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            id: None,
        }
    }

    #[test]
    fn filters_and_topics_are_validated() {
        for f in ["a", "a/+", "+", "#", "a/#", "+/+/c", "/", "a//b"] {
            assert!(valid_filter(f), "{f}");
        }
        for f in ["", "a/#/b", "a#", "a/b+", "#/a", "a\0"] {
            assert!(!valid_filter(f), "{f:?}");
        }
        assert!(valid_topic("a/b"));
        assert!(!valid_topic("a/+"));
        assert!(!valid_topic(""));
    }

    #[test]
    fn wildcards_match_by_level_and_not_dollar_topics() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("+/+", "/a"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn tree_finds_what_matches_and_frees_empty_nodes() {
        let mut t = Tree::default();
        let a: ClientId = "a".into();
        let b: ClientId = "b".into();
        t.subscribe(&a, "x/+/z", opts(1));
        t.subscribe(&b, "x/#", opts(2));
        t.subscribe(&b, "x/y/z", opts(0));
        let mut got: Vec<_> = t
            .matches("x/y/z", |_| true)
            .into_iter()
            .map(|m| (m.client.to_string(), m.options.qos))
            .collect();
        got.sort();
        assert_eq!(got, [("a".into(), 1), ("b".into(), 0), ("b".into(), 2)]);
        assert!(t.matches("$x/y", |_| true).is_empty());
        assert_eq!(t.len(), 3);
        assert!(t.unsubscribe(&a, "x/+/z"));
        assert!(!t.unsubscribe(&a, "x/+/z"));
        t.unsubscribe(&b, "x/#");
        t.unsubscribe(&b, "x/y/z");
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "every node is freed");
    }

    #[test]
    fn a_shared_group_gets_each_message_once_in_turn() {
        let mut t = Tree::default();
        let a: ClientId = "a".into();
        let b: ClientId = "b".into();
        t.subscribe(&a, "$share/g/t/#", opts(1));
        t.subscribe(&b, "$share/g/t/#", opts(1));
        let first = t.matches("t/1", |_| true);
        let second = t.matches("t/1", |_| true);
        assert_eq!(first.len(), 1);
        assert_eq!(second.len(), 1);
        assert_ne!(first[0].client, second[0].client);
        // An offline member is skipped.
        let only_b = t.matches("t/1", |c| &**c == "b");
        assert_eq!(&*only_b[0].client, "b");
        t.unsubscribe(&a, "$share/g/t/#");
        t.unsubscribe(&b, "$share/g/t/#");
        assert!(t.root.is_empty());
    }
}
