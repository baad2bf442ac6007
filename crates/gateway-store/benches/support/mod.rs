//! What the usage benches share: a settled request's record, and a migrated SQLite
//! store in a directory of their own.

use std::path::Path;

use relay_core::UsageRecord;
use relay_store::SharedStore;

/// The record of the `i`th request: a chat answer with a key, a channel and tokens.
pub(crate) fn record(i: u64) -> UsageRecord {
    let mut r = UsageRecord::new(
        format!("req_{i:032x}"),
        "fast".into(),
        relay_core::DialectId::OPENAI_CHAT,
        relay_core::Operation::Chat,
    );
    r.key_id = Some("bench".into());
    r.channel = Some("mock".into());
    r.upstream_model = Some("mock-model".into());
    r.usage.input_tokens = 12;
    r.usage.output_tokens = 24;
    r
}

/// A migrated SQLite store in `dir` (created), or `None` with the reason printed.
pub(crate) async fn sqlite_store(dir: &Path) -> Option<SharedStore> {
    let path = dir.join("bench.db");
    let opened = async {
        let store = relay_store::connect(path.to_str().unwrap_or("bench.db"), 2).await?;
        store.migrate().await?;
        Ok::<_, relay_store::StoreError>(store)
    };
    match opened.await {
        Ok(store) => Some(store),
        Err(e) => {
            eprintln!("cannot open the bench store: {e}");
            None
        }
    }
}
