//! Stream slots: how many streams this instance holds open, in all and
//! per recipient, so that neither one recipient (or a leaked token) nor a
//! crowd can open connections without bound. Each stream holds a
//! connection, and so a file descriptor: the instance's cap keeps streams
//! from taking the last of them, which the database pool, the LISTEN
//! session and every other request also need ([`max_streams_for`]).
//!
//! It must never refuse silently: a full recipient or instance is told so,
//! and the HTTP side answers 429 or 503.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Open streams, in all and per recipient. Cheap to clone: every clone is
/// the same count.
#[derive(Clone, Default)]
pub struct StreamSlots {
    open: Arc<Mutex<Open>>,
}

#[derive(Default)]
struct Open {
    by_recipient: HashMap<String, usize>,
    total: usize,
}

/// One open stream's place in [`StreamSlots`]; dropping it frees the place.
pub struct Slot {
    slots: StreamSlots,
    recipient: String,
}

/// Why a stream gets no place.
#[derive(Debug, thiserror::Error)]
pub enum Full {
    /// The recipient already holds as many streams as allowed: its own
    /// doing, and it stays so until one of them ends.
    #[error("this recipient already has {open} open streams here, the most allowed")]
    Recipient { open: usize },
    /// The instance already serves as many streams as allowed: another
    /// instance may have room, and this one will as streams end.
    #[error(
        "this instance already serves {open} streams, the most it allows (--max-streams); \
         retry later, or at another instance"
    )]
    Instance { open: usize },
}

/// How many streams may be open at once; 0 means no limit.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_recipient: usize,
    pub instance: usize,
}

impl StreamSlots {
    /// A place for one more stream of `recipient`, unless the recipient or
    /// the instance is at its limit. The recipient's limit is checked
    /// first: it is the one the client can do something about.
    pub fn take(&self, recipient: &str, limits: Limits) -> Result<Slot, Full> {
        let mut open = self.lock();
        let total = open.total;
        let count = open.by_recipient.entry(recipient.to_owned()).or_default();
        if limits.per_recipient > 0 && *count >= limits.per_recipient {
            return Err(Full::Recipient { open: *count });
        }
        if limits.instance > 0 && total >= limits.instance {
            if *count == 0 {
                open.by_recipient.remove(recipient);
            }
            return Err(Full::Instance { open: total });
        }
        *count += 1;
        open.total += 1;
        Ok(Slot {
            slots: self.clone(),
            recipient: recipient.to_owned(),
        })
    }

    /// Plain counts that no panic can leave half-updated, so a poisoned
    /// lock is still safe to use.
    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.by_recipient.get_mut(&self.recipient) {
            *count -= 1;
            if *count == 0 {
                open.by_recipient.remove(&self.recipient);
            }
        }
    }
}

/// Descriptors the process holds besides its connections: standard input,
/// output and error, the listening socket, the runtime's epoll and wake-up
/// descriptors, the embedded cluster's watchdog pipe and log, and what
/// libraries open now and then (TLS roots, DNS). Generous on purpose:
/// running out is the failure the cap exists to prevent.
const OWN_FILES: u64 = 64;

/// The default `--max-streams` for a process allowed `open_files`
/// descriptors (its soft `RLIMIT_NOFILE`) with a database pool of
/// `pool_size`: from the limit come the pool's connections, the LISTEN
/// connection and [`OWN_FILES`]; of the rest, a sixteenth stays for
/// requests that are not streams (inbox, read marks, publishing, audit,
/// probes, and keep-alive connections idling between them), and streams
/// get the other fifteen. 1024 files and a pool of 16 give
/// (1024 - 16 - 1 - 64) * 15/16 = 885 streams; 20,000 give 18,675, above
/// the 18,000 that BENCHMARKS.md's capacity run holds at that limit.
/// Never less than 1; 0 (no limit) when the descriptors are unlimited.
pub fn max_streams_for(open_files: u64, pool_size: u32) -> usize {
    if open_files == nix::sys::resource::RLIM_INFINITY {
        return 0;
    }
    let rest = open_files.saturating_sub(u64::from(pool_size) + 1 + OWN_FILES);
    let streams = rest - rest / 16;
    usize::try_from(streams.max(1)).unwrap_or(usize::MAX)
}

/// Raises the soft limit on open files to the hard one, as a server that
/// holds a connection per client should (Go's runtime does the same): a
/// shell's soft limit is often 1,024 while the hard one, which only an
/// administrator sets, allows far more. Returns the soft limit now in
/// force; a refusal leaves it as it was.
pub fn raise_open_files_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}
