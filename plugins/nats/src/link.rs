//! The connection and what the host's calls and the two tasks share.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::{ConnectOptions, Event, Subscriber};
use mist_sdk::{Confirmation, Inbox, Outbox, SdkError};
use tokio::sync::{mpsc, oneshot, watch};

use crate::settings::{
    backoff, Credentials, Settings, CONNECT_TIMEOUT, PING_EVERY, RESPONSE_TIMEOUT,
    SUBSCRIPTION_CAPACITY,
};
use crate::subject::{self, STAMP};

/// Work for the reader task, in call order: subscription changes and the
/// client's connection events.
pub(crate) enum Command {
    /// Subscribe; confirm through the sender (absent while down).
    Subscribe(Vec<String>, Option<oneshot::Sender<Result<(), SdkError>>>),
    Unsubscribe(Vec<String>),
    Event(Event),
    Stop,
}

struct State {
    /// Connected, and a probe made the round trip since.
    up: bool,
    /// Why not, for `health`.
    reason: String,
}

pub(crate) struct Link {
    pub(crate) client: async_nats::Client,
    pub(crate) inbox: Inbox,
    /// Bounded by the URI's `buffer`: when full, `publish` is refused and
    /// the host counts the payload as dropped. Open while up.
    pub(crate) outbox: Outbox,
    /// `host:port` (each server's, comma-separated), for messages.
    pub(crate) place: String,
    /// This connection's id in the stamp of what it publishes.
    pub(crate) publisher: u64,
    /// The subject this connection's probes go to (and come back on).
    pub(crate) probe_subject: String,
    /// The server's largest payload, once known (0 before).
    pub(crate) max_payload: AtomicUsize,
    commands: mpsc::UnboundedSender<Command>,
    state: Mutex<State>,
    /// Serialises reports to the host, made outside `state`'s lock.
    report: Mutex<()>,
    up: watch::Sender<bool>,
    pub(crate) stopped: watch::Sender<bool>,
    /// Set by the writer once it has sent what was queued at `stop`: the
    /// reader closes the connection only then.
    pub(crate) writer_done: watch::Sender<bool>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is one step.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A random 64-bit id: std's randomly keyed hasher over the time and the
/// process id.
fn random_id() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(now);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

impl Link {
    /// Connects (in the background: the client retries), and returns the
    /// link with what the reader task takes over (its work queue and the
    /// probe subscription); the caller starts the tasks.
    pub(crate) async fn connect(
        settings: &Settings,
        inbox: Inbox,
    ) -> Result<(Arc<Link>, mpsc::UnboundedReceiver<Command>, Subscriber), SdkError> {
        let (commands, queue) = mpsc::unbounded_channel();
        let events = commands.clone();
        let options = match &settings.credentials {
            None => ConnectOptions::new(),
            Some(Credentials::UserAndPassword(user, pass)) => {
                ConnectOptions::with_user_and_password(user.clone(), pass.clone())
            }
            Some(Credentials::Token(token)) => ConnectOptions::with_token(token.clone()),
        };
        // With several servers the client tries them in a random order (so
        // the nodes spread over the cluster), learns the cluster's other
        // servers from the one it reaches, and on a failure goes on to the
        // next with the same backoff, sending every `SUB` again there.
        let options = options
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(backoff)
            .connection_timeout(CONNECT_TIMEOUT)
            .ping_interval(PING_EVERY)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .event_callback(move |event| {
                let _ = events.send(Command::Event(event));
                async {}
            });
        let client = options
            .connect(settings.servers.clone())
            .await
            .map_err(|e| {
                SdkError::invalid_input(format!("cannot use NATS at {}: {e}", settings.place))
            })?;
        let publisher = random_id();
        let probe_subject = format!("_MIST.probe.{publisher:016x}");
        // Queued in the client until it is connected, then sent first.
        let probes = client
            .subscribe(probe_subject.clone())
            .await
            .map_err(|e| SdkError::unavailable(format!("NATS at {}: {e}", settings.place)))?;
        let link = Arc::new(Link {
            client,
            inbox,
            outbox: Outbox::new(settings.buffer),
            place: settings.place.clone(),
            publisher,
            probe_subject,
            max_payload: AtomicUsize::new(0),
            commands,
            state: Mutex::new(State {
                up: false,
                reason: "not connected yet".into(),
            }),
            report: Mutex::new(()),
            up: watch::Sender::new(false),
            stopped: watch::Sender::new(false),
            writer_done: watch::Sender::new(false),
        });
        Ok((link, queue, probes))
    }

