//! The `pmoflow` binary. The program itself — flags, logging, config, then `daemon::run` or a
//! `cli` command — is [`pmoflow::cli::app::main`]: in the library, it is compiled once with the
//! code it calls.

fn main() -> std::process::ExitCode {
    pmoflow::cli::app::main()
}
