//! Extractors whose rejections are [`ApiError`]s, so every bad request gets
//! the protocol's error body.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderValue, StatusCode, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON body: 415 unless it is labelled `application/json`, 413 past the
/// body limit (`DefaultBodyLimit`), 400 with the line and column of a
/// syntax error, 400 naming the field of a type error. An empty body
/// without a content type reads as `{}`.
///
/// The label is required because the content types a web page may send to
/// any address without a CORS preflight (`text/plain`, forms) are exactly
/// how a page would smuggle a JSON body into this loopback API (see
/// `loopback`); `application/json` from another origin needs a preflight,
/// which this API never grants. (So `curl -d` needs
/// `-H 'content-type: application/json'`.)
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let labelled = match request.headers().get(header::CONTENT_TYPE) {
            Some(value) => {
                if !is_json(value) {
                    return Err(unsupported_media_type());
                }
                true
            }
            None => false,
        };
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
        if !labelled && !bytes.iter().all(u8::is_ascii_whitespace) {
            // A body with no label: not known to be JSON.
            return Err(unsupported_media_type());
        }
        parse(&bytes).map(ApiJson)
    }
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "the body must be JSON sent with `Content-Type: application/json`",
    )
}

/// `application/json`, with at most a UTF-8 `charset` parameter (JSON is
/// UTF-8; RFC 8259).
fn is_json(value: &HeaderValue) -> bool {
    let Ok(value) = value.to_str() else {
        return false;
    };
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|parameter| match parameter.split_once('=') {
        Some((name, charset)) if name.trim().eq_ignore_ascii_case("charset") => {
            let charset = charset.trim().trim_matches('"');
            charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")
        }
        _ => false,
    })
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
        if inner.is_syntax() || inner.is_eof() {
            // serde_json's message ends with "at line L column C" already.
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {inner}"),
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
    fn only_json_content_types() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(is_json(&HeaderValue::from_static(ok)), "{ok}");
        }
        for refused in [
            "text/plain",
            "text/plain; charset=utf-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json; charset=latin1",
            "application/json; boundary=x",
            "application/jsonx",
            "",
        ] {
            assert!(!is_json(&HeaderValue::from_static(refused)), "{refused}");
        }
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
