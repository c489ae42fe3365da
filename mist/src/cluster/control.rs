//! Token changes waiting for the backplane: kept (each once) until the
//! backplane has taken them, so that a revocation is never lost to an
//! outage or a full queue (docs/cluster.md, "Revocation").

use std::collections::HashSet;

/// Distinct token changes kept for the backplane at most; past it the node
/// asks every node to recheck every token instead (one payload).
pub(super) const MAX_PENDING_TOKENS: usize = 4096;

/// Token changes waiting for the backplane.
#[derive(Default)]
pub(super) struct Control {
    /// Digests of changed tokens, each once. Overflow policy: past
    /// [`MAX_PENDING_TOKENS`] they are replaced by `recheck_all`.
    digests: HashSet<[u8; 32]>,
    /// Ask every node to recheck every token.
    recheck_all: bool,
}

impl Control {
    pub(super) fn add(&mut self, digest: [u8; 32]) {
        if self.recheck_all || self.digests.contains(&digest) {
            return; // covered already
        }
        if self.digests.len() >= MAX_PENDING_TOKENS {
            self.digests.clear();
            self.recheck_all = true;
            return;
        }
        self.digests.insert(digest);
    }

    pub(super) fn take(&mut self) -> (Vec<[u8; 32]>, bool) {
        (
            self.digests.drain().collect(),
            std::mem::take(&mut self.recheck_all),
        )
    }

    pub(super) fn put_back(&mut self, digests: impl IntoIterator<Item = [u8; 32]>, all: bool) {
        if all {
            // Covers every token: the digests need not go.
            self.recheck_all = true;
            self.digests.clear();
            return;
        }
        for digest in digests {
            self.add(digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_bound_token_changes_become_one_recheck_of_everything() {
        let digest = |i: u32| {
            let mut d = [0u8; 32];
            d[..4].copy_from_slice(&i.to_be_bytes());
            d
        };
        let mut control = Control::default();
        for i in 0..MAX_PENDING_TOKENS as u32 {
            control.add(digest(i));
            control.add(digest(i)); // each once
        }
        let (digests, all) = control.take();
        assert_eq!((digests.len(), all), (MAX_PENDING_TOKENS, false));
        for i in 0..=MAX_PENDING_TOKENS as u32 {
            control.add(digest(i));
        }
        let (digests, all) = control.take();
        assert!(digests.is_empty() && all);
        // Put back after a refusal: kept as they were.
        control.put_back([digest(1)], false);
        control.put_back([], true);
        let (digests, all) = control.take();
        assert!(
            digests.is_empty() && all,
            "covered by the recheck of everything"
        );
    }
}
