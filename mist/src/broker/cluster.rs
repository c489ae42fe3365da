//! The broker as its cluster sees it: where messages from other nodes and
//! their token changes arrive (from the backplane plugin's reader thread).

use std::sync::{Arc, Weak};

use super::delivery::Delivery;
use super::protocol::TagSet;
use super::recheck::Rechecks;
use super::shared::Shared;
use crate::cluster::{Incoming, LocalBroker, TokenDigest};

/// What the cluster calls back into.
pub(crate) struct FromCluster {
    shared: Weak<Shared>,
    runtime: tokio::runtime::Handle,
    /// The token rechecks the cluster asked for, under way.
    rechecks: Arc<Rechecks>,
}

impl FromCluster {
    /// Holds the broker weakly (the cluster is the broker's, not the other
    /// way round); `runtime` runs the re-checks a token change asks for.
    pub(crate) fn new(shared: &Arc<Shared>, runtime: tokio::runtime::Handle) -> FromCluster {
        FromCluster {
            shared: Arc::downgrade(shared),
            runtime,
            rechecks: Arc::default(),
        }
    }
}

impl LocalBroker for FromCluster {
    fn deliver(&self, messages: &[Incoming<'_>]) -> usize {
        let Some(shared) = self.shared.upgrade() else {
            return 0; // the broker is gone: shutting down
        };
        let max_tags = shared.limits.max_tags;
        let mut delivery = Delivery::begin(&shared, Box::default());
        let mut last = None;
        let mut refused = 0;
        for message in messages {
            // No client could have published it here: not delivered.
            let Ok(tags) = TagSet::from_list(message.tags.iter(), max_tags) else {
                refused += 1;
                continue;
            };
            let same = last == Some(message.tags);
            delivery.remote(&tags, same, message.data);
            last = Some(message.tags);
        }
        delivery.finish();
        refused
    }

    fn token_changed(&self, digest: &TokenDigest) {
        // The store is asked on the host's runtime: the caller is the
        // plugin's reader, which must not wait.
        if let Some(shared) = self.shared.upgrade() {
            self.rechecks.spawn(&shared, digest.0, &self.runtime);
        }
    }

    fn recheck_all(&self) {
        if let Some(shared) = self.shared.upgrade() {
            self.rechecks.spawn_all(&shared, &self.runtime);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::broker::limits::Limits;
    use crate::broker::testing::{open_broker, Client};
    use crate::cluster::wire::{self, Body, Kind};

    #[tokio::test]
    async fn messages_over_the_tag_limit_are_refused_and_counted() {
        let shared = open_broker(Limits {
            max_tags: 2,
            ..Limits::default()
        });
        let user = Client::open(&shared, None);
        user.request(&[json!({"command": "subscribe", "tags": ["a"]})])
            .await;
        let mut body = Vec::new();
        wire::put_message(&mut body, &["a"], "\"1\"");
        wire::put_message(&mut body, &["a", "b", "c"], "\"three tags\"");
        wire::put_message(&mut body, &["a", "b"], "\"2\"");
        let count = wire::messages_count(3);
        let payload = wire::seal(Kind::Messages, 2, 1, 0, None, &[&count, &body]);
        let Body::Messages(messages) = wire::decode(&payload).expect("decodes").body else {
            panic!("not messages")
        };
        let local = FromCluster::new(&shared, tokio::runtime::Handle::current());
        assert_eq!(local.deliver(&messages), 1);
        let data: Vec<_> = user.received().iter().map(|l| l["data"].clone()).collect();
        assert_eq!(data, [json!("1"), json!("2")]);
    }
}
