//! `config`: the handler's own configuration, read-only.

use crate::bindings::config::Host;
use crate::capability::HostState;

impl Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        self.charge_call()?;
        Ok(self.env.config.get(&key).cloned())
    }

    async fn get_all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        self.charge_call()?;
        // A BTreeMap iterates sorted, as the contract promises.
        Ok(self
            .env
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}
