#!/usr/bin/env python3
"""The application of the fault suite (scripts/chaos.sh): writes a real SQLite file through
whatever libsqlite3 Python's sqlite3 module loads (the system one, 3.40 on Debian 12; soak mode
also runs it with LD_LIBRARY_PATH pointing at a second build).

    writer.py DB SEED LOG STOP_FILE ALTER_AFTER TX_PER_SECOND

Deterministic per SEED: a rowid table and a WITHOUT ROWID composite-key table with hostile
identifiers, every SQLite storage class (±inf, full-precision and huge REALs, NULL, BLOB,
unicode), inserts, updates (some changing the primary key), deletes, and one ALTER TABLE ADD
COLUMN after ALTER_AFTER transactions. Stops when STOP_FILE exists.

LOG gets one JSON line per committed transaction: {"tx": n, "entries": [[commit_seq, table,
op, pk_json], ...]} — the agent's journal entries the transaction's triggers wrote (read inside
the same transaction, so they are exactly this transaction's changes). The driver checks that
every entry the agent logged as acknowledged is in the mirror.
"""
import json
import os
import random
import sqlite3
import sys
import time

db_path, seed, log_path, stop_file, alter_after, rate = sys.argv[1:7]
rng = random.Random(int(seed))
alter_after = int(alter_after)
rate = float(rate)

ROWID = 'odd "name" table'
COMPOSITE = "select from"
Q = lambda ident: '"' + ident.replace('"', '""') + '"'  # noqa: E731

REALS = [
    float("inf"), float("-inf"), 0.1 + 0.2, 1 / 3, 2.0 ** 60, 584475.1955282914, 1e308,
    -1e308, 2.0 ** 53 + 2, 123.0, None,
]
if os.environ.get("CHAOS_WRITER_NO_INF") == "1":
    # Diagnosis only (never in CI): lets a run on a tree where ±inf still stops the agent
    # reach the other faults.
    REALS = [r for r in REALS if r is None or abs(r) != float("inf")]
TEXTS = ["héllo ✓ 🚀", "it's \"quoted\"", "", "NULL", "select * from x; --", "日本語テキスト",
         "tab\tand\nnewline", None]
INTS = [0, 1, -1, 2 ** 63 - 1, -(2 ** 63), 2 ** 53 + 1, None]


def real():
    return rng.choice(REALS) if rng.random() < 0.6 else rng.uniform(-1e6, 1e6)


def text():
    return rng.choice(TEXTS) if rng.random() < 0.7 else "t%08x" % rng.getrandbits(32)


def blob():
    if rng.random() < 0.15:
        return None
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 24))) + b"\x00"


def integer():
    return rng.choice(INTS) if rng.random() < 0.5 else rng.randint(-(10 ** 12), 10 ** 12)


