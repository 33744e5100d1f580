//! What the metrics (`crate::metrics`) need from the loop: the oldest-pending marker, noted at
//! each capture poll, and the connection flag the endpoint's thread reads. Neither touches the
//! application's write path: the marker is read from the journal by primary-key range and
//! written to state.db only when a table's oldest pending entry changed.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::{unix_ms, Daemon, DaemonError};
use crate::capture::journal::oldest_pending_seq;
use crate::capture::CaptureError;
use crate::metrics::marker;

impl Daemon {
    /// Notes, per rows table, its oldest entry after the acknowledged cursor
    /// ([`marker::plan`]); commits only a change, without an fsync (a lost marker only restarts
    /// the age).
    pub(super) fn observe_pending(&mut self) -> Result<(), DaemonError> {
        let acked = self.state.acked_cursors()?;
        let mut oldest = BTreeMap::new();
        for table in self.capture.catalog().rows.keys() {
            let after = acked.get(table).copied().unwrap_or(0);
            let seq = oldest_pending_seq(self.capture.conn(), table, after)
                .map_err(CaptureError::from)?;
            oldest.insert(table.clone(), seq);
        }
        let changes = marker::plan(&marker::list(&self.state)?, &oldest, unix_ms());
        if changes.is_empty() {
            return Ok(());
        }
        self.relaxed_state_transaction(|d| Ok(marker::apply(&d.state, &changes)?))
    }

    pub(super) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }
}
