use map_wrapper::guarded_map;

#[guarded_map]
enum Billing {
    Open,
    Closed,
}

fn main() {}
