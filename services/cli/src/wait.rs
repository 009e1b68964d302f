//! Follows one operation to its end: a progress bar per phase from the event stream, and a
//! periodic `get` so a missed event never leaves the CLI waiting forever.
use crate::{Ctx, Exit, Output, query};
use anyhow::Result;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use ksctl_core::OperationId;
use ksctl_core::messages::{ClusterSummary, Event, EventKind, NameQuery, QueryVerb};
use std::io::IsTerminal;
use std::time::Duration;

pub async fn follow(
    ctx: &Ctx,
    name: &str,
    op: &OperationId,
    mut events: async_nats::Subscriber,
    timeout: Duration,
) -> Result<()> {
    let tty = std::io::stderr().is_terminal() && ctx.output == Output::Table;
    let style = ProgressStyle::with_template("{spinner} {prefix:>16} [{bar:30}] {pos}/{len} {wide_msg}")
        .expect("static template")
        .progress_chars("=> ");
    let mut bar: Option<ProgressBar> = None;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut poll = tokio::time::interval(Duration::from_secs(5));
    poll.tick().await;
    loop {
        let ev = tokio::select! {
            m = events.next() => match m {
                Some(m) => serde_json::from_slice::<Event>(&m.payload).ok(),
                None => None,
            },
            _ = poll.tick() => {
                if let Some(done) = finished_by_poll(ctx, name, op).await? {
                    if let Some(b) = bar.take() { b.finish(); }
                    return done;
                }
                None
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Exit(1, format!("gave up waiting after {}s; the operation goes on (ksctl cluster get {name})", timeout.as_secs())).into());
            }
        };
        let Some(ev) = ev else { continue };
        if ev.op_id.as_ref() != Some(op) {
            continue;
        }
        if ctx.output == Output::Json {
            println!("{}", serde_json::to_string(&ev)?);
        }
        match ev.kind {
            EventKind::PhaseStarted => {
                if let Some(b) = bar.take() {
                    b.finish();
                }
                let phase = ev.phase.map(|p| p.to_string()).unwrap_or_default();
                if tty {
                    let b = ProgressBar::new(0).with_style(style.clone()).with_prefix(phase);
                    b.enable_steady_tick(Duration::from_millis(120));
                    bar = Some(b);
                } else if ctx.output == Output::Table {
                    eprintln!("==> {phase}: {}", ev.message);
                }
            }
            EventKind::Progress => match &bar {
                Some(b) => {
                    b.set_length(ev.total.unwrap_or(0) as u64);
                    b.set_position(ev.done.unwrap_or(0) as u64);
                    b.set_message(ev.step.clone().unwrap_or_default());
                }
                None if ctx.output == Output::Table => eprintln!("    {}", ev.message),
                None => {}
            },
            EventKind::Retrying | EventKind::PhaseFailed if ctx.output == Output::Table => match &bar {
                Some(b) => b.println(format!("    ! {}", ev.message)),
                None => eprintln!("    ! {}", ev.message),
            },
            EventKind::OperationSucceeded => {
                if let Some(b) = bar.take() {
                    b.finish();
                }
                if ctx.output == Output::Table {
                    println!("{}", ev.message);
                }
                return Ok(());
            }
            EventKind::OperationFailed => {
                if let Some(b) = bar.take() {
                    b.abandon();
                }
                return Err(Exit(1, ev.message).into());
            }
            _ => {}
        }
    }
}

/// `Some(outcome)` once the manager no longer has `op` under way.
async fn finished_by_poll(ctx: &Ctx, name: &str, op: &OperationId) -> Result<Option<Result<()>>> {
    match query::<_, ClusterSummary>(&ctx.client, QueryVerb::Get, &NameQuery { cluster_name: name.into() }).await {
        Ok(s) if s.operation.as_ref().is_some_and(|o| &o.id == op) => Ok(None),
        Ok(s) if s.state.ends_with("_failed") => {
            Ok(Some(Err(
                Exit(1, format!("operation failed: {}", s.last_error.unwrap_or_else(|| s.state.clone()))).into()
            )))
        }
        Ok(s) => {
            println!("cluster {name} is {}", s.state);
            Ok(Some(Ok(())))
        }
        // Deleted clusters are gone from the store.
        Err(e) if e.to_string().starts_with("no cluster named") => {
            println!("cluster {name} deleted");
            Ok(Some(Ok(())))
        }
        Err(_) => Ok(None),
    }
}
