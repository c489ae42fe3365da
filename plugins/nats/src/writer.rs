//! The writer task: takes what the host queued in the outbox and publishes
//! it, stamped, in order, on the one connection. At `stop` it publishes
//! what is still queued (the host's last payloads, its goodbye among them)
//! and flushes, for at most [`LAST_WORDS`], then says it is done (the
//! reader closes the connection only after).

use std::sync::Arc;

use bytes::Bytes;
use mist_sdk::Outgoing;

use crate::link::Link;
use crate::settings::LAST_WORDS;
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
            _ = stopped.wait_for(|s| *s) => break,
            _ = link.outbox.next_batch(MAX_BATCH, &mut batch) => {}
        }
        publish(&link, &mut batch, &mut sequence).await;
    }
    let last = async {
        while link.outbox.try_batch(MAX_BATCH, &mut batch) > 0 {
            publish(&link, &mut batch, &mut sequence).await;
        }
        let _ = link.client.flush().await;
    };
    let _ = tokio::time::timeout(LAST_WORDS, last).await;
    link.writer_done.send_replace(true);
}

/// Publishes `batch` (emptying it), each item stamped once and sent to
/// each of its subjects.
async fn publish(link: &Link, batch: &mut Vec<Outgoing>, sequence: &mut u64) {
    for item in batch.drain(..) {
        *sequence += 1;
        let framed = Bytes::from(subject::stamp(link.publisher, *sequence, &item.payload));
        for channel in item.channels {
            // Refused only when the client is closing or the subject is
            // bad (checked at `publish`): nothing to retry.
            if let Err(e) = link.client.publish(channel, framed.clone()).await {
                tracing::debug!("publishing to NATS at {} failed: {e}", link.place);
            }
        }
    }
}
