//! Model test: random sequences of every mutation, run against an audited map and a plain
//! `HashMap`; replaying the trail (each `ok` record's `new` value, or a removal) must rebuild
//! exactly what both hold, and the trail must verify.

use std::collections::HashMap;

use map_wrapper::audit::{verify, Auditor, MemorySink};
use map_wrapper::MapWrapper;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, i64),
    Remove(u8),
    RemoveIf(u8, i64),
    Update(u8, i64),
    Alter(u8, Option<i64>),
    Upsert(u8, i64),
    Extend(Vec<(u8, i64)>),
    RetainBelow(i64),
    Clear,
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0u8..8;
    let v = -50i64..50;
    prop_oneof![
        4 => (k.clone(), v.clone()).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => k.clone().prop_map(Op::Remove),
        1 => (k.clone(), v.clone()).prop_map(|(k, v)| Op::RemoveIf(k, v)),
        2 => (k.clone(), v.clone()).prop_map(|(k, v)| Op::Update(k, v)),
        2 => (k.clone(), proptest::option::of(v.clone())).prop_map(|(k, v)| Op::Alter(k, v)),
        2 => (k.clone(), v.clone()).prop_map(|(k, v)| Op::Upsert(k, v)),
        1 => proptest::collection::vec((k, v.clone()), 0..4).prop_map(Op::Extend),
        1 => v.prop_map(Op::RetainBelow),
        1 => Just(Op::Clear),
    ]
}

fn apply(map: &MapWrapper<u8, i64>, model: &mut HashMap<u8, i64>, op: &Op) {
    match *op {
        Op::Insert(k, v) => assert_eq!(map.insert(k, v).unwrap(), model.insert(k, v)),
        Op::Remove(k) => assert_eq!(map.remove(&k).unwrap(), model.remove(&k)),
        Op::RemoveIf(k, v) => {
            let want = if model.get(&k) == Some(&v) { model.remove(&k) } else { None };
            assert_eq!(map.remove_if(&k, |_, x| *x == v).unwrap(), want);
        }
        Op::Update(k, d) => {
            let want = model.get_mut(&k).map(|x| *x += d);
            assert_eq!(map.update(&k, |x| *x += d).unwrap(), want);
        }
        Op::Alter(k, v) => {
            let old = match v {
                Some(v) => model.insert(k, v),
                None => model.remove(&k),
            };
            assert_eq!(map.alter(k, |_| v).unwrap(), old);
        }
        Op::Upsert(k, v) => {
            model.entry(k).and_modify(|x| *x -= 1).or_insert(v);
            map.entry(k).and_modify(|x| *x -= 1).or_insert(v).unwrap();
        }
        Op::Extend(ref pairs) => {
            model.extend(pairs.iter().copied());
            assert_eq!(map.extend(pairs.iter().copied()).unwrap(), pairs.len());
        }
        Op::RetainBelow(limit) => {
            let before = model.len();
            model.retain(|_, x| *x < limit);
            assert_eq!(map.retain(|_, x| *x < limit).unwrap(), before - model.len());
        }
        Op::Clear => {
            assert_eq!(map.clear().unwrap(), model.len());
            model.clear();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn replaying_the_trail_rebuilds_the_map(ops in proptest::collection::vec(op(), 0..120)) {
        let sink = MemorySink::new();
        let map: MapWrapper<u8, i64> =
            MapWrapper::builder().shards(4).auditor(Auditor::new(sink.clone())).build().unwrap();
        let mut model = HashMap::new();
        for op in &ops {
            apply(&map, &mut model, op);
        }
        let mut replayed = HashMap::new();
        for r in sink.records() {
            prop_assert_eq!(r.outcome.as_str(), "ok");
            let key = r.key.as_ref().unwrap()["full"].as_u64().unwrap() as u8;
            match r.new.as_ref() {
                Some(new) => replayed.insert(key, new["full"].as_i64().unwrap()),
                None => replayed.remove(&key),
            };
        }
        let held: HashMap<u8, i64> = map.snapshot().unwrap().into_iter().collect();
        prop_assert_eq!(&replayed, &model);
        prop_assert_eq!(&held, &model);
        let report = verify::verify_bytes(&[("memory".into(), sink.text().into_bytes())], &Default::default()).unwrap();
        prop_assert_eq!(report.verdict, verify::Verdict::Intact);
    }
}
