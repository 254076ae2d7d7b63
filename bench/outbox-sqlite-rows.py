#!/usr/bin/env python3
"""What one webhook event costs SQLite as a row of the outbox, apart from drisc.

Mirrors the SQLite outbox of migrations/sqlite (webhook_outbox with its three
secondary indexes and the count triggers, as of round nine) and the statements of
src/store/outbox/sqlite.rs a delivery round runs: rows inserted 128 at a time with
the key probe, the claim's UPDATE, the settle's DELETE ... RETURNING and the
promotion, each in a write transaction (WAL, synchronous FULL, a 512 KiB page
cache, as drisc opens it). Prints CPU (user + system of this process, Python's own
work included, the same on every side) and wall time per event, after a backlog of
N rows, for schema variants:

  base    the schema as it is
  nopub   without the (publisher_id, dead, id) index
  notrig  without the count triggers
  noauto  without AUTOINCREMENT
  (joined with '-' to combine)

With LOCAL=1 the ordering keys begin with the time (a session's key with time
locality) instead of being random UUIDs.

  bench/outbox-sqlite-rows.py 0,100000 base,nopub,notrig
  LOCAL=1 bench/outbox-sqlite-rows.py 100000 base

With --staged, instead: what appending staged batches costs (the write that makes
events durable on a saturated node, webhook_outbox_staged: one row per batch),
per event, by the bytes an event stages, the events per batch and the page cache
of the appending connection (KiB), median of 4 rounds:

  bench/outbox-sqlite-rows.py --staged 220,140 512,2048 512,2048

Files in a temporary directory; nothing is served or sent.
"""
import sqlite3, time, uuid, os, sys, tempfile
LOCAL = os.environ.get("LOCAL") == "1"
WORK = tempfile.mkdtemp(prefix="drisc-outbox-rows.")
def schema(db, variant):
    auto = "" if "noauto" in variant else "AUTOINCREMENT"
    db.executescript(f"""
    CREATE TABLE webhook_outbox (id INTEGER PRIMARY KEY {auto}, message_id TEXT NOT NULL, publisher_id TEXT NOT NULL,
      ordering_key TEXT NOT NULL, event_type TEXT NOT NULL, body TEXT NOT NULL, created_at INTEGER NOT NULL,
      attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER NOT NULL, dead INTEGER NOT NULL DEFAULT 0, last_error TEXT);
    CREATE INDEX webhook_outbox_due ON webhook_outbox (dead, next_attempt_at);
    CREATE INDEX webhook_outbox_key ON webhook_outbox (ordering_key, dead, id);
    CREATE TABLE webhook_outbox_counts (publisher_id TEXT PRIMARY KEY NOT NULL, held INTEGER NOT NULL DEFAULT 0);
    """)
    if "nopub" not in variant:
        db.execute("CREATE INDEX webhook_outbox_publisher ON webhook_outbox (publisher_id, dead, id)")
    if "notrig" not in variant:
        db.executescript("""
        CREATE TRIGGER c AFTER INSERT ON webhook_outbox BEGIN INSERT INTO webhook_outbox_counts (publisher_id, held) VALUES (NEW.publisher_id, 1) ON CONFLICT (publisher_id) DO UPDATE SET held = held + 1; END;
        CREATE TRIGGER u AFTER DELETE ON webhook_outbox BEGIN UPDATE webhook_outbox_counts SET held = held - 1 WHERE publisher_id = OLD.publisher_id; END;
        """)
