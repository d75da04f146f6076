use map_wrapper::guarded_map;

#[guarded_map]
fn billing() {}

fn main() {}
