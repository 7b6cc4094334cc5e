//! OpenAI's error shape, for every answer of the adapter routes:
//! `{"error": {"message", "type", "param", "code"}}` with the status the
//! official SDKs turn into their exception classes (400
//! `BadRequestError`, 401 `AuthenticationError`, 403
//! `PermissionDeniedError`, 404 `NotFoundError`, 409 `ConflictError`, 422
//! `UnprocessableEntityError`, 429 `RateLimitError`, 5xx
//! `InternalServerError`; 402 and 413 are `APIStatusError`s with that
//! status).
//!
//! Every rejection of the shared extractors ([`Tenant`], [`ApiJson`]) and
//! every session error is converted here, so nothing on these routes
//! answers in the native `{"error": "<code>"}` shape.
//!
//! [`Tenant`]: crate::api::Tenant

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use karta_harness::{ErrorCode, ErrorData};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api::{ApiError, ApiJson};

/// OpenAI's error body, for the OpenAPI document.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct OpenAiErrorBody {
    /// `{message, type, param, code}`.
    #[schema(value_type = Object)]
    error: Value,
}

/// An error answer in OpenAI's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error`, `insufficient_quota`,
    /// `server_error`, …
    pub kind: &'static str,
    /// The request parameter at fault, if one is.
    pub param: Option<String>,
    /// A stable code (ours where OpenAI has none).
    pub code: Option<String>,
    /// What went wrong, for a person.
    pub message: String,
}

impl OpenAiError {
    /// 400 `invalid_request_error` about `param`.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            param: param.map(str::to_owned),
            code: None,
            message: message.into(),
        }
    }

    /// This error with `code`.
    pub fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_owned());
        self
    }

    /// The `error` object (also what a failed chat stream sends as its
    /// last `data:`).
    pub fn body(&self) -> Value {
        json!({ "error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    /// The error a turn that failed with `error` answers.
    pub fn from_turn(error: &ErrorData) -> Self {
        let (status, kind) = match error.code {
            ErrorCode::BudgetExhausted => (StatusCode::PAYMENT_REQUIRED, "insufficient_quota"),
            ErrorCode::ByokKeyRejected => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error")
            }
            ErrorCode::ModelUnreachable | ErrorCode::HarnessUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "server_error")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        };
        Self {
            status,
            kind,
            param: None,
            code: Some(error.code.as_str().to_owned()),
            message: error.message.clone(),
        }
    }
}

/// OpenAI's `type` for a status.
fn kind_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        402 => "insufficient_quota",
        429 => "requests",
        500.. => "server_error",
        _ => "invalid_request_error",
    }
}

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> Self {
        let status = error.status();
        let code = match status.as_u16() {
            // What the SDKs and their users look for on a bad key.
            401 => "invalid_api_key",
            429 => "rate_limit_exceeded",
            _ => error.code(),
        };
        Self {
            status,
            kind: kind_for(status),
            param: None,
            code: Some(code.to_owned()),
            message: error.message().to_owned(),
        }
    }
}

impl From<crate::session::SessionError> for OpenAiError {
    fn from(error: crate::session::SessionError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<crate::projects::ProjectError> for OpenAiError {
    fn from(error: crate::projects::ProjectError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<crate::meter::MeterError> for OpenAiError {
    fn from(error: crate::meter::MeterError) -> Self {
        ApiError::from(error).into()
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// Reads a request body as `T`: the shared [`ApiJson`] checks (JSON
/// content type, size → 413, syntax → 400), then the fields, with the
/// parameter at fault as `param` — an unknown one is refused as OpenAI
/// refuses it (`unknown_parameter`).
pub fn parse_body<T: DeserializeOwned>(
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<T, OpenAiError> {
    let ApiJson(value) = body.map_err(|error| {
        let code = error.code();
        let mut error = OpenAiError::from(error);
        if code == "invalid_json" {
            error.code = None;
        }
        error
    })?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if let Some(rest) = inner.strip_prefix("unknown field `") {
            // (The path already ends with the unknown field's name.)
            let name = rest.split('`').next().unwrap_or_default();
            let param = if path == "." || path.is_empty() {
                name.to_owned()
            } else {
                path.clone()
            };
            return OpenAiError::invalid(
                Some(&param),
                format!("Unrecognized request argument supplied: {param}"),
            )
            .with_code("unknown_parameter");
        }
        if let Some(rest) = inner.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or_default();
            let param = if path == "." || path.is_empty() {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            };
            return OpenAiError::invalid(
                Some(&param),
                format!("Missing required parameter: '{param}'."),
            )
            .with_code("missing_required_parameter");
        }
        let param = (path != ".").then_some(path.as_str());
        OpenAiError::invalid(param, format!("Invalid value for '{path}': {inner}"))
            .with_code("invalid_value")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        model: String,
    }

    fn parse(value: Value) -> Result<Body, OpenAiError> {
        parse_body(Ok(ApiJson(value)))
    }

    #[test]
    fn unknown_and_missing_parameters_name_the_param() {
        let error = parse(json!({"model": "m", "bogus": 1})).expect_err("unknown");
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.param.as_deref(), Some("bogus"));
        assert_eq!(error.code.as_deref(), Some("unknown_parameter"));
        let error = parse(json!({})).expect_err("missing");
        assert_eq!(error.param.as_deref(), Some("model"));
        let body = error.body();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["message"].is_string());
    }

    #[test]
    fn native_errors_take_openais_shape() {
        let error: OpenAiError =
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "no key").into();
        assert_eq!(error.code.as_deref(), Some("invalid_api_key"));
        assert_eq!(error.kind, "invalid_request_error");
        let error = OpenAiError::from_turn(&ErrorData {
            code: ErrorCode::BudgetExhausted,
            message: "spent".into(),
        });
        assert_eq!(error.status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(error.body()["error"]["code"], "budget_exhausted");
        assert_eq!(error.body()["error"]["type"], "insufficient_quota");
    }
}
