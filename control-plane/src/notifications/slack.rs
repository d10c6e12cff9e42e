//! The body of a webhook in the Slack format: `{"text": "..."}`, which
//! Slack and Mattermost incoming hooks both accept. The sentence is the
//! notice's own `text` (Coffer writes it: event, job, run, state, error),
//! bounded, with what those services read as markup made inert: `&`, `<`
//! and `>` become entities (so an error message cannot add a link or a
//! `<!channel>` ping), and an `@` is followed by a word joiner (so it
//! cannot mention anyone in Mattermost). There is no user template: no
//! tenant-written text decides the body's shape.

use serde_json::{json, Value};

/// Most characters of the sentence; the rest is cut with an ellipsis.
pub const MAX_TEXT_CHARS: usize = 1000;

/// The Slack-format body for a notice whose Coffer JSON body is `payload`.
pub fn body(payload: &str) -> String {
    let parsed: Value = serde_json::from_str(payload).unwrap_or_default();
    let text = parsed
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or("Coffer notification");
    json!({ "text": inert(text) }).to_string()
}

/// `text` bounded and escaped as the module describes.
fn inert(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_TEXT_CHARS) + 8);
    for (i, c) in text.chars().enumerate() {
        if i == MAX_TEXT_CHARS {
            out.push('…');
            break;
        }
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '@' => out.push_str("@\u{2060}"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_mentions_in_an_error_are_inert() {
        let payload = json!({
            "text": "Coffer: backup run of job web failed: <!channel> see <https://evil.example|here> & @all",
        })
        .to_string();
        let sent: Value = serde_json::from_str(&body(&payload)).expect("JSON");
        let text = sent["text"].as_str().expect("text");
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
        assert!(
            text.contains("&lt;!channel&gt;") && text.contains("&amp;"),
            "{text}"
        );
        assert!(!text.contains("@all"), "{text}");
        assert_eq!(sent.as_object().map(|o| o.len()), Some(1), "{sent}");
    }

    #[test]
    fn a_long_sentence_is_cut() {
        let payload = json!({ "text": "x".repeat(5000) }).to_string();
        let sent: Value = serde_json::from_str(&body(&payload)).expect("JSON");
        let text = sent["text"].as_str().expect("text");
        assert_eq!(text.chars().count(), MAX_TEXT_CHARS + 1);
        assert!(text.ends_with('…'));
    }
}
