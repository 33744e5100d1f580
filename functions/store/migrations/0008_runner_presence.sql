-- 0008 (issue 13, reliability.md §2): runners that share one database must share one object
-- store. Each running `edge-cloud run` keeps a row here with the identity of its local spill
-- directory (the random id of a marker file written in the directory, so two paths to one
-- shared mount are the same store) and a heartbeat; a runner whose directory differs from a
-- live runner's refuses to start.
CREATE TABLE IF NOT EXISTS edge_runner_presence (
    runner_id     uuid        PRIMARY KEY,
    -- the marker file's id (`.edge-spill-id` in the directory)
    spill_dir_id  uuid        NOT NULL,
    -- the path as this runner sees it, for messages
    spill_dir     text        NOT NULL,
    host          text        NOT NULL DEFAULT '',
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);
