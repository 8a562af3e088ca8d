//! The command line: its flags and subcommands (clap), parsed by [`super::app::main`].

use std::path::PathBuf;

use super::Format;
use clap::{Parser, Subcommand};

/// pmoflow: durable workflow automation for government PMOs.
#[derive(Debug, Parser)]
#[command(name = "pmoflow", version, about, propagate_version = true)]
pub(super) struct Cli {
    /// Config file (default: ./pmoflow.toml if it exists, else built-in defaults).
    #[arg(long, short, global = true, value_name = "FILE")]
    pub(super) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Run the daemon: execute runs, fire schedules, reload workflow files.
    Run,
    /// Check workflow files; exit 0 if all are valid, 1 otherwise.
    Validate {
        /// Files or directories (default: the configured workflows directory).
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Start a run of a workflow; prints the run id. A running daemon picks it up.
    Trigger {
        /// Workflow id.
        workflow: String,
        /// Inputs as a JSON object, overriding the workflow's defaults.
        #[arg(long, value_name = "JSON")]
        input: Option<String>,
    },
    /// List runs, newest first.
    Runs {
        /// Only runs of this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// Only runs with this status (pending, running, waiting, succeeded, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show one run: status and step timeline with times, attempts and errors.
    Show {
        /// Run id.
        run_id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Cancel a run (at once if idle, at the next step boundary if executing).
    Cancel {
        /// Run id.
        run_id: String,
    },
    /// Run a workflow on a simulated clock with a simulated mailbox and print the timeline:
    /// every fire, email, webhook, reminder and escalation. Nothing is sent; a throw-away
    /// database is used. `--answers` scripts what people do (see docs/simulate.md).
    Simulate {
        /// Workflow id (in the workflows directory), or a workflow file.
        workflow: String,
        /// Start: a date (its 00:00), a local time `2027-04-01 09:00`, or RFC 3339.
        #[arg(long)]
        from: String,
        /// End: a date (its 23:59:59), a local time, or RFC 3339.
        #[arg(long)]
        until: String,
        /// Scenario file: who answers when and what, triggers, resolutions, plugin results.
        #[arg(long)]
        answers: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Print each email's body (text format).
        #[arg(long)]
        bodies: bool,
        /// Write the portfolio the simulation recorded to this .xlsx file.
        #[arg(long, value_name = "FILE.xlsx")]
        portfolio: Option<PathBuf>,
    },
    /// Resolve a run's open escalation (`escalate` step): the chain stops and the 最終報 goes out.
    Resolve {
        /// Run id.
        run_id: String,
        /// What was done (goes into the 最終報).
        #[arg(long, default_value = "")]
        note: String,
        /// Who resolved it (default: cli:$USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Print the next fire times of a workflow, one RFC 3339 timestamp per line.
    Schedule {
        /// Workflow id, or a workflow file (default: every workflow).
        target: Option<String>,
        /// Start after this instant (RFC 3339; default: now).
        #[arg(long, value_name = "RFC3339")]
        from: Option<String>,
        /// How many fires.
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Say why a fire was moved (closed day, DST).
        #[arg(long)]
        explain: bool,
    },
    /// List the government closed days (national holidays, year-end closure, ministry days).
    Calendar {
        /// Year (default: this year).
        #[arg(long)]
        year: Option<i32>,
        #[command(subcommand)]
        action: Option<CalendarAction>,
    },
    /// List outgoing messages (emails, webhooks): pending, sent, dead.
    Outbox {
        /// Only this status (pending, sent, dead).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(subcommand)]
        action: Option<OutboxAction>,
    },
    /// Incoming mail. `explain` shows how pmoflow reads one message: its kind (reply,
    /// auto-reply, bounce), the keys that correlate it to a request, the new text and the fields.
    ///
    /// Without a subcommand: receive one message from standard input (or FILE), as an MTA
    /// delivering by pipe does (`| pmoflow inbound`); it is stored, then processed at once
    /// (or by the running daemon with `--queue`). Exit 0 once stored.
    #[command(args_conflicts_with_subcommands = true)]
    Inbound {
        #[command(subcommand)]
        action: Option<InboundAction>,
        /// The message (`.eml`); standard input if omitted or `-`.
        file: Option<PathBuf>,
        /// Only store the message; a running daemon processes it.
        #[arg(long)]
        queue: bool,
    },
    /// The mail connection: `check` logs in to IMAP and SMTP (with OAuth2 tokens where
    /// configured) and says what works.
    Mail {
        #[command(subcommand)]
        action: MailAction,
    },
    /// API tokens for `[[http.tokens]]`.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// List requests (who was asked what, who has answered), newest first.
    Requests {
        /// Only this status (open, answered, bounced, closed).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Develop WebAssembly plugins: inspect or run a component outside any workflow.
    Plugin {
        #[command(subcommand)]
        action: PluginAction,
    },
    /// The daemons sharing the database: instance, label, version, state, heartbeat age, runs
    /// and singleton roles held, and warnings (mixed versions, a lost daemon holding runs).
    Cluster {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List the workflows: version, next fire, last run, and invalid files.
    Workflows {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum MailAction {
    /// Get a token from each `[oauth2.*]` source in use, log in to IMAP (examine the mailbox,
    /// print its counts) and to SMTP (EHLO + AUTH), print what worked; exit 0 if all did, 1 if
    /// not. Sends nothing unless `--send-test`.
    Check {
        /// Also send a short test message to this address.
        #[arg(long, value_name = "ADDRESS")]
        send_test: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum InboundAction {
    /// Parse one message (a file, or standard input) and print what pmoflow reads in it, as JSON.
    Explain {
        /// The message (`.eml`); standard input if omitted or `-`.
        file: Option<PathBuf>,
        /// The fields a request asked for, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "総合評価,進捗,経費,リスク,課題"
        )]
        fields: Vec<String>,
        /// The reply-address pattern of requests.
        #[arg(long, default_value = "pmo+{token}@example.go.jp")]
        reply_address: String,
        /// The request's 様式 (a template `.xlsx`): read the attached workbooks with it, the
        /// fields found by its defined names, and merge them as a reply's would be.
        #[arg(long, value_name = "TEMPLATE")]
        form: Option<PathBuf>,
        /// Trust the `Authentication-Results` of this server too (besides `[replies]
        /// trusted_authserv_ids`); repeatable.
        #[arg(long, value_name = "AUTHSERV_ID")]
        trust_authserv_id: Vec<String>,
        /// Also verify DKIM signatures (DNS lookups, `[replies] dns_servers`), as the daemon does
        /// for a reply matched by subject tag only.
        #[arg(long)]
        verify_dkim: bool,
    },
    /// List received messages, newest first: what each was taken for, or why it is held.
    List {
        /// Only this status (pending, done, quarantined).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show one received message: its headers, outcome and the raw text.
    Show {
        /// Message id (from `pmoflow inbound list`).
        id: String,
    },
    /// Poll the configured IMAP mailbox once and process what arrived (checks `[imap]`).
    Poll,
    /// Take a reply held for its sender's confirmation as confirmed, and process it now.
    Release {
        /// Message id (from `pmoflow inbound list --status held`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum PluginAction {
    /// Create a plugin crate (Rust, the pmoflow SDK) that builds for wasm32-wasip2.
    New {
        /// The plugin name (lower case, digits, `-`).
        name: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Use this SDK directory (e.g. `plugins/sdk` of pmoflow's sources) instead of writing the
        /// SDK this binary carries into the project.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Compile a component read from standard input (the daemon runs this in a child
    /// process when a plugin is not in its cache yet).
    #[command(hide = true)]
    Compile {
        /// Where to write the compiled code.
        #[arg(long)]
        out: PathBuf,
        /// The pooling allocator's slot size the daemon's engine uses (none: on demand).
        #[arg(long)]
        pool_memory: Option<usize>,
    },
    /// Print a component's descriptor and imports (exit 1 if the host would refuse it).
    Inspect {
        /// The component (`.wasm`).
        file: PathBuf,
    },
    /// Run a component once with a JSON input; prints its output.
    Run {
        /// The component (`.wasm`).
        file: PathBuf,
        /// The input, as the `with` table of a step would be.
        #[arg(long, value_name = "JSON", default_value = "{}")]
        input: String,
        /// Grant a capability beyond `log` and `clock` (`kv`, `http`, `tls`, `whois`); repeat
        /// for several. `kv` lives for this one run.
        #[arg(long, value_name = "CAPABILITY")]
        grant: Vec<String>,
        /// A host the network capabilities may reach, as in `allow_hosts`; repeatable.
        #[arg(long, value_name = "HOST")]
        allow_host: Vec<String>,
        /// Wall-time limit (default 5s).
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum TokenAction {
    /// Make a new random token; prints it once, with the `[[http.tokens]]` entry (its argon2
    /// hash) to put in pmoflow.toml.
    New {
        /// Who or what will use it (e.g. `mta`, `monitoring`).
        #[arg(long)]
        name: String,
        /// viewer, operator or admin.
        #[arg(long, default_value = "operator")]
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum OutboxAction {
    /// Queue a dead message again (attempts reset).
    Retry {
        /// Message id (from `pmoflow outbox`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum CalendarAction {
    /// Import the Cabinet Office's syukujitsu.csv (Shift_JIS); it overrides the computed
    /// holidays for the years it covers.
    Import {
        /// The CSV file.
        file: PathBuf,
    },
}
