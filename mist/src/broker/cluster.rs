//! The broker as its cluster sees it: where messages from other nodes and
//! their token changes arrive (from the backplane plugin's reader thread).

use std::sync::{Arc, Weak};

use super::delivery::Delivery;
use super::protocol::TagSet;
use super::shared::Shared;
use crate::cluster::{Incoming, LocalBroker, TokenDigest};

/// What the cluster calls back into.
pub(crate) struct FromCluster {
    shared: Weak<Shared>,
    runtime: tokio::runtime::Handle,
}

impl FromCluster {
    /// Holds the broker weakly (the cluster is the broker's, not the other
    /// way round); `runtime` runs the re-checks a token change asks for.
    pub(crate) fn new(shared: &Arc<Shared>, runtime: tokio::runtime::Handle) -> FromCluster {
        FromCluster {
            shared: Arc::downgrade(shared),
            runtime,
        }
    }
}

impl LocalBroker for FromCluster {
    fn deliver(&self, messages: &[Incoming<'_>]) {
        let Some(shared) = self.shared.upgrade() else {
            return; // the broker is gone: shutting down
        };
        let max_tags = shared.limits.max_tags;
        let mut delivery = Delivery::begin(&shared, Box::default());
        let mut last = None;
        for message in messages {
            // No client could have published it here: not delivered.
            let Ok(tags) = TagSet::from_list(message.tags.iter(), max_tags) else {
                continue;
            };
            let same = last == Some(message.tags);
            delivery.remote(&tags, same, message.data);
            last = Some(message.tags);
        }
        delivery.finish();
    }

    fn token_changed(&self, digest: &TokenDigest) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let key = digest.0;
        // The store is asked on the host's runtime: the caller is the
        // plugin's reader, which must not wait.
        self.runtime
            .spawn(async move { shared.recheck(&key).await });
    }
}
