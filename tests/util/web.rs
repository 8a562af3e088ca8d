//! HTTP as the tests speak it: send a request and say which status must come back in one
//! step (the body is shown when another one does), read a JSON answer or a new run's id.

#![allow(async_fn_in_trait)]

use std::process::{Command, Output};

use serde_json::Value as Json;

/// Sending a request with the status it must get.
pub trait Call {
    /// Sends the request and asserts the response's status; the response.
    async fn expect(self, status: u16) -> reqwest::Response;
    /// Sends the request, asserts the status and returns the body as JSON.
    async fn expect_json(self, status: u16) -> Json;
    /// Sends the request, asserts the status and returns the body as text.
    async fn expect_text(self, status: u16) -> String;
    /// Sends a request that starts a run (a webhook, `POST /api/workflows/{id}/runs`),
    /// asserts the status and returns the new run's id (`run_id` in the answer).
    async fn run_id(self, status: u16) -> String;
}

impl Call for reqwest::RequestBuilder {
    async fn expect(self, status: u16) -> reqwest::Response {
        let (client, request) = self.build_split();
        let request = request.expect("a well-formed request");
        let what = format!("{} {}", request.method(), request.url());
        let res = client
            .execute(request)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        if res.status().as_u16() != status {
            let got = res.status();
            let body = res.text().await.unwrap_or_default();
            panic!("{what}: expected {status}, got {got}: {body}");
        }
        res
    }

    async fn expect_json(self, status: u16) -> Json {
        self.expect(status).await.json().await.expect("a JSON body")
    }

    async fn expect_text(self, status: u16) -> String {
        self.expect(status).await.text().await.expect("a text body")
    }

    async fn run_id(self, status: u16) -> String {
        let body = self.expect_json(status).await;
        body["run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no run_id in {body}"))
            .to_string()
    }
}

/// A client whose requests give up after `secs` seconds.
pub fn client(secs: u64) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(secs))
        .build()
        .unwrap()
}

/// Running a command that must succeed.
pub trait Succeeds {
    /// Runs the command to its end and asserts it exited 0 (showing the command and its
    /// standard error otherwise); its output.
    fn succeeds(&mut self) -> Output;
    /// [`Succeeds::succeeds`] with a hint for the reader of a failure (what to install, what
    /// the command needs).
    fn succeeds_with(&mut self, hint: &str) -> Output;
}

impl Succeeds for Command {
    fn succeeds(&mut self) -> Output {
        self.succeeds_with("")
    }

    fn succeeds_with(&mut self, hint: &str) -> Output {
        let out = self
            .output()
            .unwrap_or_else(|e| panic!("{:?}: {e} {hint}", self.get_program()));
        assert!(
            out.status.success(),
            "{self:?} exited {:?} {hint}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// Reads a request's head (up to the blank line) from `sock`, for the small HTTP servers the
/// tests stand up; `None` if the peer closed first.
pub async fn read_head(sock: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(String::from_utf8_lossy(&buf).to_string())
}
