//! Building and starting the real `mist` binary.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::TIMEOUT;

/// Where the built artifacts are.
pub struct Artifacts {
    /// `target/<profile>`.
    pub dir: PathBuf,
}

impl Artifacts {
    /// The `mist` binary.
    pub fn mist(&self) -> PathBuf {
        self.dir.join("mist")
    }

    /// The shared library of crate `lib_name` (`mist_tcp` → `libmist_tcp.so`).
    pub fn library(&self, lib_name: &str) -> PathBuf {
        self.dir.join(format!(
            "{}{lib_name}{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        ))
    }
}

/// Builds the binary and every plugin library of the workspace once per
/// test run, with the same profile as the tests, so tests never run against
/// stale artifacts.
pub fn artifacts() -> &'static Artifacts {
    static BUILT: OnceLock<Artifacts> = OnceLock::new();
    BUILT.get_or_init(|| {
        // .../target/<profile>/deps/e2e-<hash>
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
        let target = dir.parent().unwrap();
        let profile = dir.file_name().unwrap().to_str().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        // `--examples` (the workspace has none) makes cargo resolve features
        // as `cargo test` does, dev-dependencies' included: this build then
        // reuses the test build's dependencies instead of compiling tokio
        // and everything on it a second time (minutes on a small machine).
        build
            .args(["build", "--workspace", "--lib", "--bins", "--examples"])
            .arg("--target-dir")
            .arg(target);
        // Cargo gave this test process the test package's CARGO_PKG_NAME,
        // CARGO_MANIFEST_DIR and the like; build scripts that rerun when
        // those change (ring's) would then rebuild here, and again in the
        // next `cargo test`, every time.
        for (name, _) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| name.starts_with(p))
                || matches!(name, "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR")
            {
                build.env_remove(name);
            }
        }
        if profile == "release" {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(status.success(), "cargo build of the test artifacts failed");
        Artifacts { dir }
    })
}

/// A running `mist --server`, killed when dropped.
pub struct MistServer {
    child: Child,
    log: Arc<(Mutex<Log>, Condvar)>,
    /// `scheme://addr` of every listener, as the server logged them.
    pub listeners: Vec<String>,
}

#[derive(Default)]
struct Log {
    lines: Vec<String>,
    closed: bool,
}

impl MistServer {
    /// Starts `mist --server` with `args` and waits until it logs
    /// `listeners` listening lines. Panics with the log if it exits first.
    pub fn start_with(args: &[&str], listeners: usize) -> MistServer {
        Self::start_with_env(args, listeners, &[])
    }

    /// As [`MistServer::start_with`], with `env` added to its environment.
    pub fn start_with_env(args: &[&str], listeners: usize, env: &[(&str, &str)]) -> MistServer {
        Self::started(Self::spawn(args, env, None), listeners)
    }

    /// As [`MistServer::start_with_env`], run in the working directory `dir`.
    pub fn start_in(
        dir: &Path,
        args: &[&str],
        listeners: usize,
        env: &[(&str, &str)],
    ) -> MistServer {
        Self::started(Self::spawn(args, env, Some(dir)), listeners)
    }

    /// As [`MistServer::start_with`], under an open-files limit of
    /// `nofile` (soft and hard, set by the shell that execs mist: the
    /// process, and so [`MistServer::pid`], is mist's).
    pub fn start_with_fd_limit(args: &[&str], listeners: usize, nofile: u64) -> MistServer {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"ulimit -n "$0" && exec "$@""#)
            .arg(nofile.to_string())
            .arg(artifacts().mist());
        Self::started(Self::spawn_command(command, args, &[], None), listeners)
    }

    /// `server`, once it logs `listeners` listening lines.
    fn started(mut server: MistServer, listeners: usize) -> MistServer {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let found = server
                .log_lines()
                .iter()
                .filter_map(|l| listening(l))
                .collect::<Vec<_>>();
            if found.len() >= listeners {
                server.listeners = found;
                return server;
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("mist exited ({status}) before listening:\n{}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "mist did not start listening in time:\n{}",
                server.log()
            );
            server.wait_for_log_change(Duration::from_millis(100));
        }
    }

