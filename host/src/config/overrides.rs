//! `SWITCHYARD_<SECTION>__<KEY>` overrides applied to the parsed TOML
//! document before it is read into the configuration, and
//! `SWITCHYARD_UNSET`, which removes keys.

use super::error::ConfigError;

/// The variable listing keys to remove: `graph.password,handlers.0.fixtures`.
pub const UNSET: &str = "SWITCHYARD_UNSET";

/// Removes each comma-separated dotted key in `keys` from `document`. A
/// key the document does not hold is an error naming it: a misspelt unset
/// must not pass for one that worked.
pub fn unset(document: &mut toml::Table, keys: &str) -> Result<(), ConfigError> {
    for key in keys.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        let fail = |message: &str| ConfigError::Override {
            variable: UNSET.to_string(),
            message: format!("`{key}`: {message}"),
        };
        let path: Vec<&str> = key.split('.').collect();
        let (last, parents) = path.split_last().ok_or_else(|| fail("empty key"))?;
        let mut cursor: &mut toml::Table = document;
        let mut segments = parents.iter();
        while let Some(segment) = segments.next() {
            cursor = match cursor.get_mut(*segment) {
                Some(toml::Value::Table(inner)) => inner,
                Some(toml::Value::Array(items)) => {
                    let index = segments
                        .next()
                        .and_then(|i| i.parse::<usize>().ok())
                        .ok_or_else(|| fail("a list: index it, as `handlers.0.key`"))?;
                    match items.get_mut(index) {
                        Some(toml::Value::Table(item)) => item,
                        _ => return Err(fail("no such entry in the list")),
                    }
                }
                Some(_) => return Err(fail("not a table")),
                None => return Err(fail("not in the configuration")),
            };
        }
        if cursor.remove(*last).is_none() {
            return Err(fail("not in the configuration"));
        }
    }
    Ok(())
}

pub fn apply_override(
    document: &mut toml::Table,
    variable: &str,
    raw: &str,
) -> Result<(), ConfigError> {
    let fail = |message: String| ConfigError::Override {
        variable: variable.to_string(),
        message,
    };
    let path: Vec<String> = variable["SWITCHYARD_".len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(fail("empty path segment".into()));
    }
    let value = parse_override_value(raw);
    let mut table = document;
    for (depth, segment) in path.iter().enumerate() {
        let last = depth + 1 == path.len();
        if last {
            table.insert(segment.clone(), value);
            return Ok(());
        }
        let next = table
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match next {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) => {
                let index: usize = path[depth + 1].parse().map_err(|_| {
                    fail(format!("`{segment}` is a list; expected an index after it"))
                })?;
                let Some(toml::Value::Table(item)) = items.get_mut(index) else {
                    return Err(fail(format!("`{segment}` has no entry {index}")));
                };
                if depth + 2 == path.len() {
                    return Err(fail(format!(
                        "cannot replace `{segment}[{index}]` as a whole"
                    )));
                }
                // Skip the index segment: continue from the item's table.
                return apply_rest(item, &path[depth + 2..], value).map_err(fail);
            }
            _ => return Err(fail(format!("`{segment}` is not a table"))),
        };
    }
    Ok(())
}

fn apply_rest(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("empty path".into()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [head, rest @ ..] => match table
            .entry(head.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(inner) => apply_rest(inner, rest, value),
            _ => Err(format!("`{head}` is not a table")),
        },
    }
}

fn parse_override_value(raw: &str) -> toml::Value {
    // Numbers, booleans and arrays as TOML; anything else as a plain string,
    // so `SWITCHYARD_GRAPH__PASSWORD=secret` needs no quoting.
    let wrapped = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut table) => match table.remove("v") {
            Some(
                value @ (toml::Value::Integer(_)
                | toml::Value::Float(_)
                | toml::Value::Boolean(_)
                | toml::Value::Array(_)),
            ) => value,
            _ => toml::Value::String(raw.to_string()),
        },
        Err(_) => toml::Value::String(raw.to_string()),
    }
}
