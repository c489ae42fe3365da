//! The `cluster_payload` fuzz target (docs/fuzzing.md): what a stranger on
//! the cluster's backplane could publish, fed to a node's inbound checks
//! (`mist::cluster::Inbound::check`, the one entry point every payload a
//! node receives goes through), with invariants checked on every verdict.
//!
//! Called by `fuzz/fuzz_targets/cluster_payload.rs` and by
//! `tests/corpus.rs`, which replays the committed corpus on stable; it uses
//! only `mist`'s public API, `serde_json` and `tokio`'s `Instant`.
//!
//! # Input
//!
//! `[flags, chunk...]`. Flags: bit 0, the node has a cluster key; bit 1,
//! a small limit (200-byte lines; the tag count is the broker's to check,
//! with every tag set). Each chunk is
//! `[len_lo, len_hi, mode, bytes(len)...]` and becomes one payload:
//!
//! - mode & 3 = 0: `bytes` as they are;
//! - 1: sealed by the harness from `[kind, origin, seq_lo, seq_hi, skew,
//!   body...]` (kind byte % 10 picks the kind, / 10 % 3 the addressee:
//!   every node, this node or another; origin 1 is the node itself; skew
//!   × 500 ms from the node's
//!   clock), signed with the cluster key (with another key when mode bit 5
//!   is set, or unsigned when bit 6 is);
//! - 2: the same, then one byte (at `len_lo % payload length`) altered;
//! - 3: an earlier payload of this input again (`bytes[0]` picks which).
//!
//! Mode bits 2-4 move the node's clock on by that many × 1.7 s first.
//!
//! # Invariants
//!
//! - Nothing panics.
//! - Every message delivered has data that is exactly one JSON string
//!   (serde_json's reading, independently of the node's own check), and the
//!   delivery line the broker writes from it is one JSON object with
//!   `command`, `tags` and `data` only, without a raw newline, within the
//!   node's line limit.
//! - The node's own id is never acted on.
//! - With a key: only payloads signed with the key (their MAC computed
//!   again here), within the clock window, are acted on, and each
//!   (origin, number) at most once: no forgery, alteration or replay
//!   passes.
//! - Nothing silences a node: after the input, a node's fresh payloads
//!   (numbers no payload of the input used; with a key, above every number
//!   the node accepted) are each delivered once and their copies dropped.
//! - The node's data check agrees with serde_json on every chunk that is
//!   UTF-8 text (a differential test of `wire::is_json_string`).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mist::cluster::wire::{self, Kind};
use mist::cluster::{ClusterKeys, Inbound, MessageLimits, Verdict};
use tokio::time::Instant;

const ME: u64 = 1;
/// The node whose traffic must not be silenced.
const VICTIM: u64 = 2;
const START_MS: u64 = 1_800_000_000_000;
const KEY: &str = "the fuzzed cluster's key, 32 bytes or more";
const OTHER_KEY: &str = "a stranger's key, also 32 bytes or more";

