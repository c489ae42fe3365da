//! A real `nats-server` (Debian's `nats-server` package) for tests: on a
//! free 127.0.0.1 port, killed with the test, restartable on the same port.

use crate::service::{free_port, Service};

/// One NATS server.
pub struct Nats {
    /// The process; `stop`, `kill` and `restart` it for fault tests.
    pub service: Service,
}

impl Nats {
    /// Starts a server of the test's own.
    pub fn start() -> Nats {
        let port = free_port();
        let args = ["-a", "127.0.0.1", "-p", &port.to_string()]
            .map(String::from)
            .to_vec();
        Nats {
            service: Service::start("nats-server", program(), args, port),
        }
    }

    /// `n` servers joined into one NATS cluster (each routes to every
    /// other), each on free client and cluster ports, each restartable on
    /// its ports. The routes form in the background: a test makes sure of
    /// them by a message that crosses.
    pub fn cluster(n: usize) -> Vec<Nats> {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        (0..n)
            .map(|i| {
                let port = free_port();
                let others: Vec<String> = routes
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                    .collect();
                let args = [
                    "-a".to_string(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                    "--cluster_name".into(),
                    "mist-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", routes[i]),
                    "--routes".into(),
                    others.join(","),
                ]
                .to_vec();
                Nats {
                    service: Service::start("nats-server", program(), args, port),
                }
            })
            .collect()
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        format!("nats://127.0.0.1:{}", self.service.port)
    }
}

/// Debian installs it in /usr/sbin, which a non-root PATH may lack.
fn program() -> &'static str {
    const SBIN: &str = "/usr/sbin/nats-server";
    if std::path::Path::new(SBIN).exists() {
        SBIN
    } else {
        "nats-server"
    }
}
