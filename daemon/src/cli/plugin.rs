//! `pmoflow plugin …`: develop WebAssembly plugins outside any workflow.

use std::path::Path;

use serde_json::{Value as Json, json};

use super::CliError;
use crate::clock::{Clock, SystemClock};

/// `pmoflow plugin inspect FILE.wasm`: the component's imports and descriptor, as JSON. Exit 1 if
/// the host would refuse it.
pub async fn plugin_inspect(file: &std::path::Path) -> Result<(), CliError> {
    // Inspection grants everything so that it can show what the component imports; nothing
    // runs but `describe`.
    let grant = crate::plugins::Grant {
        capabilities: crate::plugins::grant::KNOWN
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..crate::plugins::Grant::default()
    };
    let (host, name, imports) = crate::plugins::PluginHost::single(file, grant)
        .map_err(|e| CliError::caused(file.display().to_string(), e))?;
    let descriptor = host
        .describe(&name)
        .await
        .map_err(|e| CliError::caused(format!("{}: describe() failed", file.display()), e))?;
    let doc = json!({ "file": file, "descriptor": descriptor, "imports": imports });
    println!("{doc:#}");
    Ok(())
}

/// `pmoflow plugin run FILE.wasm --input JSON`: one invocation outside any workflow. The output
/// goes to stdout, the plugin's log lines to stderr.
pub async fn plugin_run(
    file: &std::path::Path,
    input: &str,
    grants: &[String],
    allow_hosts: &[String],
    timeout: Option<&str>,
) -> Result<(), CliError> {
    let input: Json = serde_json::from_str(input)
        .map_err(|e| CliError::caused("--input is not valid JSON", e))?;
    let mut grant = crate::plugins::Grant::default();
    for cap in grants {
        if !crate::plugins::grant::KNOWN.contains(&cap.as_str()) {
            return Err(CliError::new(format!(
                "--grant {cap}: unknown capability (known: {})",
                crate::plugins::grant::KNOWN.join(", ")
            )));
        }
        grant.capabilities.insert(cap.clone());
    }
    for host in allow_hosts {
        grant.allow_hosts.push(
            crate::plugins::HostRule::parse(host)
                .map_err(|e| CliError::caused("--allow-host", e))?,
        );
    }
    if let Some(t) = timeout {
        grant.limits.timeout = crate::duration::HumanDuration::parse(t)
            .map_err(|e| CliError::caused("--timeout", e))?
            .0;
    }
    let (mut host, name, _) = crate::plugins::PluginHost::single(file, grant)
        .map_err(|e| CliError::caused(file.display().to_string(), e))?;
    if let Some(problem) = host.prepare().await.first() {
        return Err(CliError::new(format!("{}: {problem}", file.display())));
    }
    let call = crate::plugins::PluginCall {
        run_id: "cli",
        workflow_id: "cli",
        step_key: "run",
        attempt: 1,
        now_ms: SystemClock.now().timestamp_millis(),
    };
    let (output, logs) = host
        .invoke(&name, &call, &input.to_string())
        .await
        .map_err(|e| CliError::caused("plugin failed", e))?;
    for (level, message) in logs {
        eprintln!("[{level}] {message}");
    }
    println!("{output}");
    Ok(())
}

/// What `pmoflow plugin new` writes besides the plugin's own files: the SDK and the WIT this
/// binary serves, and the guest workspace's lock file (versions known to build with the
/// toolchain pmoflow is built with). Carried by the binary, so an integrator needs nothing else.
const SDK_CARGO_TOML: &str = include_str!("../../../plugins/sdk/Cargo.toml");
const SDK_LIB_RS: &str = include_str!("../../../plugins/sdk/src/lib.rs");
const WIT: &str = include_str!("../../../plugins/wit/plugin.wit");
const GUEST_LOCK: &str = include_str!("../../../plugins/Cargo.lock");

