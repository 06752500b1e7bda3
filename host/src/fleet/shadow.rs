//! Shadow candidates from the control plane: a version pushed with
//! `--shadow` runs beside the live one (see [`crate::handler::shadow`])
//! until it is promoted, replaced or cleared.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::control::ControlPlane;
use super::reload::follow;
use crate::handler::Handler;
use crate::handler::shadow::Shadow;

/// Follows the shadow candidate of `handler`: a pushed candidate runs
/// beside the live version until promoted or replaced.
pub async fn watch_shadow(
    handler: Arc<Handler>,
    control: ControlPlane,
    shutdown: CancellationToken,
) {
    let Some(object) = handler.config.plugin_object.clone() else {
        return;
    };
    let key = ControlPlane::shadow_key(&object);
    let (handler, control_ref, object_ref) = (&handler, &control, &object);
    follow(&control, &key, handler.name(), &shutdown, |version| async move {
        let Some(version) = version else {
            handler.shadow.store(None);
            tracing::info!(handler = %handler.name(), "shadow candidate cleared");
            return;
        };
        let loaded = match control_ref.fetch(object_ref, &version).await {
            Ok((bytes, _)) => {
                let runtime = handler.runtime().clone();
                tokio::task::spawn_blocking(move || runtime.load(&bytes))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }
            Err(error) => Err(format!("{error:#}")),
        };
        match loaded {
            Ok(plugin) => {
                tracing::info!(handler = %handler.name(), candidate = %plugin.digest(), "shadow candidate running beside the live version");
                handler.shadow.store(Some(Arc::new(Shadow::new(plugin))));
            }
            Err(error) => {
                tracing::error!(handler = %handler.name(), digest = %version.digest, %error, "shadow candidate refused");
            }
        }
    })
    .await;
}
