//! `SWITCHYARD_<SECTION>__<KEY>` overrides applied to the parsed TOML
//! document before it is read into the configuration.

use super::error::ConfigError;

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
