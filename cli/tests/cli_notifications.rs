//! The notification commands (`coffer channels|rules|deliveries`) as a real
//! process against a real standalone control plane, with a webhook receiver
//! on loopback: create, list, get, test, rotate and delete, read back in
//! `-o json`; a bad channel prints the server's field violations; an SMTP
//! password given to the CLI is never printed back.

use crate::support;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use support::Standalone;

/// An HTTP receiver on loopback that answers 200 to every request and keeps
/// the bodies.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&bodies);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Some(body) = answer(stream) {
                    kept.lock().expect("bodies").push(body);
                }
            }
        });
        Receiver { url, bodies }
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().expect("bodies").clone()
    }
}

/// Reads one request, answers 200, returns its body.
fn answer(stream: std::net::TcpStream) -> Option<String> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let mut stream = stream;
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .ok()?;
    String::from_utf8(body).ok()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("a JSON list")
        .iter()
        .filter_map(|item| item["id"].as_str())
        .collect()
}

#[test]
fn channels_rules_and_deliveries_through_the_cli() {
    let server = Standalone::start();
    let receiver = Receiver::start();
    server.ok(&[
        "configurations",
        "create",
        "--set",
        "key=notification_allowed_networks",
        "--set",
        "value=127.0.0.0/8",
    ]);

    // Create prints the signing secret once; get and list never do.
    let created = json(&server.ok(&[
        "channels",
        "create",
        "--set",
        "name=ops-chat",
        "--set",
        &format!("webhook.url={}", receiver.url),
        "--set",
        "webhook.format=WEBHOOK_FORMAT_SLACK",
        "-o",
        "json",
    ]));
    let channel = created["channel"]["id"].as_str().expect("id").to_string();
    let secret = created["signingSecret"]
        .as_str()
        .expect("secret")
        .to_string();
    assert!(secret.starts_with("whsec_"), "{created}");
    let fetched = server.ok(&["channels", "get", &channel, "-o", "json"]);
    assert_eq!(json(&fetched)["webhook"]["format"], "WEBHOOK_FORMAT_SLACK");
    let listed = server.ok(&["channels", "list", "-o", "json"]);
    assert_eq!(ids(&json(&listed)), [channel.as_str()]);
    let table = server.ok(&["channels", "list"]);
    assert!(
        table.contains("ops-chat") && table.contains("SLACK"),
        "{table}"
    );
    for shown in [&fetched, &listed, &table] {
        assert!(
            !shown.contains(&secret),
            "the secret was shown again: {shown}"
        );
    }

    let rule = json(&server.ok(&[
        "rules",
        "create",
        "--set",
        &format!("channel_id={channel}"),
        "--set",
        "events=NOTIFICATION_EVENT_RUN_FAILED",
        "--set",
        "events=NOTIFICATION_EVENT_JOB_STALE",
        "-o",
        "json",
    ]));
    let rule_id = rule["id"].as_str().expect("rule id").to_string();
    assert_eq!(
        rule["events"],
        serde_json::json!([
            "NOTIFICATION_EVENT_RUN_FAILED",
            "NOTIFICATION_EVENT_JOB_STALE"
        ])
    );
    let rules = server.ok(&[
        "rules",
        "list",
        "--filter",
        &format!("channel_id={channel}"),
        "-o",
        "json",
    ]);
    assert_eq!(ids(&json(&rules)), [rule_id.as_str()]);
    assert_eq!(
        json(&server.ok(&["rules", "get", &rule_id, "-o", "json"]))["channelId"],
        channel.as_str()
    );

    // A test notice reaches the receiver in the Slack format and is listed.
    let delivery = json(&server.ok(&["channels", "test", &channel, "-o", "json"]));
    assert_eq!(delivery["state"], "NOTIFICATION_DELIVERY_STATE_DELIVERED");
    let bodies = receiver.bodies();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(json(&bodies[0])["text"]
        .as_str()
        .is_some_and(|text| text.contains("test notice")));
    let deliveries = json(&server.ok(&[
        "deliveries",
        "list",
        "--filter",
        &format!("channel_id={channel}"),
        "-o",
        "json",
    ]));
    assert_eq!(ids(&deliveries), [delivery["id"].as_str().expect("id")]);
    assert_eq!(deliveries[0]["event"], "NOTIFICATION_EVENT_TEST");

    let rotated = json(&server.ok(&["channels", "rotate", &channel, "-o", "json"]));
    let new_secret = rotated["signingSecret"].as_str().expect("new secret");
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);

    server.ok(&["rules", "delete", &rule_id]);
    assert_eq!(
        json(&server.ok(&["rules", "list", "-o", "json"])),
        serde_json::json!([])
    );
    server.ok(&["channels", "delete", &channel]);
    assert_eq!(
        json(&server.ok(&["channels", "list", "-o", "json"])),
        serde_json::json!([])
    );
}

#[test]
fn a_bad_channel_prints_its_fields_and_a_password_is_never_printed() {
    let server = Standalone::start();
    let refused = server.run(&[
        "channels",
        "create",
        "--set",
        "name=Bad Name",
        "--set",
        "webhook.url=ftp://hooks.example.com/x",
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("  channel.name: ") && stderr.contains("  channel.webhook.url: "),
        "{stderr}"
    );

    let password = "smtp-password-only-the-server-knows";
    let mut everything = server.ok(&[
        "channels",
        "create",
        "--set",
        "name=mail",
        "--set",
        "email.host=smtp.example.com",
        "--set",
        "email.from=coffer@example.com",
        "--set",
        "email.to=ops@example.com",
        "--set",
        "email.username=coffer",
        "--set",
        &format!("email.password={password}"),
        "-o",
        "json",
    ]);
    let channel = json(&everything)["channel"]["id"]
        .as_str()
        .map(str::to_string)
        .or_else(|| json(&everything)["id"].as_str().map(str::to_string))
        .expect("id");
    let fetched = server.ok(&["channels", "get", &channel, "-o", "json"]);
    assert_eq!(json(&fetched)["email"]["username"], "coffer");
    everything.push_str(&fetched);
    everything.push_str(&server.ok(&["channels", "list", "-o", "yaml"]));
    everything.push_str(&server.ok(&["channels", "list"]));
    assert!(
        !everything.contains(password),
        "the password was printed: {everything}"
    );
}
