//! The daemon's door, probed as an attacker would on the real daemon: a flood of unknown bearer
//! tokens, slow-header and idle connections, cross-site logins, control characters in paths,
//! and files outside the workflows directory.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pmoflow_tests::Call;
use pmoflow_tests::door::{client_from, unknown_token_flood};
use pmoflow_tests::{Daemon, Project, STARTUP, cli, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HELLO: &str = "id = \"hello\"\n[[triggers]]\nwebhook = true\n[[steps]]\nid = \"say\"\naction = \"log\"\nwith = { message = \"hello\" }\n";

struct Door {
    _project: Project,
    _daemon: Daemon,
    port: u16,
    token: String,
}

fn open(http: &str) -> Door {
    let project = Project::with_workflow("hello.toml", HELLO);
    let (token, entry) = pmoflow_tests::new_api_token(project.path(), "monitoring", "operator");
    let port = free_port();
    project.config_as_is(&format!(
        "database_url = \"sqlite://var/door.db\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n{http}\n\n{entry}\n"
    ));
    let daemon = Daemon::start(project.path(), "d", &[]);
    daemon.wait_log("http listening", STARTUP);
    Door {
        _project: project,
        _daemon: daemon,
        port,
        token,
    }
}

/// A TCP connection to the daemon from `ip`.
async fn connect_from(ip: [u8; 4], port: u16) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((ip, 0))).unwrap();
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap()
}

/// Whether the server closed `sock` within `within` (EOF or a reset).
async fn closed_within(sock: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A response (the 408 of a timed-out head, say): keep reading until the close.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tokens_never_reach_argon2_and_never_delay_a_valid_one() {
    let door = open("refusals_per_minute = 20");
    let url = format!("http://127.0.0.1:{}/api/workflows", door.port);
    // 500 unknown tokens from 25 addresses, 20 each (within the per-address limit): half of
    // them look like real ones (an id and a secret), half do not.
    let began = Instant::now();
    let flood = unknown_token_flood(&url);
    // Meanwhile, a valid token's first use (the one argon2 verification it needs).
    let t = Instant::now();
    let res = client_from([127, 0, 0, 1])
        .get(&url)
        .bearer_auth(&door.token)
        .send()
        .await
        .unwrap();
    let first_use = t.elapsed();
    assert_eq!(res.status(), 200);
    let mut statuses = Vec::new();
    for f in flood {
        statuses.push(f.await.unwrap().0);
    }
    let flood_time = began.elapsed();
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    eprintln!(
        "500 unknown tokens answered in {flood_time:?}; a valid token's first use took {first_use:?}"
    );
    // Before, each unknown token cost an argon2 verification, one at a time (~0.14 s each on
    // the release build): 500 took over a minute and the valid token waited behind them.
    assert!(
        flood_time < Duration::from_secs(10),
        "the flood took {flood_time:?}"
    );
    assert!(
        first_use < Duration::from_secs(5),
        "the valid token waited {first_use:?}"
    );
    // Later uses come from the cache.
    reqwest::Client::new()
        .get(&url)
        .bearer_auth(&door.token)
        .expect(200)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_and_idle_connections_are_closed_and_others_served() {
    let door = open("header_timeout = \"2s\"\nmax_connections_per_address = 64");
    let port = door.port;
    // 200 connections from one address that send half a request head and stall.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut sock = connect_from([127, 0, 0, 9], port).await;
        let _ = sock
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await;
        slow.push(sock);
    }
    // Another client is served at once.
    let t = Instant::now();
    client_from([127, 0, 0, 1])
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .expect(200)
        .await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Past the per-address cap, connections were closed at once; the rest by the timeout.
    let mut closed = 0;
    for sock in &mut slow[64..] {
        closed += usize::from(closed_within(sock, Duration::from_millis(1500)).await);
    }
    assert_eq!(closed, 136, "connections over max_connections_per_address");
    let t = Instant::now();
    for sock in &mut slow[..64] {
        assert!(
            closed_within(sock, Duration::from_secs(6)).await,
            "a slow-header connection was still open {:?} later",
            t.elapsed()
        );
    }
    // A kept-alive connection that goes idle after one request is closed too.
    let mut idle = connect_from([127, 0, 0, 1], port).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(6)).await);
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    // Seats were given back: the address that flooded is served again.
    client_from([127, 0, 0, 9])
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .expect(200)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_logins_bad_paths_and_untyped_bodies_are_refused() {
    let door = open("");
    let base = format!("http://127.0.0.1:{}", door.port);
    let web = client_from([127, 0, 0, 1]);
    let login = |origin: Option<&str>, fetch_site: Option<&str>| {
        let mut req = web
            .post(format!("{base}/login"))
            .form(&[("token", door.token.as_str())]);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if let Some(f) = fetch_site {
            req = req.header("sec-fetch-site", f);
        }
        req.send()
    };
    let res = login(Some("http://evil.example"), None).await.unwrap();
    assert_eq!(res.status(), 403);
    assert!(!res.headers().contains_key("set-cookie"));
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("他のサイトからのログイン")
    );
    let res = login(None, Some("cross-site")).await.unwrap();
    assert_eq!(res.status(), 403);
    let res = login(Some("null"), None).await.unwrap();
    assert_eq!(res.status(), 403);
    // From the daemon's own page (or a script without either header): signed in.
    let res = login(Some(base.as_str()), Some("same-origin"))
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert!(res.headers().contains_key("set-cookie"));
    let res = login(None, None).await.unwrap();
    assert_eq!(res.status(), 303);

    // A line break in a path is a 400, for the API and the pages.
    let res = web
        .get(format!("{base}/api/runs/a%0D%0Ab"))
        .bearer_auth(&door.token)
        .expect(400)
        .await;
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "the path contains a control character");
    let res = web
        .post(format!("{base}/runs/x%0d%0aSet-Cookie:%20a=b/cancel"))
        .form(&[("csrf", "x")])
        .expect(400)
        .await;
    assert!(!res.headers().contains_key("set-cookie"));

    // JSON endpoints take JSON only.
    for (ct, status) in [
        (Some("text/plain"), 415),
        (None, 415),
        (Some("application/x-www-form-urlencoded"), 415),
        (Some("application/json; charset=utf-8"), 400),
    ] {
        let mut req = web
            .post(format!("{base}/api/runs"))
            .bearer_auth(&door.token)
            .body("workflow=hello");
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), status, "{ct:?}");
    }
    web.post(format!("{base}/api/runs"))
        .bearer_auth(&door.token)
        .json(&serde_json::json!({ "workflow": "hello" }))
        .expect(201)
        .await;
}