conn = sqlite3.connect(db_path, timeout=60, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.executescript(f"""
CREATE TABLE IF NOT EXISTS {Q(ROWID)} (
    id INTEGER PRIMARY KEY, {Q("value")} REAL, {Q("na me")} TEXT, {Q("from")} BLOB,
    qty INTEGER, {Q("ünï")} TEXT);
CREATE TABLE IF NOT EXISTS {Q(COMPOSITE)} (
    site TEXT NOT NULL, n INTEGER NOT NULL, {Q("group")} REAL, payload BLOB,
    PRIMARY KEY (site, n)) WITHOUT ROWID;
""")
altered = False
log = open(log_path, "a", buffering=1)


def journal_exists():
    return conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE name = '__omega_journal'").fetchone() is not None


def keys(table, cols):
    return conn.execute(f"SELECT {cols} FROM {Q(table)}").fetchall()


def one_change():
    global altered
    table = ROWID if rng.random() < 0.55 else COMPOSITE
    kind = rng.random()
    if table == ROWID:
        ids = [r[0] for r in keys(ROWID, "id")]
        extra = f", {Q('added col')}" if altered else ""
        extra_v = ", ?" if altered else ""
        if kind < 0.5 or len(ids) < 5:
            vals = [rng.randint(1, 10 ** 9), real(), text(), blob(), integer()]
            vals.append(text())
            if altered:
                vals.append(text())
            conn.execute(
                f"INSERT OR REPLACE INTO {Q(ROWID)} (id, {Q('value')}, {Q('na me')}, {Q('from')}, "
                f"qty, {Q('ünï')}{extra}) VALUES (?, ?, ?, ?, ?, ?{extra_v})", vals)
            return [vals[0]]
        elif kind < 0.75:
            key = rng.choice(ids)
            conn.execute(
                f"UPDATE {Q(ROWID)} SET {Q('value')} = ?, {Q('na me')} = ?, qty = ? WHERE id = ?",
                [real(), text(), integer(), key])
            return [key]
        elif kind < 0.85:
            # a primary-key change
            new = rng.randint(1, 10 ** 9)
            conn.execute(f"UPDATE OR REPLACE {Q(ROWID)} SET id = ? WHERE id = ?",
                         [new, rng.choice(ids)])
            return [new]
        else:
            conn.execute(f"DELETE FROM {Q(ROWID)} WHERE id = ?", [rng.choice(ids)])
            return None
    else:
        ks = keys(COMPOSITE, "site, n")
        if kind < 0.5 or len(ks) < 5:
            key = [rng.choice(["α-site", "b'site", "c site"]), rng.randint(0, 10 ** 6)]
            conn.execute(
                f"INSERT OR REPLACE INTO {Q(COMPOSITE)} (site, n, {Q('group')}, payload) "
                f"VALUES (?, ?, ?, ?)", key + [real(), blob()])
            return key
        elif kind < 0.75:
            site, n = rng.choice(ks)
            conn.execute(
                f"UPDATE {Q(COMPOSITE)} SET {Q('group')} = ?, payload = ? WHERE site = ? AND n = ?",
                [real(), blob(), site, n])
            return [site, n]
        elif kind < 0.85:
            site, n = rng.choice(ks)
            new = rng.randint(0, 10 ** 6)
            conn.execute(
                f"UPDATE OR REPLACE {Q(COMPOSITE)} SET n = ? WHERE site = ? AND n = ?",
                [new, site, n])
            return [site, new]
        else:
            site, n = rng.choice(ks)
            conn.execute(f"DELETE FROM {Q(COMPOSITE)} WHERE site = ? AND n = ?", [site, n])
            return None


tx = 0
start = time.monotonic()
while not os.path.exists(stop_file):
    tx += 1
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            break
        except sqlite3.OperationalError:
            time.sleep(0.05)
    try:
        has_journal = journal_exists()
        if tx >= alter_after and not altered:
            conn.execute(f"ALTER TABLE {Q(ROWID)} ADD COLUMN {Q('added col')} TEXT")
            altered = True
        entries = []
        for _ in range(rng.randint(1, 4)):
            before = conn.execute(
                "SELECT coalesce(max(commit_seq), 0) FROM __omega_journal").fetchone()[0] \
                if has_journal else 0
            key = one_change()
            if has_journal:
                # Inserts and updates journal the key inside the row image only (pk NULL):
                # each statement touches one key, the one it returned.
                for seq, table, op, pk in conn.execute(
                        "SELECT j.commit_seq, s.table_name, j.op, j.pk FROM __omega_journal j "
                        "JOIN __omega_schemas s USING (schema_id) WHERE j.commit_seq > ? "
                        "ORDER BY j.commit_seq", [before]).fetchall():
                    if pk is None and key is not None:
                        pk = json.dumps(key)
                    entries.append([seq, table, op, pk])
        conn.execute("COMMIT")
    except sqlite3.OperationalError as e:
        conn.execute("ROLLBACK")
        altered = bool(conn.execute(
            "SELECT 1 FROM pragma_table_info(?) WHERE name = 'added col'", [ROWID]).fetchone())
        print(f"writer: tx {tx} rolled back: {e}", file=sys.stderr, flush=True)
        continue
    log.write(json.dumps({"tx": tx, "entries": entries}) + "\n")
    # Pace by the schedule, not by sleeps after each commit (a slow commit does not drift).
    delay = start + tx / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
print(f"writer: stopped after {tx} transactions, sqlite {sqlite3.sqlite_version}", flush=True)
