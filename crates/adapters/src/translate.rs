//! Stream translators built from codecs: across dialects (decode upstream events to the
//! IR, encode them for the client) and within one dialect other than OpenAI (forward each
//! event as it came, decoding a copy to watch for content and usage).

use std::sync::Arc;

use bytes::BytesMut;

use relay_core::codec::{DialectCodec, EncoderOptions, StreamDecoder, StreamEncoder};
use relay_core::ir::StreamEvent;
use relay_core::sse::{SseEvent, encode_event};
use relay_core::{RelayError, StreamProgress, StreamTranslator, Usage};

/// What the translators learn from IR events: content, usage, characters produced.
#[derive(Debug, Default)]
struct Watch {
    usage: Option<Usage>,
    produced: usize,
}

impl Watch {
    /// Returns whether the event is content (commits the response).
    fn see(&mut self, event: &StreamEvent) -> bool {
        match event {
            StreamEvent::Start { .. } | StreamEvent::ThinkingSignature { .. } => false,
            StreamEvent::Usage(u) => {
                // Dialects report usage in pieces (Anthropic: input at the start, output at
                // the end); keep the largest of each figure.
                let merged = match self.usage {
                    None => *u,
                    Some(old) => Usage {
                        input_tokens: old.input_tokens.max(u.input_tokens),
                        output_tokens: old.output_tokens.max(u.output_tokens),
                        cached_input_tokens: old.cached_input_tokens.max(u.cached_input_tokens),
                        reasoning_tokens: old.reasoning_tokens.max(u.reasoning_tokens),
                    },
                };
                self.usage = Some(merged);
                false
            }
            StreamEvent::TextDelta { text, .. } | StreamEvent::ThinkingDelta { text, .. } => {
                self.produced += text.chars().count();
                !text.is_empty()
            }
            StreamEvent::ToolCallStart { name, .. } => {
                self.produced += name.len();
                true
            }
            StreamEvent::ToolCallDelta { arguments, .. } => {
                self.produced += arguments.len();
                true
            }
            StreamEvent::Finish { .. } => true,
        }
    }
}

/// Upstream dialect A to client dialect B through the IR.
pub struct TranslatingStream {
    decoder: Box<dyn StreamDecoder>,
    encoder: Box<dyn StreamEncoder>,
    events: Vec<StreamEvent>,
    watch: Watch,
}

impl TranslatingStream {
    /// Decode with `upstream`'s decoder, encode with `client`'s encoder.
    pub fn new(
        upstream: &dyn DialectCodec,
        client: &dyn DialectCodec,
        options: EncoderOptions,
    ) -> Self {
        TranslatingStream {
            decoder: upstream.stream_decoder(),
            encoder: client.stream_encoder(options),
            events: Vec::new(),
            watch: Watch::default(),
        }
    }
}

impl StreamTranslator for TranslatingStream {
    fn on_event(
        &mut self,
        event: SseEvent,
        out: &mut BytesMut,
    ) -> Result<StreamProgress, RelayError> {
        self.events.clear();
        let done = self.decoder.decode(&event, &mut self.events)?;
        let mut content = false;
        for ev in &self.events {
            content |= self.watch.see(ev);
            self.encoder.encode(ev, out);
        }
        if done {
            self.encoder.finish(out);
        }
        Ok(StreamProgress { content, done })
    }

    fn on_eof(&mut self, out: &mut BytesMut) -> Result<(), RelayError> {
        self.decoder.finish()?;
        self.encoder.finish(out);
        Ok(())
    }

    fn encode_error(&mut self, err: &RelayError, out: &mut BytesMut) {
        self.encoder.error(err, out);
    }

    fn usage(&self) -> Option<Usage> {
        self.watch.usage
    }

    fn produced_chars(&self) -> usize {
        self.watch.produced
    }
}

/// Same dialect on both sides: every event goes out as it came (its `event:` name kept),
/// while a decoded copy tells content, usage and the end.
pub struct ObservedPassthrough {
    decoder: Box<dyn StreamDecoder>,
    errors: Box<dyn StreamEncoder>,
    events: Vec<StreamEvent>,
    watch: Watch,
}

impl ObservedPassthrough {
    /// Watch with `codec`'s decoder; render errors with its encoder.
    pub fn new(codec: &Arc<dyn DialectCodec>, options: EncoderOptions) -> Self {
        ObservedPassthrough {
            decoder: codec.stream_decoder(),
            errors: codec.stream_encoder(options),
            events: Vec::new(),
            watch: Watch::default(),
        }
    }
}

impl StreamTranslator for ObservedPassthrough {
    fn on_event(
        &mut self,
        event: SseEvent,
        out: &mut BytesMut,
    ) -> Result<StreamProgress, RelayError> {
        self.events.clear();
        let done = self.decoder.decode(&event, &mut self.events)?;
        let mut content = false;
        for ev in &self.events {
            content |= self.watch.see(ev);
        }
        let name = event
            .event
            .as_deref()
            .and_then(|e| std::str::from_utf8(e).ok());
        encode_event(out, name, &event.data);
        Ok(StreamProgress { content, done })
    }

    fn on_eof(&mut self, _out: &mut BytesMut) -> Result<(), RelayError> {
        self.decoder.finish()
    }

    fn encode_error(&mut self, err: &RelayError, out: &mut BytesMut) {
        self.errors.error(err, out);
    }

    fn usage(&self) -> Option<Usage> {
        self.watch.usage
    }

    fn produced_chars(&self) -> usize {
        self.watch.produced
    }
}
