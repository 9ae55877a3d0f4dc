//! The HTTP interface of `samtune serve`: the page at `/` and JSON endpoints under
//! `/api`. Masks travel as COCO's uncompressed RLE (`counts` over the column-major
//! pixels, starting with a run of 0s), which the page paints without a decoder of its
//! own. Bad requests get a 4xx and `{"error": "..."}` naming what is wrong; model work
//! runs on blocking threads, so one slow request does not stall the others.

mod annotate;
mod answer;
mod reviews;

use std::sync::Arc;

use axum::extract::{Json, State};
use axum::response::Html;
use axum::routing::{delete, get, post};
use axum::Router;
use serde_json::{json, Value};

use annotate::{accept, encode, image_file, job, objects, predict, start_proposals, undo};
use answer::ApiError;
use reviews::{review, review_image, review_picture};

use super::state::ServerState;

type Shared = Arc<ServerState>;

/// The page: one file, its script and styles inline.
const PAGE: &str = include_str!("../page.html");

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/state", get(overview))
        .route("/api/images/{image}/file", get(image_file))
        .route("/api/images/{image}/encode", post(encode))
        .route("/api/images/{image}/objects", get(objects).post(accept))
        .route("/api/images/{image}/objects/last", delete(undo))
        .route("/api/images/{image}/proposals", post(start_proposals))
        .route("/api/predict", post(predict))
        .route("/api/jobs/{job}", get(job))
        .route("/api/reviews/{run}", get(review))
        .route("/api/reviews/{run}/{entry}", get(review_image))
        .route(
            "/api/reviews/{run}/{entry}/{model}/picture",
            get(review_picture),
        )
        .fallback(unknown_route)
        .layer(axum::middleware::from_fn(answer::whole_body_first))
        .with_state(state)
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn unknown_route() -> ApiError {
    ApiError::not_found("no such page or endpoint")
}

async fn overview(State(state): State<Shared>) -> Json<Value> {
    let store = state.store();
    let images: Vec<Value> = state
        .images
        .iter()
        .map(|i| json!({ "name": i.name, "objects": store.object_count(&i.name) }))
        .collect();
    let checkpoints: Vec<Value> = state
        .checkpoints
        .iter()
        .map(|c| json!({ "name": c.name, "path": c.path.display().to_string() }))
        .collect();
    let reviews: Vec<Value> = state
        .reviews
        .iter()
        .map(|r| json!({ "name": r.name, "models": r.models, "images": r.entries.len() }))
        .collect();
    Json(json!({
        "images": images,
        "checkpoints": checkpoints,
        "categories": store.categories(),
        "annotations": store.path().display().to_string(),
        "reviews": reviews,
    }))
}
