//! What a same-dialect stream needs from one OpenAI chunk ([`ChunkSummary`]), read by a
//! structural scan when the chunk is plain, by serde otherwise.
//!
//! A stream passes every chunk through byte for byte; the relay only watches it for
//! usage, content (for the first-token clock and failover), a finish reason, the
//! characters produced (the usage estimate when the upstream reports none) and errors.
//! serde decoding the whole chunk was most of the user-space work per frame. The scan
//! ([`super::scan`]) finds the few members that matter and decodes only those. Anything
//! it does not take exactly as serde would—a non-null `error`, tool calls, duplicate or
//! escaped keys, a member of an unexpected type—sends the chunk to serde, which stays the
//! judge. Like the whole-answer peek, the scan checks structure, not the grammar of
//! numbers or control characters in members the relay does not read: such a chunk is
//! forwarded as the upstream sent it.

use std::borrow::Cow;

use relay_core::Usage;

use super::peek::{ChunkPeek, WireUsage};
use super::scan::{self, ObjectEvent};

/// The relay's view of one chunk.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ChunkSummary {
    /// The chunk's usage, if it carried one.
    pub(crate) usage: Option<Usage>,
    /// Whether `choices` had an element.
    pub(crate) has_choices: bool,
    /// Text, a tool call, a function call or a finish reason.
    pub(crate) content: bool,
    /// A choice finished.
    pub(crate) finished: bool,
    /// Characters of output (text), plus the bytes of tool-call names and arguments.
    pub(crate) produced: usize,
}

impl ChunkSummary {
    /// The summary of a chunk serde has decoded (its `error` already handled).
    pub(crate) fn from_peek(chunk: &ChunkPeek<'_>) -> ChunkSummary {
        let choices = chunk.choices.as_deref().unwrap_or_default();
        let mut sum = ChunkSummary {
            usage: chunk.usage.as_ref().map(WireUsage::to_usage),
            has_choices: !choices.is_empty(),
            ..ChunkSummary::default()
        };
        for choice in choices {
            if choice.finish_reason.is_some() {
                sum.content = true;
                sum.finished = true;
            }
            let Some(delta) = &choice.delta else { continue };
            for text in [&delta.content, &delta.reasoning_content, &delta.refusal]
                .into_iter()
                .flatten()
            {
                if !text.is_empty() {
                    sum.content = true;
                    sum.produced += text.chars().count();
                }
            }
            if let Some(calls) = &delta.tool_calls {
                sum.content |= !calls.is_empty();
                for f in calls.iter().filter_map(|c| c.function.as_ref()) {
                    sum.produced += f.name.as_deref().map_or(0, str::len)
                        + f.arguments.as_deref().map_or(0, str::len);
                }
            }
            sum.content |= delta.function_call.is_some();
        }
        sum
    }

    /// The summary by structural scan, or `None` when the chunk needs serde (see the
    /// module docs). When it answers, it answers what [`ChunkSummary::from_peek`] would.
    pub(crate) fn scan(data: &[u8]) -> Option<ChunkSummary> {
        let mut sum = ChunkSummary::default();
        let (mut usage, mut choices) = (None, None);
        let mut seen = Seen::default();
        scan::for_each_member(data, |key, value| {
            let bit = match key {
                b"usage" => 1,
                b"choices" => 2,
                b"error" => 4,
                _ => return seen.other(key),
            };
            if seen.first(bit) && value != b"null" {
                match bit {
                    1 => usage = Some(value),
                    2 => choices = Some(value),
                    // An error chunk: serde decodes its message.
                    _ => seen.refused = true,
                }
            }
        })?;
        if seen.refused {
            return None;
        }
        if let Some(raw) = usage {
            sum.usage = Some(serde_json::from_slice::<WireUsage>(raw).ok()?.to_usage());
        }
        if let Some(raw) = choices {
            let mut seen = Seen::default();
            scan::for_each_object(raw, |event| match event {
                ObjectEvent::Member(key, value) => {
                    let bit = match key {
                        b"delta" => 1,
                        b"finish_reason" => 2,
                        _ => {
                            seen.other(key);
                            return Some(());
                        }
                    };
                    if seen.first(bit) && value != b"null" {
                        if bit == 2 {
                            seen.refused |= text_chars(value).is_none();
                            sum.content = true;
                            sum.finished = true;
                        } else {
                            seen.refused |= delta(value, &mut sum).is_none();
                        }
                    }
                    Some(())
                }
                ObjectEvent::End => {
                    sum.has_choices = true;
                    let fine = !seen.refused;
                    seen = Seen::default();
                    fine.then_some(())
                }
            })?;
        }
        Some(sum)
    }
}

