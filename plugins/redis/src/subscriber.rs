//! The subscribing connection: Redis pub/sub on a connection of its own
//! (one per instance), read by one task so that payloads reach the inbox in
//! the order Redis sent them.
//!
//! Each channel is subscribed with a `SUBSCRIBE` of its own: the `redis`
//! crate matches one confirmation to one request, and Redis answers a
//! `SUBSCRIBE` of several channels with one confirmation per channel.
//! Commands are sent in call order (each request is handed to the
//! connection before the next command is read); their confirmations are
//! awaited beside the reading of messages.

use std::sync::Arc;

use futures_util::future::{join_all, poll_immediate, BoxFuture};
use futures_util::stream::{FuturesUnordered, StreamExt};
use mist_sdk::SdkError;
use redis::aio::PubSubSink;
use tokio::sync::mpsc;
use tokio::time::{interval, sleep, timeout, MissedTickBehavior};

use crate::link::{Command, Link, Side};
use crate::settings::{Backoff, CONNECT_TIMEOUT, PING_EVERY, RESPONSE_TIMEOUT};

/// Starts the subscribing connection to instance `index`.
pub(crate) fn start(link: Arc<Link>, index: usize, client: redis::Client) {
    if let Some(commands) = link.take_commands(index) {
        tokio::spawn(run(link, index, client, commands));
    }
}

async fn run(
    link: Arc<Link>,
    index: usize,
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut stopped = link.stopped.subscribe();
    let mut backoff = Backoff::new();
    loop {
        let reason = tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => return,
            reason = serve(&link, index, &client, &mut commands, &mut backoff) => reason,
        };
        if link.is_stopped() {
            return;
        }
        link.set(index, Side::Subscriber, false, &reason);
        // The publishing connection has most likely lost the server too.
        link.check_publisher.notify_one();
        let wait = sleep(backoff.next());
        tokio::pin!(wait);
        loop {
            tokio::select! {
                biased;
                _ = stopped.wait_for(|s| *s) => return,
                _ = &mut wait => break,
                // Dropping a subscribe's reply fails its confirmation; the
                // channels stay desired and are subscribed on reconnect.
                command = commands.recv() => if command.is_none() { return },
            }
        }
    }
}

/// Subscribes (or unsubscribes) each channel with a request of its own, all
/// sent at the first poll, and waits for every confirmation.
async fn each(sink: &PubSubSink, channels: Vec<String>, subscribe: bool) -> Result<(), String> {
    let requests = channels.into_iter().map(|channel| {
        let mut sink = sink.clone();
        async move {
            if subscribe {
                sink.subscribe(channel).await
            } else {
                sink.unsubscribe(channel).await
            }
        }
    });
    match timeout(RESPONSE_TIMEOUT, join_all(requests)).await {
        Err(_) => Err("no confirmation of a subscription in time".into()),
        Ok(results) => match results.into_iter().find_map(Result::err) {
            Some(e) => Err(format!("subscribing failed: {e}")),
            None => Ok(()),
        },
    }
}

/// Connects, subscribes every desired channel, then reads until the
/// connection fails; returns why it ended.
async fn serve(
    link: &Arc<Link>,
    index: usize,
    client: &redis::Client,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    backoff: &mut Backoff,
) -> String {
    let pubsub = match timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await {
        Err(_) => return "connecting timed out".into(),
        Ok(Err(e)) => return format!("cannot connect: {e}"),
        Ok(Ok(pubsub)) => pubsub,
    };
    let (sink, mut stream) = pubsub.split();
    if let Err(reason) = each(&sink, link.desired(), true).await {
        return reason;
    }
    link.set(index, Side::Subscriber, true, "");
    backoff.reset();
    // Confirmations and pings in flight; an `Err` ends the connection.
    let mut pending: FuturesUnordered<BoxFuture<'static, Result<(), String>>> =
        FuturesUnordered::new();
    let mut ping = interval(PING_EVERY);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(message) => {
                    link.receive(message.get_channel_name(), message.get_payload_bytes())
                }
                None => return "the connection closed".into(),
            },
            command = commands.recv() => {
                let mut request: BoxFuture<'static, Result<(), String>> = match command {
                    None => return "stopped".into(),
                    Some(Command::Subscribe(channels, reply)) => {
                        let sink = sink.clone();
                        Box::pin(async move {
                            let result = each(&sink, channels, true).await;
                            let _ = reply.send(result.clone().map_err(SdkError::unavailable));
                            result
                        })
                    }
                    Some(Command::Unsubscribe(channels)) => {
                        let sink = sink.clone();
                        Box::pin(async move { each(&sink, channels, false).await })
                    }
                };
                // The first poll hands the requests to the connection, so
                // the next command's go after them.
                match poll_immediate(&mut request).await {
                    Some(Err(reason)) => return reason,
                    Some(Ok(())) => {}
                    None => pending.push(request),
                }
            },
            Some(result) = pending.next(), if !pending.is_empty() => {
                if let Err(reason) = result {
                    return reason;
                }
            },
            _ = ping.tick() => {
                let mut sink = sink.clone();
                pending.push(Box::pin(async move {
                    match timeout(RESPONSE_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(format!("PING failed: {e}")),
                        Err(_) => Err("no answer to PING".into()),
                    }
                }));
            },
        }
    }
}
