//! A server program the tests start themselves (`redis-server`,
//! `nats-server`) on a free 127.0.0.1 port, stopped with the test.
//!
//! The program runs under a small `sh` supervisor that reads its stdin: when
//! the test process ends for any reason, the pipe closes and the supervisor
//! kills the server, so no server outlives the tests. It can be stopped
//! (gracefully or with SIGKILL) and started again on the same port, for
//! tests of what happens while it is gone.

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::TIMEOUT;

/// One server process, restartable on its port.
pub struct Service {
    /// What it is, for messages (`redis-server`).
    name: &'static str,
    /// The program and its arguments, the port already in them.
    argv: Vec<String>,
    /// The port it listens on, 127.0.0.1 only.
    pub port: u16,
    /// Its log file (stdout and stderr), in `dir`.
    log: PathBuf,
    dir: tempfile::TempDir,
    supervisor: Mutex<Option<Child>>,
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Single-quotes `word` for `sh`.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

impl Service {
    /// Starts `program` with `args` (which name `port`) and waits until the
    /// port accepts connections. `program` missing is a failure that names
    /// the Debian package `scripts/test` installs.
    pub fn start(name: &'static str, program: &str, args: Vec<String>, port: u16) -> Service {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {}", quote(program))])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "{program} is not installed: scripts/test installs Debian's {name} package"
        );
        let dir = tempfile::Builder::new()
            .prefix("mist-svc-")
            .tempdir()
            .expect("a temporary directory");
        let mut argv = vec![program.to_string()];
        argv.extend(args);
        let service = Service {
            name,
            argv,
            port,
            log: dir.path().join("log"),
            dir,
            supervisor: Mutex::new(None),
        };
        service.restart();
        service
    }

    /// The directory the server may keep files in.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Starts the server (again, on the same port) and waits until it
    /// accepts connections.
    pub fn restart(&self) {
        let mut supervisor = self.supervisor.lock().unwrap();
        assert!(supervisor.is_none(), "{} is already running", self.name);
        let command: Vec<String> = self.argv.iter().map(|a| quote(a)).collect();
        // Each line read from stdin names a signal: STOP and CONT (`pause`,
        // `resume`) are sent and the next line read; TERM (`stop`) or KILL
        // (`kill`) ends it, CONT after it so that a paused server dies too.
        // End of input (the test process is gone) means TERM.
        let script = format!(
            "cd {dir}; {command} >>{log} 2>&1 & pid=$!; \
             while read sig; do kill -$sig $pid; \
             case $sig in STOP|CONT) ;; *) break;; esac; done; \
             kill -${{sig:-TERM}} $pid 2>/dev/null; kill -CONT $pid 2>/dev/null; wait $pid",
            dir = quote(&self.dir.path().display().to_string()),
            command = command.join(" "),
            log = quote(&self.log.display().to_string()),
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.name));
        *supervisor = Some(child);
        drop(supervisor);
        let deadline = Instant::now() + TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self
                .supervisor
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            assert!(
                !exited && Instant::now() < deadline,
                "{} did not start on port {}; its log:\n{}",
                self.name,
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server gracefully (SIGTERM) and waits until it is gone.
    pub fn stop(&self) {
        self.signal("TERM");
    }

    /// Freezes the server (SIGSTOP): it holds its connections and answers
    /// nothing until [`Service::resume`] (a server that cannot keep up).
    pub fn pause(&self) {
        self.tell("STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.tell("CONT");
    }

    fn tell(&self, signal: &str) {
        let mut supervisor = self.supervisor.lock().unwrap();
        let stdin = supervisor
            .as_mut()
            .and_then(|child| child.stdin.as_mut())
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        writeln!(stdin, "{signal}").expect("the supervisor reads");
        stdin.flush().expect("the supervisor reads");
    }

    /// Kills the server (SIGKILL): no goodbye to its clients.
    pub fn kill(&self) {
        self.signal("KILL");
    }

    fn signal(&self, signal: &str) {
        let mut child = self
            .supervisor
            .lock()
            .unwrap()
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        if let Some(mut stdin) = child.stdin.take() {
            let _ = writeln!(stdin, "{signal}");
        }
        let deadline = Instant::now() + TIMEOUT;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "{} did not stop", self.name);
            std::thread::sleep(Duration::from_millis(10));
        }
        // The port is free once nothing accepts on it any more.
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "{} still accepts", self.name);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.supervisor.lock().map(|s| s.is_some()).unwrap_or(false) {
            self.kill();
        }
    }
}
