//! Extractors whose rejections are [`ApiError`]s, so every bad request gets
//! the protocol's error body.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON body: 413 past the body limit (`DefaultBodyLimit`), 400 with the
/// line and column of a syntax error, 400 naming the field of a type error.
/// An empty body reads as `{}`. The content type is not checked: `curl -d`
/// sends JSON labelled as a form.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        format!(
                            "the request body is larger than {} bytes",
                            super::MAX_BODY_BYTES
                        ),
                    )
                } else {
                    ApiError::bad_request(format!(
                        "cannot read the body: {}",
                        rejection.body_text()
                    ))
                }
            })?;
        parse(&bytes).map(ApiJson)
    }
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let decoder = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(decoder).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = format!("line {} column {}", inner.line(), inner.column());
        if inner.is_syntax() || inner.is_eof() {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {inner} (at {at})"),
            )
        } else if path == "." {
            ApiError::bad_request(format!("{inner}"))
        } else {
            ApiError::bad_request(format!("field `{path}`: {inner}"))
        }
    })
}

/// Path parameters, rejected as [`ApiError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Query parameters, rejected as [`ApiError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Body {
        text: String,
    }

    #[test]
    fn bad_bodies_say_where() {
        let error = parse::<Body>(b"{\"text\": ").expect_err("syntax");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        let error = format!("{error:?}");
        assert!(
            error.contains("invalid_json") && error.contains("line 1"),
            "{error}"
        );
        let error = format!("{:?}", parse::<Body>(b"{\"text\": 5}").expect_err("type"));
        assert!(error.contains("field `text`"), "{error}");
        let error = format!("{:?}", parse::<Body>(b"  ").expect_err("missing"));
        assert!(error.contains("missing field `text`"), "{error}");
    }
}
