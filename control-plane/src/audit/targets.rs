//! Which calls are audited, and the resource ids they name.
//!
//! Ids are read from the request and response messages through the API's
//! own descriptors, and only from fields named `id`, `…_id` or `…_ids`
//! (except `request_id`, a client's idempotency key) whose values parse as
//! UUIDs: a reviewed allowlist by construction, so no name, path, tag value,
//! token or other secret can reach the log whatever a caller sends.

use std::sync::{Arc, LazyLock};

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor, Value};
use uuid::Uuid;

/// The most ids one event records.
const MAX_TARGETS: usize = 32;
/// How deep into nested messages ids are looked for.
const MAX_DEPTH: usize = 4;

static POOL: LazyLock<Option<Arc<DescriptorPool>>> = LazyLock::new(
    || match DescriptorPool::decode(coffer_proto::FILE_DESCRIPTOR_SET) {
        Ok(pool) => Some(Arc::new(pool)),
        Err(error) => {
            tracing::error!(%error, "audit: the API descriptors do not decode; targets are not recorded");
            None
        }
    },
);

/// An audited method: its full name and descriptor.
#[derive(Clone, Debug)]
pub(super) struct AuditedMethod {
    /// `coffer.v1.JobService/CreateJob`.
    pub action: String,
    descriptor: Option<MethodDescriptor>,
}

impl AuditedMethod {
    /// The audited method of an HTTP path (`/coffer.v1.JobService/CreateJob`),
    /// or `None` for reads (Get/List/Watch/Plan), the worker's lease stream
    /// and anything outside `coffer.v1` (health, reflection).
    pub fn of_path(path: &str) -> Option<AuditedMethod> {
        let full = path.strip_prefix('/')?;
        let (service, method) = full.split_once('/')?;
        if !service.starts_with("coffer.v1.") || is_read(method) {
            return None;
        }
        let descriptor = POOL
            .as_ref()
            .and_then(|pool| pool.get_service_by_name(service))
            .and_then(|service| service.methods().find(|m| m.name() == method));
        // The worker's lease session (client streaming) is the worker's own
        // traffic; what it changes shows up as run events.
        if descriptor.as_ref().is_some_and(|m| m.is_client_streaming()) {
            return None;
        }
        Some(AuditedMethod {
            action: full.to_string(),
            descriptor,
        })
    }

    /// Whether the response is one message, so it may be buffered.
    pub fn is_unary(&self) -> bool {
        self.descriptor
            .as_ref()
            .is_some_and(|m| !m.is_client_streaming() && !m.is_server_streaming())
    }

    /// The ids named by a request body (gRPC-framed).
    pub fn request_targets(&self, body: &[u8]) -> Vec<Uuid> {
        self.descriptor
            .as_ref()
            .map(|m| ids_of_frame(m.input(), body))
            .unwrap_or_default()
    }

    /// The ids named by a response body (gRPC-framed).
    pub fn response_targets(&self, body: &[u8]) -> Vec<Uuid> {
        self.descriptor
            .as_ref()
            .map(|m| ids_of_frame(m.output(), body))
            .unwrap_or_default()
    }
}

fn is_read(method: &str) -> bool {
    ["Get", "List", "Watch", "Plan"]
        .iter()
        .any(|prefix| method.starts_with(prefix))
}

/// Ids in the first message of a gRPC-framed body: a flag byte (compressed
/// messages are skipped), a big-endian length, the message.
fn ids_of_frame(descriptor: MessageDescriptor, body: &[u8]) -> Vec<Uuid> {
    let Some((&[0], rest)) = body.split_first_chunk::<1>() else {
        return Vec::new();
    };
    let Some((length, rest)) = rest.split_first_chunk::<4>() else {
        return Vec::new();
    };
    let Some(message) = usize::try_from(u32::from_be_bytes(*length))
        .ok()
        .and_then(|length| rest.get(..length))
    else {
        return Vec::new();
    };
    let Ok(message) = DynamicMessage::decode(descriptor, message) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    collect_ids(&message, 0, &mut ids);
    ids
}

fn collect_ids(message: &DynamicMessage, depth: usize, ids: &mut Vec<Uuid>) {
    for (field, value) in message.fields() {
        let name = field.name();
        let id_field = name == "id" || (name.ends_with("_id") && name != "request_id");
        match value {
            Value::String(text) if id_field => push_id(ids, text),
            Value::List(items) if name.ends_with("_ids") => {
                for item in items {
                    if let Value::String(text) = item {
                        push_id(ids, text);
                    }
                }
            }
            Value::Message(inner) if depth < MAX_DEPTH => collect_ids(inner, depth + 1, ids),
            _ => {}
        }
    }
}

fn push_id(ids: &mut Vec<Uuid>, text: &str) {
    if let Ok(id) = Uuid::parse_str(text) {
        if ids.len() < MAX_TARGETS && !ids.contains(&id) {
            ids.push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn framed(message: &impl Message) -> Vec<u8> {
        let bytes = message.encode_to_vec();
        let mut body = vec![0];
        body.extend_from_slice(&u32::try_from(bytes.len()).expect("small").to_be_bytes());
        body.extend_from_slice(&bytes);
        body
    }

    #[test]
    fn reads_and_the_lease_stream_are_not_audited() {
        for path in [
            "/coffer.v1.JobService/GetJob",
            "/coffer.v1.RunService/ListRuns",
            "/coffer.v1.RunService/WatchRun",
            "/coffer.v1.RetentionService/PlanRetention",
            "/coffer.v1.WorkerService/LeaseSession",
            "/grpc.health.v1.Health/Check",
        ] {
            assert!(AuditedMethod::of_path(path).is_none(), "{path}");
        }
        let method = AuditedMethod::of_path("/coffer.v1.JobService/DeleteJob").expect("audited");
        assert!(method.is_unary());
    }

    #[test]
    fn only_uuid_id_fields_are_taken() {
        use coffer_proto::v1 as pb;
        let user = Uuid::now_v7();
        let token = pb::CreateApiTokenRequest {
            user_id: user.to_string(),
            display_name: "coffer_secret_value".into(),
            ..Default::default()
        };
        let method =
            AuditedMethod::of_path("/coffer.v1.UserService/CreateApiToken").expect("audited");
        assert_eq!(method.request_targets(&framed(&token)), vec![user]);
        let delete = pb::DeleteJobRequest {
            id: "not-a-uuid coffer_secret".into(),
        };
        let method = AuditedMethod::of_path("/coffer.v1.JobService/DeleteJob").expect("audited");
        assert!(method.request_targets(&framed(&delete)).is_empty());
    }
}
