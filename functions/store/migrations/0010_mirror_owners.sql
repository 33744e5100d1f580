-- One physical mirror table belongs to exactly one lineage or one coalesced mirror
-- (reliability.md §3). The cloud never ALTERs or writes a mirror table another lineage or
-- coalesced mirror owns; approvals check here first (409 mirror_table_in_use /
-- mirror_table_not_owned).
CREATE TABLE edge_mirror_tables (
    table_name          text        PRIMARY KEY,
    org_id              uuid        NOT NULL,
    project_id          uuid        NOT NULL,
    -- Exactly one owner. No foreign keys: a deleted lineage keeps its table (the customer's
    -- rows), and so its name, which is never handed to anyone else.
    lineage_id          uuid,
    coalesced_mirror_id uuid,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((lineage_id IS NULL) <> (coalesced_mirror_id IS NULL))
);
CREATE INDEX edge_mirror_tables_lineage ON edge_mirror_tables (lineage_id);

-- Existing deployments keep their names: each existing mirror is recorded with one owner —
-- its coalesced mirror, else the earliest lineage naming it. Collisions already present (other
-- lineages or coalesced mirrors writing the same table) are left as they are and reported by
-- `edge-cloud migrate` (edge_cloud_store::migrate::mirror_collisions).
INSERT INTO edge_mirror_tables (table_name, org_id, project_id, coalesced_mirror_id)
SELECT DISTINCT ON (mirror_table_name) mirror_table_name, org_id, project_id, id
FROM edge_coalesced_mirrors
ORDER BY mirror_table_name, created_at, id;

INSERT INTO edge_mirror_tables (table_name, org_id, project_id, lineage_id)
SELECT DISTINCT ON (mirror_table_name) mirror_table_name, org_id, project_id, id
FROM edge_table_lineages
WHERE mirror_table_name IS NOT NULL
ORDER BY mirror_table_name, created_at, id
ON CONFLICT (table_name) DO NOTHING;
