//! `POST …/managed-agents/sessions/{id}/files` `{name, content_base64}` →
//! 201 `{path: "uploads/<name>", bytes}`: a file placed in the session
//! workspace's `uploads/`, where the next turn (and a running one) finds
//! it. A file of the same name is replaced.
//!
//! The workspace is writable by the session's jailed harness and its
//! plugins, so nothing there is trusted: the write goes through
//! [`karta_harness::safe_fs::SafeDir`] — `uploads` is made a real directory
//! (a link or file planted in its place is removed, never followed), and
//! the file is written to a fresh name beside it and renamed over the
//! upload's name (a link there is replaced, not written through). Nothing
//! is written outside `uploads/`.
//!
//! Refused:
//!
//! | why | answer |
//! | --- | --- |
//! | a name that is empty, longer than 255 bytes, `.`/`..`, starts with a dot, or holds `/`, `\`, NUL or another control character | 400 `invalid_file_name` |
//! | `content_base64` that is not base64 | 400 `invalid_request` |
//! | more than [`MAX_FILE_BYTES`] decoded | 413 `file_too_large` |
//! | a new file past [`MAX_FILES`] in `uploads/` | 400 `too_many_files` |

use std::path::Path;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use karta_harness::safe_fs::{Kind, SafeDir, is_link_refused};
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::super::error::{ApiError, ErrorBody};
use super::super::extract::ApiJson;
use super::super::tenant::TenantSession;
use crate::projects::Projects;

/// The largest upload, decoded.
pub const MAX_FILE_BYTES: usize = 10 * 1024 * 1024;

/// The most files a session's `uploads/` may hold.
pub const MAX_FILES: usize = 100;

/// The longest name, in bytes.
const MAX_NAME_BYTES: usize = 255;

/// The upload route's body limit: the largest file in base64, and room
/// for the rest of the JSON.
const MAX_UPLOAD_BODY: usize = MAX_FILE_BYTES.div_ceil(3) * 4 + 64 * 1024;

/// The directory uploads go to, in the session workspace.
const UPLOADS: &str = "uploads";

pub(super) fn routes() -> OpenApiRouter<Arc<Projects>> {
    OpenApiRouter::new()
        .routes(routes!(upload))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD_BODY))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Upload {
    /// The file's name: no `/`, no leading dot, at most 255 bytes.
    name: String,
    /// Its bytes, base64 (standard alphabet), at most 10 MiB decoded.
    content_base64: String,
}

/// Why a name is refused, if it is.
fn refuse_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("the file name is empty")
    } else if name.len() > MAX_NAME_BYTES {
        Some("the file name is longer than 255 bytes")
    } else if name.starts_with('.') {
        Some("the file name must not start with a dot")
    } else if name.contains(['/', '\\']) {
        Some("the file name must not contain a slash")
    } else if name.chars().any(char::is_control) {
        Some("the file name must not contain NUL or control characters")
    } else if name.trim() != name {
        Some("the file name must not start or end with a space")
    } else {
        None
    }
}

/// Writes `bytes` to `uploads/<name>` under `workspace` (see the module
/// docs).
fn place(workspace: &Path, name: &str, bytes: &[u8]) -> Result<(), ApiError> {
    let failed = |e: std::io::Error| {
        if is_link_refused(&e) {
            ApiError::new(
                StatusCode::CONFLICT,
                "workspace_conflict",
                "the session workspace has a link in the way of uploads/",
            )
        } else {
            tracing::error!("cannot write an upload: {e}");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "the file could not be written; try again",
            )
        }
    };
    let dir = SafeDir::create(workspace).map_err(failed)?;
    dir.create_dirs(Path::new(UPLOADS)).map_err(failed)?;
    let present = dir.list(Path::new(UPLOADS)).map_err(failed)?;
    let replaces = present.iter().any(|(entry, _)| entry == name);
    let files = present
        .iter()
        .filter(|(entry, kind)| {
            matches!(kind, Kind::File(_)) && !entry.to_string_lossy().starts_with('.')
        })
        .count();
    if !replaces && files >= MAX_FILES {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_files",
            format!("a session holds at most {MAX_FILES} uploaded files"),
        ));
    }
    dir.write(&Path::new(UPLOADS).join(name), bytes)
        .map_err(failed)
}

/// Places a file in the session workspace's `uploads/`.
#[utoipa::path(post, path = "/v1/managed-agents/sessions/{id}/files", tag = "managed-agents", request_body = Upload,
    responses(
        (status = 201, description = "`{path: \"uploads/<name>\", bytes}`"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody),
    ))]
async fn upload(
    TenantSession { id, sessions, .. }: TenantSession,
    request: Result<ApiJson<Upload>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(upload) = request.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            e
        }
    })?;
    if let Some(why) = refuse_name(&upload.name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_file_name",
            why,
        ));
    }
    if upload.content_base64.len() > MAX_FILE_BYTES.div_ceil(3) * 4 {
        return Err(too_large());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(upload.content_base64.trim())
        .map_err(|e| ApiError::bad_request(format!("`content_base64` is not base64: {e}")))?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let workspace = sessions.workspace(&id);
    let name = upload.name.clone();
    let size = bytes.len();
    tokio::task::spawn_blocking(move || place(&workspace, &name, &bytes))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the upload failed",
            )
        })??;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "path": format!("{UPLOADS}/{}", upload.name), "bytes": size })),
    )
        .into_response())
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "file_too_large",
        format!("a file may hold at most {MAX_FILE_BYTES} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            ".hidden",
            "a\0b",
            "a\nb",
            " x",
            &"x".repeat(256),
        ] {
            assert!(refuse_name(bad).is_some(), "{bad:?}");
        }
        for good in ["notes.txt", "Report 2024 (final).pdf", "日本語.md", "a..b"] {
            assert_eq!(refuse_name(good), None, "{good:?}");
        }
    }

    #[test]
    fn a_link_at_uploads_is_replaced_not_followed() {
        let workspace = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(outside.path(), workspace.path().join(UPLOADS)).expect("link");
        place(workspace.path(), "a.txt", b"hi").expect("placed");
        assert!(
            std::fs::read_dir(outside.path())
                .expect("read")
                .next()
                .is_none()
        );
        let placed = workspace.path().join("uploads/a.txt");
        assert_eq!(std::fs::read(placed).expect("read"), b"hi");
        assert!(
            !std::fs::symlink_metadata(workspace.path().join(UPLOADS))
                .expect("stat")
                .file_type()
                .is_symlink()
        );
    }
}
