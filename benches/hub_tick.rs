//! What the hub's ticker costs: one walk of every socket's mailbox, looking for the
//! sockets whose deadline has passed (`ws/hub.rs`). A node runs one walk every
//! twentieth of its shortest liveness timing, at most every 250 ms (4 a second at the
//! defaults), a shard of the sockets at a time.
//!
//! `cargo bench --bench hub_tick -- --bench [SOCKETS] [WALKS]` registers SOCKETS
//! mailboxes (default 100,000), none of them due, and times WALKS walks (default 200) on
//! one thread. It prints the time of one walk, per socket, what 4 walks a second would
//! take of a core, and the longest the runtime is held between two yields (a shard). The machine is shared: read it as an order of magnitude.
//!
//! Run by `cargo test --all-targets` without `--bench`: then it walks a few small hubs,
//! so the harness keeps compiling and working, and times nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drisc::ws::deadline::Deadline;
use drisc::ws::hub::Hub;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let benching = args.iter().any(|a| a == "--bench");
    let numbers: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let (sockets, walks) = if benching {
        (
            numbers.first().copied().unwrap_or(100_000),
            numbers.get(1).copied().unwrap_or(200),
        )
    } else {
        (1_000, 2)
    };

    let hub = Arc::new(Hub::new(1));
    let far = Deadline::after(Duration::from_secs(3_600));
    let mailboxes: Vec<_> = (0..sockets)
        .map(|_| {
            let mailbox = hub.register();
            mailbox.wake_at(far);
            mailbox
        })
        .collect();

    let (mut longest_shard, started) = (Duration::ZERO, Instant::now());
    for _ in 0..walks {
        let now = Deadline::now();
        for shard in 0..hub.shards() {
            let shard_started = Instant::now();
            hub.tick_shard(shard, now);
            longest_shard = longest_shard.max(shard_started.elapsed());
        }
    }
    let elapsed = started.elapsed();
    if !benching {
        return;
    }
    let per_walk = elapsed / u32::try_from(walks.max(1)).unwrap_or(u32::MAX);
    let per_socket_ns = per_walk.as_nanos() as f64 / sockets.max(1) as f64;
    println!(
        "{sockets} sockets, {walks} walks: {:.3} ms a walk, {per_socket_ns:.1} ns a socket; \
         4 walks a second: {:.2}% of a core; the longest shard: {:.3} ms",
        per_walk.as_secs_f64() * 1e3,
        per_walk.as_secs_f64() * 4.0 * 100.0,
        longest_shard.as_secs_f64() * 1e3,
    );
    drop(mailboxes);
}
