//! SSH to a cluster's hosts, with russh. Keys come from the caller (sealed in state); a host's
//! key is recorded on first contact and must match afterwards (the caller keeps it in state);
//! connections are retried with backoff; every command has a timeout and a label, and errors name
//! the host and the label — never the command, which may carry secrets.
pub mod host;

pub use russh::keys::PrivateKey;
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, client};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
}

impl Target {
    /// The key a host's SSH key is recorded under: two hosts may share an address (port
    /// forwarding, NAT) but not an address and a port.
    pub fn host_key_id(&self) -> String {
        host_key_id(&self.host, self.port)
    }
}

/// [`Target::host_key_id`] of `host` and `port` (IPv6 addresses in brackets).
pub fn host_key_id(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// The host key recorded for `host`:`port` in `keys` (by [`host_key_id`]; records written
/// before keys were per port name the address alone, and are still honoured).
pub fn recorded_host_key<'a>(
    keys: &'a std::collections::BTreeMap<String, String>,
    host: &str,
    port: u16,
) -> Option<&'a str> {
    keys.get(&host_key_id(host, port)).or_else(|| keys.get(host)).map(String::as_str)
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.user, self.host, self.port)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{target}: cannot connect: {msg}")]
    Connect { target: String, msg: String },
    #[error("{target}: the SSH key was refused")]
    Auth { target: String },
    #[error("{target}: host key changed (recorded {expected}, offered {offered}); refusing to connect")]
    HostKeyChanged { target: String, expected: String, offered: String },
    #[error("{target}: {label}: no answer within {secs} s")]
    Timeout { target: String, label: String, secs: u64 },
    #[error("{target}: {label}: exit status {status}: {stderr}")]
    Failed { target: String, label: String, status: u32, stderr: String },
    #[error("{target}: {msg}")]
    Protocol { target: String, msg: String },
    #[error("unusable SSH private key: {0}")]
    Key(String),
    /// A host that prints without end is not answering a question ksctl asked.
    #[error("{target}: {label}: printed more than {limit} bytes on {stream}; stopped reading")]
    TooMuchOutput { target: String, label: String, stream: &'static str, limit: usize },
}

/// The most a command may print on each of stdout and stderr: the largest answer ksctl reads
/// (a kubeconfig, an image list) is far smaller, and a host cannot make the controller hold more.
pub const MAX_OUTPUT: usize = 4 << 20;

/// The label of the command that checks for passwordless sudo.
pub const SUDO_CHECK: &str = "sudo check";

impl SshError {
    /// What the user can do about it, when that is known (appended to the message).
    pub fn hint(&self) -> &'static str {
        match self {
            SshError::Failed { label, .. } if label == SUDO_CHECK => {
                " — the SSH user needs passwordless sudo (NOPASSWD in sudoers)"
            }
            SshError::Auth { .. } => " — is the key's public half in the user's authorized_keys?",
            _ => "",
        }
    }

    /// Whether trying again later can help: network trouble yes; a refused key, a changed host
    /// key or a command that failed no (the caller decides about the last one).
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Timeout { .. } | Self::Protocol { .. })
    }
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub status: u32,
    pub stdout: String,
    pub stderr: String,
}

/// `<algorithm> <base64>` of a host key, without a comment.
fn fingerprint_line(key: &PublicKeyOrCertificate) -> String {
    let line = match key {
        PublicKeyOrCertificate::PublicKey { key, .. } => key.to_openssh().unwrap_or_default(),
        PublicKeyOrCertificate::Certificate(c) => c.to_openssh().unwrap_or_default(),
    };
    line.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

struct Verifier {
    expected: Option<String>,
    offered: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let offered = fingerprint_line(key);
        let ok = self.expected.as_ref().is_none_or(|e| *e == offered);
        *self.offered.lock().expect("lock") = Some(offered);
        Ok(ok)
    }
}

/// One authenticated connection; commands run on channels of it, several at once if needed.
pub struct Session {
    handle: client::Handle<Verifier>,
    target: Target,
    /// The key the host offered (record it on first contact).
    pub host_key: String,
}

pub fn parse_key(pem: &str) -> Result<PrivateKey, SshError> {
    PrivateKey::from_openssh(pem).map_err(|e| SshError::Key(e.to_string()))
}

