//! Same-dialect streaming: forward each upstream chunk as it came, watching it for
//! content, usage and errors on the way.

use bytes::BytesMut;

use relay_core::sse::{SseEvent, encode_event};
use relay_core::{ErrorKind, RelayError, Side, StreamProgress, StreamTranslator, Usage};

use super::chunk::ChunkSummary;
use super::errors::error_body;
use super::peek::ChunkPeek;

/// OpenAI upstream to OpenAI client. Chunks pass byte for byte; the usage-only chunk the
/// relay asked for is dropped when the client did not ask for it.
#[derive(Debug)]
pub struct PassthroughStream {
    client_wants_usage: bool,
    usage: Option<Usage>,
    produced: usize,
    finished: bool,
}

impl PassthroughStream {
    /// A translator for a client that did (or did not) ask for `include_usage`.
    pub fn new(client_wants_usage: bool) -> Self {
        PassthroughStream {
            client_wants_usage,
            usage: None,
            produced: 0,
            finished: false,
        }
    }
}

impl StreamTranslator for PassthroughStream {
    fn on_event(
        &mut self,
        event: SseEvent,
        out: &mut BytesMut,
    ) -> Result<StreamProgress, RelayError> {
        if event.is_done() {
            out.extend_from_slice(b"data: [DONE]\n\n");
            return Ok(StreamProgress {
                content: true,
                done: true,
            });
        }
        let chunk = match ChunkSummary::scan(&event.data) {
            Some(summary) => summary,
            None => summarize_with_serde(&event.data)?,
        };
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        if !chunk.has_choices && chunk.usage.is_some() && !self.client_wants_usage {
            return Ok(StreamProgress::default());
        }
        self.finished |= chunk.finished;
        self.produced += chunk.produced;
        let content = chunk.content;
        encode_event(out, None, &event.data);
        Ok(StreamProgress {
            content,
            done: false,
        })
    }

    fn on_eof(&mut self, out: &mut BytesMut) -> Result<(), RelayError> {
        if self.finished {
            // Some compatible servers end after the finish chunk without [DONE].
            out.extend_from_slice(b"data: [DONE]\n\n");
            return Ok(());
        }
        Err(RelayError::new(
            ErrorKind::StreamCut,
            Side::Upstream,
            "the upstream stream ended before its final event",
        ))
    }

    fn encode_error(&mut self, err: &RelayError, out: &mut BytesMut) {
        encode_event(out, None, &error_body(err));
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn produced_chars(&self) -> usize {
        self.produced
    }
}

/// A chunk the scan did not take: serde decodes it and judges it (an upstream `error`
/// member or a malformed chunk ends the stream with an error).
fn summarize_with_serde(data: &[u8]) -> Result<ChunkSummary, RelayError> {
    let chunk: ChunkPeek<'_> = serde_json::from_slice(data).map_err(|e| {
        RelayError::new(
            ErrorKind::UpstreamProtocol,
            Side::Upstream,
            format!("the upstream sent a stream chunk that is not valid JSON: {e}"),
        )
    })?;
    if let Some(err) = chunk.error {
        let message = err.message.as_deref().unwrap_or("(no message)");
        return Err(RelayError::upstream_status(
            502,
            format!("the upstream reported an error mid-stream: {message}"),
        ));
    }
    Ok(ChunkSummary::from_peek(&chunk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            data: Bytes::copy_from_slice(data.as_bytes()),
            ..Default::default()
        }
    }

    #[test]
    fn role_chunk_is_not_content_but_text_is() {
        let mut t = PassthroughStream::new(false);
        let mut out = BytesMut::new();
        let p = t
            .on_event(
                ev(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#),
                &mut out,
            )
            .unwrap();
        assert!(!p.content);
        let p = t
            .on_event(
                ev(r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#),
                &mut out,
            )
            .unwrap();
        assert!(p.content);
        let p = t.on_event(ev(r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":""}}]}}]}"#), &mut out).unwrap();
        assert!(p.content);
        assert_eq!(t.produced_chars(), 3);
    }

    #[test]
    fn usage_chunk_is_kept_but_stripped_unless_asked() {
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":2}}}"#;
        let mut t = PassthroughStream::new(false);
        let mut out = BytesMut::new();
        t.on_event(ev(usage), &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(
            t.usage(),
            Some(Usage {
                input_tokens: 5,
                output_tokens: 7,
                cached_input_tokens: 2,
                reasoning_tokens: 0
            })
        );
        let mut t = PassthroughStream::new(true);
        t.on_event(ev(usage), &mut out).unwrap();
        assert_eq!(&out[..], format!("data: {usage}\n\n").as_bytes());
    }

    #[test]
    fn done_ends_and_cut_is_an_error() {
        let mut t = PassthroughStream::new(false);
        let mut out = BytesMut::new();
        assert!(t.on_event(ev("[DONE]"), &mut out).unwrap().done);
        let mut t = PassthroughStream::new(false);
        assert_eq!(t.on_eof(&mut out).unwrap_err().kind(), ErrorKind::StreamCut);
        t.on_event(
            ev(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#),
            &mut out,
        )
        .unwrap();
        assert!(t.on_eof(&mut out).is_ok());
    }

    #[test]
    fn upstream_error_chunk_and_garbage_are_errors() {
        let mut t = PassthroughStream::new(false);
        let mut out = BytesMut::new();
        let e = t
            .on_event(ev(r#"{"error":{"message":"overloaded"}}"#), &mut out)
            .unwrap_err();
        assert!(e.message().contains("overloaded"));
        assert!(t.on_event(ev("not json"), &mut out).is_err());
    }
}
