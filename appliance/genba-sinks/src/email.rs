//! E-mail over SMTP with `lettre`: implicit TLS (465), STARTTLS that refuses to go on in
//! clear text (587), or plain for a relay on the same machine. A backlog is folded into one
//! mail (a digest) of up to `max_batch` messages; the default pace, one mail a minute after
//! the first, turns a burst of alarms into one mail.
//!
//! SMTP replies 4xx are tried again, 5xx are refusals (shared/refs: SMTP).

use std::time::Duration;

use genba_config::sinks::{SmtpConfig, SmtpSecurity, Template};
use genba_store::JournalEntry;
use lettre::message::{header::ContentType, Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::outcome::Outcome;
use crate::redact::excerpt;
use crate::template::render;

pub struct Email {
    from: Mailbox,
    to: Vec<Mailbox>,
    subject: String,
    template: Option<Template>,
    max_batch: usize,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    password: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("{field}: {message}")]
    Address { field: String, message: String },
    #[error("smtp.ca_file {path}: {message}")]
    Ca { path: String, message: String },
    #[error("smtp: {0}")]
    Smtp(String),
}

impl Email {
    pub fn new(
        smtp: &SmtpConfig,
        to: &[String],
        template: Option<Template>,
        max_batch: usize,
        timeout: Duration,
        credentials: Option<(String, String)>,
    ) -> Result<Email, EmailError> {
        let address = |field: String, text: &str| {
            text.parse::<Mailbox>().map_err(|e| EmailError::Address {
                field,
                message: e.to_string(),
            })
        };
        let from = address("smtp.from".into(), &smtp.from)?;
        let to = to
            .iter()
            .enumerate()
            .map(|(i, t)| address(format!("to[{i}]"), t))
            .collect::<Result<Vec<_>, _>>()?;
        let mut tls = TlsParameters::builder(smtp.host.clone());
        if let Some(path) = &smtp.ca_file {
            let ca_error = |message: String| EmailError::Ca {
                path: path.display().to_string(),
                message,
            };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            let cert = Certificate::from_pem(&pem).map_err(|e| ca_error(e.to_string()))?;
            tls = tls.add_root_certificate(cert);
        }
        let tls = tls.build().map_err(|e| EmailError::Smtp(e.to_string()))?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
            .port(smtp.port())
            .timeout(Some(timeout))
            .tls(match smtp.security {
                SmtpSecurity::Tls => Tls::Wrapper(tls),
                SmtpSecurity::Starttls => Tls::Required(tls),
                SmtpSecurity::None => Tls::None,
            });
        let password = credentials.as_ref().map(|(_, p)| p.clone());
        if let Some((user, pass)) = credentials {
            builder = builder.credentials(Credentials::new(user, pass));
        }
        Ok(Email {
            from,
            to,
            subject: smtp.subject.clone(),
            template,
            max_batch,
            transport: builder.build(),
            password,
        })
    }

    pub fn fit(&self, entries: &[JournalEntry]) -> usize {
        entries.len().min(self.max_batch).max(1)
    }

    /// One mail for the batch: a line (or block) per message, oldest first.
    pub fn message(&self, batch: &[JournalEntry]) -> Result<Message, String> {
        let subject = self.subject.replace("{count}", &batch.len().to_string());
        let mut body = String::new();
        for e in batch {
            body.push_str(&render(self.template.as_ref(), e));
            body.push('\n');
        }
        let mut builder = Message::builder().from(self.from.clone()).subject(subject);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        builder
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| e.to_string())
    }

    pub async fn send(&self, batch: &[JournalEntry]) -> Outcome {
        let message = match self.message(batch) {
            Ok(m) => m,
            Err(reason) => return Outcome::Permanent { reason },
        };
        match self.transport.send(message).await {
            Ok(_) => Outcome::Delivered,
            Err(e) => {
                let secrets: Vec<&str> = self.password.iter().map(String::as_str).collect();
                let reason = excerpt(&error_chain(&e), &secrets);
                if e.is_permanent() {
                    Outcome::Permanent { reason }
                } else {
                    Outcome::retry(reason)
                }
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::entry;

    fn email() -> Email {
        let smtp = SmtpConfig {
            host: "mail.example.com".into(),
            port: None,
            security: SmtpSecurity::Starttls,
            from: "Genba <genba@example.com>".into(),
            subject: "Genba: {count} alarm(s)".into(),
            ca_file: None,
        };
        Email::new(
            &smtp,
            &["ops@example.com".into(), "店長 <boss@example.com>".into()],
            None,
            200,
            Duration::from_secs(5),
            None,
        )
        .unwrap()
    }

    #[test]
    fn a_digest_mail_lists_every_message_with_the_count_in_the_subject() {
        let batch = [
            entry(1, "alarms/f1/warm", b"RAISED 9.0"),
            entry(2, "alarms/f1/warm", b"CLEARED 7.0"),
        ];
        let text = String::from_utf8(email().message(&batch).unwrap().formatted()).unwrap();
        assert!(text.contains("Subject: Genba: 2 alarm(s)"), "{text}");
        assert!(text.contains("alarms/f1/warm: RAISED 9.0"), "{text}");
        assert!(text.contains("alarms/f1/warm: CLEARED 7.0"), "{text}");
        assert!(text.contains("boss@example.com"), "{text}");
    }

    #[test]
    fn a_bad_address_is_refused_naming_the_field() {
        let smtp = SmtpConfig {
            host: "mail.example.com".into(),
            port: Some(2525),
            security: SmtpSecurity::None,
            from: "genba@example.com".into(),
            subject: "s".into(),
            ca_file: None,
        };
        let Err(e) = Email::new(
            &smtp,
            &["not an address".into()],
            None,
            1,
            Duration::from_secs(1),
            None,
        ) else {
            panic!("accepted a bad address");
        };
        assert!(e.to_string().starts_with("to[0]"), "{e}");
    }
}
