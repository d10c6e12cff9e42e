//! NotificationService: channels, rules and deliveries. A non-admin sees
//! only its own; anything else is reported as not found. A webhook's
//! signing secret goes from the generator into the sealed row and into the
//! one response that shows it; the headers' values are input only.

use std::collections::BTreeMap;

use coffer_proto::v1 as pb;
use coffer_proto::v1::notification_service_server::NotificationService;
use tonic::Request;

use super::convert::{optional_id, optional_timestamp, required, timestamp};
use super::{respond, RpcResult};
use crate::auth::Caller;
use crate::catalog::{new_id, Page};
use crate::error::{DomainError, DomainResult, Violations};
use crate::model::notification::{
    check_channel_text, check_email, check_webhook, Channel, ChannelSecrets, ChannelSpec,
    ChannelTarget, Delivery, DeliveryState, EmailTarget, Event, EventSet, Rule, RuleSpec,
    SmtpSecurity, WebhookFormat,
};
use crate::model::{parse_id, parse_optional_id};
use crate::notifications::address::AddressPolicy;
use crate::notifications::{Notifier, NotifierSettings};
use crate::secrets::notification::generate_signing_secret;
use crate::state::AppState;

/// Handler of `coffer.v1.NotificationService`.
#[derive(Clone, Debug)]
pub struct NotificationApi {
    state: AppState,
}

impl NotificationApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        NotificationApi { state }
    }
}

impl From<Channel> for pb::NotificationChannel {
    fn from(channel: Channel) -> Self {
        let kind = match channel.spec.target {
            ChannelTarget::Webhook(webhook) => {
                let format = match webhook.format {
                    WebhookFormat::Coffer => pb::WebhookFormat::Coffer,
                    WebhookFormat::Slack => pb::WebhookFormat::Slack,
                };
                pb::notification_channel::Kind::Webhook(pb::WebhookChannel {
                    url: webhook.url,
                    // Names only: the values are sealed and never returned.
                    headers: webhook
                        .header_names
                        .into_iter()
                        .map(|name| (name, String::new()))
                        .collect(),
                    format: format.into(),
                })
            }
            ChannelTarget::Email(email) => {
                let security = match email.security {
                    SmtpSecurity::StartTls => pb::SmtpSecurity::Starttls,
                    SmtpSecurity::ImplicitTls => pb::SmtpSecurity::ImplicitTls,
                    SmtpSecurity::None => pb::SmtpSecurity::None,
                };
                pb::notification_channel::Kind::Email(pb::EmailChannel {
                    host: email.host,
                    port: u32::from(email.port),
                    security: security.into(),
                    from: email.from,
                    to: email.to,
                    credentials_secret_id: optional_id(email.credentials_secret_id),
                    username: email.username.unwrap_or_default(),
                    // Input only: sealed, never returned.
                    password: String::new(),
                })
            }
        };
        pb::NotificationChannel {
            id: channel.id.to_string(),
            owner_id: channel.spec.owner_id.to_string(),
            name: channel.spec.name,
            description: channel.spec.description,
            kind: Some(kind),
            create_time: Some(timestamp(channel.create_time)),
            update_time: Some(timestamp(channel.update_time)),
        }
    }
}

fn event_to_proto(event: Event) -> pb::NotificationEvent {
    match event {
        Event::RunFailed => pb::NotificationEvent::RunFailed,
        Event::RunSucceeded => pb::NotificationEvent::RunSucceeded,
        Event::RunCancelled => pb::NotificationEvent::RunCancelled,
        Event::JobStale => pb::NotificationEvent::JobStale,
        Event::JobRecovered => pb::NotificationEvent::JobRecovered,
        Event::RunWaiting => pb::NotificationEvent::RunWaiting,
        Event::Test => pb::NotificationEvent::Test,
    }
}

fn event_from_proto(value: i32) -> Option<Event> {
    match pb::NotificationEvent::try_from(value).ok()? {
        pb::NotificationEvent::Unspecified => None,
        pb::NotificationEvent::RunFailed => Some(Event::RunFailed),
        pb::NotificationEvent::RunSucceeded => Some(Event::RunSucceeded),
        pb::NotificationEvent::RunCancelled => Some(Event::RunCancelled),
        pb::NotificationEvent::JobStale => Some(Event::JobStale),
        pb::NotificationEvent::JobRecovered => Some(Event::JobRecovered),
        pb::NotificationEvent::RunWaiting => Some(Event::RunWaiting),
        pb::NotificationEvent::Test => Some(Event::Test),
    }
}

