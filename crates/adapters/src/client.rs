//! [`CodecClient`]: any [`DialectCodec`] as a client-facing dialect. The request is
//! decoded to the IR up front (validating it), and kept for the adapters.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;

use relay_core::codec::DialectCodec;
use relay_core::{
    ClientDialect, DialectId, InboundRequest, JsonObject, Operation, RelayError, RouteParams,
};

/// A client dialect backed by a codec (Anthropic Messages, Gemini).
#[derive(Clone)]
pub struct CodecClient {
    codec: Arc<dyn DialectCodec>,
}

impl std::fmt::Debug for CodecClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CodecClient")
            .field(&self.codec.id())
            .finish()
    }
}

impl CodecClient {
    /// Serve clients of `codec`'s dialect.
    pub fn new(codec: Arc<dyn DialectCodec>) -> Self {
        CodecClient { codec }
    }

    /// Parse a body into its top-level fields, with the route's model and stream flag.
    pub fn body(bytes: &[u8], route: &RouteParams) -> Result<JsonObject, RelayError> {
        let mut body = relay_core::parse_json_object(bytes).map_err(|e| {
            RelayError::bad_request(format!(
                "We could not parse the JSON body of your request: {e}. The body must be a JSON object."
            ))
        })?;
        if let Some(model) = &route.model {
            body.insert(
                "model".into(),
                raw(&serde_json::to_string(model)
                    .map_err(|e| RelayError::internal(e.to_string()))?)?,
            );
        }
        if let Some(stream) = route.stream {
            body.insert("stream".into(), raw(if stream { "true" } else { "false" })?);
        }
        Ok(body)
    }

    /// Decode an already-split body.
    pub fn parse_object(
        &self,
        op: Operation,
        body: JsonObject,
    ) -> Result<InboundRequest, RelayError> {
        if op != Operation::Chat {
            return Err(RelayError::bad_request(format!(
                "`{}` clients can only make chat requests here",
                self.codec.id()
            )));
        }
        let ir = self.codec.decode_request(&body)?;
        Ok(InboundRequest {
            dialect: self.codec.id(),
            op,
            model: ir.model.clone(),
            stream: ir.stream,
            // These dialects always report usage in their streams.
            include_usage: true,
            prompt_chars: ir.prompt_chars(),
            ir: Some(Arc::new(ir)),
            body,
        })
    }
}

fn raw(json: &str) -> Result<Box<RawValue>, RelayError> {
    RawValue::from_string(json.to_owned()).map_err(|e| RelayError::internal(e.to_string()))
}

impl ClientDialect for CodecClient {
    fn id(&self) -> DialectId {
        self.codec.id()
    }

    fn parse_request(
        &self,
        op: Operation,
        bytes: &[u8],
        route: &RouteParams,
    ) -> Result<InboundRequest, RelayError> {
        self.parse_object(op, Self::body(bytes, route)?)
    }

    fn error_body(&self, err: &RelayError) -> Bytes {
        self.codec.error_body(err)
    }
}
