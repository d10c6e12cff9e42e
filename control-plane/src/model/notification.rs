//! Domain types for notifications: channels (a webhook or an SMTP mailbox),
//! rules routing events to them, and deliveries. A channel's sensitive
//! values (a webhook's signing secret and headers) are [`ChannelSecrets`]:
//! stored sealed, never returned after creation, redacted in `Debug`.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use zeroize::Zeroize;

use super::configuration::check_description;
use super::{check_len, check_name};
use crate::error::{DomainError, DomainResult, Violations};

/// Longest channel name.
pub const MAX_NAME_LEN: usize = 63;
/// Most extra headers a webhook may carry.
pub const MAX_HEADERS: usize = 20;
/// Most recipients of an e-mail channel.
pub const MAX_RECIPIENTS: usize = 20;
/// Headers the notifier sets itself, which a channel may not set.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "user-agent",
];
/// Prefix of the notifier's own headers (`Coffer-Signature`, …).
const RESERVED_PREFIX: &str = "coffer-";
/// RUN_WAITING's threshold when a rule leaves it 0.
pub const DEFAULT_WAITING_AFTER_SECONDS: i64 = 900;
/// Longest threshold a rule may set (30 days).
const MAX_THRESHOLD_SECONDS: i64 = 30 * 86_400;

/// A webhook: where it posts. The header values are sealed in
/// [`ChannelSecrets`]; only their names are kept here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookTarget {
    /// Absolute http(s) URL.
    pub url: String,
    /// Names of the extra headers.
    pub header_names: Vec<String>,
    /// The body's format (channels made before formats existed are Coffer's).
    #[serde(default)]
    pub format: WebhookFormat,
}

/// What a webhook's body looks like.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The documented Coffer JSON.
    #[default]
    Coffer,
    /// `{"text": ...}` for Slack and Mattermost incoming hooks.
    Slack,
}

/// How an SMTP connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// STARTTLS, required.
    StartTls,
    /// TLS from the first byte.
    ImplicitTls,
    /// No TLS.
    None,
}

/// An SMTP mailbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailTarget {
    /// SMTP server host.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Connection security.
    pub security: SmtpSecurity,
    /// Sender.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Secret of the channel's owner holding the login, if any (the older
    /// way; a channel's own login is [`EmailTarget::username`]).
    pub credentials_secret_id: Option<Uuid>,
    /// The user name of the channel's own login, if any; its password is
    /// sealed in [`ChannelSecrets::smtp_password`].
    #[serde(default)]
    pub username: Option<String>,
}

/// Where a channel's notices go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChannelTarget {
    /// An HTTP endpoint.
    Webhook(WebhookTarget),
    /// An SMTP mailbox.
    Email(EmailTarget),
}

impl ChannelTarget {
    /// The `kind` column's value.
    pub fn kind(&self) -> &'static str {
        match self {
            ChannelTarget::Webhook(_) => "webhook",
            ChannelTarget::Email(_) => "email",
        }
    }
}

/// The writable part of a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSpec {
    /// Owner.
    pub owner_id: Uuid,
    /// Name, unique per owner.
    pub name: String,
    /// Description.
    pub description: String,
    /// Where notices go.
    pub target: ChannelTarget,
}

/// Checks a channel's name and description (its target is checked as it
/// is built, see [`check_webhook`] and [`check_email`]).
pub fn check_channel_text(prefix: &str, name: &str, description: &str) -> DomainResult<()> {
    let mut violations = Violations::new();
    violations.absorb(check_name(&format!("{prefix}name"), name, MAX_NAME_LEN));
    violations.absorb(check_description(
        &format!("{prefix}description"),
        description,
    ));
    violations.finish()
}

/// A stored channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Channel {
    /// Id.
    pub id: Uuid,
    /// Owner, name, description, target.
    pub spec: ChannelSpec,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// Last change.
    pub update_time: DateTime<Utc>,
}

/// A channel's sealed values, zeroed when dropped; `Debug` shows none.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChannelSecrets {
    /// A webhook's signing secret (empty for e-mail).
    pub signing_secret: String,
    /// A webhook's extra headers, by name.
    pub headers: BTreeMap<String, String>,
    /// An e-mail channel's SMTP password (empty: no login of its own).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub smtp_password: String,
}

impl Drop for ChannelSecrets {
    fn drop(&mut self) {
        self.signing_secret.zeroize();
        self.smtp_password.zeroize();
        for value in self.headers.values_mut() {
            value.zeroize();
        }
    }
}

impl fmt::Debug for ChannelSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSecrets")
            .field("signing_secret", &"<redacted>")
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("smtp_password", &"<redacted>")
            .finish()
    }
}

