//! Secure connections to the real TLS servers `scripts/secure-services`
//! starts, one file per server: [`valkey`], [`nats`], [`neo4j`]. Each
//! authentication and TLS mode does real work; a wrong password, an
//! untrusted certificate and a missing credentials file are each refused
//! with a message naming the server and the cause.

mod nats;
mod neo4j;
mod valkey;

/// Reads `SWITCHYARD_SECURE_<name>`, failing the test if it is missing.
pub fn secure(name: &str) -> String {
    let variable = format!("SWITCHYARD_SECURE_{name}");
    match std::env::var(&variable) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{variable} is not set: this test needs the TLS servers. Start them with \
             `scripts/secure-services up` and export `scripts/secure-services env` \
             (the README's test command does both)."
        ),
    }
}

/// The file `SWITCHYARD_SECURE_<name>` names.
pub fn read(name: &str) -> Vec<u8> {
    let path = secure(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}
