//! The `x402-node` binary as a child process: started with a clean environment, its stdout and
//! stderr appended to files (so that nothing blocks on a full pipe and every line of every run
//! can be read afterwards), killed with SIGKILL.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

/// A command running the binary with no `X402_*` variable inherited from the environment.
pub(crate) fn node_command() -> Command {
    let mut cmd = Command::new(x402_e2e::node_binary());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("X402_") {
            cmd.env_remove(name);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

/// One run of the binary; its output goes to `<dir>/<name>.stdout` and `.stderr`.
#[derive(Debug)]
pub(crate) struct NodeProcess {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl NodeProcess {
    /// Spawns `cmd`, appending its output to the files of `name` in `dir`.
    pub(crate) fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Self {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let open = |path: &Path| {
            std::fs::OpenOptions::new().create(true).append(true).open(path).expect("opens a log file")
        };
        cmd.stdin(Stdio::null()).stdout(open(&stdout)).stderr(open(&stderr));
        let child = cmd.spawn().expect("spawns x402-node");
        Self { child, stdout, stderr }
    }

    /// Waits until `GET {url}/healthz` answers, for at most 20 s; panics with the output if the
    /// process exits first.
    pub(crate) async fn wait_serving(&mut self, url: &str) {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
        for _ in 0..400 {
            if client.get(format!("{url}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("x402-node exited with {status} before serving:\n{}", self.stderr_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("x402-node did not serve {url} within 20 s:\n{}", self.stderr_text());
    }

    /// Kills the process with SIGKILL and reaps it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything the process (and earlier runs with the same name) wrote to stderr.
    pub(crate) fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Everything written to stdout and stderr.
    pub(crate) fn output(&self) -> String {
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        format!("{out}{}", self.stderr_text())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