def run(variant, backlog, n=60000, per_round=128):
    path=os.path.join(WORK, f"{variant}.db")
    for s in ("", "-wal", "-shm"):
        try: os.remove(path+s)
        except FileNotFoundError: pass
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=FULL"); db.execute("PRAGMA cache_size=-512")
    schema(db, variant)
    body = '{"type":"session.granted","data":{"sessionId":"%s","customerId":"c123456","offerId":"premium","publisherId":"bp"}}'
    def insert(k):
        rows=[]
        for _ in range(k):
            key=(format(time.time_ns(),"016x")+str(uuid.uuid4())[:20]) if LOCAL else str(uuid.uuid4()); rows.append((f"msg_{uuid.uuid4().hex}", "bp", key, "session.granted", body % key, 1, key))
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO webhook_outbox (message_id, publisher_id, ordering_key, event_type, body, created_at, next_attempt_at) VALUES (?,?,?,?,?,?, CASE WHEN EXISTS (SELECT 1 FROM webhook_outbox WHERE ordering_key = ? AND dead = 0) THEN 9223372036854775807 ELSE 1 END)", rows)
        db.execute("COMMIT")
    # backlog
    for _ in range(backlog // 512): insert(512)
    t0=time.process_time(); w0=time.time()
    done=0
    while done < n:
        insert(per_round)
        db.execute("BEGIN IMMEDIATE")
        ids=[r[0] for r in db.execute("""UPDATE webhook_outbox SET next_attempt_at = 99999999999 WHERE id IN (
          SELECT o.id FROM webhook_outbox o WHERE o.dead = 0 AND o.next_attempt_at <= 5
          AND o.id = (SELECT MIN(i.id) FROM webhook_outbox i WHERE i.ordering_key = o.ordering_key AND i.dead = 0)
          ORDER BY o.next_attempt_at, o.id LIMIT ?) RETURNING id""", (per_round,))]
        db.execute("COMMIT")
        db.execute("BEGIN IMMEDIATE")
        q=",".join("?"*len(ids))
        keys=[r[0] for r in db.execute(f"DELETE FROM webhook_outbox WHERE id IN ({q}) RETURNING ordering_key", ids)]
        db.execute(f"UPDATE webhook_outbox SET next_attempt_at = 0 WHERE next_attempt_at = 9223372036854775807 AND id IN (SELECT MIN(id) FROM webhook_outbox WHERE dead = 0 AND ordering_key IN ({','.join('?'*len(keys))}) GROUP BY ordering_key)", keys)
        db.execute("COMMIT")
        done += len(ids)
    cpu=time.process_time()-t0
    print(f"{variant:>22} backlog {backlog:>7}: {cpu/done*1e6:6.1f} us CPU per event (user+sys of this process), wall {(time.time()-w0)/done*1e6:6.1f}")
def staged(per_event, batch, cache_kib, batches):
    path = os.path.join(WORK, "staged.db")
    for s in ("", "-wal", "-shm"):
        try: os.remove(path+s)
        except FileNotFoundError: pass
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=FULL"); db.execute(f"PRAGMA cache_size=-{cache_kib}")
    db.execute("CREATE TABLE webhook_outbox_staged (id INTEGER PRIMARY KEY AUTOINCREMENT, publisher_id TEXT NOT NULL, events INTEGER NOT NULL, batch TEXT NOT NULL, form INTEGER NOT NULL)")
    db.execute("CREATE INDEX webhook_outbox_staged_publisher ON webhook_outbox_staged (publisher_id)")
    # Ids and keys are random hex: what a batch holds is as incompressible as theirs.
    texts = [os.urandom(per_event * batch // 2 + 1).hex()[:per_event * batch] for _ in range(4)]
    t0 = time.process_time()
    for i in range(batches):
        db.execute("INSERT INTO webhook_outbox_staged (publisher_id, events, batch, form) VALUES (?, ?, ?, 3)", ("bp", batch, texts[i % 4]))
    return (time.process_time() - t0) / (batch * batches) * 1e6
if sys.argv[1] == "--staged":
    import statistics
    sizes, batches, caches = ([int(x) for x in a.split(",")] for a in sys.argv[2:5])
    for size in sizes:
        for batch in batches:
            for cache in caches:
                runs = [staged(size, batch, cache, max(100, 400 * 512 // batch)) for _ in range(4)]
                print(f"{size:4d} B an event, {batch:5d} a batch, cache {cache:5d} KiB: "
                      f"{statistics.median(runs):5.2f} us CPU per event (rounds {', '.join(f'{r:.2f}' for r in runs)})")
else:
    for backlog in map(int, sys.argv[1].split(",")):
        for v in sys.argv[2].split(","):
            run(v, backlog)
import shutil
shutil.rmtree(WORK, ignore_errors=True)
