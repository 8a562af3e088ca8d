//! The `pmoflow` program: flags, logging, config, then the library. The binary's `main` calls
//! [`main`]; the code lives here so that it is compiled once, with the rest of the library.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use super::args::{
    CalendarAction, Cli, Command, InboundAction, MailAction, OutboxAction, PluginAction,
    TokenAction,
};
use crate::cli;
use crate::clock::SystemClock;
use crate::config::{Config, EnvOverrides, LogFormat};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// The program: parses the command line, loads the config and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), &EnvOverrides::from_env()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    match &cli.command {
        Command::Validate { paths, format } => {
            return exit(cli::validate(paths, &config, *format));
        }
        Command::Schedule {
            target,
            from,
            count,
            explain,
        } => {
            return report(cli::schedule(
                &config,
                target.as_deref(),
                from.as_deref(),
                *count,
                *explain,
            ));
        }
        Command::Inbound {
            action:
                Some(InboundAction::Explain {
                    file,
                    fields,
                    reply_address,
                    form,
                    trust_authserv_id,
                    verify_dkim,
                }),
            ..
        } => {
            let mut auth = config.engine.services.replies.auth.clone();
            auth.trusted_authserv_ids
                .extend(trust_authserv_id.iter().map(|s| s.to_lowercase()));
            auth.verify_dkim = *verify_dkim;
            return report(cli::inbound_explain(
                file.as_deref(),
                fields,
                reply_address,
                form.as_deref(),
                auth,
            ));
        }
        Command::Token {
            action: TokenAction::New { name, role },
        } => {
            return report(cli::token_new(name, role));
        }
        Command::Plugin {
            action: PluginAction::New { name, dir, sdk },
        } => {
            return report(cli::plugin_new(name, dir, sdk.as_deref()).map(|m| println!("{m}")));
        }
        Command::Plugin {
            action: PluginAction::Compile { out, pool_memory },
        } => {
            return match crate::plugins::compile_to_file(*pool_memory, out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Command::Calendar { year, action } => {
            return report(match action {
                None => cli::calendar_list(&config, *year),
                Some(CalendarAction::Import { file }) => {
                    cli::calendar_import(&config, file).map(|m| println!("{m}"))
                }
            });
        }
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async_main(cli.command, config))
}

fn report(result: Result<(), cli::CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", cli::error_report(&e));
            exit(e.code)
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

async fn async_main(command: Command, config: Config) -> ExitCode {
    let result = match command {
        Command::Run => {
            init_logging(config.log_format);
            if let Ok(exe) = std::env::current_exe() {
                crate::plugins::compile_in_child(exe);
            }
            let shutdown = CancellationToken::new();
            tokio::spawn(signals(shutdown.clone()));
            return match crate::daemon::run(config, Arc::new(SystemClock), shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{}", cli::error_report(&e));
                    ExitCode::from(1)
                }
            };
        }
        Command::Inbound {
            action: None,
            file,
            queue,
        } => cli::inbound_receive(&config, file.as_deref(), queue).await,
        Command::Inbound {
            action:
                Some(InboundAction::List {
                    status,
                    limit,
                    format,
                }),
            ..
        } => cli::inbound_list(&config, status.as_deref(), limit, format).await,
        Command::Inbound {
            action: Some(InboundAction::Show { id }),
            ..
        } => cli::inbound_show(&config, &id).await,
        Command::Inbound {
            action: Some(InboundAction::Poll),
            ..
        } => cli::inbound_poll(&config).await,
        Command::Inbound {
            action: Some(InboundAction::Release { id }),
            ..
        } => cli::inbound_release(&config, &id)
            .await
            .map(|m| println!("{m}")),
        Command::Mail {
            action: MailAction::Check { send_test },
        } => {
            return match cli::mail_check(&config, send_test.as_deref()).await {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(e) => {
                    eprintln!("{}", cli::error_report(&e));
                    ExitCode::from(u8::try_from(e.code).unwrap_or(1))
                }
            };
        }
        Command::Requests {
            status,
            limit,
            format,
        } => cli::requests(&config, status.as_deref(), limit, format).await,
        Command::Validate { .. }
        | Command::Schedule { .. }
        | Command::Calendar { .. }
        | Command::Inbound { .. }
        | Command::Token { .. } => {
            return ExitCode::SUCCESS;
        }
        Command::Workflows { format } => cli::workflows(&config, format).await,
        Command::Cluster { format } => cli::cluster(&config, format).await,
        Command::Simulate {
            workflow,
            from,
            until,
            answers,
            format,
            bodies,
            portfolio,
        } => {
            cli::simulate(
                &config,
                &workflow,
                &from,
                &until,
                answers.as_deref(),
                cli::SimOutput {
                    format,
                    bodies,
                    portfolio: portfolio.as_deref(),
                },
            )
            .await
        }
        Command::Plugin { action } => match action {
            PluginAction::New { .. } | PluginAction::Compile { .. } => {
                unreachable!("handled before the runtime starts")
            }
            PluginAction::Inspect { file } => cli::plugin_inspect(&file).await,
            PluginAction::Run {
                file,
                input,
                grant,
                allow_host,
                timeout,
            } => cli::plugin_run(&file, &input, &grant, &allow_host, timeout.as_deref()).await,
        },
        Command::Outbox {
            status,
            limit,
            format,
            action,
        } => match action {
            None => cli::outbox_list(&config, status.as_deref(), limit, format).await,
            Some(OutboxAction::Retry { id }) => cli::outbox_retry(&config, &id)
                .await
                .map(|m| println!("{m}")),
        },
        Command::Trigger { workflow, input } => cli::trigger(&config, &workflow, input.as_deref())
            .await
            .map(|id| println!("{id}")),
        Command::Runs {
            workflow,
            status,
            limit,
            format,
        } => cli::runs(&config, workflow, status, limit, format).await,
        Command::Show { run_id, format } => cli::show(&config, &run_id, format).await,
        Command::Cancel { run_id } => cli::cancel(&config, &run_id).await.map(|m| println!("{m}")),
        Command::Resolve { run_id, note, by } => {
            cli::resolve(&config, &run_id, by.as_deref(), &note)
                .await
                .map(|m| println!("{m}"))
        }
    };
    report(result)
}

/// SIGINT or SIGTERM cancel the token: the daemon stops claiming work and drains.
async fn signals(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
