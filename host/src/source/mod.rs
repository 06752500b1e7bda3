//! Where events come from. Today: NATS JetStream ([`jetstream`]).

pub mod jetstream;