impl From<Rule> for pb::NotificationRule {
    fn from(rule: Rule) -> Self {
        pb::NotificationRule {
            id: rule.id.to_string(),
            owner_id: rule.spec.owner_id.to_string(),
            channel_id: rule.spec.channel_id.to_string(),
            job_id: optional_id(rule.spec.job_id),
            all_owners: rule.spec.all_owners,
            events: rule
                .spec
                .events
                .events()
                .into_iter()
                .map(|event| event_to_proto(event).into())
                .collect(),
            stale_after_seconds: rule.spec.stale_after_seconds,
            waiting_after_seconds: rule.spec.waiting_after_seconds,
            create_time: Some(timestamp(rule.create_time)),
        }
    }
}

fn state_to_proto(state: DeliveryState) -> pb::NotificationDeliveryState {
    match state {
        DeliveryState::Pending => pb::NotificationDeliveryState::Pending,
        DeliveryState::Delivered => pb::NotificationDeliveryState::Delivered,
        DeliveryState::Failed => pb::NotificationDeliveryState::Failed,
    }
}

impl From<Delivery> for pb::NotificationDelivery {
    fn from(delivery: Delivery) -> Self {
        let pending = delivery.state == DeliveryState::Pending;
        pb::NotificationDelivery {
            id: delivery.id.to_string(),
            channel_id: delivery.channel_id.to_string(),
            rule_id: optional_id(delivery.rule_id),
            owner_id: delivery.owner_id.to_string(),
            event: event_to_proto(delivery.event).into(),
            run_id: optional_id(delivery.run_id),
            job_id: optional_id(delivery.job_id),
            state: state_to_proto(delivery.state).into(),
            attempts: delivery.attempts,
            last_error: delivery.last_error,
            http_status: delivery.http_status,
            create_time: Some(timestamp(delivery.create_time)),
            next_attempt_time: optional_timestamp(pending.then_some(delivery.next_attempt_time)),
            finish_time: optional_timestamp(delivery.finish_time),
        }
    }
}

/// A channel's target and the values to seal (without the signing secret,
/// which the server makes), validated; `prefix` starts the field names
/// (`channel.`).
fn target_of(
    prefix: &str,
    kind: Option<pb::notification_channel::Kind>,
) -> DomainResult<(ChannelTarget, ChannelSecrets)> {
    match kind {
        None => Err(DomainError::invalid(
            format!("{prefix}kind"),
            "set webhook or email",
        )),
        Some(pb::notification_channel::Kind::Webhook(webhook)) => {
            let field = format!("{prefix}webhook.");
            let format = match pb::WebhookFormat::try_from(webhook.format) {
                Ok(pb::WebhookFormat::Unspecified | pb::WebhookFormat::Coffer) => {
                    WebhookFormat::Coffer
                }
                Ok(pb::WebhookFormat::Slack) => WebhookFormat::Slack,
                Err(_) => {
                    return Err(DomainError::invalid(
                        format!("{field}format"),
                        "must be WEBHOOK_FORMAT_COFFER or WEBHOOK_FORMAT_SLACK",
                    ))
                }
            };
            let headers = webhook.headers.into_iter().collect();
            let (target, headers) = check_webhook(&field, &webhook.url, headers, format)?;
            let secrets = ChannelSecrets {
                signing_secret: String::new(),
                headers,
                smtp_password: String::new(),
            };
            Ok((ChannelTarget::Webhook(target), secrets))
        }
        Some(pb::notification_channel::Kind::Email(email)) => {
            let field = format!("{prefix}email.");
            let security = match pb::SmtpSecurity::try_from(email.security) {
                Ok(pb::SmtpSecurity::Unspecified | pb::SmtpSecurity::Starttls) => {
                    SmtpSecurity::StartTls
                }
                Ok(pb::SmtpSecurity::ImplicitTls) => SmtpSecurity::ImplicitTls,
                Ok(pb::SmtpSecurity::None) => SmtpSecurity::None,
                Err(_) => {
                    return Err(DomainError::invalid(
                        format!("{field}security"),
                        "unknown value",
                    ))
                }
            };
            let port = u16::try_from(email.port)
                .map_err(|_| DomainError::invalid(format!("{field}port"), "must be 0-65535"))?;
            let credentials_secret_id = parse_optional_id(
                &format!("{field}credentials_secret_id"),
                &email.credentials_secret_id,
            )?;
            let username = (!email.username.is_empty()).then_some(email.username);
            let target = check_email(
                &field,
                EmailTarget {
                    host: email.host,
                    port,
                    security,
                    from: email.from,
                    to: email.to,
                    credentials_secret_id,
                    username,
                },
                &email.password,
            )?;
            let secrets = ChannelSecrets {
                signing_secret: String::new(),
                headers: BTreeMap::new(),
                smtp_password: email.password,
            };
            Ok((ChannelTarget::Email(target), secrets))
        }
    }
}

