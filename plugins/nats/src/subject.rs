//! Which host channels are NATS subjects this plugin accepts, and the
//! 16-byte stamp it puts before each payload.

/// Bytes of the stamp: publisher id and sequence number, big-endian.
pub(crate) const STAMP: usize = 16;

/// A literal NATS subject: dot-separated non-empty tokens of printable,
/// non-space characters, and no wildcard tokens (`*`, `>`).
pub(crate) fn is_valid(subject: &str) -> bool {
    !subject.is_empty()
        && subject.split('.').all(|token| {
            !token.is_empty()
                && token != "*"
                && token != ">"
                && token.chars().all(|c| !c.is_whitespace() && !c.is_control())
        })
}

/// `payload` behind the stamp `(publisher, sequence)`.
pub(crate) fn stamp(publisher: u64, sequence: u64, payload: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(STAMP + payload.len());
    framed.extend_from_slice(&publisher.to_be_bytes());
    framed.extend_from_slice(&sequence.to_be_bytes());
    framed.extend_from_slice(payload);
    framed
}

/// The stamp and the payload behind it; `None` when too short to carry one
/// (not from a Mist node).
pub(crate) fn unstamp(framed: &[u8]) -> Option<((u64, u64), &[u8])> {
    let publisher = u64::from_be_bytes(framed.get(..8)?.try_into().ok()?);
    let sequence = u64::from_be_bytes(framed.get(8..STAMP)?.try_into().ok()?);
    Some(((publisher, sequence), &framed[STAMP..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        for good in ["mist.t.0af3", "a", "a-b_c.d"] {
            assert!(is_valid(good), "{good}");
        }
        for bad in [
            "", ".", "a.", ".a", "a..b", "a b", "a.*", ">", "a\n", "a.>.b",
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn stamps_round_trip_and_short_input_is_refused() {
        let framed = stamp(7, 9, b"data");
        assert_eq!(unstamp(&framed), Some(((7, 9), &b"data"[..])));
        assert_eq!(unstamp(&stamp(1, 2, b"")), Some(((1, 2), &b""[..])));
        for short in 0..STAMP {
            assert_eq!(unstamp(&vec![0; short]), None);
        }
    }
}
