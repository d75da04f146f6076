//! Model test: random sequences of every operation on `MapWrapper` and on a plain `HashMap`
//! agree step by step.

use std::collections::HashMap;

use map_wrapper::{MapWrapper, OpContext, Upserted};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u16),
    Get(u8),
    GetCloned(u8),
    View(u8),
    ContainsKey(u8),
    Remove(u8),
    RemoveEntry(u8),
    RemoveIf(u8, u16),
    Update(u8, u16),
    Alter(u8, Option<u16>),
    Upsert(u8, u16),
    OrDefault(u8),
    Retain(u16),
    Clear,
    Len,
    IsEmpty,
    Snapshot,
    ForEach,
    Extend(Vec<(u8, u16)>),
}

fn op() -> impl Strategy<Value = Op> {
    // Small key space so that operations hit existing keys often.
    let k = 0u8..24;
    prop_oneof![
        4 => (k.clone(), any::<u16>()).prop_map(|(k, v)| Op::Insert(k, v)),
        1 => k.clone().prop_map(Op::Get),
        1 => k.clone().prop_map(Op::GetCloned),
        1 => k.clone().prop_map(Op::View),
        1 => k.clone().prop_map(Op::ContainsKey),
        2 => k.clone().prop_map(Op::Remove),
        1 => k.clone().prop_map(Op::RemoveEntry),
        1 => (k.clone(), any::<u16>()).prop_map(|(k, v)| Op::RemoveIf(k, v)),
        2 => (k.clone(), any::<u16>()).prop_map(|(k, v)| Op::Update(k, v)),
        2 => (k.clone(), proptest::option::of(any::<u16>())).prop_map(|(k, v)| Op::Alter(k, v)),
        2 => (k.clone(), any::<u16>()).prop_map(|(k, v)| Op::Upsert(k, v)),
        1 => k.clone().prop_map(Op::OrDefault),
        1 => (1u16..5).prop_map(Op::Retain),
        1 => Just(Op::Clear),
        1 => Just(Op::Len),
        1 => Just(Op::IsEmpty),
        1 => Just(Op::Snapshot),
        1 => Just(Op::ForEach),
        1 => proptest::collection::vec((k, any::<u16>()), 0..8).prop_map(Op::Extend),
    ]
}

fn sorted(mut v: Vec<(u8, u16)>) -> Vec<(u8, u16)> {
    v.sort_unstable();
    v
}

