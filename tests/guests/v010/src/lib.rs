//! A test guest built against `wit/` as it was at `switchyard:handler@0.1.0`
//! (the copy beside this crate, never updated): a newer host must load and
//! run it unchanged.
//!
//! For each event it reads its `prefix` setting, scans `<prefix>*` page by
//! page, deletes what it found, upserts `(:Seen {id: <subject>})` with the
//! number of keys deleted, logs, and acks. A failed call rejects the event
//! with the error.

#![allow(unsafe_code)] // generated bindings cross the component ABI
#![allow(clippy::too_many_arguments)] // generated signatures follow the WIT

wit_bindgen::generate!({
    world: "event-handler",
    path: "wit",
});

use switchyard::handler::graph::Value;
use switchyard::handler::log::Level;
use switchyard::handler::{cache, config, graph, log};

struct V010;

impl Guest for V010 {
    fn handle(event: Event) -> Outcome {
        match run(&event) {
            Ok(deleted) => {
                log::log(
                    Level::Info,
                    "swept",
                    &[("deleted".into(), deleted.to_string())],
                );
                Outcome::Ack
            }
            Err(error) => Outcome::Reject(format!("{error:?}")),
        }
    }
}

fn run(event: &Event) -> Result<u64, switchyard::handler::types::Error> {
    let prefix = config::get("prefix").unwrap_or_default();
    let pattern = format!("{prefix}*");
    let mut cursor = 0;
    let mut deleted = 0;
    loop {
        let page = cache::scan(&pattern, cursor, 100)?;
        if !page.keys.is_empty() {
            deleted += cache::delete(&page.keys)?;
        }
        cursor = page.cursor;
        if cursor == 0 {
            break;
        }
    }
    graph::upsert_entity(
        "Seen",
        &event.subject,
        &[("deleted".into(), Value::Integer(deleted as i64))],
    )?;
    Ok(deleted)
}

export!(V010);
