//! The channel to a control plane: TLS, the bearer token on every call, the
//! typed clients generated from `proto/`, and calls by method name for the
//! resource commands (which are driven by the API's descriptors).

use anyhow::Context as _;
use coffer_proto::v1 as pb;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor, ReflectMessage as _,
};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

use crate::context::Target;

/// Adds `authorization: Bearer …` to every request.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The transport every client uses.
pub type Transport = InterceptedService<Channel, Bearer>;

/// A connection to one control plane.
#[derive(Clone)]
pub struct Api {
    transport: Transport,
    pool: DescriptorPool,
}

impl Api {
    /// Connects lazily: the first call reports an unreachable server.
    pub fn connect(target: &Target) -> anyhow::Result<Api> {
        let uri = endpoint_uri(&target.endpoint);
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .with_context(|| format!("endpoint {:?} is not a valid address", target.endpoint))?;
        if uri.starts_with("https://") {
            let tls = match &target.ca_pem {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .context("TLS settings of the endpoint")?;
        }
        let bearer = match &target.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .context("the token holds characters a header cannot carry")?,
            ),
            None => None,
        };
        let channel = endpoint.connect_lazy();
        Ok(Api {
            transport: InterceptedService::new(channel, Bearer(bearer)),
            pool: descriptor_pool(),
        })
    }

    /// The API's descriptors.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// `RunService`.
    pub fn runs(&self) -> pb::run_service_client::RunServiceClient<Transport> {
        pb::run_service_client::RunServiceClient::new(self.transport.clone())
    }

    /// `ObjectService`.
    pub fn objects(&self) -> pb::object_service_client::ObjectServiceClient<Transport> {
        pb::object_service_client::ObjectServiceClient::new(self.transport.clone())
    }

    /// `DownloadService`.
    pub fn downloads(&self) -> pb::download_service_client::DownloadServiceClient<Transport> {
        pb::download_service_client::DownloadServiceClient::new(self.transport.clone())
    }

    /// `CopyService`.
    pub fn copies(&self) -> pb::copy_service_client::CopyServiceClient<Transport> {
        pb::copy_service_client::CopyServiceClient::new(self.transport.clone())
    }

    /// `JobService`.
    pub fn jobs(&self) -> pb::job_service_client::JobServiceClient<Transport> {
        pb::job_service_client::JobServiceClient::new(self.transport.clone())
    }

    /// `RetentionService`.
    pub fn retention(&self) -> pb::retention_service_client::RetentionServiceClient<Transport> {
        pb::retention_service_client::RetentionServiceClient::new(self.transport.clone())
    }

    /// `UserService`.
    pub fn users(&self) -> pb::user_service_client::UserServiceClient<Transport> {
        pb::user_service_client::UserServiceClient::new(self.transport.clone())
    }

    /// `SecretService`.
    pub fn secrets(&self) -> pb::secret_service_client::SecretServiceClient<Transport> {
        pb::secret_service_client::SecretServiceClient::new(self.transport.clone())
    }

    /// The descriptor of `coffer.v1.SERVICE/METHOD`.
    pub fn method(&self, service: &str, method: &str) -> anyhow::Result<MethodDescriptor> {
        let service = self
            .pool
            .get_service_by_name(&format!("coffer.v1.{service}"))
            .with_context(|| format!("the API has no service {service}"))?;
        let found = service.methods().find(|m| m.name() == method);
        found.with_context(|| format!("{} has no method {method}", service.full_name()))
    }

    /// Calls a unary method with a request built from its descriptor.
    pub async fn call(
        &self,
        method: &MethodDescriptor,
        request: DynamicMessage,
    ) -> Result<DynamicMessage, Status> {
        let mut grpc = tonic::client::Grpc::new(self.transport.clone());
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("control plane unreachable: {e}")))?;
        let path = format!("/{}/{}", method.parent_service().full_name(), method.name())
            .parse()
            .map_err(|_| Status::internal("method path"))?;
        let codec = DynamicCodec(method.output());
        grpc.unary(Request::new(request), path, codec)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// A typed message as a dynamic one (for output), by its full name.
pub fn to_dynamic<M: prost::Message>(
    pool: &DescriptorPool,
    name: &str,
    message: &M,
) -> anyhow::Result<DynamicMessage> {
    let descriptor = message_descriptor(pool, name)?;
    DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .with_context(|| format!("re-decoding {name}"))
}

/// A dynamic message as the typed one generated from the same descriptor.
pub fn to_typed<M: prost::Message + Default>(message: &DynamicMessage) -> anyhow::Result<M> {
    M::decode(message.encode_to_vec().as_slice())
        .with_context(|| format!("decoding {}", message.descriptor().full_name()))
}

/// `coffer.v1.NAME` (or a fully qualified name).
pub fn message_descriptor(pool: &DescriptorPool, name: &str) -> anyhow::Result<MessageDescriptor> {
    let full = if name.contains('.') {
        name.to_string()
    } else {
        format!("coffer.v1.{name}")
    };
    pool.get_message_by_name(&full)
        .with_context(|| format!("the API has no message {full}"))
}

fn descriptor_pool() -> DescriptorPool {
    DescriptorPool::decode(coffer_proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set compiled into coffer-proto is valid")
}

/// `host:port` means TLS; `http://` must be asked for.
fn endpoint_uri(endpoint: &str) -> String {
    if endpoint.starts_with("https://") || endpoint.starts_with("http://") {
        endpoint.to_string()
    } else {
        format!("https://{endpoint}")
    }
}

/// Encodes and decodes messages known only by their descriptors.
#[derive(Clone)]
struct DynamicCodec(MessageDescriptor);

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder(self.0.clone())
    }
}

struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the request: {e}")))
    }
}

struct DynamicDecoder(MessageDescriptor);

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding the response: {e}")))
    }
}
