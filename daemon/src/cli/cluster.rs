//! `pmoflow cluster`: the daemons sharing the database.

#[allow(unused_imports)]
use super::*;

/// `pmoflow cluster`: every daemon seen in the last week (instance id, label, host, version,
/// state, heartbeat age, runs held, roles held) and the warnings an operator should act on
/// (mixed versions, a schema newer than a daemon, a lost daemon holding runs).
pub async fn cluster(config: &Config, format: Format) -> Result<(), CliError> {
    let store = Store::open(&config.database_url, config.durability).await?;
    let view = crate::cluster::view(&store, SystemClock.now(), config.engine.lease).await?;
    store.close().await;
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        let _ = writeln!(out, "{:#}", serde_json::to_value(&view).unwrap_or_default());
        return Ok(());
    }
    let live = view.live().count();
    let _ = writeln!(
        out,
        "{} daemon(s) live on {} (schema {}{})",
        live,
        view.backend,
        view.schema_applied,
        if view.schema_applied == view.schema_known {
            String::new()
        } else {
            format!(", this binary knows {}", view.schema_known)
        }
    );
    let _ = writeln!(
        out,
        "{:<28} {:<16} {:<9} {:<8} {:>9} {:>5}  ROLES",
        "INSTANCE", "LABEL", "VERSION", "STATE", "HEARTBEAT", "RUNS"
    );
    for d in &view.daemons {
        let state = match d.state {
            crate::cluster::DaemonState::Live => "live",
            crate::cluster::DaemonState::Stopped => "stopped",
            crate::cluster::DaemonState::Lost => "lost",
        };
        let _ = writeln!(
            out,
            "{:<28} {:<16} {:<9} {:<8} {:>8.1}s {:>5}  {}",
            d.daemon.instance_id,
            d.daemon.label,
            d.daemon.version,
            state,
            d.heartbeat_age_ms as f64 / 1000.0,
            d.runs,
            if d.roles.is_empty() {
                "-".to_string()
            } else {
                d.roles.join(", ")
            }
        );
    }
    for w in &view.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    Ok(())
}
