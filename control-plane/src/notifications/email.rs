//! Sending a notice by e-mail over SMTP (`lettre`). The server's address is
//! checked like a webhook's and the connection goes to that address; TLS
//! (STARTTLS or implicit) verifies the configured host name. The addresses
//! were validated as mailboxes when the channel was made, and the subject
//! and body are Coffer's own text, so nothing a tenant wrote becomes a
//! header line.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::address::AddressPolicy;
use super::AttemptError;
use crate::model::notification::{EmailTarget, SmtpSecurity};

/// Longest wait for each step of the SMTP conversation.
const TIMEOUT: Duration = Duration::from_secs(10);

/// An SMTP login, zeroed when dropped.
pub struct Login {
    /// User name.
    pub user: zeroize::Zeroizing<String>,
    /// Password.
    pub password: zeroize::Zeroizing<String>,
}

/// Sends `subject` and `text` to the channel's recipients.
pub async fn send(
    target: &EmailTarget,
    login: Option<Login>,
    policy: &AddressPolicy,
    subject: &str,
    text: &str,
) -> Result<(), AttemptError> {
    let message = message(target, subject, text)?;
    let address = policy
        .resolve(&target.host, target.port)
        .await
        .map_err(|reason| {
            if reason.starts_with("cannot resolve") {
                AttemptError::transient(reason)
            } else {
                AttemptError::permanent(format!("refused: {reason}"))
            }
        })?;
    let tls = match target.security {
        SmtpSecurity::None => Tls::None,
        SmtpSecurity::StartTls => Tls::Required(tls_parameters(&target.host)?),
        SmtpSecurity::ImplicitTls => Tls::Wrapper(tls_parameters(&target.host)?),
    };
    let mut builder =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(address.ip().to_string())
            .port(address.port())
            .tls(tls)
            .timeout(Some(TIMEOUT));
    if let Some(login) = login {
        builder = builder.credentials(Credentials::new(
            login.user.to_string(),
            login.password.to_string(),
        ));
    }
    let transport = builder.build();
    let sent = tokio::time::timeout(TIMEOUT * 3, transport.send(message))
        .await
        .map_err(|_| AttemptError::transient("the SMTP server did not finish in time"))?;
    sent.map(|_| ()).map_err(|error| {
        let text = format!("SMTP: {error}");
        if error.is_permanent() {
            AttemptError::permanent(text)
        } else {
            AttemptError::transient(text)
        }
    })
}

fn tls_parameters(host: &str) -> Result<TlsParameters, AttemptError> {
    TlsParameters::new(host.to_string())
        .map_err(|e| AttemptError::permanent(format!("TLS set-up for {host} failed: {e}")))
}

fn message(target: &EmailTarget, subject: &str, text: &str) -> Result<Message, AttemptError> {
    let mailbox = |value: &str| {
        value
            .parse::<Mailbox>()
            .map_err(|_| AttemptError::permanent("an address of the channel no longer parses"))
    };
    let mut builder = Message::builder()
        .from(mailbox(&target.from)?)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for to in &target.to {
        builder = builder.to(mailbox(to)?);
    }
    builder
        .body(text.to_string())
        .map_err(|e| AttemptError::permanent(format!("building the message failed: {e}")))
}
