//! A real PostgreSQL server for tests, started from Debian's `postgresql`
//! package: `initdb` into a temporary directory, `postgres` on a free port,
//! password authentication, run as the `postgres` user when the tests run
//! as root (PostgreSQL refuses to run as root).
//!
//! The server runs under a small `sh` supervisor that reads its stdin: when
//! the test process ends for any reason, the pipe closes and the supervisor
//! stops PostgreSQL, so no server outlives the tests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The role the tests connect as, and its password.
pub const USER: &str = "mist";
pub const PASSWORD: &str = "mist-test-pw";

/// PostgreSQL needs a while to start on a loaded two-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One PostgreSQL server.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    /// The temporary directory; the cluster is in `root/data`.
    root: PathBuf,
    /// Removes `root` when dropped (owned servers only).
    _cleanup: Option<tempfile::TempDir>,
    /// The shared server's supervisor also removes `root` when it stops.
    remove_on_exit: bool,
    supervisor: Mutex<Option<Child>>,
}

/// The server every test that only needs a database shares; each test gets
/// its own database with [`Postgres::database`].
pub fn shared() -> &'static Postgres {
    static SHARED: OnceLock<Postgres> = OnceLock::new();
    SHARED.get_or_init(|| Postgres::start_new(true))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// The newest installed PostgreSQL's `bin` directory.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .expect("PostgreSQL is not installed: scripts/test installs Debian's postgresql package")
}

/// `program` run as the `postgres` user when we are root.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Postgres {
    /// A server of the test's own, for tests that stop and start it.
    pub fn start_owned() -> Postgres {
        Self::start_new(false)
    }

    fn start_new(shared: bool) -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("mist-pg-")
            .tempdir()
            .expect("a temporary directory");
        let root = dir.path().to_owned();
        std::fs::write(root.join("pwfile"), PASSWORD).unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&root)
                .status()
                .unwrap();
            assert!(status.success(), "chown of the PostgreSQL directory");
        }
        let output = as_owner(&bin.join("initdb"))
            .arg("-D")
            .arg(root.join("data"))
            .args([
                "-U",
                USER,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", root.join("pwfile").display()))
            .output()
            .expect("running initdb");
        assert!(
            output.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let (cleanup, root) = if shared {
            // Never dropped: the supervisor removes the directory instead.
            (None, dir.keep())
        } else {
            (Some(dir), root)
        };
        let server = Postgres {
            port: free_port(),
            bin,
            root,
            _cleanup: cleanup,
            remove_on_exit: shared,
            supervisor: Mutex::new(None),
        };
        server.start();
        server
    }

    /// `postgres://mist:…@127.0.0.1:PORT?db=NAME`.
    pub fn uri(&self, database: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}?db={database}",
            self.port
        )
    }

    /// Creates a fresh database with a unique name, and returns its URI.
    pub fn database(&self) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "mist_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        self.psql(&format!("CREATE DATABASE {name}"));
        self.uri(&name)
    }

    /// Runs one SQL statement in the `postgres` database.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// Runs one SQL statement in `database` (a name, or a URI of
    /// [`Postgres::database`]); what it prints, one row a line.
    pub fn psql_in(&self, database: &str, sql: &str) -> String {
        let database = database
            .rsplit_once("?db=")
            .map_or(database, |(_, name)| name);
        let output = Command::new(self.bin.join("psql"))
            .env("PGPASSWORD", PASSWORD)
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                USER,
                "-d",
                database,
                "-tA",
                "-c",
                sql,
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .output()
            .expect("running psql");
        assert!(
            output.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start(&self) {
        let mut supervisor = self.supervisor.lock().unwrap();
        assert!(supervisor.is_none(), "PostgreSQL is already running");
        let data = self.root.join("data");
        let remove = if self.remove_on_exit {
            format!("; rm -rf '{}'", self.root.display())
        } else {
            String::new()
        };
        // Fast shutdown (SIGINT) when stdin closes: at `stop`, or when the
        // test process ends.
        let script = format!(
            "'{postgres}' -D '{data}' -p {port} -k '{data}' -c listen_addresses=127.0.0.1 \
             -c fsync=off -c full_page_writes=off >>'{root}/log' 2>&1 & pid=$!; \
             read _; kill -INT $pid; wait $pid{remove}",
            postgres = self.bin.join("postgres").display(),
            data = data.display(),
            port = self.port,
            root = self.root.display(),
        );
        let child = as_owner(Path::new("/bin/sh"))
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting PostgreSQL");
        *supervisor = Some(child);
        drop(supervisor);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown) and waits until it is gone.
    pub fn stop(&self) {
        let mut child = self
            .supervisor
            .lock()
            .unwrap()
            .take()
            .expect("PostgreSQL is not running");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "PostgreSQL did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.supervisor.lock().map(|s| s.is_some()).unwrap_or(false) {
            self.stop();
        }
    }
}
