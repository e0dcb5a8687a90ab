//! A Rust program that reads its configuration with `std::fs` after a
//! slow start-up: forkmon sees the open (Rust's std makes the `openat`
//! syscall itself, no `fopen` to hook) and resumes from it at each save.
//!
//!   rustc -O -o target/rust-config examples/rust-config/main.rs
//!   cargo xtask run -- --filter config.toml -- target/rust-config examples/rust-config/config.toml
//!   # edit examples/rust-config/config.toml
use std::{collections::HashMap, env, fs, time::Instant};

fn main() {
    let started = Instant::now();
    // The start-up: an index built once, standing for a model, a cache,
    // a database loaded at start.
    let mut index: HashMap<u64, Vec<u64>> = HashMap::new();
    for i in 0..12_000_000u64 {
        index.entry(i.wrapping_mul(2654435761) % 4093).or_default().push(i);
    }
    println!("start-up: {:.2} s", started.elapsed().as_secs_f64());

    let path = env::args().nth(1).unwrap_or_else(|| "config.toml".into());
    let config = fs::read_to_string(&path).unwrap_or_else(|e| {
        eprintln!("rust-config: {path}: {e}");
        std::process::exit(1)
    });
    // `key = "value"` lines, enough for the example.
    let settings: HashMap<&str, &str> = config
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim(), value.trim().trim_matches('"')))
        .collect();
    let greeting = settings.get("greeting").unwrap_or(&"(no greeting)");
    println!("{greeting}, {} buckets", index.len());
}
