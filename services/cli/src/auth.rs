//! `ksctl auth`: the bus's keys and credentials, made offline (no control plane needed). See the
//! README's "Security model" for who holds which file.
use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use ksctl_bus::auth::{self, Authority, Role};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Subcommand)]
pub enum AuthCmd {
    /// Make a new operator, its accounts and the first credentials in DIR: nats-auth.conf (the
    /// servers include it), authority.json (the k8s-controller's), services.creds,
    /// admin.creds, and operator.nk / account.nk (identity keys: keep them offline).
    Init {
        /// A new or empty directory for the files.
        #[arg(long)]
        dir: String,
        /// Where the NATS servers keep account JWTs (a directory on their persistent volume).
        #[arg(long, default_value = "/data/jwt")]
        resolver_dir: String,
    },
    /// Mint a credential (`.creds` text) from an authority file.
    User {
        /// The authority file `ksctl auth init` wrote (authority.json).
        #[arg(long, env = "KSCTL_NATS_AUTHORITY_FILE")]
        authority: String,
        /// cli: requests, queries and events; service: the controllers' and manager's rights.
        #[arg(long, value_enum)]
        role: UserRole,
        /// A name for logs and `nats server report connections`.
        #[arg(long)]
        name: String,
        /// Hours until it expires (none: valid until the operator is replaced).
        #[arg(long)]
        ttl_hours: Option<u64>,
        /// Write it here (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<String>,
    },
}

/// The roles a person mints; agent credentials are minted by the k8s-controller per cluster.
#[derive(Clone, Copy, ValueEnum)]
pub enum UserRole {
    Cli,
    Service,
}

use ksctl_bus::auth::now_secs as now;

/// Writes a new file readable by its owner only; an existing file is never replaced.
fn write_secret(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

pub fn run(cmd: &AuthCmd) -> Result<()> {
    match cmd {
        AuthCmd::Init { dir, resolver_dir } => {
            let dir = Path::new(dir);
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            if dir.join("authority.json").exists() {
                bail!("{} already holds an authority: a new one would lock every credential out", dir.display());
            }
            let now = now();
            let init = auth::init(now)?;
            let authority = serde_json::to_string_pretty(&init.authority)?;
            write_secret(&dir.join("nats-auth.conf"), &init.authority.server_config(resolver_dir, now)?, 0o644)?;
            write_secret(&dir.join("authority.json"), &authority, 0o600)?;
            write_secret(&dir.join("services.creds"), &init.services.file_text(), 0o600)?;
            write_secret(&dir.join("admin.creds"), &init.admin.file_text(), 0o600)?;
            write_secret(&dir.join("operator.nk"), &init.operator_seed, 0o600)?;
            write_secret(&dir.join("account.nk"), &init.account_seed, 0o600)?;
            eprintln!(
                "wrote nats-auth.conf, authority.json, services.creds, admin.creds, operator.nk, account.nk in {}",
                dir.display()
            );
            Ok(())
        }
        AuthCmd::User { authority, role, name, ttl_hours, out } => {
            let text = std::fs::read_to_string(authority).with_context(|| format!("reading {authority}"))?;
            let authority = Authority::from_json(&text)?;
            let now = now();
            let role = match role {
                UserRole::Cli => Role::Cli,
                UserRole::Service => Role::Service,
            };
            let creds = authority.mint(&role, name, now, ttl_hours.map(|h| now + h * 3600))?;
            match out {
                Some(path) => write_secret(Path::new(path), &creds.file_text(), 0o600),
                None => {
                    print!("{}", creds.file_text());
                    Ok(())
                }
            }
        }
    }
}
