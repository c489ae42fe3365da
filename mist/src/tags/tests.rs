use std::collections::BTreeSet;

use proptest::prelude::*;

use super::{Index, MatchScratch};

fn matched(index: &Index, tags: &[&str], exclude: Option<u32>) -> Vec<u32> {
    let mut out = Vec::new();
    index.matches(tags, exclude, &mut MatchScratch::default(), &mut out);
    out.sort_unstable();
    out
}

#[test]
fn the_seeds_table() {
    let mut index = Index::new();
    index.subscribe(1, &["onefish"]);
    index.subscribe(2, &["onefish", "twofish"]);
    index.subscribe(3, &["onefish", "twofish", "redfish"]);
    assert_eq!(matched(&index, &["onefish"], None), [1]);
    assert_eq!(matched(&index, &["onefish", "twofish"], None), [1, 2]);
    assert_eq!(
        matched(&index, &["onefish", "twofish", "redfish"], None),
        [1, 2, 3]
    );
    assert_eq!(
        matched(&index, &["twofish", "redfish"], None),
        Vec::<u32>::new()
    );
}

#[test]
fn what_a_prefix_trie_gets_wrong() {
    let mut index = Index::new();
    index.subscribe(1, &["a", "c"]);
    index.subscribe(2, &["b", "d"]);
    assert_eq!(matched(&index, &["a", "b", "d"], None), [2]);
    // Both held by one session: delivered once.
    index.subscribe(2, &["a", "c"]);
    assert_eq!(matched(&index, &["a", "b", "c", "d"], None), [1, 2]);
    assert_eq!(matched(&index, &["d", "c", "b", "a", "a"], Some(1)), [2]);
}

#[test]
fn duplicates_and_order_do_not_matter() {
    let mut index = Index::new();
    assert!(index.subscribe(1, &["b", "a", "b"]));
    assert!(
        !index.subscribe(1, &["a", "b"]),
        "the same set twice is one subscription"
    );
    assert_eq!(index.len(), 1);
    assert!(!index.subscribe(1, &[] as &[&str]));
    assert_eq!(matched(&index, &["a", "a", "x", "b"], None), [1]);
    assert_eq!(index.subscriptions(1), [["a", "b"]]);
}

#[test]
fn exclusion_and_exactly_once() {
    let mut index = Index::new();
    for session in 0..3 {
        index.subscribe(session, &["a"]);
        index.subscribe(session, &["a", "b"]);
        index.subscribe(session, &["b"]);
    }
    assert_eq!(matched(&index, &["a", "b"], Some(1)), [0, 2]);
}

#[test]
fn unsubscribe_removes_exactly_that_set() {
    let mut index = Index::new();
    index.subscribe(1, &["a"]);
    index.subscribe(1, &["a", "b"]);
    assert!(!index.unsubscribe(1, &["b"]));
    assert!(!index.unsubscribe(2, &["a"]));
    assert!(!index.unsubscribe(1, &["never", "seen"]));
    assert!(index.unsubscribe(1, &["b", "a"]));
    assert_eq!(index.subscriptions(1), [["a"]]);
    assert_eq!(matched(&index, &["a", "b"], None), [1]);
    assert_eq!(index.len(), 1);
}

#[test]
fn subscriptions_are_sorted() {
    let mut index = Index::new();
    index.subscribe(4, &["c"]);
    index.subscribe(4, &["b", "a"]);
    index.subscribe(4, &["a"]);
    assert_eq!(
        index.subscriptions(4),
        vec![vec!["a"], vec!["a", "b"], vec!["c"]]
    );
    assert!(index.subscriptions(5).is_empty());
}

#[test]
fn removing_a_session_forgets_its_tags_and_ids_are_reused() {
    let mut index = Index::new();
    index.subscribe(1, &["x", "y"]);
    index.subscribe(1, &["z"]);
    index.subscribe(2, &["x"]);
    assert_eq!(index.tag_count(), 3);
    assert_eq!(index.remove_session(1), 2);
    assert_eq!(index.tag_count(), 1);
    assert_eq!(index.remove_session(1), 0);
    index.remove_session(2);
    assert!(index.is_empty());
    assert_eq!(index.tag_count(), 0);
    index.subscribe(3, &["fresh"]);
    assert_eq!(matched(&index, &["fresh"], None), [3]);
    assert_eq!(matched(&index, &["x"], None), Vec::<u32>::new());
}

#[test]
fn a_large_fan_out_group_and_many_overlapping_groups() {
    let mut index = Index::new();
    for session in 0..10_000 {
        index.subscribe(session, &["all"]);
        if session % 2 == 0 {
            index.subscribe(session, &["all", "even"]);
        }
    }
    let got = matched(&index, &["all", "even"], Some(42));
    assert_eq!(got.len(), 9_999);
    assert!(!got.contains(&42));
    for session in 0..10_000 {
        index.unsubscribe(session, &["all"]);
    }
    assert_eq!(matched(&index, &["all", "even"], None).len(), 5_000);
}

