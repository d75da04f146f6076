use map_wrapper::GuardedMap;

#[derive(GuardedMap)]
union Slot {
    a: u32,
    b: f32,
}

fn main() {}
