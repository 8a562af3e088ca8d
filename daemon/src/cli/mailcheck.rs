//! `pmoflow mail check [--send-test ADDRESS]`: the first thing an administrator runs. Gets a
//! token from every `[oauth2.*]` source the mail settings use, logs in to IMAP (examines the
//! mailbox, prints its counts) and to SMTP (EHLO + AUTH; sends only with `--send-test`), and
//! says what worked and what did not. Exit 0 when everything worked, 1 otherwise.

#[allow(unused_imports)]
use super::*;

/// One line of the report.
fn line(ok: bool, what: &str, detail: &str) -> bool {
    println!("{}  {what}: {detail}", if ok { "ok  " } else { "FAIL" });
    ok
}

/// Runs the checks; returns the exit code.
pub async fn mail_check(config: &Config, send_test: Option<&str>) -> Result<i32, CliError> {
    if let Some(to) = send_test
        && to.parse::<lettre::Address>().is_err()
    {
        return Err(CliError::new(format!("`{to}` is not a mail address")).with_code(2));
    }
    let mut all_ok = true;
    for e in &config.secret_errors {
        all_ok &= line(false, "secret", e);
    }
    let metrics = &config.engine.services.metrics;
    let tokens = crate::oauth::TokenSources::new(&config.oauth2, metrics);
    let smtp_cfg = config.engine.services.mail.smtp.as_ref();
    let used: Vec<&str> = config
        .imap
        .iter()
        .filter_map(|i| i.oauth2.as_ref().map(|o| o.source.as_str()))
        .chain(smtp_cfg.and_then(|s| s.oauth2.as_deref()))
        .collect();
    let mut token_ok = std::collections::BTreeMap::new();
    for cfg in &config.oauth2 {
        if !used.contains(&cfg.name.as_str()) {
            continue;
        }
        let source = tokens.get(&cfg.name).map_err(CliError::of)?;
        let what = format!("oauth2 {} ({})", cfg.name, cfg.provider.as_str());
        let ok = match source.token().await {
            Ok(_) => line(true, &what, &format!("token from {}", cfg.token_url)),
            Err(e) => line(false, &what, &e.to_string()),
        };
        token_ok.insert(cfg.name.clone(), ok);
        all_ok &= ok;
    }
    let source_ok = |name: Option<&str>| name.is_none_or(|n| token_ok.get(n) != Some(&false));
    match &config.imap {
        None => println!("-     imap: no [imap] configured: replies are not read from a mailbox"),
        Some(imap) => {
            let how = imap
                .oauth2
                .as_ref()
                .map(|o| o.sasl.mechanism())
                .unwrap_or("LOGIN");
            let what = format!(
                "imap {}:{} as {} ({how})",
                imap.host, imap.port, imap.username
            );
            if source_ok(imap.oauth2.as_ref().map(|o| o.source.as_str())) {
                all_ok &= match crate::inbound::imap::check(imap, &tokens).await {
                    Ok(c) => line(
                        true,
                        &what,
                        &format!(
                            "logged in; {}: {} messages, {} unseen, UIDVALIDITY {}{}",
                            imap.mailbox,
                            c.exists,
                            c.unseen,
                            c.uid_validity.map_or("-".into(), |v| v.to_string()),
                            if c.idle {
                                ", IDLE offered"
                            } else {
                                ", no IDLE (polling)"
                            }
                        ),
                    ),
                    Err(e) => line(false, &what, &e.to_string()),
                };
            } else {
                all_ok &= line(false, &what, "not tried: no token");
            }
        }
    }
    let delivery = std::sync::Arc::new(crate::outbox::DeliveryConfig {
        mail: config.engine.services.mail.clone(),
        outbox: config.outbox.clone(),
        secrets: config.engine.services.secrets.clone(),
        egress: config.engine.services.egress.clone(),
    });
    let transports = crate::outbox::transport::Transports::new(delivery, tokens.clone())
        .map_err(|e| CliError::caused("cannot set up SMTP", e))?;
    match smtp_cfg {
        None => println!(
            "-     smtp: no [smtp] configured: emails are written as .eml files to {}",
            config.engine.services.mail.outbox_dir.display()
        ),
        Some(s) => {
            let what = format!(
                "smtp {}:{} (tls {}){}",
                s.host,
                s.port,
                format!("{:?}", s.tls).to_lowercase(),
                s.username
                    .as_deref()
                    .map(|u| format!(" as {u}"))
                    .unwrap_or_default()
            );
            if !source_ok(s.oauth2.as_deref()) {
                all_ok &= line(false, &what, "not tried: no token");
            } else {
                let ok = match transports.check_smtp().await {
                    Ok(detail) => line(true, &what, &detail.unwrap_or_default()),
                    Err(e) => line(false, &what, &e.to_string()),
                };
                all_ok &= ok;
                if let (true, Some(to)) = (ok, send_test) {
                    all_ok &= send_one(config, &transports, to).await;
                }
            }
        }
    }
    if send_test.is_some() && smtp_cfg.is_none() {
        all_ok &= line(false, "send-test", "no [smtp] to send with");
    }
    Ok(if all_ok { 0 } else { 1 })
}

/// Sends the test message (Japanese: its reader is whoever owns the address).
async fn send_one(
    config: &Config,
    transports: &crate::outbox::transport::Transports,
    to: &str,
) -> bool {
    let now = SystemClock.now().with_timezone(&config.timezone);
    let host = crate::message::email::domain_of(&config.engine.services.mail.from);
    let message_id = format!("<mail-check.{}@{host}>", uuid::Uuid::now_v7());
    let message = lettre::Message::builder()
        .message_id(Some(message_id.clone()))
        .from(
            config
                .engine
                .services
                .mail
                .from
                .parse()
                .unwrap_or_else(|_| "pmoflow <pmoflow@localhost>".parse().expect("valid")),
        )
        .to(match to.parse() {
            Ok(m) => m,
            Err(e) => return line(false, "send-test", &format!("`{to}`: {e}")),
        })
        .subject("【pmoflow】送信テスト")
        .header(lettre::message::header::ContentType::TEXT_PLAIN)
        .body(format!(
            "pmoflow の送信テストです（{}）。\nこのメールは `pmoflow mail check --send-test` により送信されました。返信は不要です。\n",
            now.format("%Y-%m-%d %H:%M")
        ));
    let raw = match message {
        Ok(m) => String::from_utf8_lossy(&m.formatted()).into_owned(),
        Err(e) => return line(false, "send-test", &e.to_string()),
    };
    match transports.send_test(to, &message_id, &raw).await {
        crate::outbox::Delivery::Sent => line(
            true,
            "send-test",
            &format!("accepted for {to} ({message_id})"),
        ),
        crate::outbox::Delivery::Temporary(e)
        | crate::outbox::Delivery::Later(e, _)
        | crate::outbox::Delivery::Permanent(e) => line(false, "send-test", &e),
    }
}
