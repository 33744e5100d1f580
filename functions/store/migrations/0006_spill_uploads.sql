-- Spill / snapshot uploads (protocol §7): one row per (device, batch_id) from the first
-- `url_request` to the outcome of `finalize`.
--
-- The object's lines are bare row-batch rows; the batch header they lack (journal epoch,
-- schema hash) is fixed here at the first request, from what the cloud knows of the device
-- then (or from the request itself when the device sends it), so every later grant and the
-- finalize use the same values. The segment ledger (kind `spill`) still decides dedup: this
-- table only tracks the upload.
CREATE TABLE edge_spill_uploads (
    device_id        uuid        NOT NULL REFERENCES edge_devices (device_id) ON DELETE CASCADE,
    batch_id         uuid        NOT NULL,
    source_table     text        NOT NULL,
    segment_kind     text        NOT NULL CHECK (segment_kind IN ('payload_spill', 'bootstrap_snapshot')),
    object_key       text        NOT NULL,
    journal_epoch    uuid,
    schema_hash      text,
    -- requested: asked, no grant (yet); granted: a url_grant is pending/acked;
    -- finalized: processed (the ledger row says how); failed: the last finalize could not be
    -- processed (outcome_code) and a new url_request may try again.
    status           text        NOT NULL DEFAULT 'requested'
        CHECK (status IN ('requested', 'granted', 'finalized', 'failed')),
    grants           integer     NOT NULL DEFAULT 0,
    last_control_id  uuid,
    url_expires_at   timestamptz,
    outcome_code     text,
    outcome_detail   text,
    object_bytes     bigint,
    row_count        bigint,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, batch_id)
);
CREATE INDEX edge_spill_uploads_open ON edge_spill_uploads (updated_at)
    WHERE status IN ('requested', 'granted', 'failed');
