use map_wrapper::guarded_map;

#[guarded_map]
struct Billing {
    label: String,
}

fn main() {}
