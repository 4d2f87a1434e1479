//! Running the commands the developer tasks are made of: inherited output, and a failure that
//! names the command line and its exit status.

use std::path::Path;
use std::process::Command;

/// Runs a command with inherited output; a non-zero exit becomes an error with the exit status.
pub fn run_status(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} exited with {status}", render(cmd)))
    }
}

/// Whether a command runs and exits 0, with its output discarded (for presence checks).
pub fn quiet_success(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Run a command that prints one JSON object as its last stdout line (a `--json` benchmark),
/// showing the command on stderr under `tag`; that object.
pub fn json_of(tag: &str, cmd: &mut Command) -> Result<serde_json::Value, String> {
    let shown = format!("{cmd:?}");
    eprintln!("{tag}: {shown}");
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("{shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{shown} exited with {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().rev().find(|l| l.trim_start().starts_with('{'));
    last.and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("{shown}: no JSON object in its output"))
}

/// The command line, with the program's directory left out (cargo's is a long toolchain path).
fn render(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    let program = program.file_name().unwrap_or(program.as_os_str());
    let mut words = vec![program.to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_status_reports_the_failing_command() {
        let err = run_status(Command::new("false").arg("x")).unwrap_err();
        assert_eq!(err, "false x exited with exit status: 1");
        let err = run_status(Command::new("/bin/sh").args(["-c", "exit 3"])).unwrap_err();
        assert_eq!(err, "sh -c exit 3 exited with exit status: 3");
        assert!(run_status(&mut Command::new("true")).is_ok());
        assert!(run_status(&mut Command::new("/nonexistent/xtask-cmd"))
            .unwrap_err()
            .starts_with("cannot start"));
    }

    #[test]
    fn quiet_success_distinguishes_exit_codes() {
        assert!(quiet_success(&mut Command::new("true")));
        assert!(!quiet_success(&mut Command::new("false")));
        assert!(!quiet_success(&mut Command::new("/nonexistent/xtask-cmd")));
    }
}
