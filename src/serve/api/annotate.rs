//! The annotation endpoints: an image and its encoding, prompts to masks, the saved
//! objects (accept, undo) and the automatic mask generator's jobs and proposals.

use std::time::Instant;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Json, Path, Query, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::answer::{
    blocking, body_of, checked_checkpoint, checked_image, image_and_checkpoint, path_of, png,
    Answer, ApiError, CheckpointChoice,
};
use super::Shared;
use crate::data::dataset::image_size;
use crate::data::Rle;
use crate::predict::{BinaryMask, PromptBatch};
use crate::serve::state::{lock_job, ServerState};
use crate::serve::store::AnnotationStore;

/// A mask for the page.
fn mask_json(mask: &BinaryMask) -> Value {
    rle_json(&Rle::encode(mask))
}

fn rle_json(rle: &Rle) -> Value {
    let area: u64 = rle
        .counts
        .iter()
        .skip(1)
        .step_by(2)
        .map(|&c| c as u64)
        .sum();
    json!({ "area": area, "counts": rle.counts })
}

pub(super) async fn image_file(
    State(state): State<Shared>,
    image: Result<Path<usize>, PathRejection>,
) -> Answer<Response> {
    let image = path_of(image)?;
    checked_image(&state, image)?;
    blocking(move || png(&state.load_image(image)?)).await
}

pub(super) async fn encode(
    State(state): State<Shared>,
    image: Result<Path<usize>, PathRejection>,
    query: Result<Query<CheckpointChoice>, QueryRejection>,
) -> Answer<Json<Value>> {
    let (image, checkpoint) = image_and_checkpoint(&state, image, query)?;
    blocking(move || {
        let started = Instant::now();
        let was_encoded = state.is_encoded(image, checkpoint);
        let encoded = state.encoded(image, checkpoint)?;
        let [height, width] = encoded.original_size;
        Ok(Json(json!({
            "width": width,
            "height": height,
            "in_memory": was_encoded,
            "server_ms": started.elapsed().as_secs_f64() * 1e3,
        })))
    })
    .await
}

/// A page's prompt set on one image.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PredictRequest {
    image: usize,
    #[serde(default)]
    checkpoint: usize,
    /// `[x, y, label]`, label 1 for a positive click and 0 for a negative one.
    #[serde(default)]
    points: Vec<[f64; 3]>,
    /// `[x0, y0, x1, y1]` in image pixels.
    #[serde(default, rename = "box")]
    bbox: Option<[f64; 4]>,
    /// The mask to refine: a candidate of an earlier prediction on this image.
    #[serde(default)]
    previous: Option<CandidateRef>,
    /// Several candidates (default: when the prompt is a single click, as the official
    /// predictor advises for ambiguous prompts).
    #[serde(default)]
    multimask: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CandidateRef {
    prediction: u64,
    candidate: usize,
}

/// The prompt set's batch, each coordinate checked against the image's `[h, w]`.
fn prompt_batch(request: &PredictRequest, [height, width]: [usize; 2]) -> Answer<PromptBatch> {
    if request.points.is_empty() && request.bbox.is_none() {
        return Err(ApiError::bad_request("a prompt needs a point or a box"));
    }
    let inside = |x: f64, y: f64| {
        x.is_finite()
            && y.is_finite()
            && (0.0..=width as f64).contains(&x)
            && (0.0..=height as f64).contains(&y)
    };
    let mut points = Vec::new();
    for &[x, y, label] in &request.points {
        if !inside(x, y) {
            return Err(ApiError::bad_request(format!(
                "point ({x}, {y}) lies outside the {width}x{height} image"
            )));
        }
        if label != 0.0 && label != 1.0 {
            return Err(ApiError::bad_request(format!(
                "point label {label}: 1 marks the object, 0 the background"
            )));
        }
        points.push(([x, y], label as i64));
    }
    if let Some(b) = request.bbox {
        if !(inside(b[0], b[1]) && inside(b[2], b[3]) && b[0] < b[2] && b[1] < b[3]) {
            return Err(ApiError::bad_request(format!(
                "box {b:?} must be [x0, y0, x1, y1] with x0 < x1, y0 < y1, inside the {width}x{height} image"
            )));
        }
    }
    Ok(PromptBatch {
        points: if points.is_empty() {
            Vec::new()
        } else {
            vec![points]
        },
        boxes: request.bbox.into_iter().collect(),
        mask_input: None,
    })
}

