//! The signals the documents name, taken once, at the start of `serve`, in every mode.
//!
//! The README, the Dockerfile, the systemd unit (`ExecReload=/bin/kill -HUP $MAINPID`) and the
//! Heroku launcher promise: SIGHUP re-reads the mapping (the file, or the active version in the
//! database) and never ends the process; SIGTERM and SIGINT drain. A signal whose handler is not
//! installed takes its default action, which for all three is to end the process at once, so
//! every handler is installed here, before the gateway loads anything, and stays for the life of
//! the process; whoever acts on a signal reads it from [`Signals`], whatever the mode and
//! whatever stage start-up has reached (a gateway still waiting for its first mapping version
//! re-reads on SIGHUP and stops cleanly on SIGTERM).

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// The process's signals, as watch channels: a SIGHUP counter and a latched stop request.
#[derive(Clone)]
pub struct Signals {
    hangups: watch::Receiver<u64>,
    stop: watch::Receiver<Option<&'static str>>,
}

impl Signals {
    /// Installs the SIGHUP, SIGTERM and SIGINT handlers (replacing their default actions at
    /// once) and spawns the task that reports them. Must be called inside a tokio runtime, which
    /// must live as long as the process.
    pub fn install() -> std::io::Result<Signals> {
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (hup_tx, hangups) = watch::channel(0u64);
        let (stop_tx, stop) = watch::channel(None);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = hup.recv() => {
                        hup_tx.send_modify(|n| *n += 1);
                    }
                    Some(()) = term.recv() => {
                        stop_tx.send_if_modified(|s| s.replace(s.unwrap_or("SIGTERM")).is_none());
                    }
                    Some(()) = int.recv() => {
                        stop_tx.send_if_modified(|s| s.replace(s.unwrap_or("SIGINT")).is_none());
                    }
                    else => break,
                }
            }
        });
        Ok(Signals { hangups, stop })
    }

    /// SIGHUPs: `changed()` resolves on each one received after this receiver last looked.
    pub fn hangups(&self) -> watch::Receiver<u64> {
        let mut rx = self.hangups.clone();
        rx.mark_unchanged();
        rx
    }

    /// Resolves once SIGTERM or SIGINT has been received (at once if one already was), with the
    /// signal's name.
    pub async fn stopped(&self) -> &'static str {
        let mut rx = self.stop.clone();
        let got = rx.wait_for(Option::is_some).await.map(|s| *s);
        match got {
            Ok(s) => s.expect("waited for Some"),
            // The reporting task ended (its runtime is shutting down): nothing more will come.
            Err(_) => std::future::pending().await,
        }
    }

    /// Whether SIGTERM or SIGINT has been received.
    pub fn stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }
}
