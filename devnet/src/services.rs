//! The provider's side: the `x402-node` gateway and watcher, run in this process (through
//! [`x402_node::gateway::run`] and [`x402_node::watcher::run`], the code the binary runs) or as
//! `x402-node` processes, plus the gateway configuration a devnet node uses.

use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use alloy::{
    primitives::{Address, U256},
    signers::local::PrivateKeySigner,
};
use tokio::{sync::oneshot, task::JoinHandle};
use x402_node::{
    config::{Config, RouteConfig},
    watcher::WatcherConfig,
};
use x402_protocol::watch::{CHANNELS_PATH, WatchedChannel};

use crate::{ADMIN_TOKEN, Error, PRICE, Result};

/// How a gateway or a watcher runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Runner {
    /// As a task of this process: the library code the `x402-node` binary runs.
    InProcess,
    /// As a process of the `x402-node` binary at this path (`x402-node run --config …`,
    /// `x402-node watch …`).
    Binary(PathBuf),
}

/// A gateway or watcher that is running.
enum Running {
    Task { stop: Option<oneshot::Sender<()>>, task: Option<JoinHandle<eyre::Result<()>>> },
    Process(Process),
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Task { .. } => f.write_str("Task"),
            Self::Process(p) => f.debug_tuple("Process").field(&p.pid()).finish(),
        }
    }
}

impl Running {
    /// Runs `serve` (given the future that tells it to stop) as a task.
    fn task<F>(serve: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> F) -> Self
    where
        F: Future<Output = eyre::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(Box::pin(async move {
            // A dropped sender (the handle dropped without `stop`) stops it too.
            let _ = stopped.await;
        })));
        Self::Task { stop: Some(stop), task: Some(task) }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Self::Task { .. } => None,
            Self::Process(p) => Some(p.pid()),
        }
    }

    /// Why it is no longer running, if it is not.
    async fn exited(&mut self) -> Option<String> {
        match self {
            Self::Task { task, .. } => {
                if !task.as_ref().is_some_and(JoinHandle::is_finished) {
                    return None;
                }
                let outcome = task.take()?.await;
                Some(match outcome {
                    Ok(Ok(())) => "stopped".into(),
                    Ok(Err(e)) => format!("failed: {e:#}"),
                    Err(e) => format!("panicked: {e}"),
                })
            }
            Self::Process(p) => p.exited(),
        }
    }

    /// Stops it and waits until it has closed its store.
    async fn stop(self, what: &'static str) -> Result<()> {
        match self {
            Self::Task { mut stop, task } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                let Some(task) = task else { return Ok(()) };
                match task.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(Error::Service { what, message: format!("failed: {e:#}") }),
                    Err(e) => Err(Error::Service { what, message: format!("panicked: {e}") }),
                }
            }
            Self::Process(p) => p.stop().await,
        }
    }
}

/// A child process, stopped (SIGTERM, then SIGKILL) when dropped. Its stdout and stderr go to a
/// log file, whose end is quoted in errors.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    pid: u32,
    what: &'static str,
    log: PathBuf,
}

impl Process {
    /// Spawns `command` (called `what` in errors), its output to the file `log`. Environment
    /// variables starting with `X402_` are not passed on, so that the caller's environment
    /// cannot override the child's configuration.
    pub fn spawn(what: &'static str, mut command: Command, log: &Path) -> Result<Self> {
        let file = std::fs::File::create(log).map_err(Error::io(log))?;
        let err = file.try_clone().map_err(Error::io(log))?;
        command.stdin(Stdio::null()).stdout(file).stderr(err);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("X402_") {
                command.env_remove(key);
            }
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs in the child between fork and exec and only makes one
            // async-signal-safe system call. It asks the kernel to send SIGTERM to the child when
            // the thread that spawned it exits, so that a killed parent leaves no process behind.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .spawn()
            .map_err(|e| Error::Service { what, message: format!("cannot start {:?}: {e}", command) })?;
        Ok(Self { pid: child.id(), child: Some(child), what, log: log.to_path_buf() })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Why it is no longer running, if it is not.
    fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(format!("exited ({status}); the end of its log:\n{}", self.log_tail(20)))
    }

