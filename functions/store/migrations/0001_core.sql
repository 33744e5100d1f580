-- 0001: the cloud's governance, ledger, staging and telemetry tables on plain PostgreSQL.
--
-- Every table works without TimescaleDB. The time-series tables carry their time column in
-- their unique keys from the start (derived deterministically from UUIDv7 ids or event
-- timestamps), so migration 0002 can turn them into hypertables without changing any key.

-- Device registry: the session identity (device name = MQTT client id = certificate CN) is the
-- only thing a device presents; everything else is resolved here.
CREATE TABLE edge_devices (
    device_id       uuid        PRIMARY KEY,
    device_name     text        NOT NULL UNIQUE,
    org_id          uuid        NOT NULL,
    project_id      uuid        NOT NULL,
    fleet_id        uuid        NOT NULL,
    topic_slug      text        NOT NULL DEFAULT '',
    -- HMAC-SHA256 key for signed controls (protocol §6); never leaves the cloud except to
    -- provisioning.
    control_key     bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX edge_devices_project ON edge_devices (project_id);

-- Project policy (cloud.md §3, §7, §9). A project without a row uses the column defaults,
-- which are the production defaults.
CREATE TABLE edge_replication_policy (
    project_id                            uuid        PRIMARY KEY,
    org_id                                uuid        NOT NULL,
    allow_additive_continue               boolean     NOT NULL DEFAULT false,
    allow_auto_create_device_data_points  boolean     NOT NULL DEFAULT false,
    max_pending_rows_per_lineage          bigint      NOT NULL DEFAULT 100000,
    max_pending_bytes_per_lineage         bigint      NOT NULL DEFAULT 1073741824,
    resume_threshold_percent              integer     NOT NULL DEFAULT 80
        CHECK (resume_threshold_percent BETWEEN 1 AND 100),
    circuit_breaker_failures              integer     NOT NULL DEFAULT 5,
    schema_coalescing_mode                text        NOT NULL DEFAULT 'none'
        CHECK (schema_coalescing_mode IN ('none', 'project', 'fleet')),
    updated_at                            timestamptz NOT NULL DEFAULT now()
);

-- One row per (device, source_table).
CREATE TABLE edge_table_lineages (
    id                              uuid        PRIMARY KEY,
    org_id                          uuid        NOT NULL,
    project_id                      uuid        NOT NULL,
    fleet_id                        uuid        NOT NULL,
    device_id                       uuid        NOT NULL REFERENCES edge_devices (device_id),
    source_table                    text        NOT NULL,
    kind                            text        NOT NULL DEFAULT 'rows'
        CHECK (kind IN ('rows', 'telemetry')),
    status                          text        NOT NULL DEFAULT 'paused'
        CHECK (status IN ('active', 'paused')),
    pause_reason                    text
        CHECK (pause_reason IN ('schema_review', 'volume_backpressure', 'circuit_breaker')),
    current_schema_hash             text,
    approved_schema_hash            text,
    mirror_table_name               text,
    staged_row_count                bigint      NOT NULL DEFAULT 0,
    staged_bytes                    bigint      NOT NULL DEFAULT 0,
    materialization_failure_count   integer     NOT NULL DEFAULT 0,
    materialization_last_error      text,
    -- Telemetry sequencing (protocol §4): the highest accepted batch_seq.
    last_batch_seq                  bigint,
    last_batch_id                   uuid,
    created_at                      timestamptz NOT NULL DEFAULT now(),
    updated_at                      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_id, source_table)
);
CREATE INDEX edge_table_lineages_project ON edge_table_lineages (project_id, status);

-- Per-epoch high watermark of a lineage: the last accepted commit_seq in each journal epoch
-- (the `server_watermark` of pause/resume controls).
CREATE TABLE edge_lineage_watermarks (
    lineage_id      uuid        NOT NULL REFERENCES edge_table_lineages (id) ON DELETE CASCADE,
    journal_epoch   uuid        NOT NULL,
    high_seq        bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (lineage_id, journal_epoch)
);

