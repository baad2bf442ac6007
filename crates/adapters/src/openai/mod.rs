//! The `openai-chat` dialect: the client-side codec, the upstream adapter for OpenAI and
//! every OpenAI-compatible provider, and the typed wire structs.

mod adapter;
mod codec;
mod dialect;
mod errors;
mod peek;
mod stream;
pub mod wire;

pub use adapter::OpenAiAdapter;
pub use codec::OpenAiCodec;
pub use dialect::OpenAiDialect;
pub use errors::{error_body, parse_error_body};
pub use stream::PassthroughStream;