    /// Sends SIGTERM (a graceful shutdown: the node closes its store) and waits up to 10 s for
    /// it to exit, then kills it. An exit other than success is an error.
    pub async fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        terminate(self.pid);
        for _ in 0..200 {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    let message = format!("exited ({status}); the end of its log:\n{}", self.log_tail(20));
                    return Err(Error::Service { what: self.what, message });
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => return Err(Error::Service { what: self.what, message: e.to_string() }),
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(Error::Service { what: self.what, message: "did not stop within 10 s of SIGTERM; killed".into() })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        terminate(self.pid);
        for _ in 0..60 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Sends SIGTERM to `pid`.
fn terminate(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a child of this process
        // that has not been waited for, so the id cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// Polls `check` every 50 ms until it holds, for at most `secs` seconds.
pub async fn wait_for<F, Fut>(secs: u64, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout { secs, what: what.into() });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `url` answers `GET /healthz` for at most 30 s; fails at once if `running` stops.
async fn wait_until_serving(
    http: &reqwest::Client,
    url: &str,
    what: &'static str,
    running: &mut Running,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if http.get(format!("{url}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if let Some(why) = running.exited().await {
            return Err(Error::Service { what, message: why });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Error::Service { what, message: format!("{url}/healthz did not answer within 30 s") })
}

/// A free loopback address (free when asked; not reserved).
pub fn free_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(Error::io("127.0.0.1:0"))?;
    listener.local_addr().map_err(Error::io("127.0.0.1:0"))
}

/// Writes `key` (hex, readable by the owner only) to `dir/name`; returns the path.
pub fn write_key(dir: &Path, name: &str, key: &PrivateKeySigner) -> Result<PathBuf> {
    use std::io::Write;
    let path = dir.join(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(Error::io(&path))?;
    file.write_all(alloy::hex::encode(key.to_bytes()).as_bytes()).map_err(Error::io(&path))?;
    Ok(path)
}

/// A gateway configuration for `contract` (reached at `rpc_url`), charging [`PRICE`] in `asset`
/// on `GET /weather` (and up to [`crate::LLM_MAX_PRICE`] on `/llm`, `upto`) for `payee`, in front of `upstream` (a base URL), with its store in
/// `data_dir`: the admin API open with [`ADMIN_TOKEN`], deposits spendable at once
/// (`confirmations = 0`, right for anvil's automine), the chain polled every 100 ms, and no
/// provider key (verify only; see [`with_provider_key`]).
pub fn node_config(
    rpc_url: &str,
    contract: Address,
    asset: Address,
    payee: Address,
    upstream: &str,
    data_dir: &Path,
) -> Result<Config> {
    let mut config = Config {
        listen: free_port()?,
        upstream: upstream.into(),
        data_dir: data_dir.into(),
        ..Config::default()
    };
    config.admin_token = Some(ADMIN_TOKEN.into());
    config.chain.rpc_url = rpc_url.into();
    config.chain.contract = Some(contract);
    config.chain.confirmations = 0;
    config.chain.poll_interval_ms = 100;
    config.payment.asset = asset;
    config.provider.address = Some(payee);
    // Not X402_PROVIDER_KEY: a key in the caller's environment must not change the node.
    config.provider.key_env = "X402_DEVNET_NO_PROVIDER_KEY".into();
    config.settlement.enabled = false;
    config.routes.push(RouteConfig {
        path: "/weather".into(),
        methods: Vec::new(),
        price: U256::from(PRICE),
        pricing: Default::default(),
        description: Some("Current weather".into()),
        mime_type: Some("application/json".into()),
        replay_body: false,
        schemes: None,
    });
    // An LLM-like route whose upstream reports each request's cost (`X402-Cost`), up to the
    // maximum.
    config.routes.push(RouteConfig {
        path: "/llm".into(),
        methods: Vec::new(),
        price: U256::from(crate::LLM_MAX_PRICE),
        pricing: x402_protocol::wire::Pricing::Upto,
        description: Some("Completions, charged by the upstream's reported cost".into()),
        mime_type: Some("application/json".into()),
        replay_body: false,
        schemes: None,
    });
    Ok(config)
}

/// Gives `config` the provider's `key` (in the file `dir/provider.key`) and turns settlement on.
pub fn with_provider_key(mut config: Config, key: &PrivateKeySigner, dir: &Path) -> Result<Config> {
    config.provider.key_file = Some(write_key(dir, "provider.key", key)?);
    config.settlement.enabled = true;
    Ok(config)
}

/// The `x402-node` gateway in front of an upstream API, stopped when dropped.
#[derive(Debug)]
pub struct Gateway {
    url: String,
    config: Config,
    running: Running,
    http: reqwest::Client,
}

impl Gateway {
    /// Runs the gateway in this process ([`x402_node::gateway::run`]) and waits until it
    /// answers.
    pub async fn start(config: Config) -> Result<Self> {
        config.validate()?;
        let running = Running::task(|stop| {
            let config = config.clone();
            async move { Ok(x402_node::gateway::run(config, stop).await?) }
        });
        Self::serving(config, running).await
    }

    /// Runs `x402-node run --config dir/node.toml` from the binary `bin` (the configuration
    /// written there; the log in `dir/node.log`) and waits until it answers.
    pub async fn spawn(bin: &Path, config: Config, dir: &Path) -> Result<Self> {
        config.validate()?;
        let path = dir.join("node.toml");
        let text = toml::to_string_pretty(&config).map_err(|e| Error::Service {
            what: "gateway",
            message: format!("cannot write its config: {e}"),
        })?;
        std::fs::write(&path, text).map_err(Error::io(&path))?;
        let mut command = Command::new(bin);
        command.arg("run").arg("--config").arg(&path);
        let process = Process::spawn("gateway", command, &dir.join("node.log"))?;
        Self::serving(config, Running::Process(process)).await
    }

    /// Runs the gateway as `runner` says (`dir` holds a process's config and log).
    pub async fn run(runner: &Runner, config: Config, dir: &Path) -> Result<Self> {
        match runner {
            Runner::InProcess => Self::start(config).await,
            Runner::Binary(bin) => Self::spawn(bin, config, dir).await,
        }
    }

    async fn serving(config: Config, mut running: Running) -> Result<Self> {
        let url = format!("http://{}", config.listen);
        let http = reqwest::Client::new();
        wait_until_serving(&http, &url, "gateway", &mut running).await?;
        Ok(Self { url, config, running, http })
    }

    /// Its base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Its process id, when it runs as a process.
    pub fn pid(&self) -> Option<u32> {
        self.running.pid()
    }

    /// Stops the gateway and waits until its store is closed.
    pub async fn stop(self) -> Result<()> {
        self.running.stop("gateway").await
    }

    /// Runs a settlement round now (`POST /admin/settle[?force=true]` with the configured admin
    /// token) and returns its report (`x402_node::settle::RoundReport` as JSON).
    pub async fn settle(&self, force: bool) -> Result<serde_json::Value> {
        let what = "POST /admin/settle";
        let token = self.config.admin_token.as_deref().unwrap_or_default();
        let resp = self
            .http
            .post(format!("{}/admin/settle?force={force}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| Error::http(what, e))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.map_err(|e| Error::http(what, e))?;
        if !status.is_success() {
            return Err(Error::http(what, format!("{status}: {body}")));
        }
        Ok(body)
    }

    /// A counter or gauge from `GET /metrics` (0 if absent).
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let what = "GET /metrics";
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .map_err(|e| Error::http(what, e))?
            .text()
            .await
            .map_err(|e| Error::http(what, e))?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    }

    /// Waits (up to 20 s) until the event follower has processed block `block` as confirmed.
    pub async fn followed(&self, block: u64) -> Result<()> {
        wait_for(20, "the follower to reach the block", || async {
            self.metric("x402_follower_block").await.is_ok_and(|b| b >= block as f64)
        })
        .await
    }
}

/// A watchtower (`x402-node watch`), stopped when dropped.
#[derive(Debug)]
pub struct Watchtower {
    url: String,
    running: Running,
    http: reqwest::Client,
}

impl Watchtower {
    /// Runs a watcher paying gas from `key` in this process ([`x402_node::watcher::run`]) and
    /// waits until it answers.
    pub async fn start(config: WatcherConfig, key: PrivateKeySigner) -> Result<Self> {
        let listen = config.listen;
        let running =
            Running::task(|stop| async move { Ok(x402_node::watcher::run(config, key, stop).await?) });
        Self::serving(listen, running).await
    }

    /// Runs `x402-node watch` from the binary `bin` with `config`'s listen address, store,
    /// RPC, contract, token, poll interval (whole seconds, at least 1) and submit delay, paying
    /// gas from `key` (written to `dir/watcher.key`; the log in `dir/watcher.log`), and waits
    /// until it answers.
    pub async fn spawn(
        bin: &Path,
        config: &WatcherConfig,
        key: &PrivateKeySigner,
        dir: &Path,
    ) -> Result<Self> {
        let key_file = write_key(dir, "watcher.key", key)?;
        let mut command = Command::new(bin);
        command
            .arg("watch")
            .arg("--listen")
            .arg(config.listen.to_string())
            .arg("--data-dir")
            .arg(&config.data_dir)
            .arg("--rpc-url")
            .arg(&config.rpc_url)
            .arg("--contract")
            .arg(config.contract.to_string())
            .arg("--key-file")
            .arg(&key_file)
            .arg("--poll-interval-secs")
            .arg(config.poll_interval.as_secs().max(1).to_string())
            .arg("--submit-delay-secs")
            .arg(config.submit_delay.as_secs().to_string())
            // In the environment rather than the arguments, which `ps` shows.
            .env("X402_WATCHER_TOKEN", &config.token);
        let process = Process::spawn("watcher", command, &dir.join("watcher.log"))?;
        Self::serving(config.listen, Running::Process(process)).await
    }

    /// Runs the watcher as `runner` says (`dir` holds a process's key file and log).
    pub async fn run(
        runner: &Runner,
        config: WatcherConfig,
        key: PrivateKeySigner,
        dir: &Path,
    ) -> Result<Self> {
        match runner {
            Runner::InProcess => Self::start(config, key).await,
            Runner::Binary(bin) => Self::spawn(bin, &config, &key, dir).await,
        }
    }

    async fn serving(listen: SocketAddr, mut running: Running) -> Result<Self> {
        let url = format!("http://{listen}");
        let http = reqwest::Client::new();
        wait_until_serving(&http, &url, "watcher", &mut running).await?;
        Ok(Self { url, running, http })
    }

    /// Its base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its process id, when it runs as a process.
    pub fn pid(&self) -> Option<u32> {
        self.running.pid()
    }

    /// The channels it watches (`GET /v1/channels` with the bearer `token`).
    pub async fn channels(&self, token: &str) -> Result<Vec<WatchedChannel>> {
        let what = "GET /v1/channels";
        let resp = self
            .http
            .get(format!("{}{CHANNELS_PATH}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| Error::http(what, e))?;
        if !resp.status().is_success() {
            return Err(Error::http(what, resp.status()));
        }
        resp.json().await.map_err(|e| Error::http(what, e))
    }

    /// Stops the watcher and waits until its store is closed.
    pub async fn stop(self) -> Result<()> {
        self.running.stop("watcher").await
    }
}
