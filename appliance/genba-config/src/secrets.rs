//! The secrets file: Slack webhook URLs and other credentials, readable by the owner only.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secrets file {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secrets file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("secrets file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Secret values; `Debug` never prints them.
#[derive(Default, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Secrets {
    /// Slack webhook URL per webhook name.
    pub slack: BTreeMap<String, String>,
    /// Secret parts of `[[sinks]]` by sink name (`[sinks.NAME]`).
    pub sinks: BTreeMap<String, crate::SinkSecrets>,
    pub recorder: RecorderSecrets,
    pub exment: ExmentSecrets,
    pub upstream: UpstreamSecrets,
}

/// The upstream cluster's password for `upstream.username`.
#[derive(Default, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSecrets {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// Exment API credentials (H6: only on the appliance, never on a device).
#[derive(Default, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct ExmentSecrets {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

#[derive(Default, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct RecorderSecrets {
    /// Password for `recorder.username` on the recorded broker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("slack", &self.slack.keys().collect::<Vec<_>>())
            .field("sinks", &self.sinks)
            .field(
                "upstream.password",
                &self.upstream.password.as_ref().map(|_| "<set>"),
            )
            .field(
                "recorder.password",
                &self.recorder.password.as_ref().map(|_| "<set>"),
            )
            .field(
                "exment",
                &self.exment.client_secret.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

impl Secrets {
    /// Loads the secrets file; a missing file means no secrets. A file that group or others
    /// can read is refused, and the error names it.
    pub fn load(path: &Path) -> Result<Secrets, SecretsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Secrets::default()),
            Err(source) => {
                return Err(SecretsError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        check_private(path)?;
        let secrets: Secrets = toml::from_str(&text).map_err(|e| SecretsError::Parse {
            path: path.to_owned(),
            message: without_the_line(&e, &text),
        })?;
        for (name, url) in &secrets.slack {
            check_url(url).map_err(|why| SecretsError::Parse {
                path: path.to_owned(),
                message: format!("slack.{name}: {why}"),
            })?;
        }
        for (name, sink) in &secrets.sinks {
            if let Some(url) = &sink.url {
                check_url(url).map_err(|why| SecretsError::Parse {
                    path: path.to_owned(),
                    message: format!("sinks.{name}.url: {why}"),
                })?;
            }
        }
        Ok(secrets)
    }
}

/// A TOML error without the source line the parser quotes: in this file that line may hold a
/// webhook URL or a password, which must not reach a terminal or a log.
fn without_the_line(e: &toml::de::Error, text: &str) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {}", e.message())
        }
        None => e.message().to_owned(),
    }
}

/// A webhook URL a sink can post to: `https://` (or `http://`), a host, no spaces. The reason
/// never repeats the URL (it is a secret).
pub fn check_url(url: &str) -> Result<(), String> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the URL contains a space or a control character".into());
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(format!(
            "the URL's scheme is {:?}; an https:// URL is needed",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(())
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), SecretsError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| SecretsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretsError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), SecretsError> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn private_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        (dir, path)
    }

    #[test]
    fn malformed_webhook_urls_are_refused_without_repeating_them() {
        for (url, why) in [
            ("https://hooks.slack.com/services/T0/B0/with space", "space"),
            ("ftp://hooks.slack.com/services/T0/B0/secret", "scheme"),
            ("hooks.slack.com/services/T0/B0/secret", "not a URL"),
        ] {
            let (_d, path) = private_file(&format!("[slack]\nops = \"{url}\"\n"));
            let e = match Secrets::load(&path) {
                Ok(_) => panic!("{url} accepted"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains("slack.ops") && e.contains(why), "{e}");
            assert!(!e.contains("hooks.slack.com"), "URL repeated: {e}");
        }
        let (_d, path) =
            private_file("[slack]\nops = \"https://hooks.slack.com/services/T0/B0/x\"\n");
        assert!(Secrets::load(&path).is_ok());
    }

    #[test]
    fn a_toml_error_names_the_line_without_quoting_it() {
        let (_d, path) =
            private_file("[slack]\nops = \"https://hooks.slack.com/services/T0/B0/s3cretvalue\n");
        let e = Secrets::load(&path).err().unwrap().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains("s3cretvalue"), "{e}");
    }

    #[test]
    fn world_readable_secrets_are_refused_and_named() {
        let dir = std::env::temp_dir().join(format!("genba-secrets-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secrets.toml");
        std::fs::write(&path, "[slack]\nops = \"https://example.invalid/x\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Secrets::load(&path).unwrap_err();
        assert!(err.to_string().contains("secrets.toml"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let secrets = Secrets::load(&path).unwrap();
        assert!(!format!("{secrets:?}").contains("example.invalid"));
        assert_eq!(secrets.slack["ops"], "https://example.invalid/x");
    }
}
