//! A software TPM (swtpm) on loopback, for development nodes, tests and benchmarks: what
//! `--attestation tpm` talks to when the machine has no TPM. Started as a child process on a free
//! pair of ports (data on `port`, control on `port + 1`, as the swtpm TCTI expects) and killed
//! on drop. Its state lives in a directory the caller owns, so a restarted swtpm keeps its keys.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long swtpm gets to open its port.
pub const SWTPM_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts to find two consecutive free loopback ports.
const PORT_PAIR_ATTEMPTS_MAX: usize = 100;

/// Why swtpm did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwtpmError {
    /// The `swtpm` binary could not be run.
    #[error(
        "cannot run `swtpm` ({0}); install the Debian packages swtpm swtpm-tools libtss2-dev \
         libtss2-tcti-swtpm0 (scripts/test.sh installs them)"
    )]
    Spawn(std::io::Error),
    /// swtpm exited while starting.
    #[error("swtpm exited at start: {0}")]
    Exited(ExitStatus),
    /// swtpm did not open its port in time.
    #[error("swtpm did not open port {0} within {SWTPM_START_TIMEOUT:?}")]
    Timeout(u16),
    /// No two consecutive loopback ports were free.
    #[error("no free pair of loopback ports")]
    NoPorts,
}

/// A running swtpm, killed on drop.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    port: u16,
}

impl Swtpm {
    /// Starts swtpm (TPM 2.0, `startup-clear`) with its state in `state_dir`, and waits until it
    /// accepts connections.
    ///
    /// # Errors
    /// [`SwtpmError`].
    pub fn start(state_dir: &Path) -> Result<Self, SwtpmError> {
        let port = free_port_pair()?;
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state_dir.display()))
            .args(["--server", &format!("type=tcp,port={port}")])
            .args(["--ctrl", &format!("type=tcp,port={}", port + 1)])
            .args(["--flags", "startup-clear"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(SwtpmError::Spawn)?;
        let mut swtpm = Self { child, port };
        let deadline = Instant::now() + SWTPM_START_TIMEOUT;
        // Bounded by the deadline.
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = swtpm.child.try_wait() {
                return Err(SwtpmError::Exited(status));
            }
            if Instant::now() > deadline {
                return Err(SwtpmError::Timeout(port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(swtpm)
    }

    /// The data port (control is `port + 1`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TCTI string that reaches it (`--tpm-tcti`).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Stops swtpm now (its state directory stays).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port_pair() -> Result<u16, SwtpmError> {
    for _ in 0..PORT_PAIR_ATTEMPTS_MAX {
        let Ok(first) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(address) = first.local_addr() else {
            continue;
        };
        let port = address.port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(SwtpmError::NoPorts)
}
