//! Filling a request from the command line: `-f FILE` (YAML or JSON in the
//! API's JSON mapping) and `--set path.to.field=value`, checked against the
//! API's descriptors so a wrong field name is named before anything is sent.

use std::path::Path;

use anyhow::{bail, Context as _};
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage as _, Value,
};

use crate::failure::Usage;

/// One `--set path=value`.
#[derive(Clone, Debug)]
pub struct Assignment {
    pub path: String,
    pub value: String,
}

impl std::str::FromStr for Assignment {
    type Err = String;

    fn from_str(text: &str) -> Result<Assignment, String> {
        match text.split_once('=') {
            Some((path, value)) if !path.is_empty() => Ok(Assignment {
                path: path.to_string(),
                value: value.to_string(),
            }),
            _ => Err(format!("{text:?} is not FIELD=VALUE")),
        }
    }
}

impl Assignment {
    /// The first segment of the path: what an update mask names.
    pub fn top_level(&self) -> &str {
        self.path.split('.').next().unwrap_or(&self.path)
    }
}

/// Reads a message of `descriptor` from a YAML or JSON file (`-` is stdin),
/// and the names of the top-level fields it sets.
pub fn read_file(
    descriptor: MessageDescriptor,
    path: &Path,
) -> anyhow::Result<(DynamicMessage, Vec<String>)> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    // YAML is a superset of JSON: one parser reads both.
    let value: serde_json::Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{} is neither YAML nor JSON", path.display()))?;
    let serde_json::Value::Object(map) = &value else {
        bail!(Usage(format!(
            "{} must hold a {} object",
            path.display(),
            descriptor.name()
        )));
    };
    let mut fields = Vec::new();
    for key in map.keys() {
        let field = field_by_name(&descriptor, key)?;
        fields.push(field.name().to_string());
    }
    let message =
        DynamicMessage::deserialize_with_options(descriptor, value, &DeserializeOptions::new())
            .map_err(|e| Usage(format!("{}: {e}", path.display())))?;
    Ok((message, fields))
}

/// Applies `--set` assignments in order.
pub fn apply(message: &mut DynamicMessage, assignments: &[Assignment]) -> anyhow::Result<()> {
    for assignment in assignments {
        let segments: Vec<&str> = assignment.path.split('.').collect();
        set_path(message, &segments, &assignment.value)
            .with_context(|| format!("--set {}", assignment.path))?;
    }
    Ok(())
}

/// A field by its proto name or its JSON name.
pub fn field_by_name(
    descriptor: &MessageDescriptor,
    name: &str,
) -> anyhow::Result<FieldDescriptor> {
    descriptor
        .get_field_by_name(name)
        .or_else(|| descriptor.get_field_by_json_name(name))
        .ok_or_else(|| {
            let known: Vec<String> = descriptor.fields().map(|f| f.name().to_string()).collect();
            Usage(format!(
                "{} has no field {name:?} (fields: {})",
                descriptor.name(),
                known.join(", ")
            ))
            .into()
        })
}

fn set_path(message: &mut DynamicMessage, segments: &[&str], value: &str) -> anyhow::Result<()> {
    let (first, rest) = segments.split_first().context("empty field path")?;
    let field = field_by_name(&message.descriptor(), first)?;
    if field.is_map() {
        let [key] = rest else {
            bail!(Usage(format!("{first} is a map: set {first}.KEY=VALUE")));
        };
        let Kind::Message(entry) = field.kind() else {
            bail!("map field without an entry message");
        };
        let value = parse_scalar(&entry.map_entry_value_field(), value)?;
        message
            .get_field_mut(&field)
            .as_map_mut()
            .context("map field")?
            .insert(MapKey::String((*key).to_string()), value);
        return Ok(());
    }
    if rest.is_empty() {
        let parsed = parse_value(&field, value)?;
        if field.is_list() {
            message
                .get_field_mut(&field)
                .as_list_mut()
                .context("list field")?
                .push(parsed);
        } else {
            message.set_field(&field, parsed);
        }
        return Ok(());
    }
    if field.is_list() || !matches!(field.kind(), Kind::Message(_)) {
        bail!(Usage(format!("{first} has no fields of its own")));
    }
    let inner = message
        .get_field_mut(&field)
        .as_message_mut()
        .context("message field")?;
    set_path(inner, rest, value)
}

