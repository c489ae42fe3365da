//! A real `redis-server` (Debian's `redis-server` package) for tests: on a
//! free 127.0.0.1 port, no persistence, killed with the test, restartable on
//! the same port.

use crate::service::{free_port, Service};

/// One Redis server.
pub struct Redis {
    /// The process; `stop`, `kill` and `restart` it for fault tests.
    pub service: Service,
}

impl Redis {
    /// Starts a server of the test's own.
    pub fn start() -> Redis {
        let port = free_port();
        let args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]
        .map(String::from)
        .to_vec();
        Redis {
            service: Service::start("redis-server", "redis-server", args, port),
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        format!("redis://127.0.0.1:{}", self.service.port)
    }
}
