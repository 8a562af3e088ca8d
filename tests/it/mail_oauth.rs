//! OAuth2 for mail against real servers: Dovecot's oauth2 passdb and an aiosmtpd XOAUTH2
//! server both ask a real token server (RFC 7662 introspection) whether a token is active;
//! tokens come from the daemon's token sources (client credentials, certificate assertion,
//! Google service account, LINE WORKS), signatures verified by the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pmoflow::inbound::imap::{ImapConfig, ImapOAuth2, poll_once};
use pmoflow::oauth::{Credential, Provider, Sasl, SecretSource, TokenSourceConfig, TokenSources};
use pmoflow::outbox::Secret;
use pmoflow::store::{Durability, Store};
use pmoflow_tests::{
    Backend, Daemon, Dovecot, OAuthServer, Project, TestDb, cli, free_port, oauth_smtp,
    rsa_key_and_cert, wait,
};
use serde_json::json;

fn generic(server: &OAuthServer, secret: SecretSource) -> TokenSourceConfig {
    TokenSourceConfig {
        name: "idp".into(),
        provider: Provider::Generic,
        token_url: server.url("/token"),
        client_id: "pmoflow".into(),
        scope: "mail".into(),
        credential: Credential::ClientSecret(secret),
    }
}

fn sources(cfg: TokenSourceConfig) -> TokenSources {
    TokenSources::new([&cfg], &Arc::default())
}

