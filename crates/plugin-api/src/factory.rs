//! [`PluginHost`] as relay-core's [`PluginFactory`]: a preset item's `plugins` list
//! becomes an [`ItemChain`], each plugin's `init` checking the item's config first.

use std::sync::Arc;

use relay_core::config::PluginRef;
use relay_core::hooks::{ItemHooks, PluginFactory};

use crate::chain::{ChainEntry, ItemChain};
use crate::host::{LoadedPlugin, PluginHost};

impl PluginFactory for PluginHost {
    fn chain(
        &self,
        _preset: &str,
        _item: usize,
        plugins: &[PluginRef],
    ) -> Result<Option<Arc<dyn ItemHooks>>, String> {
        let mut entries = Vec::new();
        for r in plugins.iter().filter(|r| r.enabled) {
            let plugin =
                self.get(&r.name, r.version.as_deref())
                    .ok_or_else(|| match &r.version {
                        Some(v) => format!("unknown plugin `{}` version {v}", r.name),
                        None => format!("unknown plugin `{}`", r.name),
                    })?;
            let config: Arc<str> = Arc::from(r.config.to_string());
            init(&plugin, &config).map_err(|e| format!("plugin `{}`: {e}", r.name))?;
            entries.push(ChainEntry::new(plugin, config));
        }
        if entries.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(ItemChain::new(entries))))
    }
}

/// Run the plugin's `init` with this config in a throwaway instance.
pub fn init(plugin: &LoadedPlugin, config: &Arc<str>) -> Result<(), String> {
    let mut live = plugin
        .instantiate(config.clone())
        .map_err(|e| format!("cannot instantiate: {e}"))?;
    let text = config.to_string();
    live.store
        .set_epoch_deadline(crate::host::deadline_ticks(crate::host::INIT_DEADLINE));
    let result = live
        .plugin
        .call_init(&mut live.store, &text)
        .map_err(|e| format!("init {}", crate::host::classify(&e, "init")))?;
    result.map_err(|e| format!("rejects its config: {e}"))
}
