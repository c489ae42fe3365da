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
/// Bytes handed to the client between two flushes at most. The client
/// queues publishes by count (thousands), not bytes: with the host's
/// batched payloads (up to 256 KiB each) it would hold hundreds of MiB for
/// a server that falls behind. Waiting for its flush past this bound keeps
/// what it holds small and lets the outbox fill, so the host slows its
/// publishers (flow control) instead.
const MAX_UNFLUSHED: usize = 1 << 20;

pub(crate) fn start(link: Arc<Link>) {
    tokio::spawn(run(link));
}

async fn run(link: Arc<Link>) {
    let mut stopped = link.stopped.subscribe();
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut sequence = 0u64;
    let mut unflushed = 0usize;
    loop {
        tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => break,
            _ = link.outbox.next_batch(MAX_BATCH, &mut batch) => {}
        }
        publish(&link, &mut batch, &mut sequence, &mut unflushed).await;
    }
    let last = async {
        while link.outbox.try_batch(MAX_BATCH, &mut batch) > 0 {
            publish(&link, &mut batch, &mut sequence, &mut unflushed).await;
        }
        let _ = link.client.flush().await;
    };
    let _ = tokio::time::timeout(LAST_WORDS, last).await;
    link.writer_done.send_replace(true);
}

/// Publishes `batch` (emptying it), each item stamped once and sent to
/// each of its subjects, waiting for the client's flush every
/// [`MAX_UNFLUSHED`] bytes.
async fn publish(
    link: &Link,
    batch: &mut Vec<Outgoing>,
    sequence: &mut u64,
    unflushed: &mut usize,
) {
    for item in batch.drain(..) {
        if *unflushed >= MAX_UNFLUSHED {
            if let Err(e) = link.client.flush().await {
                tracing::debug!("flushing to NATS at {} failed: {e}", link.place);
            }
            *unflushed = 0;
        }
        *unflushed += item.payload.len() * item.channels.len();
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
