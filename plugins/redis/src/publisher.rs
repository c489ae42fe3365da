//! The publishing connection: takes what the host queued in the outbox and
//! sends it to Redis as pipelined `PUBLISH` commands, in order, on one
//! connection (so every subscriber sees this node's payloads in order).

use std::sync::Arc;

use mist_sdk::Outgoing;
use redis::AsyncConnectionConfig;
use tokio::time::sleep;

use crate::link::{Link, Side};
use crate::settings::{Backoff, CONNECT_TIMEOUT, PING_EVERY, RESPONSE_TIMEOUT};

/// Queued publishes sent in one pipeline at most.
const MAX_PIPELINE: usize = 512;

pub(crate) fn start(link: Arc<Link>, client: redis::Client) {
    tokio::spawn(run(link, client));
}

async fn run(link: Arc<Link>, client: redis::Client) {
    let mut stopped = link.stopped.subscribe();
    let mut backoff = Backoff::new();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT);
    loop {
        let reason = tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => return,
            reason = serve(&link, &client, &config, &mut backoff) => reason,
        };
        if link.is_stopped() {
            return;
        }
        let dropped = link.outbox.close(&reason);
        if dropped > 0 {
            tracing::warn!(
                "dropped {dropped} payloads queued for Redis at {}: {reason}",
                link.place
            );
        }
        link.set(Side::Publisher, false, &reason);
        tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => return,
            _ = sleep(backoff.next()) => {}
        }
    }
}

/// Connects, then sends until the connection fails; returns why it ended.
async fn serve(
    link: &Arc<Link>,
    client: &redis::Client,
    config: &AsyncConnectionConfig,
    backoff: &mut Backoff,
) -> String {
    let mut connection = match client
        .get_multiplexed_async_connection_with_config(config)
        .await
    {
        Ok(connection) => connection,
        Err(e) => return format!("cannot connect: {e}"),
    };
    link.outbox.open();
    link.set(Side::Publisher, true, "");
    backoff.reset();
    let mut batch: Vec<Outgoing> = Vec::new();
    loop {
        tokio::select! {
            _ = link.outbox.next_batch(MAX_PIPELINE, &mut batch) => {}
            _ = link.check_publisher.notified() => {}
            _ = sleep(PING_EVERY) => {}
        }
        let mut pipe = redis::pipe();
        if batch.is_empty() {
            // Idle, or told to check: a PING notices a server that is gone.
            pipe.cmd("PING").ignore();
        }
        for item in batch.drain(..) {
            for channel in &item.channels {
                pipe.cmd("PUBLISH").arg(channel).arg(&item.payload).ignore();
            }
        }
        if let Err(e) = pipe.query_async::<()>(&mut connection).await {
            return format!("publishing failed: {e}");
        }
    }
}