#[test]
fn many_groups_rekeyed_still_match_exactly() {
    // Enough groups per tag to re-key many times over; checked by brute force.
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let names: Vec<String> = (0..30).map(|i| format!("t{i}")).collect();
    // Skewed: low tags far more common, so the first groups' keys go stale.
    let draw = |rng: &mut rand::rngs::StdRng, n: usize| -> Vec<String> {
        (0..n)
            .map(|_| names[(rng.gen_range(0.0f64..1.0).powi(3) * 30.0) as usize].clone())
            .collect()
    };
    let mut index = Index::new();
    let mut model: Vec<(u32, BTreeSet<String>)> = Vec::new();
    for session in 0..3000u32 {
        let n = rng.gen_range(1..=4);
        let tags = draw(&mut rng, n);
        if index.subscribe(session % 700, &tags) {
            model.push((session % 700, tags.into_iter().collect()));
        }
    }
    for _ in 0..300 {
        let n = rng.gen_range(1..=8);
        let message = draw(&mut rng, n);
        let set: BTreeSet<String> = message.iter().cloned().collect();
        let want: BTreeSet<u32> = model
            .iter()
            .filter(|(_, s)| s.is_subset(&set))
            .map(|(s, _)| *s)
            .collect();
        let refs: Vec<&str> = message.iter().map(String::as_str).collect();
        let got = matched(&index, &refs, None);
        assert_eq!(got.iter().copied().collect::<BTreeSet<u32>>(), want);
        assert_eq!(got.len(), want.len());
        // Both ways of finding tag sets agree, whichever the planner picked.
        let mut scratch = MatchScratch::default();
        index.prepare(&refs, &mut scratch);
        index.probe_pairs(&mut scratch);
        let mut by_pairs = scratch.groups.clone();
        index.prepare(&refs, &mut scratch);
        index.scan_keys(&mut scratch);
        let mut by_scan = scratch.groups.clone();
        by_pairs.sort_unstable();
        by_scan.sort_unstable();
        assert_eq!(by_pairs, by_scan);
    }
}

/// One step of a random history.
#[derive(Debug, Clone)]
enum Op {
    Subscribe(u32, Vec<u8>),
    Unsubscribe(u32, Vec<u8>),
    Remove(u32),
    Match(Vec<u8>, Option<u32>),
}

fn tag(i: u8) -> String {
    ((b'a' + i) as char).to_string()
}

fn tags(ids: &[u8]) -> Vec<String> {
    ids.iter().map(|&i| tag(i)).collect()
}

fn op() -> impl Strategy<Value = Op> {
    let session = 0u32..6;
    let set = prop::collection::vec(0u8..6, 1..4);
    prop_oneof![
        4 => (session.clone(), set.clone()).prop_map(|(s, t)| Op::Subscribe(s, t)),
        2 => (session.clone(), set.clone()).prop_map(|(s, t)| Op::Unsubscribe(s, t)),
        1 => session.clone().prop_map(Op::Remove),
        4 => (prop::collection::vec(0u8..6, 0..6), prop::option::of(session)).prop_map(|(t, e)| Op::Match(t, e)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The index agrees with the definition, checked by brute force.
    #[test]
    fn agrees_with_a_brute_force_model(ops in prop::collection::vec(op(), 1..60)) {
        let mut index = Index::new();
        let mut model: Vec<(u32, BTreeSet<String>)> = Vec::new();
        let mut scratch = MatchScratch::default();
        for op in ops {
            match op {
                Op::Subscribe(s, t) => {
                    let set: BTreeSet<String> = tags(&t).into_iter().collect();
                    let new = !model.contains(&(s, set.clone()));
                    prop_assert_eq!(index.subscribe(s, &tags(&t)), new);
                    if new {
                        model.push((s, set));
                    }
                }
                Op::Unsubscribe(s, t) => {
                    let set: BTreeSet<String> = tags(&t).into_iter().collect();
                    let held = model.iter().position(|m| *m == (s, set.clone()));
                    prop_assert_eq!(index.unsubscribe(s, &tags(&t)), held.is_some());
                    if let Some(at) = held {
                        model.remove(at);
                    }
                }
                Op::Remove(s) => {
                    let before = model.len();
                    model.retain(|(m, _)| *m != s);
                    prop_assert_eq!(index.remove_session(s), before - model.len());
                }
                Op::Match(t, exclude) => {
                    let message: BTreeSet<String> = tags(&t).into_iter().collect();
                    let want: BTreeSet<u32> = model
                        .iter()
                        .filter(|(s, set)| Some(*s) != exclude && set.is_subset(&message))
                        .map(|(s, _)| *s)
                        .collect();
                    let mut out = Vec::new();
                    index.matches(&tags(&t), exclude, &mut scratch, &mut out);
                    let got_len = out.len();
                    let got: BTreeSet<u32> = out.into_iter().collect();
                    prop_assert_eq!(got_len, got.len(), "each session once");
                    prop_assert_eq!(got, want);
                }
            }
            prop_assert_eq!(index.len(), model.len());
            for s in 0..6 {
                let mut want: Vec<Vec<String>> = model
                    .iter()
                    .filter(|(m, _)| *m == s)
                    .map(|(_, set)| set.iter().cloned().collect())
                    .collect();
                want.sort();
                prop_assert_eq!(index.subscriptions(s), want);
            }
        }
        for s in 0..6 {
            index.remove_session(s);
        }
        prop_assert_eq!(index.tag_count(), 0, "every tag id is released");
    }
}
