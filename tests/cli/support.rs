//! Runs the `x402` binary as a process with a clean environment, and checks that no secret
//! it was given ever shows up in what it printed.

use std::{fmt, path::Path, process::Command};

use alloy::{
    primitives::{Address, B256},
    signers::local::PrivateKeySigner,
};
use serde_json::Value;
use tempfile::TempDir;
use x402_e2e::harness::Env;

/// One finished run.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "x402 {}\n--- exit code {} ---\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

impl Run {
    /// Asserts exit code 0.
    #[track_caller]
    pub fn success(self) -> Self {
        assert_eq!(self.code, 0, "expected success:\n{self}");
        self
    }

    /// Asserts the exit code and an `error: …` on stderr containing `message`.
    #[track_caller]
    pub fn failure(self, code: i32, message: &str) -> Self {
        assert_eq!(self.code, code, "expected exit code {code}:\n{self}");
        let error = self
            .stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("no `error:` line:\n{self}"));
        assert!(error.contains(message), "expected {message:?} in the error:\n{self}");
        self
    }

    /// stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }
}

/// The `x402` binary with a state directory, a home and an environment of its own.
#[derive(Debug)]
pub struct Cli {
    pub state: TempDir,
    pub home: TempDir,
    env: Vec<(String, String)>,
    secrets: Vec<String>,
    /// Appended to every run's arguments.
    extra: Vec<String>,
}

impl Cli {
    /// Pointed at `env`'s anvil, without a key.
    pub fn new(env: &Env) -> Self {
        Self::with_rpc(&env.anvil.endpoint())
    }

    /// Pointed at `rpc`, without a key.
    pub fn with_rpc(rpc: &str) -> Self {
        let state = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let mut cli = Self { env: Vec::new(), secrets: Vec::new(), extra: Vec::new(), home, state };
        cli.set("HOME", &cli.home.path().display().to_string());
        cli.set("X402_STATE_DIR", &cli.state.path().display().to_string());
        cli.set("X402_RPC_URL", rpc);
        cli
    }

    /// Pays with `key`, given in `X402_PRIVATE_KEY`.
    pub fn key(mut self, key: &PrivateKeySigner) -> Self {
        self.set_secret("X402_PRIVATE_KEY", &format!("0x{}", alloy::hex::encode(key.to_bytes())));
        self
    }

    /// Gives the state directory as the `--state-dir` flag (after the subcommand, as a
    /// global flag may be) instead of `X402_STATE_DIR`.
    pub fn state_dir_flag(mut self) -> Self {
        self.unset("X402_STATE_DIR");
        self.extra = vec!["--state-dir".into(), self.state.path().display().to_string()];
        self
    }

    /// Sets an environment variable.
    pub fn set(&mut self, name: &str, value: &str) {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.into(), value.into()));
    }

    /// Removes an environment variable.
    pub fn unset(&mut self, name: &str) {
        self.env.retain(|(n, _)| n != name);
    }

    /// Sets an environment variable holding a secret: no run may print it.
    pub fn set_secret(&mut self, name: &str, value: &str) {
        self.set(name, value);
        self.secret(value);
    }

    /// Registers a secret (and, for a hex key, its digits without `0x`).
    pub fn secret(&mut self, value: &str) {
        self.secrets.push(value.to_owned());
        if let Some(digits) = value.strip_prefix("0x") {
            self.secrets.push(digits.to_owned());
        }
    }

    /// Runs `x402 args…` and checks that no secret was printed.
    pub async fn run(&self, args: &[&str]) -> Run {
        let args: Vec<String> =
            args.iter().map(|a| (*a).to_owned()).chain(self.extra.iter().cloned()).collect();
        let env = self.env.clone();
        let argv = args.clone();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(x402_e2e::cli_binary()).env_clear().envs(env).args(argv).output()
        })
        .await
        .unwrap()
        .expect("x402 runs");
        let run = Run {
            args,
            code: output.status.code().expect("exited, not killed"),
            stdout: String::from_utf8(output.stdout).expect("UTF-8 stdout"),
            stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
        };
        for secret in &self.secrets {
            let lower = secret.to_lowercase();
            for (stream, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
                assert!(!text.to_lowercase().contains(&lower), "a secret was printed on {stream}:\n{run}");
            }
        }
        run
    }
}

/// A channel id from JSON.
#[track_caller]
pub fn id(value: &Value) -> B256 {
    value.as_str().expect("a channel id string").parse().expect("a channel id")
}

/// An address from JSON.
#[track_caller]
pub fn address(value: &Value) -> Address {
    value.as_str().expect("an address string").parse().expect("an address")
}

/// The cells of the table row of channel `id` in `x402 channels` output.
#[track_caller]
pub fn row(table: &str, id: B256) -> Vec<String> {
    let line = table
        .lines()
        .find(|l| l.starts_with(&id.to_string()))
        .unwrap_or_else(|| panic!("no row for {id} in:\n{table}"));
    line.split_whitespace().map(str::to_owned).collect()
}

/// Writes `contents` to `name` in `dir`.
pub fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}
