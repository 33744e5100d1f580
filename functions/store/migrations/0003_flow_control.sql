-- 0003: flow control (cloud.md §7, §8): replay cursor, device pause state, control supersession.

-- The replay cursor is the full staged-row key (epoch, seq, pk_key): a primary-key change
-- travels as delete + insert sharing one commit_seq, so (epoch, seq) alone could split such a
-- pair across two chunks and skip the second half on resume.
ALTER TABLE edge_replay_intents ADD COLUMN IF NOT EXISTS cursor_pk_key text;

-- Why the *device* was told to stop publishing this table (a pause_lineage control), kept
-- apart from the lineage's own status: an approval activates the lineage while the device may
-- still be paused for volume, and only a resume_lineage control lifts that.
ALTER TABLE edge_table_lineages ADD COLUMN IF NOT EXISTS device_pause_reason text
    CHECK (device_pause_reason IN ('volume_backpressure', 'circuit_breaker'));
CREATE INDEX IF NOT EXISTS edge_table_lineages_device_paused ON edge_table_lineages (id)
    WHERE device_pause_reason IS NOT NULL OR pause_reason = 'volume_backpressure';

-- A resume makes an unacked pause for the same lineage pointless (and vice versa): the older
-- control is `superseded` and no longer re-sent.
ALTER TABLE edge_pending_controls DROP CONSTRAINT IF EXISTS edge_pending_controls_status_check;
ALTER TABLE edge_pending_controls ADD CONSTRAINT edge_pending_controls_status_check
    CHECK (status IN ('pending', 'acked', 'superseded'));
CREATE INDEX IF NOT EXISTS edge_pending_controls_lineage ON edge_pending_controls (lineage_id)
    WHERE status = 'pending';

-- Caps and the breaker threshold already live in edge_replication_policy (0001).
