//! Stream slots: how many streams each recipient holds open on this
//! instance, so one recipient (or a leaked token) cannot open connections
//! without bound. It must never refuse silently: a full recipient is told
//! so, and the HTTP side answers 429.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Open streams per recipient. Cheap to clone: every clone is the same count.
#[derive(Clone, Default)]
pub struct StreamSlots {
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open stream's place in [`StreamSlots`]; dropping it frees the place.
pub struct Slot {
    slots: StreamSlots,
    recipient: String,
}

/// The recipient already holds as many streams as allowed.
#[derive(Debug, thiserror::Error)]
#[error("this recipient already has {open} open streams here, the most allowed")]
pub struct Full {
    pub open: usize,
}

impl StreamSlots {
    /// A place for one more stream of `recipient`, unless it already holds
    /// `max` (0: no limit).
    pub fn take(&self, recipient: &str, max: usize) -> Result<Slot, Full> {
        let mut open = self.lock();
        let count = open.entry(recipient.to_owned()).or_default();
        if max > 0 && *count >= max {
            return Err(Full { open: *count });
        }
        *count += 1;
        Ok(Slot {
            slots: self.clone(),
            recipient: recipient.to_owned(),
        })
    }

    /// A plain count that no panic can leave half-updated, so a poisoned
    /// lock is still safe to use.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        if let Some(count) = open.get_mut(&self.recipient) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.recipient);
            }
        }
    }
}