/// Refuses a target whose host is, or resolves to, an address the policy
/// does not allow. A name that does not resolve yet is accepted: every
/// send checks again.
async fn check_reachable(
    policy: &AddressPolicy,
    prefix: &str,
    target: &ChannelTarget,
) -> DomainResult<()> {
    let (field, host, port) = match target {
        ChannelTarget::Webhook(webhook) => {
            let url = url::Url::parse(&webhook.url)
                .map_err(|_| DomainError::invalid(format!("{prefix}webhook.url"), "bad URL"))?;
            let host = url.host_str().unwrap_or_default().to_string();
            let port = url.port_or_known_default().unwrap_or(443);
            (format!("{prefix}webhook.url"), host, port)
        }
        ChannelTarget::Email(email) => (
            format!("{prefix}email.host"),
            email.host.clone(),
            email.port,
        ),
    };
    match policy.resolve(&host, port).await {
        Ok(_) => Ok(()),
        Err(reason) if reason.starts_with("cannot resolve") => Ok(()),
        Err(reason) => Err(DomainError::invalid(field, reason)),
    }
}

impl NotificationApi {
    async fn caller<T>(&self, request: &Request<T>) -> DomainResult<Caller> {
        let caller = self.state.auth.caller(request.metadata()).await?;
        self.state.secrets.require()?;
        Ok(caller)
    }

    fn notifier(&self) -> Notifier {
        Notifier::new(
            self.state.catalog.clone(),
            self.state.secrets.clone(),
            NotifierSettings::default(),
        )
    }

    async fn create_channel(
        &self,
        caller: &Caller,
        request: pb::CreateNotificationChannelRequest,
    ) -> DomainResult<(Channel, String)> {
        let channel = required("channel", request.channel)?;
        let mut violations = Violations::new();
        let owner = violations
            .absorb(parse_optional_id("channel.owner_id", &channel.owner_id))
            .flatten();
        violations.absorb(check_channel_text(
            "channel.",
            &channel.name,
            &channel.description,
        ));
        let target = violations.absorb(target_of("channel.", channel.kind));
        violations.finish()?;
        let Some((target, mut secrets)) = target else {
            return Err(DomainError::invalid("channel.kind", "is required"));
        };
        let spec = ChannelSpec {
            owner_id: caller.user.id,
            name: channel.name,
            description: channel.description,
            target,
        };
        let spec = ChannelSpec {
            owner_id: caller.resolve_owner("channel.owner_id", owner)?,
            ..spec
        };
        if spec.owner_id != caller.user.id {
            match self.state.catalog.get_user(spec.owner_id).await {
                Ok(_) => {}
                Err(DomainError::NotFound(_)) => {
                    return Err(DomainError::invalid("channel.owner_id", "no such user"))
                }
                Err(other) => return Err(other),
            }
        }
        if let ChannelTarget::Email(EmailTarget {
            credentials_secret_id: Some(secret),
            ..
        }) = &spec.target
        {
            if !self
                .state
                .catalog
                .secret_owned_by(*secret, spec.owner_id, crate::model::secret::SecretKind::S3)
                .await?
            {
                return Err(DomainError::invalid(
                    "channel.email.credentials_secret_id",
                    "the channel's owner has no such secret",
                ));
            }
        }
        let policy = AddressPolicy::current(&self.state.catalog).await?;
        check_reachable(&policy, "channel.", &spec.target).await?;
        if let ChannelTarget::Webhook(_) = spec.target {
            secrets.signing_secret = generate_signing_secret();
        }
        let id = new_id();
        let sealed = self
            .state
            .secrets
            .seal_channel(id, spec.owner_id, &secrets)?;
        let created = self
            .state
            .catalog
            .create_notification_channel(id, &spec, &sealed)
            .await?;
        tracing::info!(channel = %created.id, owner = %created.spec.owner_id, kind = created.spec.target.kind(), "notification channel created");
        Ok((created, secrets.signing_secret.clone()))
    }

