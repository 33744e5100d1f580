-- 0004: registry coalescing (cloud.md §9) and the event forwarding cursor (cloud.md §11).

-- One entry per (scope, table, schema hash) in `project`/`fleet` coalescing mode. The
-- approved column decisions are kept as `bindings` (the rows every adopted lineage receives in
-- edge_column_bindings, minus lineage and mirror table), so a device that shows up later is
-- bound by one set-based insert without a review of its own.
CREATE TABLE edge_schema_registry (
    id                  uuid        PRIMARY KEY,
    org_id              uuid        NOT NULL,
    project_id          uuid        NOT NULL,
    scope_kind          text        NOT NULL CHECK (scope_kind IN ('project', 'fleet')),
    scope_id            uuid        NOT NULL,
    source_table        text        NOT NULL,
    schema_hash         text        NOT NULL,
    classification      text        NOT NULL,
    diff                jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status              text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'approved', 'rejected', 'abandoned')),
    origin_device_id    uuid        NOT NULL,
    origin_lineage_id   uuid,
    mirror_table_name   text,
    bindings            jsonb,
    -- false when a deferred NOT NULL column keeps adopted lineages paused.
    activates           boolean     NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, scope_kind, scope_id, source_table, schema_hash)
);
CREATE INDEX edge_schema_registry_project ON edge_schema_registry (project_id, status);

-- Registry reviews: the same state machine as edge_schema_reviews plus `abandoned`.
CREATE TABLE edge_registry_reviews (
    id              uuid        PRIMARY KEY,
    registry_id     uuid        NOT NULL REFERENCES edge_schema_registry (id) ON DELETE CASCADE,
    org_id          uuid        NOT NULL,
    project_id      uuid        NOT NULL,
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
CREATE UNIQUE INDEX edge_registry_reviews_open
    ON edge_registry_reviews (registry_id) WHERE state IN ('queued', 'in_review');
CREATE INDEX edge_registry_reviews_project ON edge_registry_reviews (project_id, state);

-- Shared mirrors, one per (scope, table), created by the first registry approval.
CREATE TABLE edge_coalesced_mirrors (
    id                  uuid        PRIMARY KEY,
    org_id              uuid        NOT NULL,
    project_id          uuid        NOT NULL,
    scope_kind          text        NOT NULL CHECK (scope_kind IN ('project', 'fleet')),
    scope_id            uuid        NOT NULL,
    source_table        text        NOT NULL,
    mirror_table_name   text        NOT NULL,
    last_consolidated_at timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, scope_kind, scope_id, source_table)
);

-- Event forwarding (cloud.md §11): per forwarder, the last edge_events id handed on. The
-- cursor advances only after the forwarder accepted the events, so each event is forwarded
-- at least once; a crash between forward and commit re-sends, never skips.
CREATE TABLE edge_event_forwarding (
    forwarder       text        PRIMARY KEY,
    last_event_id   bigint      NOT NULL DEFAULT 0,
    forwarded       bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
