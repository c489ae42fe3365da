//! The subscription index: which sessions hold a subscription whose tags
//! are all among a message's tags.
//!
//! Tags are interned to small integer ids, and identical tag sets share one
//! *group* holding the sessions subscribed to it. Each group is filed by its
//! rarest tags (the ones the fewest groups contain): under its rarest tag
//! in a per-tag [`roaring::RoaringBitmap`], and, if it has two or more tags,
//! under the pair of its two rarest tags in a pair index. A message M is
//! matched either by probing the pair index with each pair of M's tags, or
//! by scanning the per-tag bitmaps of M's tags, whichever is cheaper for M;
//! each candidate group is then checked (its tags ⊆ M). Either way the cost
//! follows the subscriptions that share M's tags, not all subscriptions.
//!
//! Why the rarest tags: filing a group under each of its tags would make a
//! message carrying a popular tag visit every group mentioning that tag,
//! most of which need some other tag the message lacks. A group filed under
//! its two rarest tags is visited only by messages carrying both, which are
//! few. A matching group's key tags are necessarily in M, so nothing is
//! missed; and unlike a prefix trie over sorted tags there is no order to
//! get wrong: `[b,d]` matches `[a,b,d]`.
//!
//! ```
//! use mist::tags::{Index, MatchScratch};
//!
//! let mut index = Index::new();
//! index.subscribe(1, &["a", "c"]);
//! index.subscribe(2, &["d", "b"]);
//! let (mut scratch, mut out) = (MatchScratch::default(), Vec::new());
//! index.matches(&["a", "b", "d"], None, &mut scratch, &mut out);
//! assert_eq!(out, [2]);
//! ```
//!
//! This module knows nothing of sessions beyond their `u32` ids, and does no
//! I/O: the broker owns the locking.

mod index;
mod intern;
mod members;
#[cfg(test)]
mod tests;

pub use index::{Index, MatchScratch};
