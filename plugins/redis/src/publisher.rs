//! The publishing connection: takes what the host queued in the outbox and
//! sends it to Redis as pipelined `PUBLISH` commands, in order, on one
//! connection (so every subscriber sees this node's payloads in order).
//! At `stop` it sends what is still queued (the host's last payloads, its
//! goodbye among them) before it ends, for at most [`LAST_WORDS`].

use std::sync::Arc;

use mist_sdk::Outgoing;
use redis::AsyncConnectionConfig;
use tokio::time::sleep;

use crate::link::{Link, Side};
use crate::settings::{Backoff, CONNECT_TIMEOUT, LAST_WORDS, PING_EVERY, RESPONSE_TIMEOUT};

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
        // `serve` itself ends at `stop`, once it has sent what is queued.
        let reason = serve(&link, &client, &config, &mut backoff).await;
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
    let mut stopped = link.stopped.subscribe();
    let connecting = client.get_multiplexed_async_connection_with_config(config);
    let mut connection = tokio::select! {
        biased;
        _ = stopped.wait_for(|s| *s) => return "stopped".into(),
        connected = connecting => match connected {
            Ok(connection) => connection,
            Err(e) => return format!("cannot connect: {e}"),
        },
    };
    if link.is_stopped() {
        return "stopped".into();
    }
    link.outbox.open();
    link.set(Side::Publisher, true, "");
    backoff.reset();
    let mut batch: Vec<Outgoing> = Vec::new();
    loop {
        let mut finishing = false;
        tokio::select! {
            _ = link.outbox.next_batch(MAX_PIPELINE, &mut batch) => {}
            _ = link.check_publisher.notified() => {}
            _ = sleep(PING_EVERY) => {}
            _ = stopped.wait_for(|s| *s) => finishing = true,
        }
        if finishing {
            let last = async {
                loop {
                    link.outbox.try_batch(MAX_PIPELINE, &mut batch);
                    if batch.is_empty() {
                        return;
                    }
                    if send(&mut connection, &mut batch).await.is_err() {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(LAST_WORDS, last).await;
            return "stopped".into();
        }
        if let Err(e) = send(&mut connection, &mut batch).await {
            return format!("publishing failed: {e}");
        }
    }
}

/// Sends `batch` (emptying it) as one pipeline; an empty batch sends a
/// `PING` (idle, or told to check: it notices a server that is gone).
async fn send(
    connection: &mut redis::aio::MultiplexedConnection,
    batch: &mut Vec<Outgoing>,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    if batch.is_empty() {
        pipe.cmd("PING").ignore();
    }
    for item in batch.drain(..) {
        for channel in &item.channels {
            pipe.cmd("PUBLISH").arg(channel).arg(&item.payload).ignore();
        }
    }
    pipe.query_async::<()>(connection).await
}