/// Checks a webhook's URL and headers; returns the target (header names
/// lowercased) and the headers to seal.
pub fn check_webhook(
    prefix: &str,
    url: &str,
    headers: BTreeMap<String, String>,
    format: WebhookFormat,
) -> DomainResult<(WebhookTarget, BTreeMap<String, String>)> {
    let mut violations = Violations::new();
    violations.absorb(check_webhook_url(&format!("{prefix}url"), url));
    if headers.len() > MAX_HEADERS {
        violations.add(
            format!("{prefix}headers"),
            format!("at most {MAX_HEADERS} headers"),
        );
    }
    let mut checked = BTreeMap::new();
    for (name, value) in headers {
        let field = format!("{prefix}headers");
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            violations.add(&field, format!("{name:?} is not a valid header name"));
        } else if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with(RESERVED_PREFIX) {
            violations.add(&field, format!("{name:?} is set by Coffer itself"));
        } else if value.len() > 4096 || http::HeaderValue::from_str(&value).is_err() {
            // The value itself is never repeated: it may be a credential.
            violations.add(
                &field,
                format!("the value of {name:?} must be at most 4096 visible ASCII characters"),
            );
        } else {
            checked.insert(lower, value);
        }
    }
    violations.finish()?;
    let target = WebhookTarget {
        url: url.to_string(),
        header_names: checked.keys().cloned().collect(),
        format,
    };
    Ok((target, checked))
}

fn check_webhook_url(field: &str, value: &str) -> DomainResult<()> {
    check_len(field, value, 1, 2048)?;
    let url = url::Url::parse(value)
        .map_err(|_| DomainError::invalid(field, "must be an absolute http(s) URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(DomainError::invalid(field, "must be an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(DomainError::invalid(field, "must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(DomainError::invalid(
            field,
            "must not carry credentials; use a header instead",
        ));
    }
    if url.fragment().is_some() {
        return Err(DomainError::invalid(field, "must not have a fragment"));
    }
    Ok(())
}

/// Checks an e-mail address as a mailbox (`a@b.example` or `Name
/// <a@b.example>`), refusing anything that could add a header line.
pub fn check_mailbox(field: &str, value: &str) -> DomainResult<()> {
    check_len(field, value, 3, 320)?;
    if value.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    value
        .parse::<lettre::message::Mailbox>()
        .map(|_| ())
        .map_err(|_| DomainError::invalid(field, "is not an e-mail address"))
}

/// Checks an SMTP login's user name and password; the errors never repeat
/// the password.
fn check_smtp_login(
    prefix: &str,
    email: &EmailTarget,
    password: &str,
    violations: &mut Violations,
) {
    let Some(username) = &email.username else {
        if !password.is_empty() {
            violations.add(format!("{prefix}password"), "needs a username");
        }
        return;
    };
    let user_field = format!("{prefix}username");
    if violations
        .absorb(check_len(&user_field, username, 1, 256))
        .is_some()
        && username.chars().any(char::is_control)
    {
        violations.add(&user_field, "must not contain control characters");
    }
    if email.credentials_secret_id.is_some() {
        violations.add(
            &user_field,
            "a channel has its own login or names a secret, not both",
        );
    }
    if password.is_empty() || password.len() > 1024 || password.chars().any(char::is_control) {
        violations.add(
            format!("{prefix}password"),
            "must be 1-1024 bytes without control characters",
        );
    }
}

/// Checks an e-mail channel's settings (and the password of its own login,
/// empty for none); `port` 0 picks the security's usual port.
pub fn check_email(
    prefix: &str,
    mut email: EmailTarget,
    password: &str,
) -> DomainResult<EmailTarget> {
    let mut violations = Violations::new();
    let host_field = format!("{prefix}host");
    if violations
        .absorb(check_len(&host_field, &email.host, 1, 253))
        .is_some()
        && url::Host::parse(&email.host).is_err()
    {
        violations.add(&host_field, "is not a host name or address");
    }
    violations.absorb(check_mailbox(&format!("{prefix}from"), &email.from));
    if email.to.is_empty() || email.to.len() > MAX_RECIPIENTS {
        violations.add(
            format!("{prefix}to"),
            format!("needs 1 to {MAX_RECIPIENTS} addresses"),
        );
    }
    for (i, to) in email.to.iter().enumerate() {
        violations.absorb(check_mailbox(&format!("{prefix}to[{i}]"), to));
    }
    check_smtp_login(prefix, &email, password, &mut violations);
    if email.security == SmtpSecurity::None {
        let login_field = match email.username {
            Some(_) => Some("username"),
            None => email.credentials_secret_id.map(|_| "credentials_secret_id"),
        };
        if let Some(name) = login_field {
            violations.add(
                format!("{prefix}{name}"),
                "a login is never sent without TLS; choose STARTTLS or implicit TLS",
            );
        }
    }
    violations.finish()?;
    if email.port == 0 {
        email.port = match email.security {
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::ImplicitTls => 465,
            SmtpSecurity::None => 25,
        };
    }
    Ok(email)
}

/// What a notice is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A run failed.
    RunFailed,
    /// A run succeeded.
    RunSucceeded,
    /// A run was cancelled.
    RunCancelled,
    /// A scheduled job went without a successful backup too long.
    JobStale,
    /// A stale job backed up again.
    JobRecovered,
    /// A run waited for a worker too long.
    RunWaiting,
    /// A test notice.
    Test,
}