/// Members seen in one object, and whether the object needs serde.
#[derive(Default)]
struct Seen {
    bits: u8,
    refused: bool,
}

impl Seen {
    /// Marks `bit` seen; false (and refused: serde reports the duplicate) if it was.
    ///
    /// Written with a branch on purpose: the branch-free form (`let first = self.bits &
    /// bit == 0; self.bits |= bit; self.refused |= !first; first`) is miscompiled in
    /// release builds by rustc 1.95 (and nightly 1.97): `refused` came out true for a
    /// first sighting, so every chunk went to serde. The release-mode run of these tests
    /// in `scripts/test` guards it.
    fn first(&mut self, bit: u8) -> bool {
        if self.bits & bit != 0 {
            self.refused = true;
            return false;
        }
        self.bits |= bit;
        true
    }

    /// A member the relay does not read: fine unless its key has an escape, which
    /// could decode to one it does read.
    fn other(&mut self, key: &[u8]) {
        self.refused |= key.contains(&b'\\');
    }
}

/// A delta's text members and calls, added to `sum`; `None` when serde must decide.
fn delta(raw: &[u8], sum: &mut ChunkSummary) -> Option<()> {
    let mut seen = Seen::default();
    scan::for_each_member(raw, |key, value| {
        let bit = match key {
            b"content" => 1,
            b"reasoning_content" => 2,
            b"refusal" => 4,
            b"tool_calls" => 8,
            b"function_call" => 16,
            _ => return seen.other(key),
        };
        if !seen.first(bit) || value == b"null" {
            return;
        }
        match bit {
            // Tool calls are counted by serde (names and arguments, decoded).
            8 => seen.refused = true,
            16 => sum.content = true,
            _ => match text_chars(value) {
                Some(0) => {}
                Some(chars) => {
                    sum.content = true;
                    sum.produced += chars;
                }
                None => seen.refused = true,
            },
        }
    })?;
    (!seen.refused).then_some(())
}