    pub(crate) fn subscribe(&self, channels: Vec<String>) -> Confirmation {
        if let Some(bad) = channels.iter().find(|c| !subject::is_valid(c)) {
            let e = SdkError::invalid_input(format!("{bad:?} is not a NATS subject"));
            return Box::pin(async move { Err(e) });
        }
        if !lock(&self.state).up {
            // The client keeps the subscription and sends it on reconnect.
            let _ = self.commands.send(Command::Subscribe(channels, None));
            let e = self.unavailable();
            return Box::pin(async move { Err(e) });
        }
        let (reply, confirmed) = oneshot::channel();
        if self
            .commands
            .send(Command::Subscribe(channels, Some(reply)))
            .is_err()
        {
            return Box::pin(async { Err(SdkError::unavailable("the backplane is stopped")) });
        }
        let place = self.place.clone();
        Box::pin(async move {
            match tokio::time::timeout(RESPONSE_TIMEOUT, confirmed).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(SdkError::unavailable(format!(
                    "lost NATS at {place} before it confirmed the subscription"
                ))),
                Err(_) => Err(SdkError::unavailable(format!(
                    "NATS at {place} did not confirm the subscription in time"
                ))),
            }
        })
    }

    pub(crate) fn unsubscribe(&self, channels: Vec<String>) {
        let _ = self.commands.send(Command::Unsubscribe(channels));
    }

    pub(crate) fn publish(&self, channels: Vec<String>, payload: Vec<u8>) -> Result<(), SdkError> {
        let max = self.max_payload.load(Ordering::Relaxed);
        if max > 0 && payload.len() + STAMP > max {
            return Err(SdkError::too_large(format!(
                "a backplane payload of {} bytes is over NATS's max_payload ({max})",
                payload.len() + STAMP
            )));
        }
        if let Some(bad) = channels.iter().find(|c| !subject::is_valid(c)) {
            return Err(SdkError::invalid_input(format!(
                "{bad:?} is not a NATS subject"
            )));
        }
        self.outbox.push(channels, payload)
    }

    fn unavailable(&self) -> SdkError {
        let reason = lock(&self.state).reason.clone();
        SdkError::unavailable(format!("NATS at {}: {reason}", self.place))
    }

    pub(crate) fn health(&self) -> Result<(), SdkError> {
        if lock(&self.state).up {
            Ok(())
        } else {
            Err(self.unavailable())
        }
    }

    /// Records that the link is up or down (with why) and tells the host
    /// when that changed.
    pub(crate) fn set(&self, up: bool, reason: &str) {
        let _reporting = lock(&self.report);
        let changed = {
            let mut state = lock(&self.state);
            if !up {
                state.reason = reason.to_string();
            }
            std::mem::replace(&mut state.up, up) != up
        };
        if changed {
            if up {
                self.outbox.open();
                tracing::info!("connected to NATS at {}", self.place);
            } else {
                let dropped = self.outbox.close(reason);
                tracing::warn!(
                    "lost NATS at {}: {reason}; {dropped} queued payloads dropped",
                    self.place
                );
            }
            self.inbox.connection(up);
            self.up.send_replace(up);
        }
    }

    pub(crate) async fn wait_up(&self) {
        let mut up = self.up.subscribe();
        let _ = up.wait_for(|up| *up).await;
    }

    /// Stops: no more publishes are taken; what is queued still goes
    /// (the writer sends it, for a moment), then the reader closes.
    pub(crate) fn stop(&self) {
        self.outbox.finish("the backplane is stopped");
        if !self.stopped.send_replace(true) {
            let _ = self.commands.send(Command::Stop);
        }
    }
}
