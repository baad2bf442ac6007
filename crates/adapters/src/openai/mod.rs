//! The `openai-chat` dialect: the client-side request parser with its pass-through fast
//! path, the codec over the typed wire structs, and the same-dialect stream observer.

mod chunk;
mod codec;
mod dialect;
mod errors;
pub(crate) mod peek;
mod scan;
mod stream;
pub mod wire;

pub use codec::OpenAiCodec;
pub use dialect::OpenAiDialect;
pub use errors::{error_body, parse_error_body};
pub use stream::PassthroughStream;