    /// Starts `mist --server --listeners tcp://127.0.0.1:0` plus `args`.
    pub fn start(args: &[&str]) -> MistServer {
        let mut all = vec!["--listeners", "tcp://127.0.0.1:0"];
        all.extend_from_slice(args);
        Self::start_with(&all, 1)
    }

    /// Runs `mist --server` with `args` and expects it to exit on its own
    /// (a start-up error); returns its status and log.
    pub fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
        Self::run_to_exit_with_env(args, &[])
    }

    /// As [`MistServer::run_to_exit`], with `env` added to its environment.
    pub fn run_to_exit_with_env(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
        let mut server = Self::spawn(args, env, None);
        let status = server.wait_exit();
        (status, server.log())
    }

    /// As [`MistServer::run_to_exit`], run in the working directory `dir`.
    pub fn run_to_exit_in(dir: &Path, args: &[&str]) -> (ExitStatus, String) {
        let mut server = Self::spawn(args, &[], Some(dir));
        let status = server.wait_exit();
        (status, server.log())
    }

    fn spawn(args: &[&str], env: &[(&str, &str)], dir: Option<&Path>) -> MistServer {
        Self::spawn_command(Command::new(artifacts().mist()), args, env, dir)
    }

    /// Runs `command` (mist, or what execs it) with `--server` and `args`.
    fn spawn_command(
        mut command: Command,
        args: &[&str],
        env: &[(&str, &str)],
        dir: Option<&Path>,
    ) -> MistServer {
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        command
            .arg("--server")
            .args(args)
            // Only what a test gives: never a token from the developer's shell.
            .env_remove("MIST_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("starting mist");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new((Mutex::new(Log::default()), Condvar::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.0.lock().unwrap().lines.push(line);
                sink.1.notify_all();
            }
            sink.0.lock().unwrap().closed = true;
            sink.1.notify_all();
        });
        MistServer {
            child,
            log,
            listeners: Vec::new(),
        }
    }

    /// The address (`host:port`) of the first listener of `scheme`.
    pub fn addr(&self, scheme: &str) -> String {
        let prefix = format!("{scheme}://");
        self.listeners
            .iter()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {scheme} listener in {:?}", self.listeners))
            .to_string()
    }

    /// The TCP listener's address.
    pub fn tcp(&self) -> String {
        self.addr("tcp")
    }

    fn log_lines(&self) -> Vec<String> {
        self.log.0.lock().unwrap().lines.clone()
    }

    /// Everything the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log_lines().join("\n")
    }

    fn wait_for_log_change(&self, at_most: Duration) {
        let (lock, changed) = &*self.log;
        let guard = lock.lock().unwrap();
        let seen = guard.lines.len();
        let _ = changed
            .wait_timeout_while(guard, at_most, |log| log.lines.len() == seen && !log.closed)
            .unwrap();
    }

    /// Waits until a log line contains `needle`; panics with the log after
    /// the timeout.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(line) = self.log_lines().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}:\n{}",
                self.log()
            );
            self.wait_for_log_change(Duration::from_millis(100));
        }
    }

    /// Waits for the process to exit (bounded) and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread collect the last lines.
                let (lock, closed) = &*self.log;
                let guard = lock.lock().unwrap();
                let _ = closed
                    .wait_timeout_while(guard, TIMEOUT, |log| !log.closed)
                    .unwrap();
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mist did not exit in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    ///
    /// Waits first until the process catches SIGTERM: mist installs its
    /// handler only after its listeners are up, and on a busy machine a
    /// signal sent right after the last "listening on" line can arrive
    /// before that and kill it outright.
    pub fn terminate(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        while !self.catches_sigterm() {
            assert!(
                Instant::now() < deadline,
                "mist never installed its SIGTERM handler:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        self.wait_exit()
    }

    /// Whether the process has a handler for SIGTERM (Linux: `SigCgt` in
    /// `/proc/PID/status`, a mask whose bit 14 is signal 15).
    fn catches_sigterm(&self) -> bool {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << 14) != 0)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for MistServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listening(line: &str) -> Option<String> {
    line.split_once("listening on ")
        .map(|(_, uri)| uri.trim().to_string())
}
