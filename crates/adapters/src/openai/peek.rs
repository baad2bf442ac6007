//! Minimal views of OpenAI bodies: only the fields the relay must see (usage, content
//! presence, errors), borrowed where possible; everything else is skipped unparsed.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;

use relay_core::Usage;

/// OpenAI's usage object (chat and embeddings).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Default, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl WireUsage {
    pub(crate) fn to_usage(&self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens,
            output_tokens: self.completion_tokens,
            cached_input_tokens: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            reasoning_tokens: self
                .completion_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

/// A whole non-streaming answer (chat or embeddings).
#[derive(Debug, Deserialize)]
pub(crate) struct ResponsePeek {
    #[serde(default)]
    pub(crate) usage: Option<WireUsage>,
    #[serde(default)]
    pub(crate) error: Option<IgnoredAny>,
    #[serde(default)]
    pub(crate) choices: Option<IgnoredAny>,
    #[serde(default)]
    pub(crate) data: Option<IgnoredAny>,
}

impl ResponsePeek {
    /// Peek at a whole answer: a structural scan of its top level that decodes only
    /// `usage` (a fraction of a full parse's cost on long answers), or serde when the scan
    /// does not recognise the body, so malformed bodies get serde's precise error.
    pub(crate) fn from_body(body: &[u8]) -> Result<ResponsePeek, serde_json::Error> {
        let mut usage: Option<&[u8]> = None;
        let mut peek = ResponsePeek {
            usage: None,
            error: None,
            choices: None,
            data: None,
        };
        let scanned = super::scan::for_each_member(body, |key, value| {
            if value == b"null" {
                return;
            }
            match key {
                b"usage" => usage = Some(value),
                b"error" => peek.error = Some(IgnoredAny),
                b"choices" => peek.choices = Some(IgnoredAny),
                b"data" => peek.data = Some(IgnoredAny),
                _ => {}
            }
        });
        if scanned.is_none() {
            return serde_json::from_slice(body);
        }
        if let Some(usage) = usage {
            peek.usage = Some(serde_json::from_slice(usage)?);
        }
        Ok(peek)
    }
}

/// One stream chunk.
#[derive(Debug, Deserialize)]
pub(crate) struct ChunkPeek<'a> {
    #[serde(default, borrow)]
    pub(crate) choices: Option<Vec<ChoicePeek<'a>>>,
    #[serde(default)]
    pub(crate) usage: Option<WireUsage>,
    #[serde(default, borrow)]
    pub(crate) error: Option<ErrorPeek<'a>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChoicePeek<'a> {
    #[serde(default, borrow)]
    pub(crate) delta: Option<DeltaPeek<'a>>,
    #[serde(default, borrow)]
    pub(crate) finish_reason: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeltaPeek<'a> {
    #[serde(default, borrow)]
    pub(crate) content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(crate) reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(crate) refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(crate) tool_calls: Option<Vec<ToolCallPeek<'a>>>,
    #[serde(default)]
    pub(crate) function_call: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ToolCallPeek<'a> {
    #[serde(default, borrow)]
    pub(crate) function: Option<FunctionPeek<'a>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct FunctionPeek<'a> {
    #[serde(default, borrow)]
    pub(crate) name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(crate) arguments: Option<Cow<'a, str>>,
}

/// OpenAI's error object.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorPeek<'a> {
    #[serde(default, borrow)]
    pub(crate) message: Option<Cow<'a, str>>,
    #[serde(default, borrow, rename = "type")]
    pub(crate) kind: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) code: Option<serde_json::Value>,
}
