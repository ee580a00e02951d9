//! Where messages leave Genba for people and other systems.
//!
//! Every sink is a journal consumer running [`run::Consumer`]: its own durable cursor, topic
//! filters, a rate limit, folding of a backlog into one delivery, retries with one backoff
//! ([`outcome::backoff`]) or the receiver's `Retry-After`, parking of refused messages with
//! the receiver's reason, and retry of parked messages on request. What differs per kind is
//! a [`run::Deliver`]: [`slack`], a signed [`webhook`], [`line`] push messages, [`email`]
//! over SMTP ([`channel::Channel`] builds one from the config); the rule webhooks in the
//! `genba` binary use the same loop.

pub mod channel;
pub mod email;
pub mod http;
pub mod line;
pub mod outcome;
pub mod redact;
pub mod run;
pub mod slack;
pub mod template;
pub mod upstream;
pub mod webhook;

pub use channel::Channel;
pub use outcome::{backoff, Outcome};
pub use run::{Consumer, Deliver, Pace};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: {source}")]
    Store {
        sink: String,
        source: genba_store::StoreError,
    },
    #[error("sink {sink}: missing secret: {hint} in the secrets file")]
    NoSecret { sink: String, hint: String },
    #[error("sink {sink}: cannot build the HTTP client: {message}")]
    Client { sink: String, message: String },
    #[error("sink {sink}: {message}")]
    Email { sink: String, message: String },
}

/// The loop for a configured sink: its channel, filters and pace.
pub fn consumer(
    sink: &genba_config::SinkConfig,
    secrets: &genba_config::Secrets,
    db_path: std::path::PathBuf,
    wake: Option<tokio::sync::watch::Receiver<i64>>,
) -> Result<Consumer<Channel>, SinkError> {
    Ok(Consumer {
        name: sink.store_name(),
        filters: sink.filters.clone(),
        source: None,
        pace: Pace {
            rate_per_sec: sink.rate(),
            burst: sink.burst(),
            max_backoff: std::time::Duration::from_secs(sink.max_backoff_secs.max(1)),
            park_after: None,
        },
        deliver: Channel::new(sink, secrets)?,
        db_path,
        wake,
    })
}