/// The characters of a JSON string value, decoded; `None` when it is not a string
/// serde would accept as one.
fn text_chars(raw: &[u8]) -> Option<usize> {
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if inner.iter().any(|&b| b == b'\\' || b < 0x20) {
        let text: Cow<'_, str> = serde_json::from_slice(raw).ok()?;
        return Some(text.chars().count());
    }
    std::str::from_utf8(inner).ok().map(|s| s.chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde's summary, or `None` for a chunk serde refuses or that reports an error.
    fn by_serde(data: &[u8]) -> Option<ChunkSummary> {
        let chunk: ChunkPeek<'_> = serde_json::from_slice(data).ok()?;
        if chunk.error.is_some() {
            return None;
        }
        Some(ChunkSummary::from_peek(&chunk))
    }

    fn both(data: &str) -> (Option<ChunkSummary>, Option<ChunkSummary>) {
        (
            ChunkSummary::scan(data.as_bytes()),
            by_serde(data.as_bytes()),
        )
    }

    #[test]
    fn plain_chunks_are_scanned_like_serde() {
        for chunk in [
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"héllo "}}],"usage":null}"#,
            r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hm","refusal":null}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"prompt_tokens_details":{"cached_tokens":2}}}"#,
            r#"{"choices":[{"delta":{"content":"a\nb\u00e9"}},{"delta":{"content":"c"}}]}"#,
            r#"{"choices":[{"delta":{"function_call":{"name":"f"}}}]}"#,
            r#" { "choices" : [ { "delta" : { "content" : "x" } } ] , "error" : null } "#,
            // As relay-mock (and OpenAI) send them.
            r#"{"id":"chatcmpl-mock-1","object":"chat.completion.chunk","created":1795477790,"model":"mock-model","system_fingerprint":null,"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-mock-1","object":"chat.completion.chunk","created":1795477790,"model":"mock-model","system_fingerprint":null,"choices":[{"index":0,"delta":{"content":"Hello "},"logprobs":null,"finish_reason":null}]}"#,
        ] {
            let (scanned, serde) = both(chunk);
            assert!(scanned.is_some(), "{chunk} should be scanned");
            assert_eq!(scanned, serde, "{chunk}");
        }
        let (scanned, _) = both(r#"{"choices":[{"delta":{"content":"a\nb\u00e9"}}]}"#);
        assert_eq!(scanned.map(|s| s.produced), Some(4));
    }

    #[test]
    fn what_the_scan_cannot_take_exactly_goes_to_serde() {
        for chunk in [
            // An error chunk, tool calls, duplicates, escaped keys, wrong types.
            r#"{"error":{"message":"boom"}}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"f","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
            r#"{"choices":[],"choices":[]}"#,
            r#"{"choices":[{"delta":{"con\u0074ent":"a"}}]}"#,
            r#"{"choices":[{"delta":{"content":7}}]}"#,
            r#"{"choices":[{"finish_reason":1}]}"#,
            r#"{"choices":{"delta":{}}}"#,
            r#"{"choices":[1]}"#,
            r#"{"usage":{"prompt_tokens":"x"}}"#,
            r#"{"choices":[{"delta":{"content":"bad \x escape"}}]}"#,
            "[1,2]",
            "not json",
        ] {
            assert_eq!(ChunkSummary::scan(chunk.as_bytes()), None, "{chunk}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use serde_json::{Value, json};

        /// Strings with escapes, non-ASCII and empties.
        fn text() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(json!("")),
                Just(json!(null)),
                "[a-z é\n\"\\\\]{0,8}".prop_map(Value::from),
                any::<u8>().prop_map(Value::from),
            ]
        }

        /// Chunk-shaped objects: the members the relay reads (sometimes of the wrong
        /// type, sometimes repeated) among others it does not.
        /// Whether every member the relay reads has a type the scan takes.
        fn plain(c: &Value) -> bool {
            let text_ok = |v: &Value| v.is_null() || v.is_string();
            c["choices"].as_array().is_some_and(|choices| {
                choices.iter().all(|ch| {
                    text_ok(&ch["finish_reason"])
                        && (ch["delta"].is_null()
                            || ["content", "reasoning_content", "refusal"]
                                .iter()
                                .all(|k| text_ok(&ch["delta"][*k])))
                })
            })
        }

        /// A chunk, and whether the scan must take it (plain, no repeated member).
        fn chunk() -> impl Strategy<Value = (String, bool)> {
            let delta = (text(), text(), text(), any::<bool>(), any::<bool>()).prop_map(
                |(content, reasoning, refusal, call, role)| {
                    let mut d = serde_json::Map::new();
                    d.insert("content".into(), content);
                    d.insert("reasoning_content".into(), reasoning);
                    d.insert("refusal".into(), refusal);
                    if call {
                        d.insert("function_call".into(), json!({"name": "f"}));
                    }
                    if role {
                        d.insert("role".into(), json!("assistant"));
                    }
                    Value::Object(d)
                },
            );
            let choice = (delta, text(), any::<bool>()).prop_map(|(delta, finish, null_delta)| {
                json!({
                    "index": 0,
                    "delta": if null_delta { Value::Null } else { delta },
                    "finish_reason": finish,
                    "logprobs": null,
                })
            });
            (
                proptest::collection::vec(choice, 0..3),
                any::<bool>(),
                0u8..4,
            )
                .prop_map(|(choices, usage, shape)| {
                    let mut c = json!({"id": "x", "choices": choices, "model": "m"});
                    if usage {
                        c["usage"] = json!({"prompt_tokens": 3, "completion_tokens": 4});
                    }
                    let plain_text = c.to_string();
                    let mut s = plain_text.clone();
                    match shape {
                        // A repeated member, written by hand (a map cannot hold one).
                        1 => s = s.replacen("{\"id\"", "{\"choices\":[],\"id\"", 1),
                        2 => s = s.replacen("\"content\"", "\"content\":\"x\",\"content\"", 1),
                        _ => {}
                    }
                    let repeated = s != plain_text;
                    (s, plain(&c) && !repeated)
                })
        }

        proptest! {
            #[test]
            fn scan_agrees_with_serde((data, plain) in chunk()) {
                let scanned = ChunkSummary::scan(data.as_bytes());
                if plain {
                    prop_assert!(scanned.is_some(), "a plain chunk went to serde: {}", data);
                }
                if let Some(scanned) = scanned {
                    prop_assert_eq!(Some(scanned), by_serde(data.as_bytes()), "{}", data);
                }
            }

            #[test]
            fn scan_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = ChunkSummary::scan(&bytes);
            }
        }
    }
}

#[cfg(test)]
mod through_the_parser {
    use super::*;
    use relay_core::sse::SseParser;

    #[test]
    fn mock_chunks_from_the_wire_are_scanned() {
        let wire = b"data: {\"id\":\"chatcmpl-mock-1\",\"object\":\"chat.completion.chunk\",\"created\":1795477790,\"model\":\"mock-model\",\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello \"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
        let mut p = SseParser::new();
        p.push(wire);
        let ev = p.next_event().unwrap().unwrap();
        assert!(ChunkSummary::scan(&ev.data).is_some());
    }
}