/// One input (see the module's docs).
pub fn cluster_payload(input: &[u8]) {
    let Some((&flags, mut rest)) = input.split_first() else {
        return;
    };
    let keys = Arc::new(ClusterKeys::parse(KEY, Path::new("key")).expect("the key parses"));
    let other = ClusterKeys::parse(OTHER_KEY, Path::new("other")).expect("the key parses");
    let keyed = flags & 1 != 0;
    let limits = if flags & 2 != 0 {
        MessageLimits {
            max_message_bytes: 200,
        }
    } else {
        MessageLimits::default()
    };
    let mut node = Inbound::new(ME, keyed.then(|| keys.clone()), limits);
    let start = Instant::now();
    let mut clock_ms = 0u64;
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut acted: HashSet<(u64, u64, u64)> = HashSet::new();
    let mut numbers_used: HashMap<u64, HashSet<u64>> = HashMap::new();
    let mut top_acted: HashMap<u64, u64> = HashMap::new();

    while rest.len() >= 3 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let mode = rest[2];
        let bytes = &rest[3..(3 + len).min(rest.len())];
        rest = &rest[(3 + len).min(rest.len())..];
        clock_ms += u64::from((mode >> 2) & 7) * 1700;
        let wall_ms = START_MS + clock_ms;
        let now = start + Duration::from_millis(clock_ms);
        differential(bytes);

        let payload = match mode & 3 {
            0 => bytes.to_vec(),
            1 | 2 => {
                let Some(mut payload) = seal(bytes, mode, wall_ms, &keys, &other) else {
                    continue;
                };
                if mode & 3 == 2 && !payload.is_empty() {
                    let at = usize::from(rest.first().copied().unwrap_or(0)) % payload.len();
                    payload[at] ^= (len as u8) | 1;
                }
                payload
            }
            _ => match bytes.first() {
                Some(&i) if !sent.is_empty() => sent[usize::from(i) % sent.len()].clone(),
                _ => continue,
            },
        };
        let header = wire::open(&payload).ok().map(|s| s.header);
        if let Some(h) = header.filter(|h| h.to == 0) {
            numbers_used.entry(h.origin).or_default().insert(h.sequence);
        }
        let verdict = node.check(&payload, now, wall_ms);
        if header.is_some_and(|h| h.origin == ME) {
            assert_eq!(verdict, Verdict::Own, "the node's own id was acted on");
        }
        let acted_on = !matches!(verdict, Verdict::Own | Verdict::Copy | Verdict::Refused(_));
        if acted_on {
            let to = header.map_or(0, |h| h.to);
            assert!(to == 0 || to == ME, "acted on a payload for {to}");
        }
        if acted_on {
            let h = header.expect("acted on a payload whose header does not read");
            if keyed {
                // Signed with the key: computed here with `sign`, not with
                // the node's `verify`. (Raw bytes may be a payload sealed
                // with the key in another input: libFuzzer learns bytes
                // from comparisons. Authentic and new here, it may pass.)
                let sealed = wire::open(&payload).expect("it was read");
                assert!(
                    h.key_id == keys.signing_id()
                        && sealed.mac == Some(&keys.sign(sealed.signed)[..]),
                    "with a key, a payload not signed with it passed: {verdict:?}"
                );
                assert!(
                    h.time_ms.abs_diff(wall_ms) <= 30_000,
                    "with a key, a payload {} ms off the clock passed",
                    h.time_ms.abs_diff(wall_ms)
                );
                assert!(
                    acted.insert((h.origin, h.to, h.sequence)),
                    "with a key, a payload was acted on twice: {verdict:?}"
                );
            }
            if h.to == 0 {
                let top = top_acted.entry(h.origin).or_default();
                *top = (*top).max(h.sequence);
            }
        }
        if let Verdict::Messages { messages, .. } = &verdict {
            for message in messages {
                check_line(&message.tags.to_vec(), message.data, limits);
            }
        }
        sent.push(payload);
    }
    not_silenced(
        &mut node,
        keyed.then_some(&*keys),
        numbers_used.remove(&VICTIM).unwrap_or_default(),
        top_acted.get(&VICTIM).copied(),
        start + Duration::from_millis(clock_ms),
        START_MS + clock_ms,
    );
}