impl Event {
    /// The stored name, also the `event` of the JSON body (`run.failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Event::RunFailed => "run.failed",
            Event::RunSucceeded => "run.succeeded",
            Event::RunCancelled => "run.cancelled",
            Event::JobStale => "job.stale",
            Event::JobRecovered => "job.recovered",
            Event::RunWaiting => "run.waiting",
            Event::Test => "test",
        }
    }

    /// Parses a stored name.
    pub fn parse(value: &str) -> DomainResult<Self> {
        [
            Event::RunFailed,
            Event::RunSucceeded,
            Event::RunCancelled,
            Event::JobStale,
            Event::JobRecovered,
            Event::RunWaiting,
            Event::Test,
        ]
        .into_iter()
        .find(|event| event.as_str() == value)
        .ok_or_else(|| DomainError::Internal(format!("unknown notification event {value:?}")))
    }
}

/// The events a rule fires on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventSet {
    /// Run failed.
    pub run_failed: bool,
    /// Run succeeded.
    pub run_succeeded: bool,
    /// Run cancelled.
    pub run_cancelled: bool,
    /// Job stale (and recovered).
    pub job_stale: bool,
    /// Run waiting.
    pub run_waiting: bool,
}

impl EventSet {
    /// Adds `event`; false for events a rule cannot choose.
    pub fn insert(&mut self, event: Event) -> bool {
        match event {
            Event::RunFailed => self.run_failed = true,
            Event::RunSucceeded => self.run_succeeded = true,
            Event::RunCancelled => self.run_cancelled = true,
            Event::JobStale => self.job_stale = true,
            Event::RunWaiting => self.run_waiting = true,
            Event::JobRecovered | Event::Test => return false,
        }
        true
    }

    /// The events in the set, in a fixed order.
    pub fn events(self) -> Vec<Event> {
        [
            (self.run_failed, Event::RunFailed),
            (self.run_succeeded, Event::RunSucceeded),
            (self.run_cancelled, Event::RunCancelled),
            (self.job_stale, Event::JobStale),
            (self.run_waiting, Event::RunWaiting),
        ]
        .into_iter()
        .filter_map(|(on, event)| on.then_some(event))
        .collect()
    }

    /// Whether a run that ended in `state` fires.
    pub fn fires_on_run_end(self, state: &str) -> Option<Event> {
        match state {
            "failed" if self.run_failed => Some(Event::RunFailed),
            "succeeded" if self.run_succeeded => Some(Event::RunSucceeded),
            "cancelled" if self.run_cancelled => Some(Event::RunCancelled),
            _ => None,
        }
    }
}

/// The writable part of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    /// Owner (the channel's).
    pub owner_id: Uuid,
    /// Where notices go.
    pub channel_id: Uuid,
    /// One job, or (None) every job of the owner.
    pub job_id: Option<Uuid>,
    /// Every owner's jobs (admins only).
    pub all_owners: bool,
    /// Events that fire.
    pub events: EventSet,
    /// JOB_STALE threshold in seconds (0: twice the schedule interval).
    pub stale_after_seconds: i64,
    /// RUN_WAITING threshold in seconds (0: the default).
    pub waiting_after_seconds: i64,
}

impl RuleSpec {
    /// Validates the fields that need no catalog lookup.
    pub fn validate(&self, prefix: &str) -> DomainResult<()> {
        let mut violations = Violations::new();
        if self.events == EventSet::default() {
            violations.add(format!("{prefix}events"), "needs at least one event");
        }
        if self.all_owners && self.job_id.is_some() {
            violations.add(
                format!("{prefix}all_owners"),
                "is a scope of its own; leave job_id empty",
            );
        }
        for (name, value) in [
            ("stale_after_seconds", self.stale_after_seconds),
            ("waiting_after_seconds", self.waiting_after_seconds),
        ] {
            if !(0..=MAX_THRESHOLD_SECONDS).contains(&value) {
                violations.add(
                    format!("{prefix}{name}"),
                    format!("must be from 0 to {MAX_THRESHOLD_SECONDS}"),
                );
            }
        }
        violations.finish()
    }
}

