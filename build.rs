//! Rebuilds the crate when a migration is added or edited.
//!
//! `sqlx::migrate!()` (src/db.rs) embeds `migrations/` at compile time, but
//! Cargo does not know the macro read that directory: without this, a new
//! migration file reaches the binary only once some Rust source changes
//! too. sqlx's documentation recommends exactly this line.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
