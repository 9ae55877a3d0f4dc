//! `samtune serve` over HTTP: every endpoint, its refusals, saves that `train` reads, and
//! concurrent saves to one file.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use burn::tensor::Device;
use common::annotation::{bundled_eval, copy_images, iou, object, page_mask, repo};
use common::http::Http;
use samtune::data::DataConfig;
use samtune::serve::{start, ServeConfig, Server};
use serde_json::{json, Value};

/// The first `count` bundled source images (and masks) copied under `dir`.
fn bundled_subset(dir: &Path, count: usize) -> PathBuf {
    copy_images(&repo("data/source"), dir, count)
}

fn serve(dir: &Path, data: &Path, reviews: Vec<PathBuf>) -> Server {
    let mut amg = samtune::AmgSettings::reference_document();
    // a coarser grid keeps the test short, and the tiny model's scores are low (as in
    // CI's annotate check); the job runs the same code
    amg.points_per_side = Some(8);
    amg.pred_iou_thresh = 0.5;
    amg.stability_score_thresh = 0.7;
    let config = ServeConfig {
        checkpoints: vec![
            repo("checkpoints/sam_tiny_source.safetensors"),
            common::fixtures_dir().join("tiny_sam.pth"),
        ],
        images: data.join("images"),
        annotations: dir.join("annotations.json"),
        reviews,
        cache: Some(samtune::predict::CacheConfig {
            dir: dir.join("cache"),
            ..Default::default()
        }),
        intensity: Default::default(),
        encoder_precision: Default::default(),
        amg,
        address: "127.0.0.1:0".parse().unwrap(),
    };
    start(&config, Device::flex()).unwrap()
}

