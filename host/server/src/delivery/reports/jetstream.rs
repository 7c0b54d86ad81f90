//! The cluster's report queue: a work-queue stream (`<P>_REPORTS`) and one
//! durable pull consumer (`reports`) that every host's sender takes from;
//! a report not taken by its callback server is negatively acknowledged
//! with the backoff's delay, so any host may send it next.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, pull};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{AckKind, stream};
use async_trait::async_trait;

use super::ReportStore;
use crate::cluster::{Cluster, Puller};
use crate::queue::Ticket;

pub struct JetStreamReports {
    cluster: Cluster,
    subject: String,
    puller: Puller,
}

impl JetStreamReports {
    /// Creates (or finds) the stream and the consumer, waiting until
    /// JetStream answers.
    pub async fn open(cluster: &Cluster) -> JetStreamReports {
        let subject = cluster.subject("reports");
        let config = stream::Config {
            name: cluster.stream_name("REPORTS"),
            subjects: vec![subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: cluster.config.replicas,
            ..Default::default()
        };
        let js = cluster.js.clone();
        let stream = Cluster::until_ready("the reports stream", || {
            js.get_or_create_stream(config.clone())
        })
        .await;
        let consumer_config = pull::Config {
            durable_name: Some("reports".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            // One POST takes at most ten seconds.
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            num_replicas: cluster.config.replicas,
            ..Default::default()
        };
        let consumer = Cluster::until_ready("the reports consumer", || {
            stream.get_or_create_consumer("reports", consumer_config.clone())
        })
        .await;
        JetStreamReports {
            cluster: cluster.clone(),
            subject,
            puller: Puller::new(consumer, 1, "reports"),
        }
    }
}

#[async_trait]
impl ReportStore for JetStreamReports {
    async fn push(&self, report: Vec<u8>) -> std::io::Result<()> {
        let ack = self
            .cluster
            .js
            .publish(self.subject.clone(), report.into())
            .await
            .map_err(|e| std::io::Error::other(format!("publishing a report: {e}")))?;
        ack.await
            .map_err(|e| std::io::Error::other(format!("storing a report: {e}")))?;
        Ok(())
    }

    async fn next(&self) -> (Ticket, Vec<u8>, u32) {
        let m = self.puller.next().await;
        let delivered = m.info().map(|i| i.delivered).unwrap_or(1).max(1);
        let (m, acker) = m.split();
        (
            Ticket::new(Arc::new(acker)),
            m.payload.to_vec(),
            (delivered - 1) as u32,
        )
    }

    async fn done(&self, ticket: Ticket) {
        if let Err(e) = ticket.get::<Arc<Acker>>().double_ack().await {
            // Sent again by some host later: a callback may see it twice.
            tracing::warn!(event = "report.ack_failed", cause = %e);
        }
    }

    async fn later(&self, ticket: Ticket, delay: Duration) {
        let _ = ticket
            .get::<Arc<Acker>>()
            .ack_with(AckKind::Nak(Some(delay)))
            .await;
    }
}
