//! The review endpoints: a run's images worst first, one image's scores, and its
//! pictures (each model's masks over the ground truth).

use axum::extract::rejection::PathRejection;
use axum::extract::{Json, Path, State};
use axum::response::Response;
use serde_json::{json, Value};

use super::answer::{blocking, path_of, png, Answer, ApiError};
use super::Shared;
use crate::serve::review::ReviewRun;
use crate::serve::state::ServerState;

fn review_run(state: &ServerState, run: usize) -> Answer<&ReviewRun> {
    state.reviews.get(run).ok_or_else(|| {
        ApiError::not_found(format!(
            "no review run {run}: {} are open",
            state.reviews.len()
        ))
    })
}

pub(super) async fn review(
    State(state): State<Shared>,
    run: Result<Path<usize>, PathRejection>,
) -> Answer<Json<Value>> {
    let run = review_run(&state, path_of(run)?)?;
    let images: Vec<Value> = run
        .worst_first()
        .into_iter()
        .map(|i| {
            let e = &run.entries[i];
            json!({ "entry": i, "image": e.image, "objects": e.objects, "mean_iou": e.mean_iou })
        })
        .collect();
    Ok(Json(
        json!({ "name": run.name, "models": run.models, "images": images }),
    ))
}

pub(super) async fn review_image(
    State(state): State<Shared>,
    at: Result<Path<(usize, usize)>, PathRejection>,
) -> Answer<Json<Value>> {
    let (run, entry) = path_of(at)?;
    let reviewed = review_run(&state, run)?;
    if entry >= reviewed.entries.len() {
        return Err(ApiError::not_found(format!(
            "{}: no image {entry} ({} reviewed)",
            reviewed.name,
            reviewed.entries.len()
        )));
    }
    blocking(move || {
        let reviewed = review_run(&state, run)?.image(entry)?;
        let objects: Vec<Value> = reviewed
            .objects
            .iter()
            .map(|o| json!({ "category": o.category, "iou": o.iou }))
            .collect();
        Ok(Json(json!({
            "image": reviewed.image,
            "models": reviewed.models,
            "width": reviewed.size[1],
            "height": reviewed.size[0],
            "objects": objects,
        })))
    })
    .await
}

pub(super) async fn review_picture(
    State(state): State<Shared>,
    at: Result<Path<(usize, usize, usize)>, PathRejection>,
) -> Answer<Response> {
    let (run, entry, model) = path_of(at)?;
    let reviewed = review_run(&state, run)?;
    if entry >= reviewed.entries.len() || model >= reviewed.models.len() {
        return Err(ApiError::not_found(format!(
            "{}: no image {entry} or model {model}",
            reviewed.name
        )));
    }
    blocking(move || {
        let picture = review_run(&state, run)?.picture(entry, model, state.intensity)?;
        png(&picture)
    })
    .await
}
