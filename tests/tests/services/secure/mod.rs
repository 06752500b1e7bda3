//! Secure connections to the real TLS servers `scripts/secure-services`
//! starts, one file per server: [`valkey`], [`nats`], [`neo4j`]. Each
//! authentication and TLS mode does real work; a wrong password, an
//! untrusted certificate and a missing credentials file are each refused
//! with a message naming the server and the cause.

mod nats;
mod neo4j;
mod valkey;

pub use switchyard_tests::services::secure;

/// The file `SWITCHYARD_SECURE_<name>` names.
pub fn read(name: &str) -> Vec<u8> {
    let path = secure(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}