pub(super) async fn predict(
    State(state): State<Shared>,
    body: Result<Json<PredictRequest>, JsonRejection>,
) -> Answer<Json<Value>> {
    let request = body_of(body)?;
    checked_image(&state, request.image)?;
    checked_checkpoint(&state, request.checkpoint)?;
    let size = image_size(&state.image(request.image)?.path)?;
    let prompts = prompt_batch(&request, size)?;
    let previous = match &request.previous {
        None => None,
        Some(r) => {
            let earlier = state.prediction(r.prediction).ok_or_else(|| {
                ApiError::not_found(format!(
                    "no prediction {} (the latest ones are kept)",
                    r.prediction
                ))
            })?;
            if (earlier.image, earlier.checkpoint) != (request.image, request.checkpoint) {
                return Err(ApiError::bad_request(format!(
                    "prediction {} is of another image or checkpoint",
                    r.prediction
                )));
            }
            let logits = earlier.low_res.get(r.candidate).cloned().ok_or_else(|| {
                ApiError::bad_request(format!(
                    "prediction {} has no candidate {}",
                    r.prediction, r.candidate
                ))
            })?;
            Some((logits, earlier.low_res_side))
        }
    };
    let multimask = request
        .multimask
        .unwrap_or(request.points.len() == 1 && request.bbox.is_none());
    blocking(move || {
        let started = Instant::now();
        let prediction = state.predict(
            request.image,
            request.checkpoint,
            prompts,
            previous.as_ref().map(|(l, side)| (l.as_slice(), *side)),
            multimask,
        )?;
        let candidates: Vec<Value> = prediction
            .masks
            .iter()
            .zip(&prediction.ious)
            .map(|(mask, iou)| {
                let mut m = rle_json(mask);
                m["iou"] = json!(iou);
                m
            })
            .collect();
        let best = (0..prediction.ious.len())
            .max_by(|&a, &b| prediction.ious[a].total_cmp(&prediction.ious[b]))
            .unwrap_or(0);
        Ok(Json(json!({
            "prediction": prediction.id,
            "width": size[1],
            "height": size[0],
            "candidates": candidates,
            "best": best,
            "server_ms": started.elapsed().as_secs_f64() * 1e3,
        })))
    })
    .await
}

/// The saved objects of `image`, for the page.
fn objects_json(state: &ServerState, image: usize) -> Answer<Value> {
    let name = &state.image(image)?.name;
    let objects: Vec<Value> = state
        .store()
        .objects(name)?
        .iter()
        .map(|o| {
            let mut m = mask_json(&o.mask);
            m["id"] = json!(o.id);
            m["category"] = json!(o.category);
            m
        })
        .collect();
    Ok(json!({ "objects": objects, "categories": state.store().categories() }))
}

pub(super) async fn objects(
    State(state): State<Shared>,
    image: Result<Path<usize>, PathRejection>,
) -> Answer<Json<Value>> {
    let image = path_of(image)?;
    checked_image(&state, image)?;
    blocking(move || objects_json(&state, image).map(Json)).await
}

/// An object to save: a prediction's candidate or an auto-annotation proposal.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AcceptRequest {
    category: String,
    #[serde(default)]
    prediction: Option<u64>,
    #[serde(default)]
    candidate: Option<usize>,
    #[serde(default)]
    job: Option<u64>,
    #[serde(default)]
    proposal: Option<usize>,
}

/// The mask `request` names, checked to be of `image`.
fn accepted_mask(state: &ServerState, image: usize, request: &AcceptRequest) -> Answer<BinaryMask> {
    match (request.prediction, request.job) {
        (Some(id), None) => {
            let prediction = state
                .prediction(id)
                .ok_or_else(|| ApiError::not_found(format!("no prediction {id}")))?;
            if prediction.image != image {
                return Err(ApiError::bad_request(format!(
                    "prediction {id} is of image {}",
                    prediction.image
                )));
            }
            let k = request.candidate.unwrap_or(0);
            let rle = prediction.masks.get(k).ok_or_else(|| {
                ApiError::bad_request(format!("prediction {id} has no candidate {k}"))
            })?;
            if !state.mark_accepted(id) {
                return Err(ApiError::conflict(format!(
                    "prediction {id} was saved already"
                )));
            }
            Ok(rle.decode()?)
        }
        (None, Some(id)) => {
            let job = state
                .job(id)
                .ok_or_else(|| ApiError::not_found(format!("no auto-annotation job {id}")))?;
            let mut job = lock_job(&job);
            if job.image != image {
                return Err(ApiError::bad_request(format!(
                    "job {id} is of image {}",
                    job.image
                )));
            }
            let k = request.proposal.unwrap_or(0);
            let Some(Ok(proposals)) = &job.outcome else {
                return Err(ApiError::bad_request(format!(
                    "job {id} has no proposals (yet)"
                )));
            };
            let proposal = proposals
                .get(k)
                .ok_or_else(|| ApiError::bad_request(format!("job {id} has no proposal {k}")))?;
            let mask = proposal.rle.decode()?;
            if job.accepted.contains(&k) {
                return Err(ApiError::conflict(format!(
                    "proposal {k} of job {id} was saved already"
                )));
            }
            job.accepted.push(k);
            Ok(mask)
        }
        _ => Err(ApiError::bad_request(
            "name either a prediction (and candidate) or a job (and proposal)",
        )),
    }
}