    async fn rotate(&self, caller: &Caller, id: uuid::Uuid) -> DomainResult<(Channel, String)> {
        let (channel, sealed) = self
            .state
            .catalog
            .notification_channel(id, caller.owner_scope())
            .await?;
        if !matches!(channel.spec.target, ChannelTarget::Webhook(_)) {
            return Err(DomainError::FailedPrecondition(format!(
                "channel {id} is not a webhook; only webhooks have a signing secret"
            )));
        }
        let mut secrets = self
            .state
            .secrets
            .open_channel(id, channel.spec.owner_id, &sealed)?;
        secrets.signing_secret = generate_signing_secret();
        let sealed = self
            .state
            .secrets
            .seal_channel(id, channel.spec.owner_id, &secrets)?;
        let rotated = self
            .state
            .catalog
            .reseal_notification_channel(id, caller.owner_scope(), &sealed)
            .await?;
        tracing::info!(channel = %id, "notification channel signing secret rotated");
        Ok((rotated, secrets.signing_secret.clone()))
    }

    async fn create_rule(
        &self,
        caller: &Caller,
        request: pb::CreateNotificationRuleRequest,
    ) -> DomainResult<Rule> {
        let rule = required("rule", request.rule)?;
        let mut violations = Violations::new();
        let channel_id = violations.absorb(parse_id("rule.channel_id", &rule.channel_id));
        let job_id = violations
            .absorb(parse_optional_id("rule.job_id", &rule.job_id))
            .flatten();
        let mut events = EventSet::default();
        for (i, value) in rule.events.iter().enumerate() {
            let chosen = event_from_proto(*value).is_some_and(|event| events.insert(event));
            if !chosen {
                violations.add(
                    format!("rule.events[{i}]"),
                    "must be RUN_FAILED, RUN_SUCCEEDED, RUN_CANCELLED, JOB_STALE or RUN_WAITING",
                );
            }
        }
        let spec = RuleSpec {
            owner_id: caller.user.id,
            channel_id: channel_id.unwrap_or_default(),
            job_id,
            all_owners: rule.all_owners,
            events,
            stale_after_seconds: rule.stale_after_seconds,
            waiting_after_seconds: rule.waiting_after_seconds,
        };
        violations.absorb(spec.validate("rule."));
        violations.finish()?;
        let channel = match self
            .state
            .catalog
            .notification_channel(spec.channel_id, caller.owner_scope())
            .await
        {
            Ok((channel, _)) => channel,
            Err(DomainError::NotFound(_)) => {
                return Err(DomainError::invalid("rule.channel_id", "no such channel"))
            }
            Err(other) => return Err(other),
        };
        let spec = RuleSpec {
            owner_id: channel.spec.owner_id,
            ..spec
        };
        if spec.all_owners && !(caller.is_admin() && channel.spec.owner_id == caller.user.id) {
            // Everyone's events would reach whoever owns the channel.
            return Err(DomainError::PermissionDenied(
                "rule.all_owners: only an admin, on a channel of their own, may watch every owner"
                    .into(),
            ));
        }
        if let Some(job_id) = spec.job_id {
            let owned = match self.state.catalog.get_job(job_id).await {
                Ok(job) => job.draft.owner_id == spec.owner_id,
                Err(DomainError::NotFound(_)) => false,
                Err(other) => return Err(other),
            };
            if !owned {
                return Err(DomainError::invalid(
                    "rule.job_id",
                    "the channel's owner has no such job",
                ));
            }
        }
        let created = self.state.catalog.create_notification_rule(&spec).await?;
        tracing::info!(rule = %created.id, channel = %created.spec.channel_id, "notification rule created");
        Ok(created)
    }
}

#[tonic::async_trait]
impl NotificationService for NotificationApi {
    async fn create_notification_channel(
        &self,
        request: Request<pb::CreateNotificationChannelRequest>,
    ) -> RpcResult<pb::CreateNotificationChannelResponse> {
        let caller = self.caller(&request).await?;
        let (channel, signing_secret) = self.create_channel(&caller, request.into_inner()).await?;
        respond(Ok(pb::CreateNotificationChannelResponse {
            channel: Some(channel.into()),
            signing_secret,
        }))
    }

