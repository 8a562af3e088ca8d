//! Helpers for pmoflow's integration tests: temp projects, real databases, the real binary.
#![allow(missing_docs, clippy::unwrap_used)]

pub mod browser;
pub mod dns;
pub mod door;
pub mod flow;
pub mod golden;
pub mod mail;
pub mod outbox;
pub mod wait;
pub mod web;

pub use flow::{RUN_END, expect_done, fast_config, step_output, wait_done, wait_status};
pub use outbox::{
    MAIL_WAIT, bare, copies_of, deliver, mail_to, received, reply_address, to_addr, wait_mail,
    wait_mail_where, wait_subject, with_subject,
};
pub use web::{Call, Succeeds, client, read_head};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pmoflow::clock::SharedClock;
use pmoflow::engine::{Engine, EngineConfig, Registry};
use pmoflow::store::{Durability, RunRow, Store};
use pmoflow::workflow::Catalog;
use tokio_util::sync::CancellationToken;

/// The PostgreSQL server the tests use (trust auth); override with PMOFLOW_TEST_PG.
pub fn pg_admin_url() -> String {
    std::env::var("PMOFLOW_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Which database backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database for one test: a file in a temp dir, or a new PostgreSQL database
/// dropped when the test ends.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("pmoflow.db").display());
                TestDb {
                    url,
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let name = format!("pmoflow_t_{}", uuid_like());
                let admin = pg_admin_url();
                let mut conn = {
                    use sqlx::Connection;
                    sqlx::postgres::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                        panic!("PostgreSQL at {admin} is required for this test (tests/run starts it): {e}")
                    })
                };
                sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required for this test (tests/run starts it): {e}"));
                let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
                TestDb {
                    url: format!("{base}/{name}"),
                    pg_name: Some(name),
                    _dir: None,
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Best effort, on a separate thread so that it works from inside a runtime.
            let admin = pg_admin_url();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    use sqlx::Connection;
                    if let Ok(mut c) = sqlx::postgres::PgConnection::connect(&admin).await {
                        let _ = sqlx::Executor::execute(
                            &mut c,
                            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
                        )
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{}_{}_{}",
        std::process::id(),
        t % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Reference data of two projects and their leads (`workflows/data/projects.toml`), as the
/// request tests and the browser tests use it.
pub const PROJECTS: &str = r#"
# Example projects.
[[projects]]
name = "電子申請基盤"
lead = "山田 太郎"
lead_email = "yamada@pjmo-a.example.go.jp"

[[projects]]
name = "文書管理システム"
lead = "鈴木 一郎"
lead_email = "suzuki@pjmo-b.example.go.jp"
"#;

/// A fresh database on `backend` and a new project holding one workflow, `workflows/NAME`.
pub async fn fresh(backend: Backend, name: &str, workflow: &str) -> (TestDb, Project) {
    (
        TestDb::new(backend).await,
        Project::with_workflow(name, workflow),
    )
}

/// A temp directory laid out like an installation: `workflows/`, `var/`, `pmoflow.toml`.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("workflows/data")).unwrap();
        Project { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn workflows(&self) -> PathBuf {
        self.path().join("workflows")
    }

    /// A new project holding one workflow, `workflows/NAME`.
    pub fn with_workflow(name: &str, text: &str) -> Project {
        let project = Project::new();
        project.workflow(name, text);
        project
    }

    /// Writes `workflows/NAME`.
    pub fn workflow(&self, name: &str, text: &str) -> &Self {
        std::fs::write(self.workflows().join(name), text).unwrap();
        self
    }

    /// Writes `pmoflow.toml`. Unless the text has its own `[egress]` table, one is appended
    /// that lets the `http` and `webhook` actions reach the loopback servers tests run (as an
    /// administrator lists an internal host exactly); `config_as_is` writes the text alone.
    pub fn config(&self, text: &str) -> PathBuf {
        if text.contains("[egress]") {
            return self.config_as_is(text);
        }
        self.config_as_is(&format!(
            "{text}\n[egress]\nallow_hosts = [\"*\", \"127.0.0.1\", \"localhost\"]\n"
        ))
    }

    /// Writes `pmoflow.toml` for `db`: its `database_url`, then `rest` (as [`Project::config`]).
    pub fn config_on(&self, db: &TestDb, rest: &str) -> PathBuf {
        self.config(&format!("database_url = \"{}\"\n{rest}", db.url))
    }

    /// Writes `pmoflow.toml` exactly as given.
    pub fn config_as_is(&self, text: &str) -> PathBuf {
        let p = self.path().join("pmoflow.toml");
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Default for Project {
    fn default() -> Self {
        Self::new()
    }
}

/// How long a test waits for a daemon to come up (workflows loaded, listener bound, mailbox
/// registered). Generous: on a loaded two-core machine several daemons compile their plugins at
/// once; a daemon that is ready returns at once.
pub const STARTUP: Duration = Duration::from_secs(90);

/// The `pmoflow` binary built by `cargo build -p pmoflow` (tests/run builds it first).
pub fn bin() -> PathBuf {
    if let Ok(p) = std::env::var("PMOFLOW_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("debug/pmoflow");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p pmoflow` first (tests/run does)",
        p.display()
    );
    p
}

/// Runs a CLI command in `dir` and returns (exit code, stdout, stderr).
pub fn cli(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a CLI command that must succeed (exit 0); returns its stdout.
pub fn cli_ok(dir: &Path, args: &[&str]) -> String {
    let (code, out, err) = cli(dir, args);
    assert_eq!(code, 0, "pmoflow {args:?} exited {code}:\n{out}{err}");
    out
}

/// `pmoflow token new --name NAME --role ROLE` run in `dir`: the token and its
/// `[[http.tokens]]` entry for pmoflow.toml.
pub fn new_api_token(dir: &Path, name: &str, role: &str) -> (String, String) {
    let (code, out, err) = cli(dir, &["token", "new", "--name", name, "--role", role]);
    assert_eq!(code, 0, "{err}");
    let token = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("pmo_"))
        .expect("the token")
        .to_string();
    let entry = out[out.find("[[http.tokens]]").expect("the entry")..].to_string();
    (token, entry)
}

/// A daemon process (`pmoflow run`) with its log in a file.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    /// Set when the test ends the process itself or waits for it to exit; a daemon that
    /// exits on its own otherwise fails the test when it is dropped.
    ended_by_test: bool,
}

impl Daemon {
    /// Starts `pmoflow run` in `dir`; the log goes to `dir/NAME.log`.
    pub fn start(dir: &Path, name: &str, env: &[(&str, &str)]) -> Daemon {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .current_dir(dir)
            .env("RUST_LOG", "info,sqlx=warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Daemon {
            child,
            log,
            ended_by_test: false,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (panics with the log after `timeout`, or at once
    /// if the daemon exited without showing it).
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_log_count(needle, 1, timeout)
    }

    /// Waits until the log contains `needle` at least `n` times.
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) -> String {
        let log = self.log.clone();
        wait::until_blocking(
            &format!("{n}× {needle:?} in {}", log.display()),
            timeout,
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.matches(needle).count() >= n {
                    return Ok(text);
                }
                if self.exited() {
                    panic!("the daemon exited before its log showed {needle:?}:\n{text}");
                }
                Err(text)
            },
        )
    }

    /// The instance id the daemon logged at start (`pmoflow starting … instance=ID`), once it
    /// has.
    pub fn instance(&self) -> Option<String> {
        let log = self.log_text();
        let line = log.lines().find(|l| l.contains("pmoflow starting"))?;
        Some(
            line.split("instance=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .to_string(),
        )
    }

    /// Whether the process has exited (a zombie not yet reaped counts), without reaping it.
    pub fn exited(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())) {
            Err(_) => true,
            // The state letter follows the command name in parentheses.
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        self.ended_by_test = true;
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait; returns the exit code (`None`: still running after `timeout`, then
    /// killed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid} failed");
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit by itself; returns its exit code (`None`: still running
    /// after `timeout`, then killed).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.ended_by_test = true;
        let child = &mut self.child;
        let start = Instant::now();
        let code = wait::outside_runtime(|| {
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    return Some(status.code());
                }
                if start.elapsed() > timeout {
                    return None;
                }
                // pace: polling for the exit, bounded by `timeout` above.
                std::thread::sleep(wait::POLL);
            }
        });
        match code {
            Some(code) => code,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                None
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.ended_by_test
            && !std::thread::panicking()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "the daemon {} exited on its own ({status}) although the test did not end it:\n{}",
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls the store until the run exists and satisfies `done` (bounded: a run that never
/// appears fails the test like one that never gets there).
pub async fn wait_run(
    store: &Store,
    id: &str,
    timeout: Duration,
    done: impl Fn(&RunRow) -> bool,
) -> RunRow {
    wait::until(&format!("run {id}"), timeout, || async {
        match store.get_run(id).await.unwrap() {
            Some(run) if done(&run) => Ok(run),
            Some(run) => Err(format!("{run:?}")),
            None => Err("no such run (yet)".to_string()),
        }
    })
    .await
}

/// Polls the store until `n` runs have `status`.
pub async fn wait_runs(
    store: &Store,
    status: pmoflow::store::RunStatus,
    n: i64,
    timeout: Duration,
) {
    wait::until(&format!("{n} runs {status:?}"), timeout, || async {
        let have = store.count_runs(status).await.unwrap();
        if have >= n { Ok(()) } else { Err(have) }
    })
    .await
}

/// An engine running in this process over `dir`'s workflows.
pub struct InProcess {
    pub engine: Engine,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<()>,
}

impl InProcess {
    pub async fn start(
        url: &str,
        durability: Durability,
        workflows: &Path,
        clock: SharedClock,
        config: EngineConfig,
    ) -> InProcess {
        let mut engine = Self::create(url, durability, workflows, clock, config).await;
        let e = engine.engine.clone();
        engine.handle = tokio::spawn(async move {
            e.run().await.unwrap();
        });
        engine
    }

    /// An engine over `dir`'s workflows that is not running (for driving the scheduler alone).
    pub async fn create(
        url: &str,
        durability: Durability,
        workflows: &Path,
        clock: SharedClock,
        config: EngineConfig,
    ) -> InProcess {
        let store = Store::open(url, durability).await.unwrap();
        let registry = Arc::new(Registry::default());
        let catalog = Catalog::load(workflows);
        assert!(
            catalog.diagnostics.is_empty(),
            "fixture workflows invalid: {:?}",
            catalog.diagnostics
        );
        registry.set_catalog(Arc::new(catalog));
        let shutdown = CancellationToken::new();
        let engine = Engine::new(store, clock, config, registry, shutdown.clone());
        InProcess {
            engine,
            shutdown,
            handle: tokio::spawn(async {}),
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on loopback `port`.
pub fn wait_port(port: u16, timeout: Duration) {
    wait::until_blocking(&format!("a listener on port {port}"), timeout, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).map(drop)
    })
}

/// A support script under `tests/support/`.
pub fn support(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("support")
        .join(name)
}

/// Runs `tests/support/workbooks.py` (openpyxl, LibreOffice, msoffcrypto: a second program on
/// the workbooks pmoflow reads and writes) and returns what it printed.
pub fn workbooks_py(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(support("workbooks.py"))
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "workbooks.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 from workbooks.py")
}

/// Writes the attachment `name` of a mail (as [`decode_mail`] gives it) into `dir`.
pub fn save_attachment(mail: &serde_json::Value, name: &str, dir: &Path) -> PathBuf {
    use base64::Engine;
    let names = mail["attachments"].as_array().expect("attachments");
    let i = names
        .iter()
        .position(|n| n.as_str() == Some(name))
        .unwrap_or_else(|| panic!("no attachment {name} in {names:?}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(mail["attachment_base64"][i].as_str().expect("base64"))
        .expect("valid base64");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("attachment written");
    path
}

/// A real SMTP server (aiosmtpd, installed by tests/run) delivering into a Maildir.
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    pub maildir: PathBuf,
}

impl SmtpSink {
    /// Delivers every message into `maildir`.
    pub fn start(port: u16, maildir: &Path) -> SmtpSink {
        let mut sink = Self::aiosmtpd(port, "aiosmtpd.handlers.Mailbox", &[maildir.as_os_str()]);
        sink.maildir = maildir.to_path_buf();
        sink
    }

    /// A real SMTP server that refuses every recipient with 550.
    pub fn rejecting(port: u16) -> SmtpSink {
        Self::aiosmtpd(port, "reject_smtp.Reject", &[])
    }

    /// `python -m aiosmtpd` on loopback `port` with `handler` (from aiosmtpd or
    /// `tests/support/`), once it listens.
    fn aiosmtpd(port: u16, handler: &str, args: &[&std::ffi::OsStr]) -> SmtpSink {
        let mut cmd = Command::new("python3");
        cmd.args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
            handler,
        ])
        .args(args)
        .env("PYTHONPATH", support(""));
        Self::spawn(cmd, port, PathBuf::new())
    }

    /// Spawns the server `cmd` (quietly) and waits until it listens on `port`.
    fn spawn(mut cmd: Command, port: u16, maildir: PathBuf) -> SmtpSink {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m aiosmtpd (pip install aiosmtpd; tests/run does)");
        wait_port(port, Duration::from_secs(20));
        SmtpSink {
            child,
            port,
            maildir,
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `program` with `args`; fails the test (with its stderr) unless it succeeds; its stdout.
pub fn run_ok(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Decodes every message under `dir` with Python's `email` package.
pub fn decode_mail(dir: &Path) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .arg(support("decode_mail.py"))
        .arg(dir)
        .succeeds();
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The test webhook receiver (`support/webhook_server.py`).
pub struct WebhookServer {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl WebhookServer {
    pub fn start(dir: &Path, fail_first: u32, final_status: u16) -> WebhookServer {
        let port = free_port();
        let log = dir.join("webhook.jsonl");
        let child = Command::new("python3")
            .arg(support("webhook_server.py"))
            .args([
                port.to_string(),
                log.display().to_string(),
                fail_first.to_string(),
                final_status.to_string(),
            ])
            .spawn()
            .unwrap();
        wait_port(port, Duration::from_secs(20));
        WebhookServer { child, port, log }
    }

    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real IMAP server: Debian's Dovecot, in the foreground, with its config, mail and state in a
/// temp dir, on a free loopback port (installed by tests/run: `apt-get install dovecot-imapd`).
pub struct Dovecot {
    child: Child,
    pub port: u16,
    /// Implicit-TLS port (0 without TLS).
    pub imaps_port: u16,
    pub user: String,
    pub password: String,
    pub dir: tempfile::TempDir,
}

/// A test CA and a server certificate for 127.0.0.1 signed by it (PEM): `(ca, cert, key)`.
pub fn test_ca_and_server_cert() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "pmoflow test ministry CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    leaf.distinguished_name
        .push(DnType::CommonName, "imap.test");
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

impl Dovecot {
    pub fn start() -> Dovecot {
        Self::start_with(None)
    }

    /// Also offers XOAUTH2 and OAUTHBEARER, checking tokens with RFC 7662 introspection at
    /// `introspection_url` (Dovecot's oauth2 passdb); PLAIN/LOGIN keep the password.
    pub fn start_oauth(introspection_url: &str) -> Dovecot {
        Self::start_full(None, Some(introspection_url))
    }

    /// With TLS: STARTTLS on `port` (plain login refused before it) and implicit TLS on
    /// `imaps_port`, with this certificate and key (PEM).
    pub fn start_tls(cert: &str, key: &str) -> Dovecot {
        Self::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Dovecot {
        Self::start_full(tls, None)
    }

    fn start_full(tls: Option<(&str, &str)>, introspection_url: Option<&str>) -> Dovecot {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let imaps_port = if tls.is_some() { free_port() } else { 0 };
        let root = dir.path();
        for sub in ["mail", "base", "state", "run"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let user = "pmo".to_string();
        let password = "imap-test-pass".to_string();
        std::fs::write(
            root.join("passwd"),
            format!("{user}:{{PLAIN}}{password}::::::\n"),
        )
        .unwrap();
        let ssl = match tls {
            None => "ssl = no\ndisable_plaintext_auth = no".to_string(),
            Some((cert, key)) => {
                std::fs::write(root.join("cert.pem"), cert).unwrap();
                std::fs::write(root.join("key.pem"), key).unwrap();
                format!(
                    "ssl = required\nssl_cert = <{}\nssl_key = <{}\ndisable_plaintext_auth = yes",
                    root.join("cert.pem").display(),
                    root.join("key.pem").display()
                )
            }
        };
        let (mechanisms, oauth_passdb) = match introspection_url {
            None => ("plain login", String::new()),
            Some(url) => {
                std::fs::write(
                    root.join("oauth2.conf"),
                    format!("introspection_mode = post\nintrospection_url = {url}\nusername_attribute = username\nactive_attribute = active\nactive_value = true\n"),
                )
                .unwrap();
                (
                    "plain login xoauth2 oauthbearer",
                    format!(
                        "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {}/oauth2.conf\n}}\n",
                        root.display()
                    ),
                )
            }
        };
        let conf = format!(
            r#"protocols = imap
listen = 127.0.0.1
{ssl}
auth_mechanisms = {mechanisms}
base_dir = {root}/base
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
default_login_user = dovenull
default_internal_user = dovecot
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  args = {root}/passwd
  mechanisms = plain login
}}
{oauth_passdb}userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
protocol imap {{
  mail_max_userip_connections = 100
}}
"#,
            root = root.display()
        );
        std::fs::write(root.join("dovecot.conf"), conf).unwrap();
        let status = Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(root.join("mail"))
            .status()
            .unwrap();
        assert!(status.success());
        // Dovecot refuses a base_dir its unprivileged processes cannot reach.
        let _ = Command::new("chmod").arg("755").arg(root).status();
        let child = Command::new("dovecot")
            .args(["-F", "-c"])
            .arg(root.join("dovecot.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dovecot (apt-get install dovecot-imapd; tests/run does)");
        wait::until_blocking("dovecot to listen", Duration::from_secs(20), || {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(_) => Ok(()),
                Err(_) => {
                    Err(std::fs::read_to_string(root.join("dovecot.log")).unwrap_or_default())
                }
            }
        });
        Dovecot {
            child,
            port,
            imaps_port,
            user,
            password,
            dir,
        }
    }

    /// Stops the server (SIGKILL, sessions cut) and starts it again on the same port with the
    /// same mail. With `reset_uids`, the mailbox indexes and UID lists are deleted while it is
    /// down, so every mailbox comes back with a new UIDVALIDITY and renumbered messages (as
    /// after a mailbox was deleted and recreated, or restored from a backup).
    pub fn restart(&mut self, reset_uids: bool) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if reset_uids {
            fn walk(dir: &Path) {
                for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                    let p = e.path();
                    let name = e.file_name().to_string_lossy().to_string();
                    if p.is_dir() {
                        walk(&p);
                    } else if name.starts_with("dovecot-uidlist")
                        || name.starts_with("dovecot.index")
                    {
                        let _ = std::fs::remove_file(&p);
                    }
                }
            }
            walk(&self.dir.path().join("mail"));
            // pace: UIDVALIDITY is the creation time in seconds: make sure it differs.
            wait::outside_runtime(|| std::thread::sleep(Duration::from_millis(1100)));
        }
        let root = self.dir.path();
        self.child = Command::new("dovecot")
            .args(["-F", "-c"])
            .arg(root.join("dovecot.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dovecot");
        wait_port(self.port, Duration::from_secs(20));
    }

    /// `doveadm kick` of the test user: true if it ended a session (it fails when none is
    /// open at that moment).
    pub fn try_kick(&self) -> bool {
        Command::new("doveadm")
            .arg("-c")
            .arg(self.dir.path().join("dovecot.conf"))
            .args(["kick", &self.user])
            .output()
            .expect("doveadm")
            .status
            .success()
    }

    /// Ends every IMAP session of the test user (`doveadm kick`): clients must reconnect.
    pub fn kick(&self) {
        Command::new("doveadm")
            .arg("-c")
            .arg(self.dir.path().join("dovecot.conf"))
            .args(["kick", &self.user])
            .succeeds_with("doveadm: doveadm kick");
    }

    /// The `[imap]` table for pmoflow.toml (password from `PMOFLOW_IMAP_PASSWORD`).
    pub fn config(&self, extra: &str) -> String {
        format!(
            "[imap]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nusername = \"{}\"\npassword_env = \"PMOFLOW_IMAP_PASSWORD\"\n{extra}\n",
            self.port, self.user
        )
    }

    /// Appends messages to `mailbox` with Python's imaplib; returns the mailbox's message count.
    pub fn append(&self, mailbox: &str, files: &[PathBuf]) -> usize {
        let out = Command::new("python3")
            .arg(support("imap_append.py"))
            .arg(self.port.to_string())
            .arg(&self.user)
            .arg(&self.password)
            .arg(mailbox)
            .args(files)
            .succeeds();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// Appends raw messages (written to temp files first).
    pub fn append_raw(&self, mailbox: &str, messages: &[Vec<u8>]) -> usize {
        let files: Vec<PathBuf> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let p = self
                    .dir
                    .path()
                    .join(format!("append-{}-{i}.eml", uuid_like()));
                std::fs::write(&p, m).unwrap();
                p
            })
            .collect();
        self.append(mailbox, &files)
    }

    /// Delivers raw messages straight into the user's INBOX Maildir (`new/`), as a local
    /// delivery agent does: no IMAP session of the test's own, so a `doveadm kick` can only hit
    /// the daemon's. Dovecot sees them at its next look (IDLE notices at once).
    pub fn deliver_maildir(&self, messages: &[Vec<u8>]) {
        let inbox = self.dir.path().join("mail").join(&self.user);
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(inbox.join(sub)).unwrap();
        }
        for (i, m) in messages.iter().enumerate() {
            let name = format!("{}.M{i}P{}.pmoflow-test", uuid_like(), std::process::id());
            // Written in tmp/ and renamed into new/: Dovecot never sees half a message.
            let tmp = inbox.join("tmp").join(&name);
            std::fs::write(&tmp, m).unwrap();
            std::fs::rename(&tmp, inbox.join("new").join(&name)).unwrap();
        }
        let status = Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(&inbox)
            .status()
            .unwrap();
        assert!(status.success(), "chown of the Maildir");
    }

    /// The mail config for the pmoflow library, in-process.
    pub fn imap_config(&self) -> pmoflow::inbound::imap::ImapConfig {
        pmoflow::inbound::imap::ImapConfig {
            host: "127.0.0.1".into(),
            port: self.port,
            tls: pmoflow::inbound::imap::ImapTls::None,
            username: self.user.clone(),
            password: pmoflow::outbox::Secret::new(self.password.clone()),
            oauth2: None,
            mailbox: "INBOX".into(),
            processed_mailbox: None,
            poll_interval: Duration::from_secs(60),
            idle: true,
            timeout: Duration::from_secs(10),
            ca_file: None,
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 request to a local test server with std's TcpStream; returns the body.
pub fn http_raw(port: u16, method: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The test OAuth2 authorization server (`support/oauth_server.py`): a token endpoint and
/// RFC 7662 introspection, configured by a JSON file the test may rewrite.
pub struct OAuthServer {
    child: Child,
    pub port: u16,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl OAuthServer {
    pub fn start(config: &serde_json::Value) -> OAuthServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let path = dir.path().join("oauth.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let child = Command::new("python3")
            .arg(support("oauth_server.py"))
            .arg(port.to_string())
            .arg(&path)
            .spawn()
            .expect("python3 (with the cryptography package)");
        wait_port(port, Duration::from_secs(20));
        OAuthServer {
            child,
            port,
            config: path,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn set_config(&self, config: &serde_json::Value) {
        std::fs::write(&self.config, config.to_string()).unwrap();
    }

    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&http_raw(self.port, "GET", "/stats", "")).unwrap()
    }

    /// Every token issued so far becomes inactive (introspection says so).
    pub fn revoke_all(&self) {
        http_raw(self.port, "POST", "/revoke-all", "");
    }
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real SMTP server offering AUTH XOAUTH2 (tokens checked with the OAuth2 server's
/// introspection) and AUTH PLAIN/LOGIN with `password` (`support/oauth_smtp.py`).
pub fn oauth_smtp(
    port: u16,
    maildir: &Path,
    introspection_url: &str,
    user: &str,
    password: Option<&str>,
) -> SmtpSink {
    let mut cmd = Command::new("python3");
    cmd.arg(support("oauth_smtp.py"))
        .arg(port.to_string())
        .arg(maildir)
        .arg(introspection_url)
        .arg(user);
    if let Some(p) = password {
        cmd.arg(p);
    }
    SmtpSink::spawn(cmd, port, maildir.to_path_buf())
}

/// An RSA key pair and a self-signed certificate made by the `openssl` command:
/// `(private key PEM path, certificate PEM path, public key PEM)`.
pub fn rsa_key_and_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.crt"));
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl req");
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    (key, cert, String::from_utf8(out.stdout).unwrap())
}

/// One call the [`SlowHttp`] server received.
#[derive(Debug, Clone)]
pub struct SlowCall {
    /// Request path with query.
    pub path: String,
    /// When it arrived.
    pub at: Instant,
    /// Whether the whole answer reached the caller (false: the caller went away mid-call).
    pub answered: bool,
    /// When the caller hung up before the answer, if it did.
    pub hung_up: Option<Instant>,
}

/// An HTTP server that answers every request after `?ms=N` milliseconds (default 0) and keeps
/// every call, to count how often a step's endpoint was called and whether callers stayed.
pub struct SlowHttp {
    pub port: u16,
    calls: std::sync::Arc<std::sync::Mutex<Vec<SlowCall>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowHttp {
    pub async fn start() -> SlowHttp {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let shared = calls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let calls = shared.clone();
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut sock).await else {
                        return;
                    };
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let ms: u64 = path
                        .split("ms=")
                        .nth(1)
                        .and_then(|v| v.split('&').next())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let at = Instant::now();
                    let idx = {
                        let mut c = calls.lock().unwrap();
                        c.push(SlowCall {
                            path,
                            at,
                            answered: false,
                            hung_up: None,
                        });
                        c.len() - 1
                    };
                    // pace: the server's answer delay, noticing a caller that hangs up.
                    let mut probe = [0u8; 1];
                    let gone = tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(ms)) => false,
                        r = sock.read(&mut probe) => matches!(r, Ok(0) | Err(_)),
                    };
                    if gone {
                        calls.lock().unwrap()[idx].hung_up = Some(Instant::now());
                        return;
                    }
                    let body = "{\"ok\":true}";
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    if sock.write_all(answer.as_bytes()).await.is_ok() && sock.flush().await.is_ok()
                    {
                        calls.lock().unwrap()[idx].answered = true;
                    }
                });
            }
        });
        SlowHttp { port, calls, task }
    }

    pub fn calls(&self) -> Vec<SlowCall> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until `n` calls with a path containing `needle` have arrived.
    pub async fn wait_count(&self, needle: &str, n: usize, timeout: Duration) {
        wait::until(
            &format!("{n} calls to a path with {needle:?}"),
            timeout,
            || async {
                let have = self.count(needle);
                if have >= n { Ok(()) } else { Err(have) }
            },
        )
        .await
    }

    /// How many calls had a path containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.path.contains(needle))
            .count()
    }
}

impl Drop for SlowHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP proxy in front of PostgreSQL that the test can cut: `partition()` drops every
/// connection and leaves new ones hanging without an answer (as a network partition does);
/// `heal()` forwards again.
pub struct TcpProxy {
    pub port: u16,
    cut: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    // While partitioned, a new connection hangs (no answer, no reset).
                    while *rx.borrow() {
                        if rx.changed().await.is_err() {
                            return;
                        }
                    }
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let cut = async { rx.wait_for(|cut| *cut).await.is_ok() };
                    let was_cut = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                        ok = cut => ok,
                    };
                    if was_cut {
                        // Hold the client socket open, silent, until healed.
                        drop(server);
                        let _ = rx.wait_for(|cut| !*cut).await.is_ok();
                    }
                });
            }
        });
        TcpProxy {
            port,
            cut: std::sync::Arc::new(tx),
            task,
        }
    }

    pub fn partition(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A PostgreSQL server of its own (initdb in a temp dir, on a free port, trust auth), for tests
/// that stop and restart the database without disturbing the shared server the other tests use.
/// The binaries come from `pg_config --bindir` or `/usr/lib/postgresql/<newest>/bin`; as root
/// the server runs as the `postgres` user.
pub struct PrivatePg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    pub url: String,
}

impl PrivatePg {
    pub fn start() -> PrivatePg {
        let bin = pg_bindir();
        let dir = tempfile::tempdir().unwrap();
        let as_root = Self::as_root();
        if as_root {
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status();
        }
        let port = free_port();
        let pg = PrivatePg {
            port,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            bin,
            dir,
        };
        let data = pg.dir.path().join("data");
        pg.command(as_root, "initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .succeeds_with("initdb (Debian: postgresql): initdb");
        pg.pg_ctl("start");
        pg
    }

    fn command(&self, as_root: bool, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn as_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    }

    /// `pg_ctl start`, `stop` (immediate: like a crash) or `restart`, waiting for it.
    pub fn pg_ctl(&self, action: &str) {
        let data = self.dir.path().join("data");
        let mut c = self.command(Self::as_root(), "pg_ctl");
        c.arg("-D")
            .arg(&data)
            .args(["-w", "-l"])
            .arg(self.dir.path().join("log"));
        if action != "start" {
            c.args(["-m", "immediate"]);
        }
        if action != "stop" {
            c.arg("-o").arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.path().display()
            ));
        }
        let out = c.arg(action).output().expect("pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self
            .command(Self::as_root(), "pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn pg_bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    let v = versions
        .last()
        .expect("PostgreSQL server binaries (Debian: postgresql)");
    PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"))
}
