//! MQTT topic names and filters: validation and matching, shared by the bridge and the sinks.

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("must not be empty")]
    Empty,
    #[error("is longer than {0} bytes")]
    TooLong(usize),
    #[error("must not contain the wildcards + or #")]
    Wildcard,
    #[error("must not contain empty levels (leading, trailing or double /)")]
    EmptyLevel,
    #[error("must not contain NUL or control characters")]
    Control,
    #[error("must not start with $ (reserved for the broker)")]
    Reserved,
    #[error("# must be the last level and + must fill a whole level")]
    BadWildcard,
    #[error("%u and %c must fill a whole level")]
    BadPlaceholder,
}

/// A topic a client may publish to through the bridge.
pub fn validate_topic(topic: &str, max_bytes: usize) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > max_bytes {
        return Err(TopicError::TooLong(max_bytes));
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::Wildcard);
    }
    if topic.chars().any(char::is_control) {
        return Err(TopicError::Control);
    }
    if topic.starts_with('$') {
        return Err(TopicError::Reserved);
    }
    if topic.split('/').any(str::is_empty) {
        return Err(TopicError::EmptyLevel);
    }
    Ok(())
}

/// A subscription filter as MQTT defines it.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.chars().any(char::is_control) {
        return Err(TopicError::Control);
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let has_wild = level.contains(['+', '#']);
        if has_wild && level.len() != 1 {
            return Err(TopicError::BadWildcard);
        }
        if *level == "#" && i != levels.len() - 1 {
            return Err(TopicError::BadWildcard);
        }
    }
    Ok(())
}

/// An access-rule pattern (`[[mqtt.acl]]`): a subscription filter whose levels may also be
/// exactly `%u` (the user name) or `%c` (the client id).
pub fn validate_acl_pattern(pattern: &str) -> Result<(), TopicError> {
    validate_filter(pattern)?;
    let partial = |level: &str| {
        level != "%u" && level != "%c" && (level.contains("%u") || level.contains("%c"))
    };
    if pattern.split('/').any(partial) {
        return Err(TopicError::BadPlaceholder);
    }
    Ok(())
}

/// Whether `topic` matches `filter` (MQTT 3.1.1 section 4.7; `$` topics only match filters
/// that start with `$`).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && !filter.starts_with('$') {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_with_wildcards_empty_levels_or_reserved_prefix_are_rejected() {
        assert_eq!(validate_topic("notify/slack", 256), Ok(()));
        assert_eq!(validate_topic("a/+/b", 256), Err(TopicError::Wildcard));
        assert_eq!(validate_topic("a/#", 256), Err(TopicError::Wildcard));
        assert_eq!(validate_topic("a//b", 256), Err(TopicError::EmptyLevel));
        assert_eq!(validate_topic("/a", 256), Err(TopicError::EmptyLevel));
        assert_eq!(validate_topic("$SYS/x", 256), Err(TopicError::Reserved));
        assert_eq!(validate_topic("a\0b", 256), Err(TopicError::Control));
        assert_eq!(validate_topic("", 256), Err(TopicError::Empty));
        assert_eq!(validate_topic("abcd", 3), Err(TopicError::TooLong(3)));
    }

    #[test]
    fn filters_follow_mqtt_rules() {
        assert!(validate_filter("notify/#").is_ok());
        assert!(validate_filter("+/b/+").is_ok());
        assert!(validate_filter("#").is_ok());
        assert_eq!(validate_filter("a/#/b"), Err(TopicError::BadWildcard));
        assert_eq!(validate_filter("a/b#"), Err(TopicError::BadWildcard));
        assert_eq!(validate_filter("a+/b"), Err(TopicError::BadWildcard));
    }

    #[test]
    fn acl_patterns_are_filters_with_whole_level_placeholders() {
        assert!(validate_acl_pattern("clients/%u/#").is_ok());
        assert!(validate_acl_pattern("%c/+/status").is_ok());
        assert!(validate_acl_pattern("100%/x").is_ok());
        assert_eq!(validate_acl_pattern(""), Err(TopicError::Empty));
        assert_eq!(validate_acl_pattern("a/#/b"), Err(TopicError::BadWildcard));
        assert_eq!(validate_acl_pattern("a\0b"), Err(TopicError::Control));
        assert_eq!(
            validate_acl_pattern("a/x%u"),
            Err(TopicError::BadPlaceholder)
        );
        assert_eq!(
            validate_acl_pattern("%c-in/x"),
            Err(TopicError::BadPlaceholder)
        );
    }

    #[test]
    fn matching_follows_mqtt_rules() {
        assert!(matches("notify/#", "notify/slack"));
        assert!(matches("notify/#", "notify"));
        assert!(matches("notify/#", "notify/a/b"));
        assert!(!matches("notify/#", "alert/x"));
        assert!(matches("+/done", "batch/done"));
        assert!(!matches("+/done", "batch/x/done"));
        assert!(matches("#", "anything/here"));
        assert!(!matches("#", "$SYS/broker"));
        assert!(matches("a/+", "a/"));
        assert!(!matches("a/b", "a/b/c"));
    }
}
