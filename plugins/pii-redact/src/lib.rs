//! `pii-redact`: masks e-mail addresses, phone numbers and payment card numbers in the
//! text of request messages before they reach the upstream.
//!
//! Config (all optional): `{"email": true, "phone": true, "card": true}`. The masks
//! are `[EMAIL]`, `[PHONE]` and `[CARD]`; card numbers must pass the Luhn check.
//! Counts each mask in the declared counter `redactions`.

use relay_plugin_sdk::serde_json::{self, Value};
use relay_plugin_sdk::{
    BodyAccess, Hooks, Manifest, Plugin, RequestDecision, RequestView, export, host, manifest,
    patch,
};

struct PiiRedact;

#[derive(Clone, Copy)]
struct Kinds {
    email: bool,
    phone: bool,
    card: bool,
}

impl Kinds {
    fn from_config(v: &Value) -> Kinds {
        let on = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(true);
        Kinds {
            email: on("email"),
            phone: on("phone"),
            card: on("card"),
        }
    }
}

impl Plugin for PiiRedact {
    fn manifest() -> Manifest {
        let mut m = manifest("pii-redact", Hooks::BEFORE_REQUEST);
        m.body_access = BodyAccess::Messages;
        m.metrics = vec!["redactions".into()];
        m.stateless = true;
        m
    }

    fn init(config: String) -> Result<(), String> {
        match serde_json::from_str::<Value>(&config) {
            Ok(Value::Null | Value::Object(_)) => Ok(()),
            _ => Err(
                "config must be an object like {\"email\": true, \"phone\": true, \"card\": true}"
                    .into(),
            ),
        }
    }

    fn before_request(request: RequestView) -> RequestDecision {
        let Some(messages) = request.messages else {
            return RequestDecision::Proceed;
        };
        let Ok(mut value) = serde_json::from_str::<Value>(&messages) else {
            return RequestDecision::Proceed;
        };
        let kinds = Kinds::from_config(&relay_plugin_sdk::config());
        let mut count = 0u64;
        redact_value(&mut value, kinds, &mut count, None);
        if count == 0 {
            return RequestDecision::Proceed;
        }
        host::metric_add("redactions", count);
        let mut p = patch();
        p.set_fields
            .push((request.messages_field, value.to_string()));
        RequestDecision::Modify(p)
    }
}

/// Redact the strings under `content` and `text` keys (and strings in `content`
/// arrays), wherever they are in the message list.
fn redact_value(v: &mut Value, kinds: Kinds, count: &mut u64, key: Option<&str>) {
    match v {
        Value::String(s) if matches!(key, Some("content" | "text")) => {
            let (out, n) = redact(s, kinds);
            if n > 0 {
                *s = out;
                *count += n;
            }
        }
        Value::Array(items) => {
            for item in items {
                redact_value(item, kinds, count, key);
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                redact_value(item, kinds, count, Some(k.as_str()));
            }
        }
        _ => {}
    }
}

fn is_local(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+-".contains(c)
}

fn is_domain(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '-'
}

/// Mask the PII in `text`; returns the new text and the number of masks.
fn redact(text: &str, kinds: Kinds) -> (String, u64) {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut count = 0;
    let mut i = 0;
    while i < chars.len() {
        if kinds.email
            && is_local(chars[i])
            && let Some(end) = email_at(&chars, i)
        {
            out.push_str("[EMAIL]");
            count += 1;
            i = end;
            continue;
        }
        if (kinds.card || kinds.phone)
            && (chars[i].is_ascii_digit() || chars[i] == '+' || chars[i] == '(')
            && (i == 0 || !chars[i - 1].is_ascii_alphanumeric())
            && let Some((end, mask)) = number_at(&chars, i, kinds)
        {
            out.push_str(mask);
            count += 1;
            i = end;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    (out, count)
}

/// An e-mail address starting at `start` (which must begin a word): its end.
fn email_at(chars: &[char], start: usize) -> Option<usize> {
    if start > 0 && is_local(chars[start - 1]) {
        return None;
    }
    let mut at = start;
    while at < chars.len() && is_local(chars[at]) {
        at += 1;
    }
    if at == start || chars.get(at) != Some(&'@') {
        return None;
    }
    let mut end = at + 1;
    while end < chars.len() && is_domain(chars[end]) {
        end += 1;
    }
    while end > at + 1 && (chars[end - 1] == '.' || chars[end - 1] == '-') {
        end -= 1;
    }
    let domain: String = chars[at + 1..end].iter().collect();
    let tld = domain.rsplit('.').next().unwrap_or("");
    if !domain.contains('.') || tld.len() < 2 || !tld.chars().all(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    Some(end)
}

/// A card or phone number starting at `start`: its end and mask.
fn number_at(chars: &[char], start: usize, kinds: Kinds) -> Option<(usize, &'static str)> {
    let mut end = start;
    let mut digits = Vec::new();
    while end < chars.len() {
        let c = chars[end];
        if c.is_ascii_digit() {
            digits.push(c as u8 - b'0');
        } else if !(c == ' '
            || c == '-'
            || c == '.'
            || c == '('
            || c == ')'
            || (c == '+' && end == start))
        {
            break;
        }
        // A separator must be followed (within two more separators) by a digit.
        if !c.is_ascii_digit() {
            let more = chars
                .iter()
                .skip(end + 1)
                .take(3)
                .find(|c| !" -.()".contains(**c));
            if !more.is_some_and(char::is_ascii_digit) {
                break;
            }
        }
        end += 1;
        if digits.len() > 19 {
            return None;
        }
    }
    while end > start && !chars[end - 1].is_ascii_digit() && chars[end - 1] != ')' {
        end -= 1;
    }
    if end < chars.len() && chars[end].is_ascii_alphanumeric() {
        return None;
    }
    let n = digits.len();
    if kinds.card && (13..=19).contains(&n) && luhn(&digits) {
        return Some((end, "[CARD]"));
    }
    if kinds.phone && (9..=15).contains(&n) {
        return Some((end, "[PHONE]"));
    }
    None
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut d = u32::from(*d);
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

export!(PiiRedact);
