//! What the two connection tasks and the host's calls share: the set of
//! channels wanted, the outgoing queue, and whether each side is up.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use mist_sdk::{Confirmation, Inbox, Outbox, SdkError};
use tokio::sync::{mpsc, oneshot, watch, Notify};

/// A change of subscriptions, for the subscribing connection's task, in
/// call order.
pub(crate) enum Command {
    Subscribe(Vec<String>, oneshot::Sender<Result<(), SdkError>>),
    Unsubscribe(Vec<String>),
}

/// Which connection a state change is about.
#[derive(Clone, Copy)]
pub(crate) enum Side {
    Subscriber,
    Publisher,
}

#[derive(Default)]
struct State {
    subscriber_up: bool,
    publisher_up: bool,
    /// What the host was last told.
    reported: bool,
    /// Why the link is down, for `health`.
    reason: String,
}

pub(crate) struct Link {
    pub(crate) inbox: Inbox,
    /// Bounded by the URI's `buffer`: when full, `publish` is refused and
    /// the host counts the payload as dropped. Open while the publishing
    /// connection is up.
    pub(crate) outbox: Outbox,
    /// `host:port`, for messages.
    pub(crate) place: String,
    /// Every channel the host holds: subscribed again after a reconnect.
    desired: Mutex<HashSet<String>>,
    commands: mpsc::UnboundedSender<Command>,
    commands_rx: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    state: Mutex<State>,
    /// Serialises reports to the host, which happen outside `state`'s lock
    /// so that the host may call back in.
    report: Mutex<()>,
    up: watch::Sender<bool>,
    /// Set once by `stop`; every task ends when it sees it.
    pub(crate) stopped: watch::Sender<bool>,
    /// Asks the publishing connection to check itself now (the subscribing
    /// one just lost the server).
    pub(crate) check_publisher: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is one step: a panic elsewhere cannot
    // leave them half done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Link {
    pub(crate) fn new(inbox: Inbox, buffer: usize, place: String) -> Arc<Link> {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        Arc::new(Link {
            inbox,
            outbox: Outbox::new(buffer),
            place,
            desired: Mutex::new(HashSet::new()),
            commands,
            commands_rx: Mutex::new(Some(commands_rx)),
            state: Mutex::new(State {
                reason: "not connected yet".into(),
                ..State::default()
            }),
            report: Mutex::new(()),
            up: watch::Sender::new(false),
            stopped: watch::Sender::new(false),
            check_publisher: Notify::new(),
        })
    }

    /// The command queue, for the subscribing task (once).
    pub(crate) fn take_commands(&self) -> Option<mpsc::UnboundedReceiver<Command>> {
        lock(&self.commands_rx).take()
    }

    /// The channels to subscribe after connecting.
    pub(crate) fn desired(&self) -> Vec<String> {
        lock(&self.desired).iter().cloned().collect()
    }

    pub(crate) fn subscribe(&self, channels: Vec<String>) -> Confirmation {
        lock(&self.desired).extend(channels.iter().cloned());
        if !lock(&self.state).subscriber_up {
            let e = self.unavailable();
            return Box::pin(async move { Err(e) });
        }
        let (reply, confirmed) = oneshot::channel();
        if self
            .commands
            .send(Command::Subscribe(channels, reply))
            .is_err()
        {
            return Box::pin(async { Err(SdkError::unavailable("the backplane is stopped")) });
        }
        let place = self.place.clone();
        Box::pin(async move {
            confirmed.await.unwrap_or_else(|_| {
                Err(SdkError::unavailable(format!(
                    "lost Redis at {place} before it confirmed the subscription"
                )))
            })
        })
    }

    pub(crate) fn unsubscribe(&self, channels: Vec<String>) {
        {
            let mut desired = lock(&self.desired);
            for channel in &channels {
                desired.remove(channel);
            }
        }
        // While down there is nothing to undo on the server: the next
        // connection subscribes only what is still desired.
        let _ = self.commands.send(Command::Unsubscribe(channels));
    }

    fn unavailable(&self) -> SdkError {
        let reason = lock(&self.state).reason.clone();
        SdkError::unavailable(format!("Redis at {}: {reason}", self.place))
    }

    pub(crate) fn health(&self) -> Result<(), SdkError> {
        let state = lock(&self.state);
        if state.subscriber_up && state.publisher_up {
            Ok(())
        } else {
            Err(SdkError::unavailable(format!(
                "Redis at {}: {}",
                self.place, state.reason
            )))
        }
    }

    /// Records that `side` is up or down (with why), and tells the host
    /// when the link as a whole changed.
    pub(crate) fn set(&self, side: Side, up: bool, reason: &str) {
        let _reporting = lock(&self.report);
        let change = {
            let mut state = lock(&self.state);
            match side {
                Side::Subscriber => state.subscriber_up = up,
                Side::Publisher => state.publisher_up = up,
            }
            if !up {
                state.reason = reason.to_string();
            }
            let now = state.subscriber_up && state.publisher_up;
            (now != state.reported).then(|| {
                state.reported = now;
                now
            })
        };
        if let Some(now) = change {
            if now {
                tracing::info!("connected to Redis at {}", self.place);
            } else {
                tracing::warn!("lost Redis at {}: {reason}", self.place);
            }
            self.inbox.connection(now);
            self.up.send_replace(now);
        }
    }

    /// Waits until both connections are up.
    pub(crate) async fn wait_up(&self) {
        let mut up = self.up.subscribe();
        let _ = up.wait_for(|up| *up).await;
    }

    /// Stops: no more publishes are taken, what is queued still goes
    /// (the publishing task sends it, for a moment, before it ends).
    pub(crate) fn stop(&self) {
        self.outbox.finish("the backplane is stopped");
        self.stopped.send_replace(true);
    }

    pub(crate) fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }
}
