//! The fleet parts: what keeps many hosts running the same handlers at the
//! same version, and tells an operator what each runs.
//!
//! - [`control`]: the control plane on NATS: pushed versions in an Object
//!   Store, the live pointer of each handler in a Key-Value bucket.
//! - [`reload`]: hot swap; a validated version replaces the live one with
//!   one pointer exchange, from a watched file or from the control plane.
//! - [`shadow`]: follows a handler's shadow candidate and attaches it.
//! - [`status`]: what each host reports, answered and gathered over NATS.
//!
//! The fleet parts act on [`crate::handler::Handler`]; they import the
//! handler, the runtime, isolation (fixtures) and configuration, never
//! delivery, the service or the commands.

pub mod control;
pub mod reload;
pub mod shadow;
pub mod status;