    async fn get_notification_channel(
        &self,
        request: Request<pb::GetNotificationChannelRequest>,
    ) -> RpcResult<pb::GetNotificationChannelResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let (channel, _) = self
            .state
            .catalog
            .notification_channel(id, caller.owner_scope())
            .await?;
        respond(Ok(pb::GetNotificationChannelResponse {
            channel: Some(channel.into()),
        }))
    }

    async fn list_notification_channels(
        &self,
        request: Request<pb::ListNotificationChannelsRequest>,
    ) -> RpcResult<pb::ListNotificationChannelsResponse> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let requested = parse_optional_id("owner_id", &request.owner_id)?;
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (channels, next_page_token) = self
            .state
            .catalog
            .list_notification_channels(page, caller.list_owner_filter(requested))
            .await?;
        respond(Ok(pb::ListNotificationChannelsResponse {
            channels: channels.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn delete_notification_channel(
        &self,
        request: Request<pb::DeleteNotificationChannelRequest>,
    ) -> RpcResult<pb::DeleteNotificationChannelResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        self.state
            .catalog
            .delete_notification_channel(id, caller.owner_scope())
            .await?;
        tracing::info!(channel = %id, "notification channel deleted");
        respond(Ok(pb::DeleteNotificationChannelResponse {}))
    }

    async fn rotate_notification_channel_secret(
        &self,
        request: Request<pb::RotateNotificationChannelSecretRequest>,
    ) -> RpcResult<pb::RotateNotificationChannelSecretResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let (channel, signing_secret) = self.rotate(&caller, id).await?;
        respond(Ok(pb::RotateNotificationChannelSecretResponse {
            channel: Some(channel.into()),
            signing_secret,
        }))
    }

    async fn test_notification_channel(
        &self,
        request: Request<pb::TestNotificationChannelRequest>,
    ) -> RpcResult<pb::TestNotificationChannelResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let (channel, _) = self
            .state
            .catalog
            .notification_channel(id, caller.owner_scope())
            .await?;
        let delivery = self.notifier().send_test(&channel).await?;
        respond(Ok(pb::TestNotificationChannelResponse {
            delivery: Some(delivery.into()),
        }))
    }

    async fn create_notification_rule(
        &self,
        request: Request<pb::CreateNotificationRuleRequest>,
    ) -> RpcResult<pb::CreateNotificationRuleResponse> {
        let caller = self.caller(&request).await?;
        let rule = self.create_rule(&caller, request.into_inner()).await?;
        respond(Ok(pb::CreateNotificationRuleResponse {
            rule: Some(rule.into()),
        }))
    }

    async fn get_notification_rule(
        &self,
        request: Request<pb::GetNotificationRuleRequest>,
    ) -> RpcResult<pb::GetNotificationRuleResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let rule = self
            .state
            .catalog
            .get_notification_rule(id, caller.owner_scope())
            .await?;
        respond(Ok(pb::GetNotificationRuleResponse {
            rule: Some(rule.into()),
        }))
    }

    async fn list_notification_rules(
        &self,
        request: Request<pb::ListNotificationRulesRequest>,
    ) -> RpcResult<pb::ListNotificationRulesResponse> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let channel = parse_optional_id("channel_id", &request.channel_id)?;
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (rules, next_page_token) = self
            .state
            .catalog
            .list_notification_rules(page, caller.owner_scope(), channel)
            .await?;
        respond(Ok(pb::ListNotificationRulesResponse {
            rules: rules.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn delete_notification_rule(
        &self,
        request: Request<pb::DeleteNotificationRuleRequest>,
    ) -> RpcResult<pb::DeleteNotificationRuleResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        self.state
            .catalog
            .delete_notification_rule(id, caller.owner_scope())
            .await?;
        respond(Ok(pb::DeleteNotificationRuleResponse {}))
    }

    async fn list_notification_deliveries(
        &self,
        request: Request<pb::ListNotificationDeliveriesRequest>,
    ) -> RpcResult<pb::ListNotificationDeliveriesResponse> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let channel = parse_optional_id("channel_id", &request.channel_id)?;
        let state = match pb::NotificationDeliveryState::try_from(request.state) {
            Ok(pb::NotificationDeliveryState::Unspecified) => None,
            Ok(pb::NotificationDeliveryState::Pending) => Some(DeliveryState::Pending),
            Ok(pb::NotificationDeliveryState::Delivered) => Some(DeliveryState::Delivered),
            Ok(pb::NotificationDeliveryState::Failed) => Some(DeliveryState::Failed),
            Err(_) => return Err(DomainError::invalid("state", "unknown value").into()),
        };
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (deliveries, next_page_token) = self
            .state
            .catalog
            .list_notification_deliveries(page, caller.owner_scope(), channel, state)
            .await?;
        respond(Ok(pb::ListNotificationDeliveriesResponse {
            deliveries: deliveries.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }
}