#[test]
fn files_outside_the_workflows_directory_are_refused_alike_by_validate_and_the_daemon() {
    let project = Project::new();
    let wf = project.workflows();
    let outside = project.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("shadow.txt"), "root:SECRET-HASH:19000::::::\n").unwrap();
    std::fs::write(
        outside.join("evil.toml"),
        "id = \"evil\"\n[[steps]]\nid = \"a\"\naction = \"log\"\nwith = { message = \"x\" }\n",
    )
    .unwrap();
    std::fs::write(outside.join("people.toml"), "lead = \"x\"\n").unwrap();
    std::fs::create_dir_all(wf.join("templates")).unwrap();
    std::os::unix::fs::symlink(outside.join("shadow.txt"), wf.join("templates/notice.txt"))
        .unwrap();
    std::os::unix::fs::symlink(outside.join("evil.toml"), wf.join("linked.toml")).unwrap();
    std::os::unix::fs::symlink(outside.join("people.toml"), wf.join("data/people.toml")).unwrap();
    std::os::unix::fs::symlink(wf.join("missing.toml"), wf.join("dangling.toml")).unwrap();
    // A link inside the directory is fine.
    std::fs::write(wf.join("templates/real.txt"), "お知らせ\n").unwrap();
    std::os::unix::fs::symlink(
        wf.join("templates/real.txt"),
        wf.join("templates/alias.txt"),
    )
    .unwrap();
    let mail = |id: &str, template: &str| {
        format!(
            "id = \"{id}\"\n[[steps]]\nid = \"send\"\naction = \"email\"\n[steps.with]\nto = \"a@example.go.jp\"\nsubject = \"x\"\ntemplate = \"{template}\"\n"
        )
    };
    project.workflow("leak.toml", &mail("leak", "notice.txt"));
    project.workflow("up.toml", &mail("up", "../outside/shadow.txt"));
    project.workflow(
        "abs.toml",
        &mail("abs", outside.join("shadow.txt").to_str().unwrap()),
    );
    project.workflow("fine.toml", &mail("fine", "alias.txt"));
    let port = free_port();
    project.config_as_is(&format!(
        "database_url = \"sqlite://var/files.db\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n"
    ));
    let (code, out, err) = cli(project.path(), &["validate"]);
    assert_eq!(code, 1, "{out}{err}");
    let expected = [
        ("leak.toml:8:12", "outside the workflows directory"),
        (
            "up.toml:8:12",
            "must be a relative path inside the workflows directory",
        ),
        (
            "abs.toml:8:12",
            "must be a relative path inside the workflows directory",
        ),
        ("linked.toml:1:1", "outside the workflows directory"),
        ("people.toml:1:1", "outside the workflows directory"),
        ("dangling.toml:1:1", "cannot read"),
    ];
    for (at, what) in expected {
        let line = out
            .lines()
            .find(|l| l.contains(at))
            .unwrap_or_else(|| panic!("no `{at}` in:\n{out}"));
        assert!(line.contains(what), "{line}");
    }
    assert!(!out.contains("fine.toml"), "{out}");
    assert!(!out.contains("SECRET-HASH") && !err.contains("SECRET-HASH"));

    // The daemon refuses the same files with the same positions and loads the rest.
    let daemon = Daemon::start(project.path(), "d", &[]);
    daemon.wait_log("http listening", STARTUP);
    let log = daemon.log_text();
    for (at, what) in expected {
        let (file, pos) = at.split_once(':').unwrap();
        let (line, col) = pos.split_once(':').unwrap();
        assert!(
            log.lines().any(|l| l.contains(file)
                && l.contains(&format!("line={line}"))
                && l.contains(&format!("col={col}"))
                && l.contains(what)),
            "{at} {what} not in the log:\n{log}"
        );
    }
    assert!(!log.contains("SECRET-HASH"));
    let workflows = pmoflow_tests::cli_ok(project.path(), &["workflows"]);
    assert!(workflows.contains("fine"), "{workflows}");
}