#[test]
fn a_click_gives_candidates_a_refined_mask_and_a_saved_object_that_train_reads() {
    let dir = tempfile::tempdir().unwrap();
    let data = bundled_subset(dir.path(), 3);
    let server = serve(dir.path(), &data, Vec::new());
    let http = Http::new(server.address);

    let page = http.get("/");
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
    let html = String::from_utf8(page.bytes).unwrap();
    assert!(
        html.contains("id=\"overlay\"") && !html.contains("https://"),
        "self-contained"
    );

    let state = http.get("/api/state").json;
    assert_eq!(state["images"].as_array().unwrap().len(), 3);
    assert_eq!(state["checkpoints"].as_array().unwrap().len(), 2);
    let file = http.get("/api/images/0/file");
    assert_eq!(file.content_type, "image/png");
    let picture = image::load_from_memory(&file.bytes).unwrap();
    let (width, height) = (picture.width() as usize, picture.height() as usize);

    let encoded = http.post("/api/images/0/encode", &json!({}));
    assert_eq!(encoded.status, 200, "{}", encoded.json);
    assert_eq!(encoded.json["width"], width);

    // one click: the three candidates, the best of them close to the object
    let (truth, [x, y], _) = object(&data, 0, 1);
    let one = http.post(
        "/api/predict",
        &json!({ "image": 0, "points": [[x, y, 1]] }),
    );
    assert_eq!(one.status, 200, "{}", one.json);
    let candidates = one.json["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 3);
    let best = one.json["best"].as_u64().unwrap() as usize;
    let mask = page_mask(&candidates[best]["counts"], [height, width]);
    let first_iou = iou(&mask, &truth);
    assert!(first_iou > 0.8, "IoU {first_iou}");
    assert_eq!(candidates[best]["area"], mask.area());

    // a second click refines it with the chosen candidate as the mask input: one mask
    let id = one.json["prediction"].as_u64().unwrap();
    let outside = [1.0, 1.0];
    let two = http.post(
        "/api/predict",
        &json!({ "image": 0, "points": [[x, y, 1], [outside[0], outside[1], 0]],
                 "previous": { "prediction": id, "candidate": best } }),
    );
    assert_eq!(two.status, 200, "{}", two.json);
    assert_eq!(two.json["candidates"].as_array().unwrap().len(), 1);
    let without_input = http.post(
        "/api/predict",
        &json!({ "image": 0, "points": [[x, y, 1], [outside[0], outside[1], 0]] }),
    );
    assert_ne!(
        two.json["candidates"][0]["counts"], without_input.json["candidates"][0]["counts"],
        "the mask input changes the prediction"
    );
    // a box alone: one mask
    let bbox = truth.bbox().unwrap();
    let boxed = http.post("/api/predict", &json!({ "image": 0, "box": bbox }));
    assert_eq!(boxed.json["candidates"].as_array().unwrap().len(), 1);

    // accepted: saved at once, listed, and a COCO dataset that train opens
    let saved = http.post(
        "/api/images/0/objects",
        &json!({ "prediction": id, "candidate": best, "category": "blob" }),
    );
    assert_eq!(saved.status, 200, "{}", saved.json);
    assert_eq!(saved.json["objects"].as_array().unwrap().len(), 1);
    assert_eq!(saved.json["categories"], json!(["blob"]));
    let again = http.post(
        "/api/images/0/objects",
        &json!({ "prediction": id, "candidate": best, "category": "blob" }),
    );
    assert_eq!(again.status, 409, "a mask is saved once: {}", again.json);
    let listed = http.get("/api/images/0/objects").json;
    assert_eq!(
        page_mask(&listed["objects"][0]["counts"], [height, width]),
        mask
    );
    assert_eq!(http.get("/api/state").json["images"][0]["objects"], 1);
    let box_id = boxed.json["prediction"].as_u64().unwrap();
    http.post(
        "/api/images/0/objects",
        &json!({ "prediction": box_id, "category": "blob" }),
    );
    let config: DataConfig = toml::from_str(&format!(
        "format = \"coco\"\nannotations = \"{}\"\nimages = \"{}\"\nval_ratio = 0.0",
        dir.path().join("annotations.json").display(),
        data.join("images").display()
    ))
    .unwrap();
    let split = config.open().unwrap().split;
    assert_eq!(split.train.len(), 1);
    let objects = split.train[0].decode_objects().unwrap();
    assert_eq!(objects.len(), 2);
    assert_eq!(objects[0].mask, mask);
    assert_eq!(objects[0].category.as_deref(), Some("blob"));

    // undo removes the newest, then the other, then there is nothing to remove
    let undone = http.delete("/api/images/0/objects/last");
    assert_eq!(undone.json["objects"].as_array().unwrap().len(), 1);
    http.delete("/api/images/0/objects/last");
    assert_eq!(
        http.delete("/api/images/0/objects/last").json["removed"],
        Value::Null
    );

    // the other checkpoint: its own encoding, other masks
    let other = http.post(
        "/api/predict",
        &json!({ "image": 0, "checkpoint": 1, "points": [[x, y, 1]] }),
    );
    assert_eq!(other.status, 200, "{}", other.json);
    assert_ne!(other.json["candidates"], one.json["candidates"]);
    server.stop().unwrap();
}

#[test]
fn auto_annotation_runs_as_a_job_whose_proposals_can_be_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let data = bundled_subset(dir.path(), 1);
    let server = serve(dir.path(), &data, Vec::new());
    let http = Http::new(server.address);
    let started = http.post("/api/images/0/proposals", &json!({}));
    assert_eq!(started.status, 200, "{}", started.json);
    let job = started.json["job"].as_u64().unwrap();
    let done = loop {
        let status = http.get(&format!("/api/jobs/{job}")).json;
        assert_ne!(status["state"], "failed", "{status}");
        if status["state"] == "done" {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(done["done"], done["total"]);
    assert!(done["total"].as_u64().unwrap() >= 1);
    let proposals = done["proposals"].as_array().unwrap();
    assert!(!proposals.is_empty());
    let accepted = http.post(
        "/api/images/0/objects",
        &json!({ "job": job, "proposal": 0, "category": "auto" }),
    );
    assert_eq!(accepted.status, 200, "{}", accepted.json);
    assert_eq!(
        accepted.json["objects"][0]["counts"], proposals[0]["counts"],
        "the proposal is saved as it was shown"
    );
    let again = http.post(
        "/api/images/0/objects",
        &json!({ "job": job, "proposal": 0, "category": "auto" }),
    );
    assert_eq!(
        again.status, 409,
        "a proposal is saved once: {}",
        again.json
    );
    let missing = http.post(
        "/api/images/0/objects",
        &json!({ "job": job, "proposal": proposals.len(), "category": "auto" }),
    );
    assert_eq!(missing.status, 400, "{}", missing.json);
    server.stop().unwrap();
}

#[test]
fn an_eval_run_is_reviewed_worst_first_with_its_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let data = bundled_subset(dir.path(), 4);
    let out = dir.path().join("eval");
    bundled_eval(&data, &out);
    let server = serve(dir.path(), &data, vec![out.clone()]);
    let http = Http::new(server.address);
    let state = http.get("/api/state").json;
    assert_eq!(state["reviews"][0]["images"], 4);
    let review = http.get("/api/reviews/0").json;
    let images = review["images"].as_array().unwrap();
    let scores: Vec<f64> = images
        .iter()
        .map(|i| i["mean_iou"][0].as_f64().unwrap())
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] <= w[1]),
        "worst first: {scores:?}"
    );
    // the scores are those of the run's own objects.jsonl
    let lines = std::fs::read_to_string(out.join("objects.jsonl")).unwrap();
    let worst = images[0]["image"].as_str().unwrap();
    let ious: Vec<f64> = lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["image"] == worst)
        .map(|r| r["iou"].as_f64().unwrap())
        .collect();
    let mean = ious.iter().sum::<f64>() / ious.len() as f64;
    assert!((mean - scores[0]).abs() < 1e-12);
    let entry = images[0]["entry"].as_u64().unwrap();
    let detail = http.get(&format!("/api/reviews/0/{entry}")).json;
    assert_eq!(detail["objects"].as_array().unwrap().len(), ious.len());
    let picture = http.get(&format!("/api/reviews/0/{entry}/0/picture"));
    assert_eq!(picture.content_type, "image/png");
    let drawn = image::load_from_memory(&picture.bytes).unwrap();
    assert_eq!(drawn.width() as u64, detail["width"].as_u64().unwrap());
    assert_eq!(
        http.get(&format!("/api/reviews/0/{entry}/1/picture"))
            .status,
        404
    );
    assert_eq!(http.get("/api/reviews/0/99").status, 404);
    assert_eq!(http.get("/api/reviews/3").status, 404);
    server.stop().unwrap();
}

