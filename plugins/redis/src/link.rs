//! What the connection tasks and the host's calls share: the set of
//! channels wanted, the outgoing queue, and whether each instance's two
//! connections are up.
//!
//! With several instances the link is up, for the host, while at least one
//! instance has both connections up: every channel is subscribed on every
//! instance, so each of them alone carries every node's traffic.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use futures_util::future::join_all;
use mist_sdk::{Confirmation, Inbox, Outbox, SdkError};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::settings::HOLD_OFF;

/// A change of subscriptions, for one subscribing connection's task, in
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
struct Instance {
    subscriber_up: bool,
    publisher_up: bool,
    /// Since when both connections are up.
    up_since: Option<Instant>,
    /// Why it is down, for `health`.
    reason: String,
}

impl Instance {
    fn up(&self) -> bool {
        self.subscriber_up && self.publisher_up
    }
}

struct State {
    instances: Vec<Instance>,
    /// What the host was last told.
    reported: bool,
    /// Whether the outbox is open (some publishing connection is up).
    open: bool,
}

pub(crate) struct Link {
    pub(crate) inbox: Inbox,
    /// Bounded by the URI's `buffer`: when full, `publish` is refused and
    /// the host counts the payload as dropped. Open while a publishing
    /// connection is up.
    pub(crate) outbox: Outbox,
    /// Each instance's `host:port`, for messages.
    pub(crate) places: Vec<String>,
    /// Every channel the host holds: subscribed again after a reconnect.
    desired: Mutex<HashSet<String>>,
    /// Each instance's subscribing task's queue.
    commands: Vec<mpsc::UnboundedSender<Command>>,
    commands_rx: Mutex<Vec<Option<mpsc::UnboundedReceiver<Command>>>>,
    state: Mutex<State>,
    /// Serialises reports to the host, which happen outside `state`'s lock
    /// so that the host may call back in.
    report: Mutex<()>,
    /// Serialises `Inbox::receive` when several instances' tasks read.
    receiving: Mutex<()>,
    up: watch::Sender<bool>,
    /// Set once by `stop`; every task ends when it sees it.
    pub(crate) stopped: watch::Sender<bool>,
    /// Asks the publishing connections to check themselves now (a
    /// subscribing one just lost its server).
    pub(crate) check_publisher: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is one step: a panic elsewhere cannot
    // leave them half done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Link {
    pub(crate) fn new(inbox: Inbox, buffer: usize, places: Vec<String>) -> Arc<Link> {
        let (commands, receivers): (Vec<_>, Vec<_>) = places
            .iter()
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                (tx, Some(rx))
            })
            .unzip();
        let instances = places
            .iter()
            .map(|_| Instance {
                reason: "not connected yet".into(),
                ..Instance::default()
            })
            .collect();
        Arc::new(Link {
            inbox,
            outbox: Outbox::new(buffer),
            places,
            desired: Mutex::new(HashSet::new()),
            commands,
            commands_rx: Mutex::new(receivers),
            state: Mutex::new(State {
                instances,
                reported: false,
                open: false,
            }),
            report: Mutex::new(()),
            receiving: Mutex::new(()),
            up: watch::Sender::new(false),
            stopped: watch::Sender::new(false),
            check_publisher: Notify::new(),
        })
    }

    /// Instance `index`'s command queue, for its subscribing task (once).
    pub(crate) fn take_commands(&self, index: usize) -> Option<mpsc::UnboundedReceiver<Command>> {
        lock(&self.commands_rx).get_mut(index)?.take()
    }

    /// The channels to subscribe after connecting.
    pub(crate) fn desired(&self) -> Vec<String> {
        lock(&self.desired).iter().cloned().collect()
    }

    /// Hands a payload to the host: one task at a time.
    pub(crate) fn receive(&self, channel: &str, payload: &[u8]) {
        if self.places.len() == 1 {
            self.inbox.receive(channel, payload);
        } else {
            let _one = lock(&self.receiving);
            self.inbox.receive(channel, payload);
        }
    }

    /// Subscribes on every instance whose subscribing connection is up;
    /// confirmed once each of them confirmed, or failed (a failure ends
    /// that instance's connection: it subscribes every channel again
    /// before it counts as up, and carries nothing meanwhile).
    pub(crate) fn subscribe(&self, channels: Vec<String>) -> Confirmation {
        lock(&self.desired).extend(channels.iter().cloned());
        let up: Vec<usize> = {
            let state = lock(&self.state);
            (0..state.instances.len())
                .filter(|&i| state.instances[i].subscriber_up)
                .collect()
        };
        if up.is_empty() {
            let e = self.unavailable();
            return Box::pin(async move { Err(e) });
        }
        let mut confirmations = Vec::with_capacity(up.len());
        for i in up {
            let (reply, confirmed) = oneshot::channel();
            if self.commands[i]
                .send(Command::Subscribe(channels.clone(), reply))
                .is_ok()
            {
                confirmations.push((self.places[i].clone(), confirmed));
            }
        }
        if confirmations.is_empty() {
            return Box::pin(async { Err(SdkError::unavailable("the backplane is stopped")) });
        }
        Box::pin(async move {
            let results = join_all(confirmations.into_iter().map(
                |(place, confirmed)| async move {
                    confirmed.await.unwrap_or_else(|_| {
                        Err(SdkError::unavailable(format!(
                            "lost Redis at {place} before it confirmed the subscription"
                        )))
                    })
                },
            ))
            .await;
            let mut first_error = None;
            let mut confirmed = false;
            for result in results {
                match result {
                    Ok(()) => confirmed = true,
                    Err(e) => first_error = first_error.or(Some(e)),
                }
            }
            match first_error {
                Some(e) if !confirmed => Err(e),
                _ => Ok(()),
            }
        })
    }

    pub(crate) fn unsubscribe(&self, channels: Vec<String>) {
        {
            let mut desired = lock(&self.desired);
            for channel in &channels {
                desired.remove(channel);
            }
        }
        // While an instance is down there is nothing to undo there: its
        // next connection subscribes only what is still desired.
        for commands in &self.commands {
            let _ = commands.send(Command::Unsubscribe(channels.clone()));
        }
    }

    fn unavailable(&self) -> SdkError {
        let state = lock(&self.state);
        SdkError::unavailable(self.why(&state))
    }

    /// Why no instance is up: each one's reason.
    fn why(&self, state: &State) -> String {
        let reasons: Vec<String> = state
            .instances
            .iter()
            .zip(&self.places)
            .map(|(instance, place)| format!("Redis at {place}: {}", instance.reason))
            .collect();
        reasons.join("; ")
    }

    pub(crate) fn health(&self) -> Result<(), SdkError> {
        let state = lock(&self.state);
        if state.instances.iter().any(Instance::up) {
            Ok(())
        } else {
            Err(SdkError::unavailable(self.why(&state)))
        }
    }

    /// The instances to publish through at `now`, in index order: those
    /// with both connections up for [`HOLD_OFF`] (an instance that came
    /// back waits that long, so that every node has subscribed there again
    /// before anyone publishes there); when there are none, those up at
    /// all; when there are none, those whose publishing connection is up.
    pub(crate) fn usable(&self, now: Instant) -> Vec<usize> {
        let state = lock(&self.state);
        let all = &state.instances;
        let settled: Vec<usize> = (0..all.len())
            .filter(|&i| all[i].up_since.is_some_and(|t| now >= t + HOLD_OFF))
            .collect();
        if !settled.is_empty() {
            return settled;
        }
        let up: Vec<usize> = (0..all.len()).filter(|&i| all[i].up()).collect();
        if !up.is_empty() {
            return up;
        }
        (0..all.len()).filter(|&i| all[i].publisher_up).collect()
    }

    /// Records that instance `index`'s `side` is up or down (with why),
    /// and tells the host when the link as a whole changed.
    pub(crate) fn set(&self, index: usize, side: Side, up: bool, reason: &str) {
        let _reporting = lock(&self.report);
        let place = self.places.get(index).map_or("?", String::as_str);
        let (instance_change, host_change, outbox_change) = {
            let mut state = lock(&self.state);
            let Some(instance) = state.instances.get_mut(index) else {
                return;
            };
            let was = instance.up();
            match side {
                Side::Subscriber => instance.subscriber_up = up,
                Side::Publisher => instance.publisher_up = up,
            }
            if !up {
                instance.reason = reason.to_string();
            }
            let now = instance.up();
            if now && !was {
                instance.up_since = Some(Instant::now());
            } else if !now {
                instance.up_since = None;
            }
            let instance_change = (now != was).then_some(now);
            let any_up = state.instances.iter().any(Instance::up);
            let host_change = (any_up != state.reported).then(|| {
                state.reported = any_up;
                any_up
            });
            let any_publisher = state.instances.iter().any(|i| i.publisher_up);
            let outbox_change = (any_publisher != state.open).then(|| {
                state.open = any_publisher;
                any_publisher
            });
            (instance_change, host_change, outbox_change)
        };
        match outbox_change {
            Some(true) => self.outbox.open(),
            Some(false) => {
                let dropped = self.outbox.close(reason);
                if dropped > 0 {
                    tracing::warn!("dropped {dropped} payloads queued for Redis: {reason}");
                }
            }
            None => {}
        }
        match instance_change {
            Some(true) => tracing::info!("connected to Redis at {place}"),
            Some(false) => tracing::warn!("lost Redis at {place}: {reason}"),
            None => {}
        }
        if let Some(now) = host_change {
            if self.places.len() > 1 {
                if now {
                    tracing::info!("the Redis backplane is up again (through {place})");
                } else {
                    tracing::warn!("every Redis instance of the backplane is down");
                }
            }
            self.inbox.connection(now);
            self.up.send_replace(now);
        }
    }

    /// Waits until some instance has both connections up.
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
