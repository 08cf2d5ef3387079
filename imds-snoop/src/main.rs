mod http;

fn main() {}