-- Segment ledger (cloud.md §2). `batch_time` is the UUIDv7 timestamp of batch_id (or, for
-- an id that is not a UUIDv7, a time derived from it deterministically) so the dedup key stays
-- unique when the table is a hypertable partitioned on it.
CREATE TABLE edge_export_segments (
    device_id       uuid        NOT NULL,
    batch_id        uuid        NOT NULL,
    batch_time      timestamptz NOT NULL,
    -- What the device sent when it was not a usable UUID (the ledger id is then derived from
    -- the payload's hash, so the same bad bytes are recorded once).
    raw_batch_id    text,
    received_at     timestamptz NOT NULL,
    -- The session identity. An `unknown_device` rejection has no registry entry: its
    -- device_id is the nil UUID and the tenant ids are NULL.
    device_name     text        NOT NULL,
    org_id          uuid,
    project_id      uuid,
    fleet_id        uuid,
    lineage_id      uuid,
    source_table    text,
    kind            text        NOT NULL CHECK (kind IN ('rows', 'telemetry', 'spill')),
    journal_epoch   uuid,
    first_seq       bigint,
    last_seq        bigint,
    schema_hash     text,
    row_count       integer     NOT NULL DEFAULT 0,
    bytes           bigint      NOT NULL DEFAULT 0,
    status          text        NOT NULL
        CHECK (status IN ('accepted', 'staged', 'materialized', 'rejected', 'duplicate')),
    rejection_code  text,
    rejection_detail text,
    -- Forbidden tenant fields the ingress stripped from this payload (protocol §2).
    stripped_tenant_fields integer NOT NULL DEFAULT 0,
    classification  text,
    materialized_rows integer   NOT NULL DEFAULT 0,
    staged_rows     integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, batch_id, batch_time)
);
CREATE INDEX edge_export_segments_lineage ON edge_export_segments (lineage_id, batch_time);
-- Telemetry sequencing asks "was this batch_seq already accepted for the lineage?".
CREATE INDEX edge_export_segments_telemetry_seq ON edge_export_segments (lineage_id, first_seq)
    WHERE kind = 'telemetry' AND status <> 'rejected';
CREATE INDEX edge_export_segments_rejected ON edge_export_segments (rejection_code)
    WHERE rejection_code IS NOT NULL;

-- Every schema hash seen per lineage (cloud.md §3).
CREATE TABLE edge_schema_versions (
    lineage_id      uuid        NOT NULL REFERENCES edge_table_lineages (id) ON DELETE CASCADE,
    schema_hash     text        NOT NULL,
    columns         jsonb,
    classification  text        NOT NULL
        CHECK (classification IN ('compatible_mapped', 'compatible_additive', 'ambiguous',
                                  'breaking', 'unknown')),
    diff            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    first_seen      timestamptz NOT NULL DEFAULT now(),
    last_seen       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (lineage_id, schema_hash)
);

-- Schema reviews (cloud.md §5); the workflow endpoints come with the governance issue.
CREATE TABLE edge_schema_reviews (
    id              uuid        PRIMARY KEY,
    lineage_id      uuid        NOT NULL REFERENCES edge_table_lineages (id) ON DELETE CASCADE,
    schema_hash     text        NOT NULL,
    classification  text        NOT NULL,
    diff            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    state           text        NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'in_review', 'approved', 'rejected', 'abandoned')),
    claimed_by      text,
    action_version  integer     NOT NULL DEFAULT 1,
    decided_by      text,
    decided_at      timestamptz,
    reason          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- At most one open review per (lineage, hash): redelivery and concurrent workers converge.
CREATE UNIQUE INDEX edge_schema_reviews_open
    ON edge_schema_reviews (lineage_id, schema_hash) WHERE state IN ('queued', 'in_review');

-- Device data points (targets of `map` columns and telemetry fields).
CREATE TABLE device_data_points (
    id              uuid        PRIMARY KEY,
    org_id          uuid        NOT NULL,
    project_id      uuid        NOT NULL,
    device_id       uuid        NOT NULL REFERENCES edge_devices (device_id),
    name            text        NOT NULL,
    value_type      text        NOT NULL DEFAULT 'numeric'
        CHECK (value_type IN ('numeric', 'text', 'json')),
    unit            text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_id, name)
);

-- Column bindings of an approved schema hash: how each source column is projected.
CREATE TABLE edge_column_bindings (
    lineage_id            uuid        NOT NULL REFERENCES edge_table_lineages (id) ON DELETE CASCADE,
    schema_hash           text        NOT NULL,
    source_column_name    text        NOT NULL,
    action                text        NOT NULL
        CHECK (action IN ('mirror', 'map', 'ignore', 'defer', 'auto_create_and_map')),
    mirror_table_name     text,
    mirror_column_name    text,
    mirror_type           text,
    pk_ordinal            integer     NOT NULL DEFAULT 0,
    device_data_point_id  uuid        REFERENCES device_data_points (id),
    created_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (lineage_id, schema_hash, source_column_name)
);

