//! E-mail notifications through a real SMTP server: Python's `aiosmtpd` on
//! loopback, from the interpreter `COFFER_TEST_SMTP_PYTHON` names
//! (`scripts/test.sh` installs it into a cached virtual environment). The
//! server prints every message it accepts as a JSON line.

use crate::support;

use std::process::Stdio;
use std::time::Duration;

use coffer_proto::v1 as pb;
use support::{Backend, TestServer};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The SMTP server: accepts anything and prints it.
const SERVER: &str = r#"
import json, sys, time
from aiosmtpd.controller import Controller

class Printer:
    async def handle_DATA(self, server, session, envelope):
        print(json.dumps({
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", "replace"),
        }), flush=True)
        return "250 OK"

controller = Controller(Printer(), hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
print("READY", flush=True)
while True:
    time.sleep(3600)
"#;

struct SmtpServer {
    port: u16,
    lines: Lines<BufReader<ChildStdout>>,
    _child: Child,
}

impl SmtpServer {
    async fn start() -> SmtpServer {
        let python = std::env::var("COFFER_TEST_SMTP_PYTHON").unwrap_or_else(|_| {
            panic!(
                "COFFER_TEST_SMTP_PYTHON: a Python with aiosmtpd \
                 (`python3 -m venv V && V/bin/pip install aiosmtpd`; scripts/test.sh does it)"
            )
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = Command::new(python)
            .args(["-c", SERVER, &port.to_string()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start aiosmtpd");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("aiosmtpd ready within 30 s")
            .expect("read")
            .expect("a line");
        assert_eq!(ready, "READY");
        SmtpServer {
            port,
            lines,
            _child: child,
        }
    }

    async fn next_message(&mut self) -> serde_json::Value {
        let line = tokio::time::timeout(Duration::from_secs(40), self.lines.next_line())
            .await
            .expect("a message within 40 s")
            .expect("read")
            .expect("a line");
        serde_json::from_str(&line).expect("JSON")
    }
}

async fn notices_are_mailed_through_smtp(backend: Backend) {
    let server = TestServer::start(backend).await;
    server
        .configure("notification_allowed_networks", "127.0.0.1/32")
        .await;
    let mut smtp = SmtpServer::start().await;
    let (_, token) = server.create_user("tenant").await;
    let api = server.as_user(&token);
    let channel = api
        .notifications
        .clone()
        .create_notification_channel(pb::CreateNotificationChannelRequest {
            channel: Some(pb::NotificationChannel {
                name: "ops-mail".into(),
                kind: Some(pb::notification_channel::Kind::Email(pb::EmailChannel {
                    host: "127.0.0.1".into(),
                    port: u32::from(smtp.port),
                    security: pb::SmtpSecurity::None as i32,
                    from: "Coffer <coffer@example.com>".into(),
                    to: vec!["ops@example.com".into(), "oncall@example.com".into()],
                    ..Default::default()
                })),
                ..Default::default()
            }),
        })
        .await
        .expect("create channel")
        .into_inner();
    assert!(
        channel.signing_secret.is_empty(),
        "e-mail has no signing secret"
    );
    let channel = channel.channel.expect("channel");

    // TestNotificationChannel sends at once.
    let tested = api
        .notifications
        .clone()
        .test_notification_channel(pb::TestNotificationChannelRequest {
            id: channel.id.clone(),
        })
        .await
        .expect("test")
        .into_inner()
        .delivery
        .expect("delivery");
    assert_eq!(
        tested.state,
        pb::NotificationDeliveryState::Delivered as i32,
        "{tested:?}"
    );
    let test = smtp.next_message().await;
    assert_eq!(test["from"], "coffer@example.com");
    assert_eq!(
        test["to"],
        serde_json::json!(["ops@example.com", "oncall@example.com"])
    );
    assert!(test["data"]
        .as_str()
        .unwrap_or_default()
        .contains("Subject: [coffer] test"));

    api.notifications
        .clone()
        .create_notification_rule(pb::CreateNotificationRuleRequest {
            rule: Some(pb::NotificationRule {
                channel_id: channel.id.clone(),
                events: vec![pb::NotificationEvent::RunCancelled as i32],
                ..Default::default()
            }),
        })
        .await
        .expect("rule");
    let run = api
        .queue_run(pb::create_run_request::Spec::Backup(pb::BackupSpec {
            source_path: "/data".into(),
            target: Some(pb::Target {
                destination: Some(pb::target::Destination::FilesystemPath("/backups/m".into())),
            }),
            worker_selector: [("zone".to_string(), "nowhere".to_string())].into(),
            ..Default::default()
        }))
        .await;
    api.cancel_run(&run).await.expect("cancel");
    let cancelled = smtp.next_message().await;
    let data = cancelled["data"].as_str().unwrap_or_default();
    assert!(data.contains("Subject: [coffer] run.cancelled"), "{data}");
    assert!(data.contains(&run), "{data}");
}

both_backends!(notices_are_mailed_through_smtp);
