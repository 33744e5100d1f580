-- 0008: staged `pk` and `row` as json (the text exactly as staged) instead of jsonb.
--
-- Staged rows are written once and read back whole by the replay worker and the staged-rows
-- API; nothing queries inside them except a DISTINCT over the keys at approval. jsonb paid a
-- parse on every staging insert and a conversion back to text on every replay read (about
-- 1.2 µs per row, a tenth of a replay chunk's server time); json stores and returns the text.
-- Strings with U+0000 keep their cloud-internal marker (staged_json), so nothing else changes.
ALTER TABLE edge_staged_rows
    ALTER COLUMN pk TYPE json USING pk::json,
    ALTER COLUMN "row" TYPE json USING "row"::json;