/// A stored rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Id.
    pub id: Uuid,
    /// Its settings.
    pub spec: RuleSpec,
    /// Creation time; only later events fire.
    pub create_time: DateTime<Utc>,
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for an attempt.
    Pending,
    /// Accepted by the receiver.
    Delivered,
    /// Given up.
    Failed,
}

impl DeliveryState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(value: &str) -> DomainResult<Self> {
        match value {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "failed" => Ok(DeliveryState::Failed),
            other => Err(DomainError::Internal(format!(
                "unknown delivery state {other:?}"
            ))),
        }
    }
}

/// One notice to one channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Id.
    pub id: Uuid,
    /// The channel.
    pub channel_id: Uuid,
    /// The rule that fired (None: a test, or the rule was deleted).
    pub rule_id: Option<Uuid>,
    /// Owner (the channel's).
    pub owner_id: Uuid,
    /// What it is about.
    pub event: Event,
    /// The run it is about.
    pub run_id: Option<Uuid>,
    /// The job it is about.
    pub job_id: Option<Uuid>,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts so far.
    pub attempts: i32,
    /// The last attempt's error.
    pub last_error: String,
    /// The last HTTP status (0: none).
    pub http_status: i32,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// When the next attempt is due.
    pub next_attempt_time: DateTime<Utc>,
    /// When it ended.
    pub finish_time: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_never_repeated_in_errors() {
        let headers = BTreeMap::from([
            (
                "Authorization".to_string(),
                "Bearer s3cr3t\r\nX: y".to_string(),
            ),
            ("Coffer-Signature".to_string(), "forged".to_string()),
        ]);
        let error = check_webhook(
            "channel.webhook.",
            "https://hooks.example.com/x",
            headers,
            WebhookFormat::Slack,
        )
        .expect_err("refused");
        let text = error.to_string();
        assert!(text.contains("channel.webhook.headers"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(!text.contains("forged"), "{text}");
    }

    #[test]
    fn webhook_urls_need_a_host_and_no_credentials() {
        for bad in [
            "ftp://example.com/x",
            "https://user:pw@example.com/",
            "/relative",
            "https://example.com/#frag",
        ] {
            assert!(check_webhook_url("url", bad).is_err(), "{bad} was accepted");
        }
        check_webhook_url("url", "https://hooks.example.com/a?b=c").expect("accepted");
    }

    #[test]
    fn mailboxes_that_would_inject_headers_are_refused() {
        for bad in [
            "ops@example.com\r\nBcc: victim@example.com",
            "ops@example.com\nSubject: hi",
            "not an address",
        ] {
            assert!(check_mailbox("to", bad).is_err(), "{bad:?} was accepted");
        }
        check_mailbox("to", "Ops <ops@example.com>").expect("accepted");
    }

    #[test]
    fn debug_shows_no_secret_value() {
        let secrets = ChannelSecrets {
            signing_secret: "whsec_visible".into(),
            headers: BTreeMap::from([("authorization".into(), "Bearer hidden".into())]),
            smtp_password: "smtp-hidden".into(),
        };
        let shown = format!("{secrets:?}");
        assert!(
            !shown.contains("whsec_visible") && !shown.contains("hidden"),
            "{shown}"
        );
    }

    #[test]
    fn an_smtp_login_needs_both_halves_and_tls() {
        let email = |username: Option<&str>, security| EmailTarget {
            host: "smtp.example.com".into(),
            port: 0,
            security,
            from: "coffer@example.com".into(),
            to: vec!["ops@example.com".into()],
            credentials_secret_id: None,
            username: username.map(str::to_string),
        };
        let refused = |target, password: &str| {
            check_email("email.", target, password)
                .expect_err("refused")
                .to_string()
        };
        let text = refused(email(None, SmtpSecurity::StartTls), "pw-orphan");
        assert!(text.contains("email.password"), "{text}");
        let text = refused(email(Some("ops"), SmtpSecurity::StartTls), "");
        assert!(text.contains("email.password"), "{text}");
        let text = refused(email(Some("ops"), SmtpSecurity::None), "pw-plain\n");
        assert!(text.contains("email.username"), "{text}");
        assert!(!text.contains("pw-plain"), "{text}");
        let accepted = check_email(
            "email.",
            email(Some("ops"), SmtpSecurity::ImplicitTls),
            "pw",
        )
        .expect("accepted");
        assert_eq!(accepted.port, 465);
    }

    #[test]
    fn channel_values_without_a_password_read_as_before() {
        let stored = r#"{"signing_secret":"whsec_x","headers":{}}"#;
        let values: ChannelSecrets = serde_json::from_str(stored).expect("old values");
        assert!(values.smtp_password.is_empty());
        assert_eq!(serde_json::to_string(&values).expect("encode"), stored);
    }
}
