#!/usr/bin/env python3
"""The demo's "application": an ordinary program writing an ordinary SQLite database.

It knows nothing about edge-sync. It creates its tables, then keeps inserting, updating and
deleting rows in small transactions until it is stopped, printing a line now and then.
Half-way through it runs a schema migration (ALTER TABLE ... ADD COLUMN) like a real app upgrade.
"""
import random
import signal
import sqlite3
import sys
import time

path = sys.argv[1]
interval = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
migrate_after = int(sys.argv[3]) if len(sys.argv) > 3 else 40

stop = False


def on_signal(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)

db = sqlite3.connect(path, timeout=10, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=NORMAL")
db.executescript(
    """
    CREATE TABLE IF NOT EXISTS device_state (
        id INTEGER PRIMARY KEY NOT NULL,
        mode TEXT,
        setpoint REAL
    );
    CREATE TABLE IF NOT EXISTS readings (
        site TEXT NOT NULL,
        seq INTEGER NOT NULL,
        value REAL,
        raw BLOB,
        PRIMARY KEY (site, seq)
    ) WITHOUT ROWID;
    """
)
if db.execute("SELECT count(*) FROM device_state").fetchone()[0] == 0:
    db.executemany(
        "INSERT INTO device_state VALUES (?, ?, ?)",
        [(i, random.choice(["heat", "cool", "off"]), 18 + i / 2) for i in range(1, 11)],
    )

rng = random.Random(7)
tick = 0
migrated = any(r[1] == "note" for r in db.execute("PRAGMA table_info(device_state)"))
while not stop:
    tick += 1
    db.execute("BEGIN")
    sid = rng.randint(1, 30)
    db.execute(
        "INSERT INTO device_state (id, mode, setpoint) VALUES (?, ?, ?) "
        "ON CONFLICT(id) DO UPDATE SET mode = excluded.mode, setpoint = excluded.setpoint",
        (sid, rng.choice(["heat", "cool", "eco", "off"]), round(rng.uniform(15, 25), 1)),
    )
    db.execute(
        "INSERT OR REPLACE INTO readings VALUES (?, ?, ?, ?)",
        (rng.choice(["north", "south"]), tick, round(rng.gauss(21, 2), 3), bytes([tick % 256, 0xFF])),
    )
    if tick % 9 == 0:
        db.execute("DELETE FROM device_state WHERE id = ?", (rng.randint(1, 30),))
    if migrated:
        db.execute("UPDATE device_state SET note = ? WHERE id = ?", (f"tick {tick}", sid))
    db.execute("COMMIT")
    if not migrated and tick >= migrate_after:
        db.execute("ALTER TABLE device_state ADD COLUMN note TEXT")
        migrated = True
        print(f"[writer] tick {tick}: schema migration: ALTER TABLE device_state ADD COLUMN note TEXT", flush=True)
    if tick % 20 == 0:
        n = db.execute("SELECT count(*) FROM device_state").fetchone()[0]
        print(f"[writer] tick {tick}: device_state has {n} rows", flush=True)
    time.sleep(interval)
db.close()
