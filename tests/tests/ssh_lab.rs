//! The SSH client against real sshd hosts of the lab (network namespaces with their own root):
//! commands with stdin and exit status, sudo, host keys recorded and verified, and the errors a
//! user must be able to tell apart — refused key, no sudo, unreachable host, changed host key,
//! a command that hangs.
use ksctl_ssh::{SshError, Target, connect, connect_with_retry, parse_key};
use ksctl_tests::lab::Lab;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn target(lab: &Lab, i: usize, user: &str) -> Target {
    Target { host: lab.hosts[i].ip.clone(), port: 22, user: user.into() }
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_sudo_host_keys_and_errors_on_real_sshd() {
    let lab = Lab::start(2);
    let key = parse_key(&lab.key_pem).unwrap();

    let s = connect(&target(&lab, 0, "ubuntu"), &key, None, T).await.unwrap();
    assert!(s.host_key.starts_with("ssh-ed25519 "), "{}", s.host_key);
    let out = s.run("hostname", "hostname", None, T).await.unwrap();
    assert_eq!(out.stdout.trim(), "vm0");
    let out = s
        .run("stdin", "sudo -n tee /root/fed >/dev/null && sudo -n cat /root/fed", Some(b"secret\n"), T)
        .await
        .unwrap();
    assert_eq!(out.stdout, "secret\n");
    assert_eq!(lab.read(0, "/root/fed").as_deref(), Some("secret\n"), "written on vm0's own filesystem");
    assert!(lab.read(1, "/root/fed").is_none(), "vm1 has its own filesystem");
    let err = s.run("fail", "echo out; echo boom >&2; exit 3", None, T).await.unwrap_err();
    assert!(
        matches!(err, SshError::Failed { status: 3, .. }) && err.to_string().contains("fail: exit status 3: boom"),
        "{err}"
    );
    let err = s.exec("hang", "sleep 5", None, Duration::from_millis(500)).await.unwrap_err();
    assert!(matches!(err, SshError::Timeout { .. }) && err.retryable(), "{err}");
    let recorded = s.host_key.clone();
    s.close().await;

    // The recorded host key is accepted again; another host's key is refused.
    connect(&target(&lab, 0, "ubuntu"), &key, Some(&recorded), T).await.unwrap().close().await;
    let err = connect(&target(&lab, 1, "ubuntu"), &key, Some(&recorded), T).await.err().unwrap();
    assert!(matches!(err, SshError::HostKeyChanged { .. }) && !err.retryable(), "{err}");

    // A user without sudo: logs in, but sudo fails with a clear message.
    let s = connect(&target(&lab, 1, "nosudo"), &key, None, T).await.unwrap();
    let err = s.run("sudo check", "sudo -n true", None, T).await.unwrap_err();
    assert!(err.to_string().contains("sudo check: exit status 1"), "{err}");

    // A key the host does not know.
    let other = ssh_key::PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519).unwrap();
    let other = parse_key(&other.to_openssh(ssh_key::LineEnding::LF).unwrap()).unwrap();
    let err = connect(&target(&lab, 0, "ubuntu"), &other, None, T).await.err().unwrap();
    assert!(matches!(err, SshError::Auth { .. }) && !err.retryable(), "{err}");

    // Cut off: connection errors are retryable, and a retry loop recovers once the host is back.
    lab.cut(1);
    let err = connect(&target(&lab, 1, "ubuntu"), &key, None, Duration::from_secs(1)).await.err().unwrap();
    assert!(matches!(err, SshError::Connect { .. }) && err.retryable(), "{err}");
    let healing = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        lab.heal(1);
    };
    let t1 = target(&lab, 1, "ubuntu");
    let (s, ()) = tokio::join!(
        connect_with_retry(&t1, &key, None, Duration::from_secs(1), ksctl_core::backoff::ssh_connect(10)),
        healing
    );
    assert_eq!(s.unwrap().run("hostname", "hostname", None, T).await.unwrap().stdout.trim(), "vm1");
}
