//! Extractors that turn every malformed request into a problem+json 4xx.

use crate::error::CoreError;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// JSON body; unknown fields, wrong types, syntax errors, wrong content type and oversized
/// bodies each get their own clear 4xx.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = CoreError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(CoreError::InvalidField {
                field: "body".into(),
                reason: e.body_text().replace("Failed to deserialize the JSON body into the target type: ", ""),
            }),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(CoreError::Invalid(format!(
                "malformed JSON: {}",
                e.body_text().replace("Failed to parse the request body as JSON: ", "")
            ))),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(CoreError::UnsupportedMediaType),
            Err(JsonRejection::BytesRejection(e)) => {
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    Err(CoreError::PayloadTooLarge(0))
                } else {
                    Err(CoreError::Invalid(format!("could not read the body: {}", e.body_text())))
                }
            }
            Err(e) => Err(CoreError::Invalid(e.body_text())),
        }
    }
}

/// Path parameters; a malformed id is a 400 naming the parameter.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = CoreError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| CoreError::Invalid(format!("bad path parameter: {}", e.body_text())))
    }
}

/// Query parameters; unknown or malformed ones are a 400.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = CoreError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| CoreError::Invalid(format!("bad query: {}", e.body_text())))
    }
}