/// `pmoflow plugin new NAME`: a plugin crate that builds with
/// `cargo build --release --target wasm32-wasip2`, with its `plugin.toml`. The SDK and the WIT
/// are written into the project (`sdk/`, `wit/`) unless `sdk` names an SDK directory to use
/// instead.
pub fn plugin_new(name: &str, dir: &Path, sdk: Option<&Path>) -> Result<String, CliError> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid {
        return Err(CliError::new(format!(
            "`{name}` is not a plugin name: use lower-case letters, digits and `-`, starting with a letter"
        )));
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(CliError::new(format!("{} already exists", root.display())));
    }
    let sdk_path = match sdk {
        None => "sdk".to_string(),
        Some(sdk) => {
            let sdk = sdk
                .canonicalize()
                .map_err(|e| CliError::caused(format!("--sdk {}", sdk.display()), e))?;
            if !sdk.join("Cargo.toml").is_file() {
                return Err(CliError::new(format!(
                    "{} is not the plugin SDK (no Cargo.toml)",
                    sdk.display()
                )));
            }
            sdk.display().to_string().replace('\\', "/")
        }
    };
    let module = name.replace('-', "_");
    let ty: String = name
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let mut files: Vec<(&str, String)> = vec![
        ("Cargo.toml", cargo_toml(name, &sdk_path)),
        ("Cargo.lock", GUEST_LOCK.to_string()),
        (".gitignore", "/target\n".to_string()),
        ("plugin.toml", plugin_toml(name, &module)),
        ("src/lib.rs", lib_rs(name, &ty)),
        ("README.md", readme(name, &module, sdk.is_none())),
    ];
    if sdk.is_none() {
        files.push(("sdk/Cargo.toml", SDK_CARGO_TOML.to_string()));
        files.push(("sdk/src/lib.rs", SDK_LIB_RS.to_string()));
        files.push(("wit/plugin.wit", WIT.to_string()));
    }
    for (path, text) in &files {
        let file = root.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| CliError::caused(parent.display().to_string(), e))?;
        }
        std::fs::write(&file, text).map_err(|e| CliError::caused(file.display().to_string(), e))?;
    }
    Ok(format!(
        "created {}\nnext: cd {} && cargo build --release --target wasm32-wasip2\n      \
         (once: rustup target add wasm32-wasip2)",
        root.display(),
        root.display()
    ))
}

fn cargo_toml(name: &str, sdk: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
description = "A pmoflow step plugin"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
pmoflow-plugin-sdk = {{ path = "{sdk}" }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

[profile.release]
opt-level = "s"
debug = false
# Drop DWARF but keep the name section: small, with readable backtraces in the step log.
strip = "debuginfo"

# A workspace of its own, wherever it is created; `sdk/` (pmoflow's plugin SDK, written by
# `pmoflow plugin new`) inherits its package settings from here.
[workspace]

[workspace.package]
edition = "2024"
license = "Apache-2.0"
"#
    )
}

fn plugin_toml(name: &str, module: &str) -> String {
    format!(
        r#"name = "{name}"
version = "0.1.0"
description = "A pmoflow step plugin"
component = "target/wasm32-wasip2/release/{module}.wasm"
# Every capability the component imports must be listed here, and granted in pmoflow.toml
# ([plugins.{name}]) if it is more than log and clock.
capabilities = ["log"]
"#
    )
}

fn lib_rs(name: &str, ty: &str) -> String {
    format!(
        r##"//! `{name}`: a pmoflow step plugin. `with = {{ name = "…" }}` in a workflow step becomes
//! the `Input` below; the returned `Output` is the step output.

use pmoflow_plugin_sdk::{{Context, Descriptor, Guest, Level, StepError, export_plugin, log}};
use serde::{{Deserialize, Serialize}};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {{
    name: String,
}}

#[derive(Serialize)]
struct Output {{
    greeting: String,
}}

struct {ty};

impl Guest for {ty} {{
    fn describe() -> Descriptor {{
        Descriptor {{
            name: "{name}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "A pmoflow step plugin".into(),
            input_schema: r#"{{"type":"object","required":["name"],"additionalProperties":false,"properties":{{"name":{{"type":"string"}}}}}}"#.into(),
            output_schema: r#"{{"type":"object","properties":{{"greeting":{{"type":"string"}}}}}}"#.into(),
            capabilities: vec!["log".into()],
        }}
    }}

    fn run(ctx: Context, input: String) -> Result<String, StepError> {{
        let input: Input = serde_json::from_str(&input)
            .map_err(|e| StepError::InvalidInput(e.to_string()))?;
        log(Level::Info, &format!("run {{}} step {{}}", ctx.run_id, ctx.step_key));
        let output = Output {{
            greeting: format!("こんにちは、{{}}さん", input.name),
        }};
        serde_json::to_string(&output).map_err(|e| StepError::Internal(e.to_string()))
    }}
}}

export_plugin!({ty});
"##
    )
}

fn readme(name: &str, module: &str, vendored: bool) -> String {
    let sdk = if vendored {
        "`sdk/` is pmoflow's plugin SDK and `wit/plugin.wit` the interface, as served by the\n\
         `pmoflow` binary that created this project (`pmoflow:plugin@0.1.0`); plugins built\n\
         against them keep working with later pmoflow releases. Components in other languages\n\
         use `wit/` directly.\n\n"
    } else {
        ""
    };
    format!(
        "# {name}\n\nA pmoflow step plugin.\n\n```sh\nrustup target add wasm32-wasip2   # once\n\
         cargo build --release --target wasm32-wasip2\n\
         pmoflow plugin inspect target/wasm32-wasip2/release/{module}.wasm\n\
         pmoflow plugin run target/wasm32-wasip2/release/{module}.wasm --input '{{\"name\": \"山田\"}}'\n```\n\n\
         {sdk}Install it by copying `plugin.toml` and the built component into a directory of the\n\
         daemon's `plugins_dir` (keep `component` pointing at the `.wasm` file), then grant it\n\
         what it needs beyond `log` and `clock` under `[plugins.{name}]` in `pmoflow.toml`.\n"
    )
}
