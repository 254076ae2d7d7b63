//! `drisc-baseline-jemalloc`: `drisc-baseline` on jemalloc, the allocator drisc
//! runs on (src/main.rs), so that a comparison of the two servers can be made
//! framework to framework with the allocator the same on both sides
//! (`bench/admission --baseline-jemalloc`). Same arguments and output.

// As drisc: jemalloc where it builds (not with MSVC, which keeps the system allocator).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    drisc_load::baseline::serve_from_args().await
}