/// A value for a field: scalars from text, messages from inline JSON, and
/// the well-known times and durations from their usual spelling.
fn parse_value(field: &FieldDescriptor, text: &str) -> anyhow::Result<Value> {
    let Kind::Message(descriptor) = field.kind() else {
        return parse_scalar(field, text);
    };
    let json: serde_json::Value = match descriptor.full_name() {
        "google.protobuf.Timestamp" | "google.protobuf.Duration" => {
            serde_json::Value::String(text.to_string())
        }
        _ => serde_json::from_str(text).map_err(|_| {
            Usage(format!(
                "{} is a {}: set its fields ({}.FIELD=VALUE) or give it as JSON",
                field.name(),
                descriptor.name(),
                field.name()
            ))
        })?,
    };
    let message = DynamicMessage::deserialize(descriptor, json)
        .map_err(|e| Usage(format!("{}: {e}", field.name())))?;
    Ok(Value::Message(message))
}

fn parse_scalar(field: &FieldDescriptor, text: &str) -> anyhow::Result<Value> {
    let wrong = || {
        Usage(format!(
            "{}: {text:?} is not a {:?}",
            field.name(),
            field.kind()
        ))
    };
    Ok(match field.kind() {
        Kind::String => Value::String(text.to_string()),
        Kind::Bool => Value::Bool(text.parse().map_err(|_| wrong())?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(text.parse().map_err(|_| wrong())?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(text.parse().map_err(|_| wrong())?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(text.parse().map_err(|_| wrong())?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(text.parse().map_err(|_| wrong())?),
        Kind::Float => Value::F32(text.parse().map_err(|_| wrong())?),
        Kind::Double => Value::F64(text.parse().map_err(|_| wrong())?),
        Kind::Bytes => Value::Bytes(text.as_bytes().to_vec().into()),
        Kind::Enum(descriptor) => {
            // `GRANT_USE_BACKUP_SOURCE`, or just `backup_source`.
            let upper = text.to_ascii_uppercase();
            let value = descriptor
                .values()
                .find(|v| v.name() == upper || crate::output::short_enum(v.name()) == upper)
                .ok_or_else(|| {
                    let names: Vec<String> = descriptor
                        .values()
                        .skip(1)
                        .map(|v| v.name().to_string())
                        .collect();
                    Usage(format!(
                        "{}: {text:?} is not one of {}",
                        field.name(),
                        names.join(", ")
                    ))
                })?;
            Value::EnumNumber(value.number())
        }
        Kind::Message(_) => bail!("message field parsed as a scalar"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> DynamicMessage {
        let pool = prost_reflect::DescriptorPool::decode(coffer_proto::FILE_DESCRIPTOR_SET)
            .expect("descriptors");
        DynamicMessage::new(pool.get_message_by_name("coffer.v1.Job").expect("Job"))
    }

    fn set(message: &mut DynamicMessage, assignments: &[&str]) -> anyhow::Result<()> {
        let parsed: Vec<Assignment> = assignments
            .iter()
            .map(|a| a.parse().expect("FIELD=VALUE"))
            .collect();
        apply(message, &parsed)
    }

    #[test]
    fn set_fills_nested_fields_maps_lists_and_enums_by_short_name() {
        let mut job = job();
        set(
            &mut job,
            &[
                "name=daily",
                "target.bucket.bucket_id=b1",
                "workerSelector.host=db1",
                "options.exclude=*.tmp",
                "options.exclude=cache",
                "schedule.overlap_policy=queue",
                "max_attempts=3",
            ],
        )
        .expect("valid assignments");
        let json = crate::output::to_json(&job);
        assert_eq!(json["name"], "daily");
        assert_eq!(json["target"]["bucket"]["bucketId"], "b1");
        assert_eq!(json["workerSelector"]["host"], "db1");
        assert_eq!(
            json["options"]["exclude"],
            serde_json::json!(["*.tmp", "cache"])
        );
        assert_eq!(json["schedule"]["overlapPolicy"], "OVERLAP_POLICY_QUEUE");
        assert_eq!(json["maxAttempts"], 3);
    }

    #[test]
    fn wrong_names_and_values_are_usage_errors_naming_the_field() {
        for (wrong, named) in [
            ("sorce_path=/x", "sorce_path"),
            ("max_attempts=many", "max_attempts"),
            ("schedule.overlap_policy=sometimes", "overlap_policy"),
            ("target=/x", "target"),
        ] {
            let error = set(&mut job(), &[wrong]).expect_err(wrong);
            assert!(
                error.downcast_ref::<Usage>().is_some(),
                "{wrong}: {error:#}"
            );
            assert!(format!("{error:#}").contains(named), "{wrong}: {error:#}");
        }
    }
}
