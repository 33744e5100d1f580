-- Re-snapshots with end markers (edge-policies §5) and stale journal epochs (reliability.md §5).
-- Owned by the `resnapshot` change of issue 13; the lead renumbers it when merging.

-- One row per snapshot a device ran under `snapshot_markers`. `state`: running (chunks
-- arriving), awaiting_replay (complete, but a chunk is still staged), swept (ghost rows
-- tombstoned), aborted (the device said so), incomplete (complete marker with a chunk missing
-- or failed: no sweep).
CREATE TABLE edge_snapshot_runs (
    snapshot_id        uuid        PRIMARY KEY,
    lineage_id         uuid        NOT NULL REFERENCES edge_table_lineages (id) ON DELETE CASCADE,
    device_id          uuid        NOT NULL REFERENCES edge_devices (device_id),
    journal_epoch      uuid        NOT NULL,
    snapshot_start_seq bigint      NOT NULL,
    state              text        NOT NULL DEFAULT 'running'
        CHECK (state IN ('running', 'awaiting_replay', 'swept', 'aborted', 'incomplete')),
    chunk_count        bigint,
    row_count          bigint,
    ghost_rows_deleted bigint      NOT NULL DEFAULT 0,
    detail             text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX edge_snapshot_runs_lineage ON edge_snapshot_runs (lineage_id, created_at);

-- What became of each chunk batch: materialized, staged (to be replayed) or failed (a row did not
-- fit the mirror).
CREATE TABLE edge_snapshot_chunks (
    snapshot_id uuid   NOT NULL REFERENCES edge_snapshot_runs (snapshot_id) ON DELETE CASCADE,
    chunk       bigint NOT NULL,
    batch_id    uuid   NOT NULL,
    first_seq   bigint NOT NULL,
    last_seq    bigint NOT NULL,
    status      text   NOT NULL CHECK (status IN ('materialized', 'staged', 'failed')),
    PRIMARY KEY (snapshot_id, chunk)
);

-- Batches whose journal epoch is older than one already recorded for their lineage (a device
-- clock behind, a restored state.db): accepted, recorded here, and an event raised.
CREATE TABLE edge_stale_epoch_batches (
    batch_id       uuid        PRIMARY KEY,
    lineage_id     uuid        NOT NULL REFERENCES edge_table_lineages (id) ON DELETE CASCADE,
    journal_epoch  uuid        NOT NULL,
    newest_epoch   uuid        NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now()
);