/// Applies `op` to both and asserts the results agree.
fn step(map: &MapWrapper<u8, u16>, model: &mut HashMap<u8, u16>, op: &Op) {
    match op.clone() {
        Op::Insert(k, v) => assert_eq!(map.insert(k, v).unwrap(), model.insert(k, v)),
        Op::Get(k) => assert_eq!(map.get(&k).unwrap().map(|r| *r), model.get(&k).copied()),
        Op::GetCloned(k) => assert_eq!(map.get_cloned(&k).unwrap(), model.get(&k).copied()),
        Op::View(k) => {
            assert_eq!(map.view(&k, |v| u32::from(*v) * 2).unwrap(), model.get(&k).map(|v| u32::from(*v) * 2))
        }
        Op::ContainsKey(k) => assert_eq!(map.contains_key(&k).unwrap(), model.contains_key(&k)),
        Op::Remove(k) => assert_eq!(map.remove(&k).unwrap(), model.remove(&k)),
        Op::RemoveEntry(k) => assert_eq!(map.remove_entry(&k).unwrap(), model.remove_entry(&k)),
        Op::RemoveIf(k, t) => {
            let expect = match model.get(&k) {
                Some(v) if *v < t => model.remove(&k),
                _ => None,
            };
            assert_eq!(map.remove_if(&k, |_, v| *v < t).unwrap(), expect);
        }
        Op::Update(k, d) => {
            let expect = model.get_mut(&k).map(|v| {
                *v = v.wrapping_add(d);
                *v
            });
            let got = map
                .update(&k, |v| {
                    *v = v.wrapping_add(d);
                    *v
                })
                .unwrap();
            assert_eq!(got, expect);
        }
        Op::Alter(k, new) => {
            let current = model.get(&k).copied();
            let expect_old = match new {
                Some(v) => model.insert(k, v),
                None => model.remove(&k),
            };
            let mut given = None;
            assert_eq!(
                map.alter(k, |old| {
                    given = Some(old.copied());
                    new
                })
                .unwrap(),
                expect_old
            );
            assert_eq!(given, Some(current), "alter's closure gets the current value");
        }
        Op::Upsert(k, v) => {
            let expect = if let Some(old) = model.get_mut(&k) {
                *old = old.wrapping_mul(3);
                Upserted::Existing
            } else {
                model.insert(k, v);
                Upserted::Inserted
            };
            assert_eq!(map.entry(k).and_modify(|x| *x = x.wrapping_mul(3)).or_insert(v).unwrap(), expect);
        }
        Op::OrDefault(k) => {
            let expect = if model.contains_key(&k) { Upserted::Existing } else { Upserted::Inserted };
            model.entry(k).or_default();
            assert_eq!(map.entry(k).or_default().unwrap(), expect);
        }
        Op::Retain(m) => {
            let before = model.len();
            model.retain(|k, v| u16::from(*k).wrapping_add(*v) % m != 0);
            assert_eq!(
                map.retain(|k, v| u16::from(*k).wrapping_add(*v) % m != 0).unwrap(),
                before - model.len()
            );
        }
        Op::Clear => {
            let n = model.len();
            model.clear();
            assert_eq!(map.clear().unwrap(), n);
        }
        Op::Len => assert_eq!(map.len().unwrap(), model.len()),
        Op::IsEmpty => assert_eq!(map.is_empty().unwrap(), model.is_empty()),
        Op::Snapshot => {
            assert_eq!(sorted(map.snapshot().unwrap()), sorted(model.iter().map(|(k, v)| (*k, *v)).collect()))
        }
        Op::ForEach => {
            let mut seen = Vec::new();
            map.for_each(|k, v| seen.push((*k, *v))).unwrap();
            assert_eq!(sorted(seen), sorted(model.iter().map(|(k, v)| (*k, *v)).collect()));
        }
        Op::Extend(pairs) => {
            let n = pairs.len();
            model.extend(pairs.iter().copied());
            assert_eq!(map.extend(pairs).unwrap(), n);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/proptest-regressions/core_model.txt"))),
        ..ProptestConfig::default()
    })]

    /// `path` picks which code runs each operation: 0, the default map (statistics on: the
    /// fast path with its count, every 64th operation of a thread timed on the full path); 1,
    /// statistics off (the bare fast path); 2, statistics off inside an ambient context (every
    /// operation on the full path, with a `Waiter`).
    #[test]
    fn every_operation_agrees_with_hashmap(
        ops in proptest::collection::vec(op(), 1..120),
        shards in 0u32..5,
        path in 0u8..3,
    ) {
        let map: MapWrapper<u8, u16> =
            MapWrapper::builder().shards(1 << shards).stats(path == 0).build().unwrap();
        let _scope = (path == 2).then(|| OpContext::new().actor("model").enter());
        let mut model = HashMap::new();
        for op in &ops {
            step(&map, &mut model, op);
        }
        // And the final contents agree as a whole.
        prop_assert_eq!(sorted(map.snapshot().unwrap()), sorted(model.into_iter().collect()));
    }

    #[test]
    fn from_iter_and_into_iter_agree_with_hashmap(pairs in proptest::collection::vec((any::<u8>(), any::<u16>()), 0..200)) {
        let model: HashMap<u8, u16> = pairs.iter().copied().collect();
        let map: MapWrapper<u8, u16> = pairs.into_iter().collect();
        prop_assert_eq!(map.len().unwrap(), model.len());
        prop_assert_eq!(sorted(map.into_iter().collect()), sorted(model.into_iter().collect()));
    }
}
