//! How the endpoints answer: the error answer and its statuses, the request parts read
//! with axum's refusals turned into it, model work on blocking threads, PNG answers, and
//! the checks of the image and checkpoint a request names.

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Json, Path, Query, Request};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::serve::state::ServerState;

/// An error answer: its status and what to tell the user.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    pub(super) message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl std::fmt::Display) -> Self {
        Self {
            status,
            message: message.to_string(),
        }
    }

    pub(super) fn bad_request(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(super) fn not_found(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub(super) fn conflict(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    pub(super) fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// Failures of the model or the files, after the request was checked.
impl From<crate::error::Error> for ApiError {
    fn from(e: crate::error::Error) -> Self {
        Self::internal(format!("{e:#}"))
    }
}

pub(super) type Answer<T> = Result<T, ApiError>;

/// The largest request body read: axum's own limit for JSON bodies (the page's requests
/// are a few hundred bytes).
const BODY_LIMIT: usize = 2 << 20;

/// Middleware that reads a request's whole body before the request is routed. hyper
/// closes a kept-alive connection when an answer goes out before the body that came
/// with the request has arrived, and the client's next request on that connection then
/// fails ("peer disconnected"). Endpoints that take no body (encode, proposals) and
/// refusals made before the body is read (a bad path or query) would otherwise do that
/// whenever the body came in a TCP segment of its own.
pub(super) async fn whole_body_first(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > BODY_LIMIT) {
        let message = format!("the request body is over {BODY_LIMIT} bytes");
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message).into_response();
    }
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) => ApiError::bad_request(format!("reading the request body: {e}")).into_response(),
    }
}

/// A refused extraction with axum's status, except that a body which is JSON but not
/// the expected shape (422 there) is a 400 like any other bad body.
fn rejected(status: StatusCode, message: String) -> ApiError {
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    ApiError::new(status, message)
}

pub(super) fn path_of<T>(path: Result<Path<T>, PathRejection>) -> Answer<T> {
    path.map(|Path(p)| p)
        .map_err(|e| rejected(e.status(), e.body_text()))
}

pub(super) fn body_of<T>(body: Result<Json<T>, JsonRejection>) -> Answer<T> {
    body.map(|Json(b)| b).map_err(|e| {
        rejected(
            e.status(),
            format!("malformed request body: {}", e.body_text()),
        )
    })
}

pub(super) fn query_of<T>(query: Result<Query<T>, QueryRejection>) -> Answer<T> {
    query
        .map(|Query(q)| q)
        .map_err(|e| rejected(e.status(), e.body_text()))
}

/// Runs model or file work on a blocking thread.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Answer<T> + Send + 'static,
) -> Answer<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("the request's work failed: {e}")))?
}

pub(super) fn png(image: &image::RgbImage) -> Answer<Response> {
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| ApiError::internal(format!("encoding a PNG: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "image/png")], bytes).into_response())
}

pub(super) fn checked_image(state: &ServerState, image: usize) -> Answer<()> {
    state.image(image).map(|_| ()).map_err(ApiError::not_found)
}

pub(super) fn checked_checkpoint(state: &ServerState, checkpoint: usize) -> Answer<()> {
    state
        .checkpoint(checkpoint)
        .map(|_| ())
        .map_err(ApiError::not_found)
}

/// `?checkpoint=K` (default 0).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckpointChoice {
    #[serde(default)]
    checkpoint: usize,
}

/// The image of the path and the checkpoint of the query, both checked to exist.
pub(super) fn image_and_checkpoint(
    state: &ServerState,
    image: Result<Path<usize>, PathRejection>,
    query: Result<Query<CheckpointChoice>, QueryRejection>,
) -> Answer<(usize, usize)> {
    let image = path_of(image)?;
    let checkpoint = query_of(query)?.checkpoint;
    checked_image(state, image)?;
    checked_checkpoint(state, checkpoint)?;
    Ok((image, checkpoint))
}
