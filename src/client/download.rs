//! `kiln status --download DIR`: the files a job kept from its run (`files_out`), fetched from
//! `GET /v1/jobs/{id}/files/{path}` and written under `DIR` at their paths, and a note for each
//! file that matched its `outputs` but was left out.

use std::path::{Component, Path};

use serde_json::Value;

use super::api::Api;
use super::{ClientError, note};

/// Writes every file `job` kept under `dir`, making directories as needed; returns how many.
pub(super) async fn download(api: &Api, job: &Value, dir: &Path) -> Result<usize, ClientError> {
    let id = job.get("id").and_then(Value::as_str).unwrap_or_default();
    let kept = job.get("files_out").and_then(Value::as_array);
    let mut written = 0;
    for file in kept.into_iter().flatten() {
        let Some(path) = file.get("path").and_then(Value::as_str) else {
            continue;
        };
        // The server checked the job's patterns; the client still writes only inside `dir`.
        let relative = Path::new(path);
        if !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(ClientError::BadResponse {
                url: api.url(&["jobs", id]).to_string(),
                detail: format!("a file path that leaves the directory: {path:?}"),
            });
        }
        let bytes = api.job_file(id, path).await?;
        let target = dir.join(relative);
        let write = |target: &Path| -> std::io::Result<()> {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(target, &bytes)
        };
        write(&target).map_err(|source| ClientError::WriteFile {
            path: target.clone(),
            source,
        })?;
        written += 1;
    }
    let omitted = job.get("files_omitted").and_then(Value::as_array);
    for file in omitted.into_iter().flatten() {
        let field = |name: &str| file.get(name).and_then(Value::as_str).unwrap_or_default();
        note(&format!(
            "{} was not kept: {}",
            field("path"),
            field("reason").replace('_', " ")
        ));
    }
    Ok(written)
}