/// Connects once. `known_host_key`: the host key recorded earlier, if any.
pub async fn connect(
    target: &Target,
    key: &PrivateKey,
    known_host_key: Option<&str>,
    timeout: Duration,
) -> Result<Session, SshError> {
    let t = target.to_string();
    let offered = Arc::new(Mutex::new(None));
    let verifier = Verifier { expected: known_host_key.map(str::to_string), offered: offered.clone() };
    let config = Arc::new(client::Config {
        inactivity_timeout: Some(Duration::from_secs(600)),
        keepalive_interval: Some(Duration::from_secs(15)),
        ..Default::default()
    });
    let addr = (target.host.as_str(), target.port);
    // The handshake and the authentication share one deadline: a host that stalls after the
    // key exchange must not hold the caller longer than one that never answers.
    let deadline = tokio::time::Instant::now() + timeout;
    let connecting = tokio::time::timeout_at(deadline, client::connect(config, addr, verifier)).await;
    let mut handle = match connecting {
        Err(_) => return Err(SshError::Connect { target: t, msg: format!("no SSH handshake within {timeout:?}") }),
        Ok(Err(russh::Error::UnknownKey)) => {
            return Err(SshError::HostKeyChanged {
                target: t,
                expected: known_host_key.unwrap_or_default().to_string(),
                offered: offered.lock().expect("lock").clone().unwrap_or_default(),
            });
        }
        Ok(Err(e)) => return Err(SshError::Connect { target: t, msg: e.to_string() }),
        Ok(Ok(h)) => h,
    };
    let proto = |e: russh::Error| SshError::Protocol { target: target.to_string(), msg: e.to_string() };
    let authenticating = async {
        let hash = handle.best_supported_rsa_hash().await.map_err(proto)?.flatten();
        handle
            .authenticate_publickey(target.user.clone(), PrivateKeyWithHashAlg::new(Arc::new(key.clone()), hash))
            .await
            .map_err(proto)
    };
    let auth = tokio::time::timeout_at(deadline, authenticating).await.map_err(|_| SshError::Connect {
        target: t.clone(),
        msg: format!("no SSH authentication within {timeout:?}"),
    })??;
    if !auth.success() {
        return Err(SshError::Auth { target: t });
    }
    let host_key = offered.lock().expect("lock").clone().unwrap_or_default();
    Ok(Session { handle, target: target.clone(), host_key })
}

/// [`connect`], retrying connection failures (not refusals) on `policy` (ksctl's is
/// `ksctl_core::backoff::ssh_connect`).
pub async fn connect_with_retry(
    target: &Target,
    key: &PrivateKey,
    known_host_key: Option<&str>,
    timeout: Duration,
    policy: impl backon::BackoffBuilder,
) -> Result<Session, SshError> {
    use backon::Retryable;
    (|| connect(target, key, known_host_key, timeout))
        .retry(policy)
        .when(SshError::retryable)
        .notify(|e, pause| tracing::debug!(target = %target, error = %e, ?pause, "SSH connect failed; retrying"))
        .await
}

impl Session {
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Runs `cmd` (through the user's shell), feeding `stdin` if given; any exit status is Ok.
    pub async fn exec(
        &self,
        label: &str,
        cmd: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, SshError> {
        let t = self.target.to_string();
        let proto = |e: russh::Error| SshError::Protocol { target: t.clone(), msg: format!("{label}: {e}") };
        let work = async {
            let mut ch = self.handle.channel_open_session().await.map_err(proto)?;
            ch.exec(true, cmd).await.map_err(proto)?;
            if let Some(input) = stdin {
                ch.data(input).await.map_err(proto)?;
            }
            ch.eof().await.map_err(proto)?;
            let mut out = Output::default();
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            let mut status = None;
            let mut signal = None;
            let too_much = |stream| SshError::TooMuchOutput {
                target: t.clone(),
                label: label.to_string(),
                stream,
                limit: MAX_OUTPUT,
            };
            while let Some(msg) = ch.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        if stdout.len() + data.len() > MAX_OUTPUT {
                            let _ = ch.close().await;
                            return Err(too_much("stdout"));
                        }
                        stdout.extend_from_slice(&data)
                    }
                    ChannelMsg::ExtendedData { data, .. } => {
                        if stderr.len() + data.len() > MAX_OUTPUT {
                            let _ = ch.close().await;
                            return Err(too_much("stderr"));
                        }
                        stderr.extend_from_slice(&data)
                    }
                    ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                    ChannelMsg::ExitSignal { signal_name, error_message, .. } => {
                        signal = Some(format!("killed by signal {signal_name:?} {error_message}"))
                    }
                    _ => {}
                }
            }
            out.status = status.ok_or_else(|| SshError::Protocol {
                target: t.clone(),
                msg: format!(
                    "{label}: the command ended without an exit status ({}; stderr: {})",
                    signal.clone().unwrap_or_else(|| "the channel closed".into()),
                    tail(&String::from_utf8_lossy(&stderr), 3)
                ),
            })?;
            out.stdout = String::from_utf8_lossy(&stdout).into_owned();
            out.stderr = String::from_utf8_lossy(&stderr).into_owned();
            Ok(out)
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| SshError::Timeout {
            target: t.clone(),
            label: label.to_string(),
            secs: timeout.as_secs(),
        })?
    }

    /// [`Session::exec`], with a non-zero exit status as [`SshError::Failed`] carrying the last
    /// lines of stderr (or stdout).
    pub async fn run(
        &self,
        label: &str,
        cmd: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, SshError> {
        let out = self.exec(label, cmd, stdin, timeout).await?;
        if out.status == 0 {
            return Ok(out);
        }
        let text = if out.stderr.trim().is_empty() { &out.stdout } else { &out.stderr };
        Err(SshError::Failed {
            target: self.target.to_string(),
            label: label.to_string(),
            status: out.status,
            stderr: tail(text, 5),
        })
    }

    pub async fn close(self) {
        let _ = self.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    }
}

/// The last `n` non-empty lines of `s`, joined with " | ".
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_last_lines() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn only_network_trouble_is_retryable() {
        let t = || "u@h:22".to_string();
        assert!(SshError::Connect { target: t(), msg: "refused".into() }.retryable());
        assert!(!SshError::Auth { target: t() }.retryable());
        let changed = SshError::HostKeyChanged { target: t(), expected: "a".into(), offered: "b".into() };
        assert!(!changed.retryable());
        assert!(changed.to_string().contains("host key changed"));
    }
}
