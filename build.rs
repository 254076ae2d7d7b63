//! `sqlx::migrate!` embeds the migrations at compile time but cannot tell cargo
//! to watch their folders: without this, a new migration file would be left out
//! of the binary until something else forced a rebuild.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