#[test]
fn bad_requests_get_a_4xx_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let data = bundled_subset(dir.path(), 1);
    let server = serve(dir.path(), &data, Vec::new());
    let http = Http::new(server.address);
    let refused = |answer: common::http::Answer, status: u16, words: &str| {
        assert_eq!(answer.status, status, "{}", answer.json);
        let message = answer.json["error"].as_str().unwrap().to_string();
        assert!(message.contains(words), "{message:?} should say {words:?}");
    };
    refused(http.get("/api/images/5/file"), 404, "no image 5");
    refused(http.get("/api/images/x/objects"), 400, "x");
    refused(
        http.post("/api/images/0/encode?checkpoint=7", &json!({})),
        404,
        "no checkpoint 7",
    );
    refused(http.get("/nowhere"), 404, "no such page");
    refused(
        http.post("/api/images/4/encode", &json!({})),
        404,
        "no image 4",
    );
    refused(
        http.post("/api/images/4/proposals", &json!({})),
        404,
        "no image 4",
    );
    refused(
        http.post("/api/images/0/proposals?checkpoint=2", &json!({})),
        404,
        "no checkpoint 2",
    );
    refused(
        http.post("/api/images/0/encode?checkpoint=x", &json!({})),
        400,
        "checkpoint",
    );
    refused(http.delete("/api/images/4/objects/last"), 404, "no image 4");
    refused(http.get("/api/reviews/0"), 404, "no review run 0");
    let predict = |body: Value| http.post("/api/predict", &body);
    refused(
        predict(json!({ "image": 3, "points": [[1, 1, 1]] })),
        404,
        "no image 3",
    );
    refused(predict(json!({ "image": 0 })), 400, "a point or a box");
    refused(
        predict(json!({ "image": 0, "points": [[900, 1, 1]] })),
        400,
        "outside",
    );
    refused(
        predict(json!({ "image": 0, "points": [[-1, 1, 1]] })),
        400,
        "outside",
    );
    refused(
        predict(json!({ "image": 0, "points": [[1, 1, 2]] })),
        400,
        "label",
    );
    refused(
        predict(json!({ "image": 0, "box": [50, 50, 10, 10] })),
        400,
        "x0 < x1",
    );
    refused(
        predict(json!({ "image": 0, "points": [[1, 1]] })),
        400,
        "malformed",
    );
    refused(
        predict(json!({ "image": 0, "points": [[1, 1, 1]], "colour": 1 })),
        400,
        "colour",
    );
    refused(
        http.post_text("/api/predict", "{\"image\": 0,"),
        400,
        "malformed",
    );
    refused(http.post_text("/api/predict", "not json"), 400, "malformed");
    refused(
        predict(
            json!({ "image": 0, "points": [[1, 1, 1]], "previous": { "prediction": 999, "candidate": 0 } }),
        ),
        404,
        "no prediction 999",
    );
    let made = predict(json!({ "image": 0, "points": [[10, 10, 1]] })).json;
    let id = made["prediction"].as_u64().unwrap();
    refused(
        predict(
            json!({ "image": 0, "points": [[1, 1, 1]], "previous": { "prediction": id, "candidate": 5 } }),
        ),
        400,
        "no candidate 5",
    );
    let accept = |body: Value| http.post("/api/images/0/objects", &body);
    refused(
        accept(json!({ "prediction": id, "category": " " })),
        400,
        "category",
    );
    refused(
        accept(json!({ "category": "blob" })),
        400,
        "either a prediction",
    );
    refused(
        accept(json!({ "prediction": 12345, "category": "blob" })),
        404,
        "no prediction",
    );
    refused(
        accept(json!({ "job": 12345, "category": "blob" })),
        404,
        "no auto-annotation job",
    );
    refused(http.get("/api/jobs/12345"), 404, "no auto-annotation job");
    // nothing was saved by any of these
    assert!(!dir.path().join("annotations.json").exists());
    // and the server still answers
    assert_eq!(http.get("/api/state").status, 200);
    server.stop().unwrap();
}