-- Staged rows (cloud.md §4). `stage_time` is the UUIDv7 time of the journal epoch (rows) or
-- the event timestamp (telemetry), deterministic so the uniqueness survives partitioning.
-- Telemetry rows use the nil epoch and seq = batch_seq * 4096 + row index.
CREATE TABLE edge_staged_rows (
    lineage_id          uuid        NOT NULL REFERENCES edge_table_lineages (id) ON DELETE CASCADE,
    journal_epoch       uuid        NOT NULL,
    source_commit_seq   bigint      NOT NULL,
    -- PK text of the row: a primary-key change travels as delete + insert, which may share a
    -- commit_seq, so the seq alone does not identify a row change.
    pk_key              text        NOT NULL,
    stage_time          timestamptz NOT NULL,
    device_id           uuid        NOT NULL,
    source_table        text        NOT NULL,
    batch_id            uuid        NOT NULL,
    op                  text        NOT NULL CHECK (op IN ('insert', 'update', 'delete', 'telemetry')),
    pk                  jsonb,
    "row"               jsonb,
    event_ts            timestamptz,
    schema_hash         text        NOT NULL,
    staging_reason      text        NOT NULL
        CHECK (staging_reason IN ('schema_review', 'lineage_paused', 'materialization_failed')),
    error               text,
    bytes               integer     NOT NULL DEFAULT 0,
    staged_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (lineage_id, journal_epoch, source_commit_seq, pk_key, stage_time)
);

-- Replay intents (cloud.md §8).
CREATE TABLE edge_replay_intents (
    id              uuid        PRIMARY KEY,
    lineage_id      uuid        NOT NULL REFERENCES edge_table_lineages (id) ON DELETE CASCADE,
    schema_hash     text,
    status          text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done', 'failed')),
    action_kind     text        NOT NULL,
    action_version  integer     NOT NULL DEFAULT 1,
    cursor_epoch    uuid,
    cursor_seq      bigint,
    rows_replayed   bigint      NOT NULL DEFAULT 0,
    failure_count   integer     NOT NULL DEFAULT 0,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX edge_replay_intents_open ON edge_replay_intents (lineage_id)
    WHERE status IN ('pending', 'running');

-- Controls the cloud must deliver until acked (cloud.md §7, protocol §6).
CREATE TABLE edge_pending_controls (
    control_id        uuid        PRIMARY KEY,
    device_id         uuid        NOT NULL REFERENCES edge_devices (device_id),
    lineage_id        uuid        REFERENCES edge_table_lineages (id) ON DELETE CASCADE,
    control_kind      text        NOT NULL,
    source_table      text,
    server_watermark  bigint,
    reason            text,
    -- The signed envelope exactly as published, so a re-send is byte-identical.
    envelope          jsonb       NOT NULL,
    status            text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'acked')),
    attempts          integer     NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now(),
    acked_at          timestamptz
);
CREATE INDEX edge_pending_controls_due ON edge_pending_controls (next_attempt_at)
    WHERE status = 'pending';

-- Telemetry values (cloud.md §6): telemetry batches and `map` columns. The key includes ts and
-- the batch/row position so a redelivered batch cannot write a value twice.
CREATE TABLE telemetry_data_point_value (
    device_id       uuid             NOT NULL,
    data_point_id   uuid             NOT NULL,
    ts              timestamptz      NOT NULL,
    batch_id        uuid             NOT NULL,
    row_index       integer          NOT NULL,
    value_numeric   double precision,
    value_text      text,
    value_json      jsonb,
    row_id          text,
    created_at      timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (data_point_id, ts, batch_id, row_index)
);
CREATE INDEX telemetry_data_point_value_device ON telemetry_data_point_value (device_id, ts);

-- Governance events (cloud.md §11), written in the transaction that causes them.
CREATE TABLE edge_events (
    id              bigserial   PRIMARY KEY,
    event_type      text        NOT NULL,
    org_id          uuid        NOT NULL,
    project_id      uuid        NOT NULL,
    subject_id      uuid,
    payload         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX edge_events_project ON edge_events (project_id, id);

-- API idempotency (cloud.md §10): same key + same body → the stored response.
CREATE TABLE edge_idempotency_keys (
    org_id          uuid        NOT NULL,
    idempotency_key text        NOT NULL,
    method          text        NOT NULL,
    path            text        NOT NULL,
    request_hash    text        NOT NULL,
    response_status integer     NOT NULL,
    response_body   jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, idempotency_key)
);
