//! A small JSON-over-HTTP client for the `samtune serve` tests (ureq, answers of any
//! status returned rather than raised).

use serde_json::Value;

pub struct Http {
    base: String,
    agent: ureq::Agent,
}

/// An answer: its status, its body as JSON (`Null` when it is not JSON) and its bytes.
pub struct Answer {
    pub status: u16,
    pub json: Value,
    pub bytes: Vec<u8>,
    pub content_type: String,
}

impl Http {
    pub fn new(address: std::net::SocketAddr) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build();
        Self {
            base: format!("http://{address}"),
            agent: ureq::Agent::new_with_config(config),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
        Self::try_answer(response).expect("the server answers")
    }

    fn try_answer(
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Answer, ureq::Error> {
        let mut response = response?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer {
            status,
            json,
            bytes,
            content_type,
        })
    }

    pub fn get(&self, path: &str) -> Answer {
        Self::answer(self.agent.get(self.url(path)).call())
    }

    pub fn delete(&self, path: &str) -> Answer {
        Self::answer(self.agent.delete(self.url(path)).call())
    }

    /// POSTs `body` as it is (JSON text, or anything else to test refusals).
    pub fn post_text(&self, path: &str, body: &str) -> Answer {
        Self::answer(
            self.agent
                .post(self.url(path))
                .header("content-type", "application/json")
                .send(body),
        )
    }

    pub fn post(&self, path: &str, body: &Value) -> Answer {
        self.post_text(path, &body.to_string())
    }

    /// [`Self::post`], a connection that fails returned rather than raised.
    pub fn try_post(&self, path: &str, body: &Value) -> Result<Answer, ureq::Error> {
        Self::try_answer(
            self.agent
                .post(self.url(path))
                .header("content-type", "application/json")
                .send(body.to_string()),
        )
    }
}