/// One answer read off a raw connection: its status and body.
fn raw_answer(reader: &mut impl BufRead) -> std::io::Result<(u16, String)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok());
    let status = status.ok_or_else(|| std::io::Error::other(format!("no status in {line:?}")))?;
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A request refused before its body arrived (the body came in a TCP segment of its
/// own) leaves its kept-alive connection open: the client's next request on it is
/// answered. Until the server read bodies first, hyper closed such a connection and
/// the next request failed ("peer disconnected") whenever the segments came apart.
#[test]
fn a_request_refused_before_its_body_arrived_keeps_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let data = bundled_subset(dir.path(), 1);
    let server = serve(dir.path(), &data, Vec::new());
    let host = server.address;
    let mut stream = TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    write!(
        stream,
        "POST /api/images/0/encode?checkpoint=7 HTTP/1.1\r\nHost: {host}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(b"{}").unwrap();
    let (status, body) = raw_answer(&mut reader).unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no checkpoint 7"), "{body}");
    let second = write!(stream, "GET /nowhere HTTP/1.1\r\nHost: {host}\r\n\r\n")
        .and_then(|()| raw_answer(&mut reader));
    let (status, body) = second.expect("the connection answers a second request");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no such page"), "{body}");
    // a body declared over the limit is refused as such, without waiting for it
    let mut stream = TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST /api/predict HTTP/1.1\r\nHost: {host}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        3 << 20
    )
    .unwrap();
    let (status, body) = raw_answer(&mut BufReader::new(stream)).unwrap();
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("over 2097152 bytes"), "{body}");
    server.stop().unwrap();
}

#[test]
fn concurrent_saves_to_one_file_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let data = bundled_subset(dir.path(), 2);
    let server = serve(dir.path(), &data, Vec::new());
    let http = Arc::new(Http::new(server.address));
    let (_, [x, y], _) = object(&data, 0, 1);
    let ids: Vec<u64> = (0..8)
        .map(|k| {
            let made = http
                .post(
                    "/api/predict",
                    &json!({ "image": 0, "points": [[x + k as f64, y, 1]] }),
                )
                .json;
            made["prediction"].as_u64().unwrap()
        })
        .collect();
    let threads: Vec<_> = ids
        .into_iter()
        .enumerate()
        .map(|(k, id)| {
            let http = http.clone();
            std::thread::spawn(move || {
                http.post(
                    "/api/images/0/objects",
                    &json!({ "prediction": id, "candidate": k % 3, "category": format!("c{}", k % 2) }),
                )
                .status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let written: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("annotations.json")).unwrap(),
    )
    .unwrap();
    let ids: std::collections::BTreeSet<u64> = written["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 8, "every save landed, each with its own id");
    assert_eq!(written["categories"].as_array().unwrap().len(), 2);
    server.stop().unwrap();
}
