//! `backstop`: one executable for every driver action and for the command line.
//!
//! - Run through a shim or symlink at `remotes/datastore/<mad>/<action>`,
//!   `remotes/tm/<tm>/<action>` or `remotes/datastore/<scheme>_downloader`, it runs that action
//!   with oned's argv, stdin and output discipline (exit 0 or 1, one stdout line, one stderr
//!   failure line).
//! - Run as `backstop ...`, it is the command line (`backstop --help`).
//!
//! A panic is never the answer to input: it is caught and reported as one error line.

mod backupjob_cli;
mod cli;
mod install;
mod repo_cli;
mod repo_copy;
mod run;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let _ = backstop_protocol::output::write_failure(
            &mut std::io::stderr().lock(),
            &run::current_action(),
            &format!(
                "internal error: {payload}{place} (this is a bug in backstop; please report it)"
            ),
        );
    }));
    let args: Vec<OsString> = std::env::args_os().collect();
    std::panic::catch_unwind(|| entry(args)).unwrap_or(ExitCode::FAILURE)
}

fn entry(args: Vec<OsString>) -> ExitCode {
    let argv0 = args.first().cloned().unwrap_or_default();
    let called_as = Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if called_as.starts_with("backstop") && !called_as.ends_with("_downloader") {
        return cli::main(args);
    }
    // Called through a symlink named after the action.
    match run::utf8_args(&args[1.min(args.len())..]) {
        Ok(rest) => run::run_path(Path::new(&argv0), &rest),
        Err(e) => run::fail(&called_as, &e),
    }
}
