//! The writer task: takes what the host queued in the outbox and publishes
//! it, stamped, in order, on the one connection.

use std::sync::Arc;

use bytes::Bytes;
use mist_sdk::Outgoing;

use crate::link::Link;
use crate::subject;

/// Queued publishes taken at once at most.
const MAX_BATCH: usize = 512;

pub(crate) fn start(link: Arc<Link>) {
    tokio::spawn(run(link));
}

async fn run(link: Arc<Link>) {
    let mut stopped = link.stopped.subscribe();
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut sequence = 0u64;
    loop {
        tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => return,
            _ = link.outbox.next_batch(MAX_BATCH, &mut batch) => {}
        }
        for item in batch.drain(..) {
            sequence += 1;
            let framed = Bytes::from(subject::stamp(link.publisher, sequence, &item.payload));
            for channel in item.channels {
                // Refused only when the client is closing or the subject is
                // bad (checked at `publish`): nothing to retry.
                if let Err(e) = link.client.publish(channel, framed.clone()).await {
                    tracing::debug!("publishing to NATS at {} failed: {e}", link.place);
                }
            }
        }
    }
}
