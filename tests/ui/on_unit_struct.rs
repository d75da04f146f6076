use map_wrapper::GuardedMap;

#[derive(GuardedMap)]
struct Billing;

fn main() {}
