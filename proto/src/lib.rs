//! The `coffer.v1` gRPC API: generated message types, clients and servers, and
//! the encoded file-descriptor set served through reflection.

/// The `coffer.v1` package.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("coffer.v1");
}

/// `Debug` of the messages that carry secret values: which fields are set,
/// never what they hold.
macro_rules! redacted_debug {
    ($($message:ident),*) => {
        $(
            impl std::fmt::Debug for v1::$message {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    let shown = |value: &str| if value.is_empty() { "" } else { "<redacted>" };
                    f.debug_struct(stringify!($message))
                        .field("access_key_id", &shown(&self.access_key_id))
                        .field("secret_access_key", &shown(&self.secret_access_key))
                        .field("session_token", &shown(&self.session_token))
                        .finish()
                }
            }
        )*
    };
}

redacted_debug!(S3CredentialValues, LeasedS3Credentials);

/// `Debug` of a webhook: the URL and the header names, not their values.
impl std::fmt::Debug for v1::WebhookChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.headers.keys().collect();
        names.sort();
        f.debug_struct("WebhookChannel")
            .field("url", &self.url)
            .field("headers", &names)
            .field("format", &self.format)
            .finish()
    }
}

/// `Debug` of an e-mail channel: everything but the password's value.
impl std::fmt::Debug for v1::EmailChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let password = if self.password.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        f.debug_struct("EmailChannel")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("from", &self.from)
            .field("to", &self.to)
            .field("credentials_secret_id", &self.credentials_secret_id)
            .field("username", &self.username)
            .field("password", &password)
            .finish()
    }
}

/// `Debug` of the answers that carry a signing secret: the channel, and
/// whether a secret is there.
macro_rules! signing_secret_debug {
    ($($message:ident),*) => {
        $(
            impl std::fmt::Debug for v1::$message {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    let shown = if self.signing_secret.is_empty() { "" } else { "<redacted>" };
                    f.debug_struct(stringify!($message))
                        .field("channel", &self.channel)
                        .field("signing_secret", &shown)
                        .finish()
                }
            }
        )*
    };
}

signing_secret_debug!(
    CreateNotificationChannelResponse,
    RotateNotificationChannelSecretResponse
);

/// `Debug` of a copy run's source: where it is, not the key that opens it.
impl std::fmt::Debug for v1::CopySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = if self.catalog_key.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        f.debug_struct("CopySource")
            .field("target", &self.target)
            .field("repository_id", &self.repository_id)
            .field("repository_format", &self.repository_format)
            .field("catalog_key", &key)
            .field("manifest_key", &self.manifest_key)
            .finish_non_exhaustive()
    }
}

/// Encoded `FileDescriptorSet` of every `coffer.v1` file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("coffer_descriptor");