/// Seals `[kind, origin, seq_lo, seq_hi, skew, body...]` as mode says.
fn seal(
    bytes: &[u8],
    mode: u8,
    wall_ms: u64,
    keys: &ClusterKeys,
    other: &ClusterKeys,
) -> Option<Vec<u8>> {
    let (head, body) = bytes.split_at_checked(5)?;
    let kind = match head[0] % 10 {
        0 => Kind::Messages,
        1 => Kind::Heartbeat,
        2 => Kind::TokenChanged,
        3 => Kind::Leaving,
        4 => Kind::RecheckAll,
        5 => Kind::Hello,
        6 => Kind::Interest,
        7 => Kind::Snapshot,
        8 => Kind::SnapshotRequest,
        _ => Kind::Ack,
    };
    // Addressed to every node, to this one, or to another.
    let to = match head[0] / 10 % 3 {
        0 => 0,
        1 => ME,
        _ => ME + 1,
    };
    let origin = u64::from(head[1] % 4) + 1;
    let sequence = u64::from(u16::from_le_bytes([head[2], head[3]]));
    let skew = i64::from(head[4] as i8) * 500;
    let time = wall_ms.checked_add_signed(skew)?;
    let signer = if mode & 0x40 != 0 {
        None
    } else if mode & 0x20 != 0 {
        Some(other)
    } else {
        Some(keys)
    };
    Some(wire::seal_to(
        kind,
        origin,
        to,
        sequence,
        time,
        signer,
        &[body],
    ))
}

/// The delivery line the broker writes for a message (tags written by
/// serde_json, data copied raw: `broker::protocol::delivery_prefix` and
/// `delivery_rest`) must be one JSON object of the protocol's fields.
fn check_line(tags: &[String], data: &str, limits: MessageLimits) {
    assert!(
        serde_json::from_str::<String>(data).is_ok()
            && data.starts_with('"')
            && data.ends_with('"'),
        "data delivered that is not exactly one JSON string: {data:?}"
    );
    assert!(!tags.is_empty() && tags.iter().all(|t| !t.is_empty()));
    let line = format!(
        "{{\"command\":\"publish\",\"tags\":{},\"data\":{data}}}",
        serde_json::to_string(tags).expect("tags serialize")
    );
    assert!(!line.contains('\n'), "a raw newline in {line:?}");
    assert!(
        line.len() < limits.max_message_bytes,
        "a line of {} bytes",
        line.len()
    );
    let value: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?} does not parse: {e}"));
    let object = value.as_object().expect("one JSON object");
    assert_eq!(object.len(), 3, "{line}");
    assert_eq!(object["command"], "publish");
    assert_eq!(object["tags"], serde_json::json!(tags));
    assert!(object["data"].is_string(), "{line}");
}

/// The node's data check and serde_json agree on `bytes` read as text.
fn differential(bytes: &[u8]) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let serde = serde_json::from_str::<String>(text).is_ok()
            && text.starts_with('"')
            && text.ends_with('"');
        assert_eq!(
            wire::is_json_string(text),
            serde,
            "the data check and serde_json disagree on {text:?}"
        );
    }
}

/// After the input, the victim's own fresh payloads get through, once.
fn not_silenced(
    node: &mut Inbound,
    keys: Option<&ClusterKeys>,
    used: HashSet<u64>,
    top_acted: Option<u64>,
    now: Instant,
    wall_ms: u64,
) {
    const FRESH: u64 = 40;
    let first = match keys {
        // Above everything the node accepted from it (authentic numbers
        // may rise; anything else cannot have moved its window).
        Some(_) => top_acted.map_or(1, |top| top.saturating_add(1)),
        // Numbers no payload of the input used.
        None => (0u64..)
            .map(|k| (k << 20) | 1)
            .find(|base| (*base..base + FRESH).all(|n| !used.contains(&n)))
            .expect("a free range"),
    };
    if first.checked_add(FRESH).is_none() {
        return; // the input's own authentic numbers reached the top
    }
    let mut body = Vec::new();
    wire::put_message(&mut body, &["victim"], "\"fresh\"");
    let count = wire::messages_count(1);
    for n in first..first + FRESH {
        let payload = wire::seal(Kind::Messages, VICTIM, n, wall_ms, keys, &[&count, &body]);
        match node.check(&payload, now, wall_ms) {
            Verdict::Messages { messages, .. } => assert_eq!(messages.len(), 1),
            other => panic!("the victim's fresh payload {n} got {other:?}"),
        }
        assert_eq!(
            node.check(&payload, now, wall_ms),
            Verdict::Copy,
            "a copy of the victim's payload {n} passed"
        );
    }
}
