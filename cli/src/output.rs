//! Printing what the API returns: tables sized to the terminal, or the
//! messages as JSON or YAML in the API's own JSON mapping (what grpcurl and
//! every other proto3 client print: lowerCamelCase names, enum names,
//! RFC 3339 times, 64-bit integers as strings).

use chrono::{DateTime, Local, Utc};
use comfy_table::{presets, ContentArrangement, Table};
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::Value;

/// `-o`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns for people.
    #[default]
    Table,
    /// The API's JSON mapping.
    Json,
    /// The same in YAML.
    Yaml,
    /// Only the ids, one a line.
    Id,
}

/// How a column shows its value.
#[derive(Clone, Copy, Debug)]
pub enum Show {
    /// As it is.
    Text,
    /// A timestamp, in local time (or UTC with `--utc`).
    Time,
    /// A byte count, in binary units.
    Bytes,
    /// An enum value without its type's prefix (`RUN_STATE_`).
    Enum,
}

/// A table column: its header and the JSON path of its value.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub header: &'static str,
    pub path: &'static str,
    pub show: Show,
}

impl Column {
    pub const fn text(header: &'static str, path: &'static str) -> Column {
        Column {
            header,
            path,
            show: Show::Text,
        }
    }
    pub const fn time(header: &'static str, path: &'static str) -> Column {
        Column {
            header,
            path,
            show: Show::Time,
        }
    }
    pub const fn bytes(header: &'static str, path: &'static str) -> Column {
        Column {
            header,
            path,
            show: Show::Bytes,
        }
    }
    pub const fn enumeration(header: &'static str, path: &'static str) -> Column {
        Column {
            header,
            path,
            show: Show::Enum,
        }
    }
}

/// Output settings of the invocation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Printer {
    pub format: Format,
    pub utc: bool,
}

/// A message in the API's JSON mapping.
pub fn to_json(message: &DynamicMessage) -> Value {
    let options = SerializeOptions::new();
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("a decoded message always serializes to JSON")
}

impl Printer {
    /// Prints a list of items.
    pub fn items(&self, items: &[DynamicMessage], columns: &[Column]) -> anyhow::Result<()> {
        let values: Vec<Value> = items.iter().map(to_json).collect();
        self.values(&values, columns)
    }

    /// Prints one item.
    pub fn item(&self, item: &DynamicMessage, columns: &[Column]) -> anyhow::Result<()> {
        match self.format {
            Format::Json | Format::Yaml => self.values_one(&to_json(item)),
            Format::Table | Format::Id => self.items(std::slice::from_ref(item), columns),
        }
    }

    /// Prints one JSON value as JSON or YAML.
    pub fn values_one(&self, value: &Value) -> anyhow::Result<()> {
        match self.format {
            Format::Yaml => emit(&serde_yaml_ng::to_string(value)?)?,
            _ => emit_line(&serde_json::to_string_pretty(value)?)?,
        }
        Ok(())
    }

    /// Prints JSON values already shaped for output (lists of rows).
    pub fn values(&self, values: &[Value], columns: &[Column]) -> anyhow::Result<()> {
        match self.format {
            Format::Json => emit_line(&serde_json::to_string_pretty(values)?)?,
            Format::Yaml => emit(&serde_yaml_ng::to_string(values)?)?,
            Format::Id => {
                for value in values {
                    emit_line(&self.cell(value, &Column::text("ID", "id")))?;
                }
            }
            Format::Table => {
                let mut table = new_table(columns.iter().map(|c| c.header));
                for value in values {
                    table.add_row(columns.iter().map(|c| self.cell(value, c)));
                }
                emit_line(&table)?;
            }
        }
        Ok(())
    }

    /// The text of one cell, safe for a terminal.
    pub fn cell(&self, value: &Value, column: &Column) -> String {
        printable(&self.raw_cell(value, column))
    }

    fn raw_cell(&self, value: &Value, column: &Column) -> String {
        let found = column
            .path
            .split('.')
            .try_fold(value, |value, key| value.get(key));
        let Some(found) = found else {
            return String::new();
        };
        match column.show {
            Show::Text => plain(found),
            Show::Time => found.as_str().map(|t| self.time(t)).unwrap_or_default(),
            Show::Bytes => number(found).map(bytes).unwrap_or_default(),
            Show::Enum => found.as_str().map(short_enum).unwrap_or_default(),
        }
    }

    /// An RFC 3339 time in local time (or UTC), to the second.
    pub fn time(&self, rfc3339: &str) -> String {
        let Ok(time) = DateTime::parse_from_rfc3339(rfc3339) else {
            return rfc3339.to_string();
        };
        if self.utc {
            time.with_timezone(&Utc)
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string()
        } else {
            time.with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        }
    }
}

/// Writes to stdout; a reader that went away (`| head`) ends the output
/// quietly instead of failing the command.
pub fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// [`emit`] and a newline.
pub fn emit_line(text: &dyn std::fmt::Display) -> anyhow::Result<()> {
    emit(&format!("{text}\n"))
}

/// Text from the API (file names come from tenants' source trees) with
/// control characters escaped, so no name can drive the operator's terminal.
pub fn printable(text: &str) -> String {
    let mut safe = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            safe.extend(c.escape_default());
        } else {
            safe.push(c);
        }
    }
    safe
}

/// A table without borders, as wide as the terminal (unbounded when piped).
pub fn new_table<'a>(headers: impl IntoIterator<Item = &'a str>) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(headers);
    table
}

fn plain(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => {
            if *b {
                "yes".into()
            } else {
                String::new()
            }
        }
        Value::Number(n) => n.to_string(),
        Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(","),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", plain(v)))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// 64-bit integers arrive as strings.
fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// `1.5 MiB`.
pub fn bytes(count: u64) -> String {
    indicatif::BinaryBytes(count).to_string()
}

/// `RUN_STATE_SUCCEEDED` → `SUCCEEDED`, `GRANT_USE_BACKUP_SOURCE` → `BACKUP_SOURCE`:
/// drops the enum's prefix, known from the descriptors' naming rule (buf lint).
pub fn short_enum(name: &str) -> String {
    const PREFIXES: &[&str] = &[
        "RUN_STATE_",
        "RUN_KIND_",
        "WAITING_REASON_",
        "FILE_KIND_",
        "GRANT_USE_",
        "TOKEN_SCOPE_",
        "RESOURCE_KIND_",
        "METADATA_SOURCE_",
        "RETENTION_POLICY_SOURCE_",
        "MISSED_RUN_POLICY_",
        "OVERLAP_POLICY_",
    ];
    PREFIXES
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name)
        .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_from_the_api_are_escaped_not_sent_to_the_terminal() {
        assert_eq!(super::printable("a\u{1b}[2Jb\nc"), "a\\u{1b}[2Jb\\nc");
        assert_eq!(super::printable("dir/Ünïcode.txt"), "dir/Ünïcode.txt");
    }
}
