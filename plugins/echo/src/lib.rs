//! `echo`: returns its input, with a greeting logged. The scaffold and the guide start here.

use pmoflow_plugin_sdk::{
    Context, Descriptor, Guest, Level, StepError, export_plugin, log, parse_input,
};

struct Echo;

impl Guest for Echo {
    fn describe() -> Descriptor {
        Descriptor {
            name: "echo".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Returns its input".into(),
            input_schema: r#"{"type":"object"}"#.into(),
            output_schema: r#"{"type":"object"}"#.into(),
            capabilities: vec!["log".into()],
        }
    }

    fn run(ctx: Context, input: String) -> Result<String, StepError> {
        let value = parse_input(&input)?;
        log(
            Level::Info,
            &format!("echo for run {} step {}", ctx.run_id, ctx.step_key),
        );
        Ok(serde_json::json!({ "echo": value, "attempt": ctx.attempt }).to_string())
    }
}

export_plugin!(Echo);