pub(super) async fn accept(
    State(state): State<Shared>,
    image: Result<Path<usize>, PathRejection>,
    body: Result<Json<AcceptRequest>, JsonRejection>,
) -> Answer<Json<Value>> {
    let image = path_of(image)?;
    let request = body_of(body)?;
    checked_image(&state, image)?;
    if request.category.trim().is_empty() {
        return Err(ApiError::bad_request("an object needs a category name"));
    }
    blocking(move || {
        // claimed here, so that two accepts of one mask cannot both save it
        let mask = accepted_mask(&state, image, &request)?;
        let saved = if mask.area() == 0 {
            Err(ApiError::bad_request("the mask is empty: nothing to save"))
        } else {
            change_objects(&state, image, "id", |store, name| {
                store
                    .add(name, &mask, &request.category)
                    .map(|id| json!(id))
            })
        };
        if saved.is_err() {
            release(&state, &request);
        }
        saved
    })
    .await
}

/// Gives back the claim of an accept whose save failed (it may be tried again).
fn release(state: &ServerState, request: &AcceptRequest) {
    if let Some(id) = request.prediction {
        state.unmark_accepted(id);
    }
    if let Some(job) = request.job.and_then(|id| state.job(id)) {
        let k = request.proposal.unwrap_or(0);
        lock_job(&job).accepted.retain(|&a| a != k);
    }
}

pub(super) async fn undo(
    State(state): State<Shared>,
    image: Result<Path<usize>, PathRejection>,
) -> Answer<Json<Value>> {
    let image = path_of(image)?;
    checked_image(&state, image)?;
    blocking(move || {
        change_objects(&state, image, "removed", |store, name| {
            store.undo(name).map(|id| json!(id))
        })
    })
    .await
}

/// Applies `change` to the saved objects of `image` (given the store and the image's
/// file name); the answer is the image's objects after it, with what `change` returned
/// under `key`.
fn change_objects(
    state: &ServerState,
    image: usize,
    key: &str,
    change: impl FnOnce(&mut AnnotationStore, &str) -> crate::error::Result<Value>,
) -> Answer<Json<Value>> {
    let name = state.image(image)?.name.clone();
    let changed = change(&mut state.store(), &name)?;
    // the change is saved: a listing that fails (an annotation of another tool that does
    // not decode) must not make it look failed, or the page would save it again
    let mut answer = objects_json(state, image)
        .unwrap_or_else(|e| json!({ "objects": [], "listing_error": e.message }));
    answer[key] = changed;
    Ok(Json(answer))
}

pub(super) async fn start_proposals(
    State(state): State<Shared>,
    image: Result<Path<usize>, PathRejection>,
    query: Result<Query<CheckpointChoice>, QueryRejection>,
) -> Answer<Json<Value>> {
    let (image, checkpoint) = image_and_checkpoint(&state, image, query)?;
    let job = state
        .start_auto_annotation(image, checkpoint)
        .map_err(|refused| ApiError::conflict(refused.0))?;
    Ok(Json(json!({ "job": job })))
}

#[derive(Serialize)]
struct Proposal {
    iou: f32,
    stability: f32,
    area: usize,
    /// `[x, y, w, h]`.
    bbox: [usize; 4],
    counts: Vec<u32>,
}

pub(super) async fn job(
    State(state): State<Shared>,
    id: Result<Path<u64>, PathRejection>,
) -> Answer<Json<Value>> {
    let id = path_of(id)?;
    let job = state
        .job(id)
        .ok_or_else(|| ApiError::not_found(format!("no auto-annotation job {id}")))?;
    let job = lock_job(&job);
    let mut answer = json!({ "image": job.image, "done": job.done, "total": job.total });
    match &job.outcome {
        None => answer["state"] = json!("running"),
        Some(Err(message)) => {
            answer["state"] = json!("failed");
            answer["error"] = json!(message);
        }
        Some(Ok(proposals)) => {
            answer["state"] = json!("done");
            let proposals: Vec<Proposal> = proposals
                .iter()
                .map(|p| Proposal {
                    iou: p.predicted_iou,
                    stability: p.stability_score,
                    area: p.area(),
                    bbox: p.bbox,
                    counts: p.rle.counts.clone(),
                })
                .collect();
            answer["proposals"] = json!(proposals);
        }
    }
    Ok(Json(answer))
}