fn mail(n: usize) -> Vec<u8> {
    format!(
        "From: yamada@pjmo-a.example.go.jp\r\nTo: pmo@example.go.jp\r\nSubject: test {n}\r\nMessage-ID: <oauth-{n}-{}@pjmo-a.example.go.jp>\r\n\r\nbody {n}\r\n",
        std::process::id()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn imap_logs_in_with_xoauth2_and_oauthbearer_refreshing_expired_and_revoked_tokens() {
    // Long enough that three logins and two appends fit in one token's life on a loaded
    // machine (the source refreshes at 80 % of it); the expiry below is waited for.
    const LIFETIME: Duration = Duration::from_secs(15);
    let server = OAuthServer::start(&json!({
        "lifetime": LIFETIME.as_secs(),
        "clients": {"pmoflow": {"secret": "s3cret-value", "user": "pmo"}}
    }));
    let imap = Dovecot::start_oauth(&server.url("/introspect"));
    let db = TestDb::new(Backend::Sqlite).await;
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    let clock: pmoflow::clock::SharedClock = Arc::new(pmoflow::clock::SystemClock);
    let max = pmoflow::inbound::DEFAULT_MAX_SIZE;
    let tokens = sources(generic(
        &server,
        SecretSource::Value(Secret::new("s3cret-value")),
    ));
    let source = tokens.get("idp").unwrap();
    let base = ImapConfig {
        password: Secret::new(""),
        oauth2: Some(ImapOAuth2 {
            source: "idp".into(),
            sasl: Sasl::Xoauth2,
        }),
        ..imap.imap_config()
    };
    // First contact registers the mailbox; then one message per round, alternating mechanisms.
    let fetched = Instant::now();
    poll_once(&base, &store, &clock, &tokens, max)
        .await
        .unwrap();
    for (n, sasl) in [Sasl::Xoauth2, Sasl::Oauthbearer].into_iter().enumerate() {
        imap.append_raw("INBOX", &[mail(n)]);
        let cfg = ImapConfig {
            oauth2: Some(ImapOAuth2 {
                source: "idp".into(),
                sasl,
            }),
            ..base.clone()
        };
        let stats = poll_once(&cfg, &store, &clock, &tokens, max)
            .await
            .unwrap_or_else(|e| panic!("{sasl:?}: {e}"));
        assert_eq!(stats.stored, 1, "{sasl:?}");
    }
    // Three logins within the token's lifetime: one fetch.
    assert!(
        fetched.elapsed() < LIFETIME * 4 / 5,
        "the logins took {:?}: longer than the token's refresh point",
        fetched.elapsed()
    );
    assert_eq!(source.fetches(), 1);
    assert_eq!(server.stats()["issued"], 1);

    // Expired: the next login fetches a new one before it is refused.
    // pace: until the token's lifetime has passed.
    tokio::time::sleep_until((fetched + LIFETIME + Duration::from_millis(100)).into()).await;
    imap.append_raw("INBOX", &[mail(2)]);
    assert_eq!(
        poll_once(&base, &store, &clock, &tokens, max)
            .await
            .unwrap()
            .stored,
        1
    );
    assert_eq!(source.fetches(), 2);

    // Revoked before it expired (the token just fetched lives 15 s): the server refuses it,
    // the source fetches a fresh one, the login succeeds, and nothing is taken twice.
    let before = source.fetches();
    server.revoke_all();
    imap.append_raw("INBOX", &[mail(3)]);
    let stats = poll_once(&base, &store, &clock, &tokens, max)
        .await
        .unwrap();
    assert_eq!((stats.stored, stats.duplicates), (1, 0));
    assert_eq!(
        source.fetches(),
        before + 1,
        "one fresh token after the refusal"
    );
    let all = store.inbound_list(None, 100).await.unwrap();
    assert_eq!(all.iter().filter(|r| r.via == "imap").count(), 4, "{all:?}");

    // A wrong client secret: a clear error with the provider's message, no secret in it.
    let wrong = sources(generic(
        &server,
        SecretSource::Value(Secret::new("not-the-secret")),
    ));
    let err = poll_once(&base, &store, &clock, &wrong, max)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("oauth2 `idp`")
            && err.contains("refused the credentials: invalid_client")
            && err.contains("AADSTS7000215"),
        "{err}"
    );
    assert!(!err.contains("not-the-secret"), "{err}");
    // Refused twice (a token the server does not know): the error says what usually causes it.
    let foreign = ImapConfig {
        username: "someone-else".into(),
        ..base.clone()
    };
    let err = poll_once(&foreign, &store, &clock, &tokens, max)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("AUTHENTICATE XOAUTH2 as someone-else failed"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_service_account_and_line_works_assertions_are_signed_and_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert, public) = rsa_key_and_cert(dir.path(), "pmoflow");
    let key_pem = Secret::new(std::fs::read_to_string(&key).unwrap());
    let server = OAuthServer::start(&json!({
        "lifetime": 3600,
        "clients": {
            "app-id": {"public_key": public, "user": "pmo"},
            "sa@project.iam.gserviceaccount.com": {"public_key": public, "user": "pmo"},
            "lw-client": {"public_key": public, "secret": "lw-secret", "user": "bot"}
        }
    }));
    let cert_pem = std::fs::read_to_string(&cert).unwrap();
    let thumbprint = pmoflow::oauth::jwt::thumbprint_s256(&cert_pem).unwrap();
    let configs = [
        TokenSourceConfig {
            name: "m365".into(),
            provider: Provider::Microsoft,
            token_url: server.url("/tenant/oauth2/v2.0/token"),
            client_id: "app-id".into(),
            scope: "https://outlook.office365.com/.default".into(),
            credential: Credential::Certificate {
                key_pem: key_pem.clone(),
                thumbprint: thumbprint.clone(),
            },
        },
        TokenSourceConfig {
            name: "google".into(),
            provider: Provider::Google,
            token_url: server.url("/token"),
            client_id: "sa@project.iam.gserviceaccount.com".into(),
            scope: "https://mail.google.com/".into(),
            credential: Credential::ServiceAccount {
                client_email: "sa@project.iam.gserviceaccount.com".into(),
                key_id: Some("kid-1".into()),
                key_pem: key_pem.clone(),
                subject: "pmo@ministry.go.jp".into(),
            },
        },
        TokenSourceConfig {
            name: "lw".into(),
            provider: Provider::LineWorks,
            token_url: server.url("/token"),
            client_id: "lw-client".into(),
            scope: "bot".into(),
            credential: Credential::LineWorks {
                secret: SecretSource::Value(Secret::new("lw-secret")),
                service_account: "abc.serviceaccount@ministry".into(),
                key_pem,
            },
        },
    ];
    let tokens = TokenSources::new(&configs, &Arc::default());
    for name in ["m365", "google", "lw"] {
        tokens
            .get(name)
            .unwrap()
            .token()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let stats = server.stats();
    assert_eq!(stats["issued"], 3, "{stats}");
    assert_eq!(stats["grants"]["client_credentials"], 1, "{stats}");
    assert_eq!(
        stats["grants"]["urn:ietf:params:oauth:grant-type:jwt-bearer"], 2,
        "{stats}"
    );
    let claims = stats["claims"].as_array().unwrap();
    // Microsoft: iss = sub = the client, aud = the token endpoint.
    assert_eq!(claims[0]["aud"], server.url("/tenant/oauth2/v2.0/token"));
    // Google: acts as the mailbox, with the mail scope.
    assert_eq!(claims[1]["sub"], "pmo@ministry.go.jp");
    assert_eq!(claims[1]["scope"], "https://mail.google.com/");
    // LINE WORKS: sub = the service account.
    assert_eq!(claims[2]["sub"], "abc.serviceaccount@ministry");
    assert_eq!(stats["scopes"][0], "https://outlook.office365.com/.default");
}

const WORKFLOW: &str = include_str!("../fixtures/flows/mail_oauth_workflow.toml");

/// The daemon with `[oauth2]` for IMAP and SMTP: a wrong secret is a clear error and the
/// daemon keeps running; fixed in the secret file, it recovers without a restart; mail goes out
/// through XOAUTH2 with fresh tokens after expiry; the poller reconnects after the server ends
/// its session; `pmoflow mail check` says what works and what does not.
#[tokio::test(flavor = "multi_thread")]
async fn daemon_recovers_from_a_wrong_secret_and_sends_with_fresh_tokens() {
    let clients = json!({"pmoflow": {"secret": "right-secret", "user": "pmo"}});
    let server = OAuthServer::start(&json!({"lifetime": 3, "clients": clients}));
    let imap = Dovecot::start_oauth(&server.url("/introspect"));
    let project = Project::new();
    let maildir = project.path().join("maildir");
    let smtp_port = free_port();
    let _smtp = oauth_smtp(smtp_port, &maildir, &server.url("/introspect"), "pmo", None);
    let secret_file = project.path().join("oauth2-secret");
    std::fs::write(&secret_file, "wrong-secret-value\n").unwrap();
    project.workflow("notice.toml", WORKFLOW);
    project.config(&format!(
        r#"[engine]
poll_interval = "100ms"
[mail]
from = "PMO事務局 <pmo@example.go.jp>"
[outbox]
poll_interval = "200ms"
backoff = "1s"
max_backoff = "2s"
[oauth2.idp]
provider = "generic"
token_url = "{token_url}"
client_id = "pmoflow"
client_secret_file = "{secret}"
[imap]
host = "127.0.0.1"
port = {imap_port}
tls = "none"
username = "pmo"
oauth2 = "idp"
sasl = "oauthbearer"
poll_interval = "1s"
[smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
username = "pmo"
oauth2 = "idp"
"#,
        token_url = server.url("/token"),
        secret = secret_file.display(),
        imap_port = imap.port,
    ));
    let dir = project.path();
    // mail check with the wrong secret: the token fails, IMAP and SMTP are not tried, exit 1.
    let (code, out, _) = cli(dir, &["mail", "check"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  oauth2 idp (generic): oauth2 `idp`:") && out.contains("invalid_client"),
        "{out}"
    );
    assert!(out.contains("FAIL  imap 127.0.0.1:"), "{out}");

    let mut d = Daemon::start(dir, "d", &[]);
    d.wait_log("oauth2 token fetch failed", Duration::from_secs(30));
    let (code, out, err) = cli(dir, &["trigger", "notice"]);
    assert_eq!(code, 0, "{err}");
    let first_run = out.trim().to_string();
    // The message waits in the outbox with a reason naming the provider's answer.
    let out = wait::until(
        "the outbox to show the refusal",
        Duration::from_secs(30),
        || async {
            let (code, out, err) = cli(dir, &["outbox"]);
            assert_eq!(code, 0, "pmoflow outbox: {err}");
            if out.contains("invalid_client") {
                Ok(out)
            } else {
                Err(out)
            }
        },
    )
    .await;
    assert!(out.contains("pending"), "{out}");
    assert!(d.is_running(), "{}", d.log_text());

    // Fixed in the file: the poller and the outbox recover, no restart.
    std::fs::write(&secret_file, "right-secret\n").unwrap();
    d.wait_log("imap connected", Duration::from_secs(60));
    let mails = wait_mails(&maildir, 1, Duration::from_secs(60));
    assert!(mails[0].contains(&first_run), "{}", mails[0]);
    // Tokens expire every 3 s: later mail goes out with fresh ones.
    // pace: past one token's lifetime.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (code, _, err) = cli(dir, &["trigger", "notice"]);
    assert_eq!(code, 0, "{err}");
    wait_mails(&maildir, 2, Duration::from_secs(30));
    // The server ends the poller's session; it logs in again with a new token.
    // pace: past one token's lifetime.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let connected = d.log_text().matches("imap connected").count();
    server.revoke_all();
    imap.kick();
    d.wait_log_count("imap connected", connected + 1, Duration::from_secs(30));
    // A message that arrives now is taken once, by the new session.
    imap.append_raw("INBOX", &[mail(99)]);
    let store = Store::open(
        &format!("sqlite://{}/var/pmoflow.db", dir.display()),
        Durability::Process,
    )
    .await
    .unwrap();
    let imap_rows = || async {
        let rows = store.inbound_list(None, 100).await.unwrap();
        rows.iter().filter(|r| r.via == "imap").count()
    };
    wait::until(
        "the message to be taken in",
        Duration::from_secs(30),
        || async {
            match imap_rows().await {
                0 => Err(0),
                n => Ok(n),
            }
        },
    )
    .await;
    // pace: a check that nothing more happens: two poll intervals for a second taking.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(imap_rows().await, 1, "the message was taken in once");
    let stats = server.stats();
    assert!(stats["issued"].as_u64().unwrap() >= 3, "{stats}");
    let log = d.log_text();
    assert!(
        !log.contains("right-secret") && !log.contains("wrong-secret"),
        "{log}"
    );
    assert!(!log.contains("Bearer"), "{log}");

    // mail check: a fresh token, IMAP with counts, SMTP login; then a test message.
    let (code, out, err) = cli(
        dir,
        &["mail", "check", "--send-test", "kanri@example.go.jp"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok    oauth2 idp (generic): token from"),
        "{out}"
    );
    assert!(
        out.contains("ok    imap 127.0.0.1:") && out.contains("(OAUTHBEARER): logged in; INBOX:"),
        "{out}"
    );
    assert!(out.contains("EHLO and AUTH XOAUTH2 accepted"), "{out}");
    assert!(
        out.contains("ok    send-test: accepted for kanri@example.go.jp"),
        "{out}"
    );
    let mails = wait_mails(&maildir, 3, Duration::from_secs(10));
    assert!(mails.iter().any(|m| m.contains("kanri@example.go.jp")));
    assert_eq!(
        d.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        d.log_text()
    );
}

/// `pmoflow mail check` against an SMTP server that refuses the token as Exchange does
/// (`535 5.7.3`): the report names what usually causes it.
#[tokio::test(flavor = "multi_thread")]
async fn mail_check_explains_an_exchange_style_refusal() {
    let server = OAuthServer::start(&json!({
        "lifetime": 3600,
        "clients": {"app": {"secret": "s", "user": "someone-else"}}
    }));
    let project = Project::new();
    let smtp_port = free_port();
    let _smtp = oauth_smtp(
        smtp_port,
        &project.path().join("maildir"),
        &server.url("/introspect"),
        "pmo",
        None,
    );
    project.config(&format!(
        r#"[oauth2.m365]
provider = "microsoft"
tenant = "t"
token_url = "{}"
client_id = "app"
client_secret_env = "PMOFLOW_TEST_M365_SECRET"
[smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
username = "pmo"
oauth2 = "m365"
"#,
        server.url("/token")
    ));
    let out = std::process::Command::new(pmoflow_tests::bin())
        .current_dir(project.path())
        .args(["mail", "check"])
        .env("PMOFLOW_TEST_M365_SECRET", "s")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("ok    oauth2 m365 (microsoft)"), "{text}");
    assert!(text.contains("FAIL  smtp 127.0.0.1:"), "{text}");
    assert!(
        text.contains("(535): 5.7.3 Authentication unsuccessful"),
        "{text}"
    );
    assert!(
        text.contains("SMTP.SendAsApp") && text.contains("New-ServicePrincipal"),
        "{text}"
    );
    // Refused once, refetched once, refused again: two tokens, no more.
    assert_eq!(server.stats()["issued"], 2);
}

fn wait_mails(dir: &std::path::Path, n: usize, timeout: Duration) -> Vec<String> {
    wait::until_blocking(&format!("{n} mails in {}", dir.display()), timeout, || {
        let mut found = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
                for e in entries.flatten() {
                    found.push(std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        if found.len() >= n {
            Ok(found)
        } else {
            Err(found.len())
        }
    })
}
