//! The cluster's status store: a JetStream stream every host writes each
//! event to and any host's status API reads. A message's events expire
//! together, `retention_secs` after its first: reads answer nothing past
//! that, and the stream keeps each event twice as long (its `max_age`, so
//! JetStream itself purges) so that a message's later events never outlive
//! its first and show part of its history.
//!
//! One subject per message, `<p>.status.<tenant>.<queue id>`: a message's
//! events are read back by subject (from the stream's leader, so a read
//! after a write on another host sees it).

use std::time::Duration;

/// Events one search reads at most (see `search`).
pub const MAX_SEARCHED: usize = 20_000;

use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use async_trait::async_trait;

use super::{Event, StatusStore};
use crate::cluster::{Cluster, token};

pub struct JetStreamStatusStore {
    retention: Duration,
    cluster: Cluster,
    stream: stream::Stream,
    subject: String,
}

impl JetStreamStatusStore {
    /// Creates (or finds) the stream, waiting until JetStream answers.
    pub async fn open(cluster: &Cluster, retention: Duration) -> JetStreamStatusStore {
        let subject = cluster.subject("status");
        let config = stream::Config {
            name: cluster.stream_name("STATUS"),
            subjects: vec![format!("{subject}.>")],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: cluster.config.replicas,
            max_age: retention * 2,
            ..Default::default()
        };
        let js = cluster.js.clone();
        let stream = Cluster::until_ready("the status stream", || {
            js.get_or_create_stream(config.clone())
        })
        .await;
        JetStreamStatusStore {
            retention,
            cluster: cluster.clone(),
            stream,
            subject,
        }
    }
}

fn other(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

impl JetStreamStatusStore {
    /// The events on `subject` (wildcards allowed), in the stream's order,
    /// at most `limit` of them. An event this version cannot read is
    /// skipped, as the file store skips a line it cannot read.
    async fn read(&self, subject: &str, limit: usize) -> std::io::Result<Vec<Event>> {
        let mut events = Vec::new();
        let mut from = 1;
        while events.len() < limit {
            let m = match self
                .stream
                .raw_message_builder()
                .sequence(from)
                .next_by_subject(subject.to_string())
                .send()
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(other("reading status events", e)),
            };
            from = m.sequence + 1;
            if let Ok(e) = serde_json::from_slice::<Event>(&m.payload) {
                events.push(e);
            }
        }
        Ok(events)
    }
}

#[async_trait]
impl StatusStore for JetStreamStatusStore {
    async fn record(&self, events: Vec<Event>) -> std::io::Result<()> {
        // Every event in flight at once, then every acknowledgement.
        let mut acks = Vec::with_capacity(events.len());
        for e in &events {
            let subject = format!(
                "{}.{}.{}",
                self.subject,
                token(&e.tenant),
                token(&e.message_id)
            );
            let body = serde_json::to_vec(e).map_err(std::io::Error::other)?;
            let ack = self
                .cluster
                .js
                .publish(subject, body.into())
                .await
                .map_err(|e| other("publishing a status event", e))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await
                .map_err(|e| other("waiting for a status event's acknowledgement", e))?;
        }
        Ok(())
    }

    async fn message(
        &self,
        tenant: Option<&str>,
        id: &str,
        recipient: Option<&str>,
    ) -> std::io::Result<Vec<Event>> {
        let subject = format!(
            "{}.{}.{}",
            self.subject,
            tenant.map(token).unwrap_or_else(|| "*".into()),
            token(id)
        );
        let mut events = self.read(&subject, usize::MAX).await?;
        if super::expired(&events, Some(self.retention), crate::wallclock::now_ms()) {
            return Ok(Vec::new());
        }
        if let Some(r) = recipient {
            events.retain(|e| e.recipient.eq_ignore_ascii_case(r));
        }
        // In the stream's order: the order they were recorded in.
        Ok(events)
    }

    /// JetStream drops events older than the stream's `max_age` itself.
    async fn purge(&self, _cutoff_ms: u64) -> std::io::Result<usize> {
        Ok(0)
    }

    /// Reads the tenant's events in the stream's order, at most
    /// [`MAX_SEARCHED`] of them (JetStream keeps no index but the subject:
    /// a search of a tenant with more events sees the oldest only, which
    /// the answer's length cannot show; the file store has no such cap).
    async fn search(&self, tenant: &str, q: &super::Search) -> std::io::Result<Vec<super::Found>> {
        let subject = format!("{}.{}.*", self.subject, token(tenant));
        let events = self.read(&subject, MAX_SEARCHED).await?;
        let now = crate::wallclock::now_ms();
        let mut by_id: std::collections::HashMap<String, Vec<Event>> = Default::default();
        for e in events {
            by_id.entry(e.message_id.clone()).or_default().push(e);
        }
        by_id.retain(|_, events| !super::expired(events, Some(self.retention), now));
        Ok(super::search(by_id.values().flatten(), q))
    }

    async fn purge_tenant(&self, tenant: &str) -> std::io::Result<usize> {
        let r = self
            .stream
            .purge()
            .filter(format!("{}.{}.>", self.subject, token(tenant)))
            .await
            .map_err(|e| other("purging a tenant's status events", e))?;
        Ok(r.purged as usize)
    }
}
