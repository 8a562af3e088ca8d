//! Messages: `outbox`, `inbound` (receive, list, show, poll, explain) and `requests`.

#[allow(unused_imports)]
use super::*;

/// `pmoflow outbox [--status S]`: queued, sent and dead messages.
pub async fn outbox_list(
    config: &Config,
    status: Option<&str>,
    limit: i64,
    format: Format,
) -> Result<(), CliError> {
    if let Some(s) = status
        && !matches!(s, "pending" | "sent" | "dead")
    {
        return Err(CliError::new(format!(
            "unknown outbox status `{s}` (pending, sent, dead)"
        )));
    }
    let store = Store::open(&config.database_url, config.durability).await?;
    let rows = store.list_outbox(status, limit).await?;
    store.close().await;
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        let _ = writeln!(out, "{:#}", json!(rows));
        return Ok(());
    }
    let tz = config.timezone;
    let _ = writeln!(
        out,
        "{:<36}  {:<7}  {:<7}  {:>8}  {:<19}  TARGET / LAST ERROR",
        "ID", "KIND", "STATUS", "ATTEMPTS", "CREATED"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "{:<36}  {:<7}  {:<7}  {:>8}  {:<19}  {}{}",
            r.id,
            r.kind.as_str(),
            r.status,
            r.attempts,
            local(r.created_at, tz),
            r.target,
            r.last_error
                .as_deref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// `pmoflow outbox retry ID`: a dead message goes back to the queue.
pub async fn outbox_retry(config: &Config, id: &str) -> Result<String, CliError> {
    let store = Store::open(&config.database_url, config.durability).await?;
    let ok = store.retry_outbox(id, SystemClock.now()).await?;
    store.close().await;
    if ok {
        Ok(format!(
            "message {id} queued again; a running daemon sends it shortly"
        ))
    } else {
        Err(CliError::new(format!("no dead message {id}")))
    }
}

/// `pmoflow inbound explain [FILE]`: how pmoflow reads one message, as JSON.
pub fn inbound_explain(
    file: Option<&std::path::Path>,
    fields: &[String],
    reply_address: &str,
    form: Option<&std::path::Path>,
    auth: crate::message::settings::SenderAuth,
) -> Result<(), CliError> {
    use std::io::Read;
    let raw = match file {
        Some(p) if p != std::path::Path::new("-") => std::fs::read(p)
            .map_err(|e| CliError::caused(format!("cannot read {}", p.display()), e))?,
        _ => {
            let mut buf = Vec::new();
            std::io::stdin()
                .take(crate::inbound::DEFAULT_MAX_SIZE as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(|e| CliError::caused("cannot read standard input", e))?;
            buf
        }
    };
    if !reply_address.contains("{token}") {
        return Err(CliError::new(format!(
            "--reply-address `{reply_address}` has no {{token}}"
        )));
    }
    // One line: the parser's reason is the whole explanation (and what mail filters log).
    let msg = crate::inbound::parse(&raw, crate::inbound::DEFAULT_MAX_SIZE)
        .map_err(|e| CliError::new(format!("the message cannot be read: {e}")))?;
    let reading = crate::message::reply::read(&msg.text, fields, msg.from_name.as_deref());
    let (text, mut answers) = (reading.new_text, reading.answers);
    // With the request's 様式: its attached workbooks read and merged as a reply's would be (the
    // fields found by the template's defined names).
    let mut workbooks = Json::Null;
    if let Some(path) = form {
        let template = std::fs::read(path)
            .map_err(|e| CliError::caused(format!("cannot read {}", path.display()), e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mapping = crate::workbook::form::Mapping {
            fields: fields.to_vec(),
            ..Default::default()
        };
        let spec = crate::workbook::FormSpec::from_template(&name, &template, &mapping)
            .map_err(|e| CliError::new(e.to_string()))?;
        let files = msg
            .attachments
            .iter()
            .map(|a| crate::workbook::form::Offered {
                name: a.name.clone(),
                content_type: a.content_type.clone(),
                content: a.content.clone(),
            })
            .collect();
        let (reads, broken) = crate::workbook::form::read_offered_blocking(
            &spec,
            files,
            &crate::workbook::Limits::default(),
        );
        let mut problems: Vec<String> = broken
            .iter()
            .map(|(n, e)| format!("添付ファイル「{n}」: {e}"))
            .collect();
        problems.extend(
            crate::workbook::form::merge(&spec, &reads, &mut answers.fields)
                .into_iter()
                .map(|p| p.message),
        );
        workbooks = json!({ "form": spec, "read": reads, "problems": problems });
    }
    // Sender authentication as the daemon reaches it: the trusted gateways' word, and DKIM
    // verified here only when asked (it needs DNS).
    let verify = auth.verify_dkim;
    let authenticator = crate::inbound::auth::Authenticator::new(auth);
    let verdict = if verify {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::caused("cannot start the async runtime", e))?
            .block_on(authenticator.verdict(&raw, msg.from.as_deref()))
    } else {
        authenticator
            .from_headers(&raw, msg.from.as_deref())
            .unwrap_or_else(|| crate::inbound::auth::Verdict {
                result: crate::inbound::auth::AuthResult::None,
                reason: "no Authentication-Results from a trusted server (DKIM not verified: \
                         --verify-dkim)"
                    .into(),
            })
    };
    let mut doc = serde_json::to_value(&msg.kind).unwrap_or_else(|_| json!({}));
    let rest = json!({
        "message_id": msg.message_id,
        "from": msg.from,
        "from_name": msg.from_name,
        "recipients": msg.recipients,
        "subject": msg.subject,
        "keys": crate::message::correlate::keys(&msg, reply_address),
        "authentication": verdict,
        "new_text": text,
        "fields": answers.fields,
        "free_text": answers.free_text,
        "fields_found_in": reading.found_in,
        "attachments": msg.attachments,
        "workbooks": workbooks,
    });
    if let (Some(d), Some(r)) = (doc.as_object_mut(), rest.as_object()) {
        d.extend(r.clone());
    }
    println!("{doc:#}");
    Ok(())
}

pub(super) fn read_message(
    file: Option<&std::path::Path>,
    limit: usize,
) -> Result<Vec<u8>, CliError> {
    use std::io::Read;
    match file {
        Some(p) if p != std::path::Path::new("-") => std::fs::read(p)
            .map_err(|e| CliError::caused(format!("cannot read {}", p.display()), e)),
        _ => {
            let mut buf = Vec::new();
            std::io::stdin()
                .take(limit as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(|e| CliError::caused("cannot read standard input", e))?;
            Ok(buf)
        }
    }
}

pub(super) fn intake(config: &Config, store: &Store) -> crate::inbound::intake::Intake {
    crate::inbound::intake::Intake::new(
        store.clone(),
        std::sync::Arc::new(SystemClock),
        config.engine.services.clone(),
    )
}

/// `pmoflow inbound [FILE|-] [--queue]`: store one message; process it unless `--queue`.
/// Exit 75 (EX_TEMPFAIL, "try again later" to an MTA) when the database is unreachable.
pub async fn inbound_receive(
    config: &Config,
    file: Option<&std::path::Path>,
    queue: bool,
) -> Result<(), CliError> {
    let max = config.engine.services.replies.max_size;
    let raw = read_message(file, max)?;
    if raw.is_empty() {
        return Err(CliError::new("empty message: nothing to receive"));
    }
    let store = Store::open(&config.database_url, config.durability)
        .await
        .map_err(|e| {
            CliError::caused("cannot open the database (try again later)", e).with_code(75)
        })?;
    let intake = intake(config, &store);
    let stored = intake.receive("stdin", &raw).await.map_err(|e| {
        CliError::caused("cannot store the message (try again later)", e).with_code(75)
    })?;
    let Some(id) = stored else {
        store.close().await;
        println!("already received (same Message-ID); nothing to do");
        return Ok(());
    };
    if queue {
        store.close().await;
        println!("stored {id}; a running daemon processes it");
        return Ok(());
    }
    let row = store.inbound_get(&id).await?;
    let processed = match row {
        Some(row) => intake.process(&row).await?,
        None => None,
    };
    store.close().await;
    match processed {
        Some(p) => println!(
            "{id}: {} ({}){}",
            p.outcome,
            p.status,
            if p.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", p.detail)
            }
        ),
        None => println!("{id}: processed by a running daemon"),
    }
    Ok(())
}

/// `pmoflow inbound list`.
pub async fn inbound_list(
    config: &Config,
    status: Option<&str>,
    limit: i64,
    format: Format,
) -> Result<(), CliError> {
    if let Some(s) = status
        && !matches!(s, "pending" | "done" | "quarantined" | "held")
    {
        return Err(CliError::new(format!(
            "unknown inbound status `{s}` (pending, done, quarantined, held)"
        )));
    }
    let store = Store::open(&config.database_url, config.durability).await?;
    let rows = store.inbound_list(status, limit).await?;
    store.close().await;
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        let _ = writeln!(out, "{:#}", json!(rows));
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:<36}  {:<11}  {:<17}  {:<19}  FROM / SUBJECT / DETAIL",
        "ID", "STATUS", "OUTCOME", "RECEIVED"
    );
    for r in rows.iter().filter(|r| !r.via.starts_with("imap-")) {
        let _ = writeln!(
            out,
            "{:<36}  {:<11}  {:<17}  {:<19}  {}  {}{}",
            r.id,
            r.status,
            r.outcome.as_deref().unwrap_or("-"),
            local(r.received_at, config.timezone),
            r.from.as_deref().unwrap_or("-"),
            r.subject.as_deref().unwrap_or("-"),
            r.detail
                .as_deref()
                .filter(|d| !d.is_empty())
                .map(|d| format!("  ({d})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// `pmoflow inbound show ID`.
pub async fn inbound_show(config: &Config, id: &str) -> Result<(), CliError> {
    let store = Store::open(&config.database_url, config.durability).await?;
    let row = store.inbound_get(id).await?;
    store.close().await;
    let Some(r) = row else {
        return Err(CliError::new(format!("no received message {id}")));
    };
    println!(
        "{:#}",
        json!({
            "id": r.id,
            "via": r.via,
            "received_at": local(r.received_at, config.timezone),
            "size": r.size,
            "status": r.status,
            "outcome": r.outcome,
            "detail": r.detail,
            "from": r.from,
            "subject": r.subject,
            "authentication": r.auth,
            "processed_at": r.processed_at.map(|t| local(t, config.timezone)),
            "confirmed_at": r.confirmed_at.map(|t| local(t, config.timezone)),
        })
    );
    println!("---");
    println!("{}", String::from_utf8_lossy(&r.raw));
    Ok(())
}

/// `pmoflow inbound release ID`: a reply held for its sender's confirmation is taken as
/// confirmed (the PMO vouches for it, e.g. after a phone call) and processed now.
pub async fn inbound_release(config: &Config, id: &str) -> Result<String, CliError> {
    let store = Store::open(&config.database_url, config.durability).await?;
    let processed = intake(config, &store).confirm(id, false).await;
    store.close().await;
    match processed? {
        Some(p) => Ok(format!("{}: {} ({})", p.id, p.outcome, p.status)),
        None => Err(CliError::new(format!(
            "no held message {id} (see `pmoflow inbound list --status held`)"
        ))),
    }
}

/// `pmoflow inbound poll`: one IMAP round.
pub async fn inbound_poll(config: &Config) -> Result<(), CliError> {
    let Some(imap) = &config.imap else {
        return Err(CliError::new("no [imap] in the configuration"));
    };
    if !config.secret_errors.is_empty() {
        return Err(CliError::new(config.secret_errors.join("\n")));
    }
    let store = Store::open(&config.database_url, config.durability).await?;
    let clock: crate::clock::SharedClock = std::sync::Arc::new(SystemClock);
    let max = config.engine.services.replies.max_size;
    let tokens = crate::oauth::TokenSources::new(&config.oauth2, &config.engine.services.metrics);
    let stats = crate::inbound::imap::poll_once(imap, &store, &clock, &tokens, max)
        .await
        .map_err(CliError::of)?;
    let processed = intake(config, &store).process_pending().await?;
    store.close().await;
    println!(
        "{}: {} new, {} already received, {} older than registration; {} processed",
        crate::inbound::imap::mailbox_key(imap),
        stats.stored,
        stats.duplicates,
        stats.skipped_old,
        processed.len()
    );
    for p in processed {
        println!("  {}: {} ({})", p.id, p.outcome, p.status);
    }
    Ok(())
}

/// `pmoflow requests`: who was asked, who answered.
pub async fn requests(
    config: &Config,
    status: Option<&str>,
    limit: i64,
    format: Format,
) -> Result<(), CliError> {
    let store = Store::open(&config.database_url, config.durability).await?;
    let rows = store.list_requests(status, limit).await?;
    store.close().await;
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        let _ = writeln!(out, "{:#}", json!(rows));
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:<8}  {:<9}  {:<19}  {:<19}  {:<30}  RUN / STEP",
        "TAG", "STATUS", "DEADLINE", "ANSWERED", "TO"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "{:<8}  {:<9}  {:<19}  {:<19}  {:<30}  {} {}",
            format!("#{}", r.tag),
            r.status,
            r.deadline
                .map(|d| local(d, config.timezone))
                .unwrap_or_else(|| "-".into()),
            r.answered_at
                .map(|d| local(d, config.timezone))
                .unwrap_or_else(|| "-".into()),
            r.recipient,
            r.run_id,
            r.step_key
        );
    }
    Ok(())
}
