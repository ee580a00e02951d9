//! The Slack subscriber role: one journal consumer per configured Incoming Webhook.

mod deliver;
mod format;

mod sink;

pub use deliver::{classify, Outcome};
pub use sink::{backoff, sink_name, SinkError, SlackSink};
