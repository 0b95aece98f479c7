/*
** store.c -- the handle: opening and closing a queue file, the SQLite
** connection and its prepared statements, the clock, lease tokens and the
** free-space floor.
**
** Opening is careful about what it touches before it knows the file is
** ours: the file is created here with an exact mode (not by SQLite, which
** would apply the umask), a symbolic link is refused, and nothing is written
** to an existing file -- not even the switch to WAL mode -- until the
** schema check says it is an mq store of a format we read.
**
** The connection is opened in SQLite's multi-thread mode (no SQLite mutex):
** the handle's dblock serialises every use of it, which SQLite's own mutex
** would only duplicate.
*/
#include "mqi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STORE_DEFAULT_MIN_FREE ((int64_t)16 * 1024 * 1024)
#define STORE_FREE_RECHECK_MS 250
#define STORE_FREE_MARGIN ((int64_t)8 * 1024 * 1024) /* near the floor: read often */
#define STORE_PUT_OVERHEAD ((int64_t)16 * 1024)      /* pages a put touches */
#define STORE_OPEN_MIN_FREE ((int64_t)256 * 1024)    /* room for -shm and a WAL start */

/* The multi-row INSERTs of put.c: one statement stores MQI_PUT_ROWS rows.
** Each run of a statement has a fixed price (start, step, halt, reset):
** rows of 100 B went in at 1.1M/s this way against 0.6M/s one statement
** each.  Parameters are numbered in order, row after row, each row's in
** the order of the single-row statement. */
#define STORE_ROWS_2(r) r "," r
#define STORE_ROWS_8(r) STORE_ROWS_2(STORE_ROWS_2(STORE_ROWS_2(r)))
#define STORE_ROWS_32(r) STORE_ROWS_2(STORE_ROWS_2(STORE_ROWS_8(r)))
_Static_assert(MQI_PUT_ROWS == 32, "STORE_ROWS_32 spells out MQI_PUT_ROWS rows");

static const char *const store_sql[MQI_ST_COUNT] = {
    [MQI_ST_BEGIN] = "BEGIN IMMEDIATE",
    [MQI_ST_COMMIT] = "COMMIT",
    [MQI_ST_ROLLBACK] = "ROLLBACK",
    [MQI_ST_SAVEPOINT] = "SAVEPOINT mq_op",
    [MQI_ST_RELEASE] = "RELEASE mq_op",
    [MQI_ST_ROLLBACK_TO] = "ROLLBACK TO mq_op",
    [MQI_ST_QUEUE_BY_NAME] =
        "SELECT id, kind, visibility_ms, max_receives, dlq_id, retention_ms, max_payload,"
        " compress_above, dedup_window_ms FROM mq_queue WHERE name=?1",
    [MQI_ST_QUEUE_BY_ID] =
        "SELECT id, kind, visibility_ms, max_receives, dlq_id, retention_ms, max_payload,"
        " compress_above, dedup_window_ms FROM mq_queue WHERE id=?1",
    [MQI_ST_BODY_INSERT] =
        "INSERT INTO mq_body(refs, size, crc, codec, headers, data, subject, id)"
        " VALUES(?1,?2,?3,?4,?5,?6,?7,?8)",
    [MQI_ST_BODY_INSERT_ROWS] =
        "INSERT INTO mq_body(refs, size, crc, codec, headers, data, subject, id) "
        "VALUES" STORE_ROWS_32("(?,?,?,?,?,?,?,?)"),
    [MQI_ST_BODY_GET] = "SELECT size, crc, codec, headers, data, subject FROM mq_body WHERE id=?1",
    [MQI_ST_BODY_DELETE_LAST] = "DELETE FROM mq_body WHERE id=?1 AND refs<=1",
    [MQI_ST_BODY_UNREF] = "UPDATE mq_body SET refs=refs-1 WHERE id=?1",
    [MQI_ST_MSG_INSERT] =
        "INSERT INTO mq_msg(queue_id, body_id, state, priority, visible_at, receives,"
        " enqueued_at, expires_at, id, size, crc, codec, headers, data)"
        " VALUES(?1,?2,?3,?4,?5,0,?6,?7,?8,?9,?10,?11,?12,?13)",
    [MQI_ST_MSG_INSERT_ROWS] =
        "INSERT INTO mq_msg(queue_id, body_id, state, priority, visible_at, receives,"
        " enqueued_at, expires_at, id, size, crc, codec, headers, data)"
        " VALUES" STORE_ROWS_32("(?,?,?,?,?,0,?,?,?,?,?,?,?,?)"),
    [MQI_ST_MSG_PAYLOAD] =
        "SELECT size, crc, codec, headers, data, NULL FROM mq_msg WHERE id=?1",
    [MQI_ST_MSG_READY] =
        "SELECT id, body_id, priority, receives, enqueued_at, reason, expires_at FROM mq_msg"
        " WHERE queue_id=?1 AND state=0 ORDER BY priority DESC, id LIMIT ?2",
    [MQI_ST_MSG_LEASE] =
        "UPDATE mq_msg SET state=1, lease=?2, visible_at=?3, receives=receives+1 WHERE id=?1",
    [MQI_ST_MSG_EXPIRED] =
        "SELECT id, body_id FROM mq_msg WHERE queue_id=?1 AND expires_at<=?2 LIMIT 64",
    [MQI_ST_MSG_NEXT_EXPIRY] =
        "SELECT min(expires_at) FROM mq_msg WHERE queue_id=?1 AND expires_at IS NOT NULL",
    [MQI_ST_MSG_DELETE] = "DELETE FROM mq_msg WHERE id=?1",
    [MQI_ST_MSG_OVERDUE] =
        "SELECT id FROM mq_msg WHERE queue_id=?1 AND state IN (1,2) AND visible_at<=?2"
        " AND receives>=?3 LIMIT 64",
    [MQI_ST_MSG_PROMOTE] =
        "UPDATE mq_msg SET state=0 WHERE queue_id=?1 AND state IN (1,2) AND visible_at<=?2",
    [MQI_ST_MSG_NEXT_VISIBLE] =
        "SELECT min(visible_at) FROM mq_msg WHERE queue_id=?1 AND state IN (1,2)",
    /* A message past its expiry (?4, ?5: now) is gone to ack, nack and
    ** touch alike, whether or not a get has swept it yet. */
    [MQI_ST_MSG_ACK] =
        "SELECT body_id FROM mq_msg WHERE id=?1 AND queue_id=?2 AND lease=?3 AND state IN (0,1)"
        " AND (expires_at IS NULL OR expires_at>?4)",
    [MQI_ST_MSG_NACK] =
        "SELECT receives FROM mq_msg WHERE id=?1 AND queue_id=?2 AND lease=?3"
        " AND state IN (0,1) AND (expires_at IS NULL OR expires_at>?4)",
    [MQI_ST_MSG_TOUCH] =
        "UPDATE mq_msg SET visible_at=?4 WHERE id=?1 AND queue_id=?2 AND lease=?3"
        " AND state=1 AND visible_at>?5 AND (expires_at IS NULL OR expires_at>?5)",
    /* A dead letter expires by the retention of the queue that keeps it,
    ** from now (?3); see mqi_get_deadletter. */
    [MQI_ST_MSG_TO_DLQ] =
        "UPDATE mq_msg SET queue_id=?2, origin_id=queue_id, state=0, visible_at=?3,"
        " lease=NULL, reason=coalesce(?4, reason),"
        " expires_at=(SELECT " MQI_SQL_RETAIN_FROM("?3") " FROM mq_queue WHERE id=?2)"
        " WHERE id=?1",
    [MQI_ST_MSG_NACK_SET] =
        "UPDATE mq_msg SET state=?2, visible_at=?3, lease=NULL, reason=coalesce(?4, reason)"
        " WHERE id=?1",
    /* A lease given back as if never taken (mqi_settle_release). */
    [MQI_ST_MSG_RELEASE] =
        "UPDATE mq_msg SET state=0, visible_at=?4, lease=NULL, receives=max(receives-1, 0)"
        " WHERE id=?1 AND queue_id=?2 AND lease=?3 AND state=1",
    [MQI_ST_MSG_TO_DEAD] =
        "UPDATE mq_msg SET state=3, lease=NULL, reason=coalesce(?2, reason), expires_at=?3"
        " WHERE id=?1",
    [MQI_ST_DEDUP_GET] =
        "SELECT msg_id FROM mq_dedup WHERE queue_id=?1 AND key=?2 AND expires_at>?3",
    [MQI_ST_DEDUP_PUT] =
        "INSERT OR REPLACE INTO mq_dedup(queue_id, key, msg_id, expires_at)"
        " VALUES(?1,?2,?3,?4)",
    [MQI_ST_DEDUP_SWEEP] = "DELETE FROM mq_dedup WHERE expires_at<=?1",
    [MQI_ST_ID_GET] = "SELECT value FROM mq_meta WHERE key='next_id'",
    [MQI_ST_ID_MAX] =
        "SELECT max(coalesce((SELECT max(id) FROM mq_msg), 0),"
        " coalesce((SELECT max(id) FROM mq_body), 0),"
        " coalesce((SELECT max(id + n - 1) FROM mq_pack), 0)) + 1",
    [MQI_ST_ID_SET] = "INSERT OR REPLACE INTO mq_meta(key, value) VALUES('next_id', ?1)",
    [MQI_ST_FORMAT] = "PRAGMA user_version",
    /* Whether any, and whether more than MQI_PACK_STEP messages' worth. */
    [MQI_ST_PACK_ANY] = "SELECT count(*) FROM (SELECT 1 FROM mq_pack LIMIT 17)",
    [MQI_ST_PACK_INSERT] =
        "INSERT INTO mq_pack(id, queue_id, n, bytes, enqueued_at, data) VALUES(?1,?2,?3,?4,?5,?6)",
    [MQI_ST_PACK_OLDEST] =
        "SELECT id, queue_id, n, enqueued_at, data FROM mq_pack WHERE id > ?1 ORDER BY id LIMIT 1",
    [MQI_ST_PACK_DELETE] = "DELETE FROM mq_pack WHERE id=?1",
    [MQI_ST_FREELIST] =
        "SELECT freelist_count * page_size FROM pragma_freelist_count, pragma_page_size",
};

const char *mq_libversion(void) { return MQ_VERSION; }
const char *mq_sqlite_version(void) { return sqlite3_libversion(); }

void mq_store_options_init(mq_store_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->sync = MQ_SYNC_FULL;
  o->flags = MQ_OPEN_CREATE;
  o->mode = 0600;
  o->busy_timeout_ms = 10000;
  o->min_free_bytes = STORE_DEFAULT_MIN_FREE;
}

/* Read one integer or text value of mq_meta; 1 if found. */
static int store_meta_get(sqlite3 *db, const char *key, char *text, size_t cap, int64_t *num) {
  sqlite3_stmt *st = NULL;
  int found = 0;
  if (sqlite3_prepare_v2(db, "SELECT value FROM mq_meta WHERE key=?1", -1, &st, NULL) != SQLITE_OK)
    return 0;
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  if (sqlite3_step(st) == SQLITE_ROW) {
    found = 1;
    if (text) snprintf(text, cap, "%s", (const char *)sqlite3_column_text(st, 0));
    if (num) *num = sqlite3_column_int64(st, 0);
  }
  sqlite3_finalize(st);
  return found;
}

/*
** The default clock.  Store time is CLOCK_BOOTTIME plus an offset fixed
** once per boot and kept in mq_meta, so every process of this boot reads
** the same time, and stepping the wall clock (NTP, a user, a device with no
** RTC booting in 1970) moves nothing: a lease lasts its length, not an hour
** more or less.  In a new boot the offset is chosen so that time continues
** from max(wall clock, newest enqueue time) -- never backwards -- and leases
** taken before the reboot are ended, since their consumers died with it.
*/
/* The value sql reads (the enqueue time of a table's newest row: ids grow
** with time), or 0 if none. */
static int64_t store_newest(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st = NULL;
  int64_t v = 0;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

static int store_clock_init(mq_store *s, char *err, size_t errlen) {
  char boot[64], seen[64] = "";
  int64_t boot_ms, offset = 0;
  if (mqi_os_boot(boot, sizeof boot, &boot_ms) != MQ_OK) {
    /* No boot identity on this platform: anchor to the wall clock now. */
    s->clock_offset = mqi_os_realtime_ms() - boot_ms;
    return MQ_OK;
  }
  if (store_meta_get(s->db, "clock_boot", seen, sizeof seen, NULL) && strcmp(seen, boot) == 0 &&
      store_meta_get(s->db, "clock_offset", NULL, 0, &offset)) {
    s->clock_offset = offset;
    return MQ_OK;
  }
  int writes = !s->readonly;
  int src = writes ? sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) : SQLITE_OK;
  if (src != SQLITE_OK) goto fail;
  /* Another process of this boot may have just set it. */
  if (store_meta_get(s->db, "clock_boot", seen, sizeof seen, NULL) && strcmp(seen, boot) == 0 &&
      store_meta_get(s->db, "clock_offset", NULL, 0, &offset)) {
    s->clock_offset = offset;
    return sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK ? MQ_OK : MQ_EBUSY;
  }
  int64_t real = mqi_os_realtime_ms();
  /* Packed messages (format 3) were committed too: time goes on from them.
  ** A read-only handle of an older file has no mq_pack: nothing to add. */
  int64_t last = store_newest(s->db, "SELECT enqueued_at FROM mq_msg ORDER BY id DESC LIMIT 1");
  int64_t packed = store_newest(s->db, "SELECT enqueued_at FROM mq_pack ORDER BY id DESC LIMIT 1");
  if (packed > last) last = packed;
  sqlite3_stmt *st = NULL;
  s->clock_offset = (real > last ? real : last + 1) - boot_ms;
  if (!writes) return MQ_OK;
  src = seen[0]
            ? sqlite3_exec(s->db, "UPDATE mq_msg SET state = 0 WHERE state = 1", NULL, NULL, NULL)
            : SQLITE_OK;
  if (src == SQLITE_OK)
    src = sqlite3_prepare_v2(s->db,
                             "INSERT OR REPLACE INTO mq_meta VALUES('clock_boot', ?1),"
                             " ('clock_offset', ?2)",
                             -1, &st, NULL);
  if (src == SQLITE_OK) {
    sqlite3_bind_text(st, 1, boot, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, s->clock_offset);
    src = sqlite3_step(st);
    sqlite3_finalize(st);
    if (src == SQLITE_DONE) src = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
  }
  if (src == SQLITE_OK) return MQ_OK;
fail:
  snprintf(err, errlen, "%s: recording the clock of this boot: %s", s->path, sqlite3_errmsg(s->db));
  if (!sqlite3_get_autocommit(s->db)) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
  return mqi_err_from_sqlite(src);
}

static void store_free(mq_store *s) {
  for (int i = 0; i < MQI_ST_COUNT; i++) sqlite3_finalize(s->stmt[i]);
  if (s->rdb) sqlite3_close_v2(s->rdb);
  if (s->db) sqlite3_close(s->db);
  mqi_gate_close(s->gate);
  pthread_mutex_destroy(&s->lock);
  pthread_mutex_destroy(&s->dblock);
  pthread_mutex_destroy(&s->rdlock);
  free(s->fullpath);
  free(s->path);
  free(s);
}

/* Read the options the caller filled, honouring their declared size so an
** older caller's shorter struct keeps the defaults for newer fields. */
static int store_read_options(const mq_store_options *in, mq_store_options *o) {
  mq_store_options_init(o);
  if (!in) return MQ_OK;
  if (in->size < offsetof(mq_store_options, min_free_bytes) || in->size > sizeof *o)
    return mqi_err_set(NULL, MQ_EINVAL,
                       "mq_store_options.size is %zu: call mq_store_options_init first", in->size);
  memcpy(o, in, in->size);
  if (o->sync < MQ_SYNC_FULL || o->sync > MQ_SYNC_OFF)
    return mqi_err_set(NULL, MQ_EINVAL, "sync mode %d is not one of MQ_SYNC_*", o->sync);
  if (o->flags & ~(MQ_OPEN_CREATE | MQ_OPEN_READONLY))
    return mqi_err_set(NULL, MQ_EINVAL, "unknown open flags 0x%x", o->flags);
  if (o->mode & ~0777u || !(o->mode & 0600u) || (o->mode & 0600u) != 0600u)
    return mqi_err_set(NULL, MQ_EINVAL,
                       "file mode %o: must give the owner read and write and have no "
                       "bits beyond 0777",
                       o->mode);
  if (o->busy_timeout_ms < 0) return mqi_err_set(NULL, MQ_EINVAL, "busy_timeout_ms is negative");
  if (o->min_free_bytes < 0) return mqi_err_set(NULL, MQ_EINVAL, "min_free_bytes is negative");
  if (o->page_size != 0 && (o->page_size < MQ_PAGE_SIZE_MIN || o->page_size > MQ_PAGE_SIZE_MAX ||
                            (o->page_size & (o->page_size - 1))))
    return mqi_err_set(NULL, MQ_EINVAL, "page_size %d is not 0 or a power of two from %d to %d",
                       o->page_size, MQ_PAGE_SIZE_MIN, MQ_PAGE_SIZE_MAX);
  return MQ_OK;
}

static int store_pragmas(mq_store *s, char *err, size_t errlen) {
  char sql[200];
  /* MQ_SYNC_FULL runs the connection at NORMAL and fsyncs the WAL itself
  ** after each commit that must be durable (commit.c): leases then cost no
  ** fsync, with no PRAGMA switching per transaction. */
  /* MQ_SYNC_OFF runs at NORMAL too: in WAL mode NORMAL never fsyncs a
  ** commit either, but its checkpoints do fsync, and a checkpoint run by
  ** any handle must not weaken the durability other handles promised
  ** (synchronous=OFF would copy their fsynced WAL into the file unsynced
  ** and then reset the WAL). */
  const char *sync = "NORMAL";
  snprintf(sql, sizeof sql,
           "PRAGMA synchronous=%s; PRAGMA foreign_keys=OFF; PRAGMA journal_size_limit=67108864;",
           sync);
  int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
  /* The auto-checkpoint counts pages: scale it so that the WAL is folded
  ** into the file at the same ~4 MB whatever the page size (SQLite's 1000
  ** pages of 4 KiB), not 16 times later with 64 KiB pages. */
  sqlite3_stmt *st = NULL;
  if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(s->db, "PRAGMA page_size", -1, &st, NULL);
  if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    int64_t page = sqlite3_column_int64(st, 0);
    rc = sqlite3_wal_autocheckpoint(s->db, page > 0 ? (int)(4096000 / page) : 1000);
    s->inline_max = page / 4 < MQI_INLINE_MAX ? page / 4 : MQI_INLINE_MAX;
    /* The file had its page size already (an existing store, one another
    ** process created first, an SQLite file with no tables yet). */
    if (s->page_size && page != s->page_size)
      mqi_log(s, MQ_LOG_INFO, "%s: page_size %d not applied: the file's pages are %lld bytes",
              s->path, s->page_size, (long long)page);
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_OK) {
    snprintf(err, errlen, "setting up %s: %s", s->path, sqlite3_errmsg(s->db));
    return mqi_err_from_sqlite(rc);
  }
  return MQ_OK;
}

/* Whether name still names the file the handle opened. */
static int store_same_file(const mq_store *s, const char *name) {
  uint64_t dev = 0, ino = 0;
  return mqi_os_file_id(name, &dev, &ino) == MQ_OK && dev == s->dev && ino == s->ino;
}

/* Open the SQLite connection and check the file; on failure s->db may be
** left open for store_free to close. */
static int store_connect(mq_store *s, char *err, size_t errlen) {
  int flags = (s->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOMUTEX;
#ifdef SQLITE_OPEN_NOFOLLOW
  flags |= SQLITE_OPEN_NOFOLLOW;
#endif
  int src = sqlite3_open_v2(s->fullpath, &s->db, flags, s->readonly ? NULL : mqi_vfs_name());
  if (src != SQLITE_OK) {
    snprintf(err, errlen, "cannot open %s: %s", s->path,
             s->db ? sqlite3_errmsg(s->db) : "out of memory");
    return src == SQLITE_NOMEM ? MQ_ENOMEM : MQ_ECANTOPEN;
  }
  sqlite3_extended_result_codes(s->db, 1);
  sqlite3_busy_timeout(s->db, s->busy_timeout_ms);
  /* SQLite quietly opens a file it cannot write read-only; a caller who
  ** asked to write should hear it now, not at the first put. */
  if (!s->readonly && sqlite3_db_readonly(s->db, "main") == 1) {
    snprintf(err, errlen,
             "%s is not writable by this process; open it with MQ_OPEN_READONLY to read it",
             s->path);
    return MQ_EREADONLY;
  }
  /* Only the file the handle was opened on: a reconnect must not make a
  ** store of another file that has taken the name since (an empty one
  ** would get the schema before any later check could refuse it). */
  if (!store_same_file(s, s->fullpath)) {
    snprintf(err, errlen, "%s is no longer the file this handle opened", s->path);
    return MQ_ECANTOPEN;
  }
  int rc = mqi_schema_open(s->db, s->readonly, s->page_size, err, errlen);
  if (rc == MQ_OK && !s->readonly) rc = store_pragmas(s, err, errlen);
  /* The statements that end transactions are compiled now, so that no
  ** rollback can fail later for want of memory to compile it. */
  for (int id = MQI_ST_BEGIN; rc == MQ_OK && !s->readonly && id <= MQI_ST_ROLLBACK_TO; id++) {
    if (!mqi_store_stmt(s, (enum mqi_stmt_id)id)) {
      snprintf(err, errlen, "%s: preparing statements: %s", s->path, sqlite3_errmsg(s->db));
      rc = mqi_err_from_sqlite(sqlite3_errcode(s->db));
      if (rc == MQ_OK) rc = MQ_ERROR;
    }
  }
  return rc;
}

/* Close the handle's own connection (the caller holds the gate when the
** connection may have written). */
static void store_disconnect(mq_store *s) {
  for (int i = 0; i < MQI_ST_COUNT; i++) {
    sqlite3_finalize(s->stmt[i]);
    s->stmt[i] = NULL;
  }
  sqlite3_close_v2(s->db);
  s->db = NULL;
}

int mqi_store_reconnect(mq_store *s) {
  char err[MQI_ERRMSG_MAX] = "";
  store_disconnect(s);
  /* store_connect reaches only the file the handle opened: another one at
  ** the name would be written under a gate that is not its own. */
  int rc = store_connect(s, err, sizeof err);
  if (rc == MQ_OK) {
    s->broken = 0;
    mqi_log(s, MQ_LOG_WARN, "%s: reopened after an error that left the connection unusable",
            s->path);
  } else {
    store_disconnect(s); /* every call reconnects first (mqi_store_lock, commit) */
    s->broken = 1;
    mqi_log(s, MQ_LOG_ERROR, "%s: reopening failed: %s", s->path, err);
  }
  return rc;
}

/* The innermost read this thread is inside (a scan's callback runs there),
** chained through mq_store.rd_prev to the reads around it: a second read
** of one of those handles would wait for the first forever. */
static _Thread_local const mq_store *store_reading;

int mqi_store_reading(const mq_store *s) {
  for (const mq_store *p = store_reading; p; p = p->rd_prev)
    if (p == s) return s->rd_main ? 2 : 1;
  return 0;
}

/* Open the reader and check that it reached the file db has: a path can
** come to name another file (renamed over, restored from a backup); then
** s->rdb_off is set.  Returns the SQLite code, SQLITE_OK when s->rdb is
** open. */
static int store_open_reader(mq_store *s) {
  int flags = SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX;
#ifdef SQLITE_OPEN_NOFOLLOW
  flags |= SQLITE_OPEN_NOFOLLOW;
#endif
  int src = sqlite3_open_v2(s->fullpath, &s->rdb, flags, NULL);
  if (src == SQLITE_OK) src = sqlite3_busy_timeout(s->rdb, s->busy_timeout_ms);
  if (src == SQLITE_OK && !store_same_file(s, s->fullpath)) {
    s->rdb_off = 1;
    src = SQLITE_CANTOPEN;
  }
  if (src != SQLITE_OK) {
    sqlite3_close(s->rdb);
    s->rdb = NULL;
  }
  return src;
}

int mqi_store_read(mq_store *s, sqlite3 **db) {
  *db = NULL;
  if (mqi_store_reading(s))
    return mqi_err_set(s, MQ_EMISUSE,
                       "%s: a read call of this handle inside a scan or verify callback of it",
                       s->path);
  pthread_mutex_lock(&s->rdlock);
  if (!s->rdb && !s->rdb_off) {
    int src = store_open_reader(s);
    if (src != SQLITE_OK && !s->rdb_off) {
      pthread_mutex_unlock(&s->rdlock);
      int rc = mqi_err_set(s, mqi_err_from_sqlite(src), "%s: opening a reader: %s", s->path,
                           sqlite3_errstr(src));
      return rc == MQ_OK ? MQ_ERROR : rc;
    }
  }
  if (!s->rdb) {
    /* Our file is no longer at its path: read on the handle's own
    ** connection, which still has it open, as writes do. */
    int rc = mqi_store_lock(s);
    if (rc != MQ_OK) {
      pthread_mutex_unlock(&s->rdlock);
      return rc;
    }
    s->rd_main = 1;
  }
  *db = s->rd_main ? s->db : s->rdb;
  s->rd_prev = store_reading;
  store_reading = s;
  return MQ_OK;
}

int mqi_store_snapshot(sqlite3 *db, int *format) {
  *format = MQI_FORMAT_VERSION;
  int src = sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
  if (src != SQLITE_OK) return src;
  /* The first read of the transaction fixes its snapshot: the version is
  ** the one of the rows the caller reads next. */
  sqlite3_stmt *st = NULL;
  src = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
  if (src == SQLITE_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
    *format = sqlite3_column_int(st, 0);
    src = SQLITE_OK;
  }
  sqlite3_finalize(st);
  return src;
}

int mqi_store_format_ok(mq_store *s, int format) {
  char err[MQI_ERRMSG_MAX];
  int rc = mqi_schema_newer(s->path, format, err, sizeof err);
  return rc == MQ_OK ? MQ_OK : mqi_err_copy(s, rc, err);
}

/* End the read's transaction, if it has one.  Ending can still fail (out
** of memory): then roll back, and if even that fails, 1: the connection
** must not serve another call inside this transaction. */
static int store_read_end(sqlite3 *db) {
  if (!db || sqlite3_get_autocommit(db)) return 0;
  if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK) return 0;
  if (sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL) == SQLITE_OK) return 0;
  return !sqlite3_get_autocommit(db);
}

void mqi_store_read_done(mq_store *s, int src) {
  int code = src & 0xff;
  int stuck = store_read_end(s->rd_main ? s->db : s->rdb);
  store_reading = s->rd_prev;
  s->rd_prev = NULL;
  if (s->rd_main) {
    s->rd_main = 0;
    if (stuck) s->broken = 1;
    pthread_mutex_unlock(&s->dblock);
    pthread_mutex_unlock(&s->rdlock);
    return;
  }
  /* After an I/O error, or a transaction it could not end, the reader's
  ** view cannot be trusted: a fresh one next time. */
  if (s->rdb && (stuck || code == SQLITE_IOERR || code == SQLITE_CORRUPT ||
                 code == SQLITE_NOTADB || code == SQLITE_CANTOPEN)) {
    sqlite3_close_v2(s->rdb);
    s->rdb = NULL;
  }
  pthread_mutex_unlock(&s->rdlock);
}

int mqi_store_lock(mq_store *s) {
  pthread_mutex_lock(&s->dblock);
  if (!s->broken && s->db) return MQ_OK;
  uint32_t ticket = mqi_gate_enter(s->gate);
  int rc = mqi_store_reconnect(s);
  mqi_gate_leave(s->gate, ticket);
  if (rc == MQ_OK) return MQ_OK;
  pthread_mutex_unlock(&s->dblock);
  return mqi_err_set(s, rc,
                     "%s: the store could not be reopened after an error; close it and open it "
                     "again",
                     s->path);
}

int mq_store_open(const char *path, const mq_store_options *opts, mq_store **out) {
  mq_store_options o;
  char err[MQI_ERRMSG_MAX] = "";
  int rc;
  if (out) *out = NULL;
  if (!out) return mqi_err_set(NULL, MQ_EINVAL, "mq_store_open: out is NULL");
  if (!path || !*path) return mqi_err_set(NULL, MQ_EINVAL, "mq_store_open: path is empty");
  if ((rc = store_read_options(opts, &o)) != MQ_OK) return rc;
  int readonly = (o.flags & MQ_OPEN_READONLY) != 0;

  rc =
      mqi_os_prepare_file(path, o.mode, (o.flags & MQ_OPEN_CREATE) != 0, readonly, err, sizeof err);
  if (rc != MQ_OK) return mqi_err_copy(NULL, rc, err);

  mq_store *s = calloc(1, sizeof *s);
  if (!s) return mqi_err_set(NULL, MQ_ENOMEM, "out of memory opening %s", path);
  pthread_mutex_init(&s->lock, NULL);
  pthread_mutex_init(&s->dblock, NULL);
  pthread_mutex_init(&s->rdlock, NULL);
  s->path = strdup(path);
  s->fullpath = strdup(path); /* made absolute once SQLite has opened it */
  s->sync = o.sync;
  s->readonly = readonly;
  s->busy_timeout_ms = o.busy_timeout_ms;
  s->clock = o.clock;
  s->clock_ctx = o.clock_ctx;
  s->log = o.log;
  s->log_ctx = o.log_ctx;
  s->min_free_bytes = o.min_free_bytes;
  s->page_size = o.page_size;
  s->free_checked_at = INT64_MIN / 2;
  s->fork_gen = mqi_os_fork_generation();
  s->rng = mqi_os_seed();
  if (!s->path || !s->fullpath) {
    store_free(s);
    return mqi_err_set(NULL, MQ_ENOMEM, "out of memory opening %s", path);
  }

  /* SQLite maps the -shm file and writes through the mapping; with no free
  ** blocks left that write kills the process with SIGBUS instead of
  ** returning an error.  Refuse to open while the file system is that
  ** close to full: a clear error beats a dead process. */
  int64_t free_bytes = mqi_os_free_bytes(path);
  if (free_bytes >= 0 && free_bytes < STORE_OPEN_MIN_FREE) {
    snprintf(err, sizeof err,
             "the file system holding %s has only %lld bytes free; free some space "
             "before opening it",
             path, (long long)free_bytes);
    store_free(s);
    return mqi_err_copy(NULL, MQ_EFULL, err);
  }

  /* A main file emptied by damage next to a WAL full of commits would
  ** otherwise be taken for a new store, and the WAL thrown away. */
  if (mqi_os_empty_beside_wal(path)) {
    snprintf(err, sizeof err,
             "%s is empty but its -wal file is not: refusing to start a new store over "
             "what may be recoverable data",
             path);
    store_free(s);
    return mqi_err_copy(NULL, MQ_ECORRUPT, err);
  }

  /* The gate first: creating the schema and recording this boot's clock
  ** are writes, and every write goes through the gate. */
  uint64_t dev = 0, ino = 0;
  if (mqi_os_file_id(path, &dev, &ino) != MQ_OK) {
    snprintf(err, sizeof err, "cannot stat %s", path);
    rc = MQ_ECANTOPEN;
  } else if (!(s->gate = mqi_gate_open(dev, ino, o.mode))) {
    snprintf(err, sizeof err, "out of memory opening %s", path);
    rc = MQ_ENOMEM;
  } else {
    s->dev = dev;
    s->ino = ino;
    uint32_t ticket = mqi_gate_enter(s->gate);
    rc = store_connect(s, err, sizeof err);
    if (rc == MQ_OK && !s->clock) rc = store_clock_init(s, err, sizeof err);
    /* Later opens (the reader, a reconnect) must reach this very file even
    ** if the process changes directory: SQLite's absolute name of it. */
    const char *full = rc == MQ_OK ? sqlite3_db_filename(s->db, "main") : NULL;
    char *copy = full && *full ? strdup(full) : NULL;
    if (copy) {
      free(s->fullpath);
      s->fullpath = copy;
    } else if (full && *full) {
      snprintf(err, sizeof err, "out of memory opening %s", path);
      rc = MQ_ENOMEM;
    }
    /* A failed open closes inside the gate, as mq_store_close does: the
    ** close may checkpoint. */
    if (rc != MQ_OK) store_disconnect(s);
    mqi_gate_leave(s->gate, ticket);
  }
  if (rc != MQ_OK) {
    if (!*err) snprintf(err, sizeof err, "%s: %s", path, mq_errstr(rc));
    store_free(s);
    return mqi_err_copy(NULL, rc, err);
  }
  if (!mqi_gate_is_shared(s->gate))
    mqi_log(s, MQ_LOG_WARN,
            "%s: no shared memory for the writer gate; waits notice other processes' "
            "puts by polling",
            path);
  *out = s;
  return MQ_OK;
}

int mq_store_close(mq_store *s) {
  if (!s) return MQ_OK;
  int rc = MQ_OK;
  if (s->fork_gen != mqi_os_fork_generation()) {
    /* A connection must not be used across fork(), and closing it is a use:
    ** it could checkpoint or unlink the WAL under the parent.  The child
    ** gives the memory back and leaves SQLite's state alone. */
    s->db = NULL;
    s->rdb = NULL;
    memset(s->stmt, 0, sizeof s->stmt);
    mqi_gate_forget(s->gate);
    s->gate = NULL;
    store_free(s);
    return MQ_EMISUSE;
  }
  for (int i = 0; i < MQI_ST_COUNT; i++) {
    sqlite3_finalize(s->stmt[i]);
    s->stmt[i] = NULL;
  }
  /* The reader first: it never checkpoints, and db is then the last. */
  if (s->rdb) sqlite3_close_v2(s->rdb);
  s->rdb = NULL;
  /* sqlite3_close checkpoints and removes the WAL when this is the last
  ** connection; if that fails the WAL is still there and still valid.  It
  ** goes through the gate like every writer, so it never checkpoints while
  ** another mq connection writes (see the WAL-reset note in durability.md). */
  uint32_t ticket = s->gate ? mqi_gate_enter(s->gate) : 0;
  if (s->db && sqlite3_close(s->db) != SQLITE_OK) {
    rc = MQ_EBUSY;
    sqlite3_close_v2(s->db);
  }
  if (s->gate) mqi_gate_leave(s->gate, ticket);
  s->db = NULL;
  store_free(s);
  return rc;
}

int mqi_store_check(mq_store *s, int writes) {
  if (!s) return mqi_err_set(NULL, MQ_EINVAL, "store is NULL");
  if (s->fork_gen != mqi_os_fork_generation())
    return mqi_err_set(s, MQ_EMISUSE,
                       "%s: this handle was opened before fork(); open a new one in the child",
                       s->path);
  if (writes && s->readonly)
    return mqi_err_set(s, MQ_EREADONLY, "%s was opened read-only", s->path);
  return MQ_OK;
}

sqlite3_stmt *mqi_store_stmt_hot(mq_store *s, enum mqi_stmt_id id) {
  if (!s->stmt[id] && sqlite3_prepare_v3(s->db, store_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                                         &s->stmt[id], NULL) != SQLITE_OK)
    return NULL;
  return s->stmt[id];
}

sqlite3_stmt *mqi_store_stmt(mq_store *s, enum mqi_stmt_id id) {
  sqlite3_stmt *st = mqi_store_stmt_hot(s, id);
  if (st) {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
  }
  return st;
}

int mqi_store_exec(mq_store *s, enum mqi_stmt_id id) {
  sqlite3_stmt *st = mqi_store_stmt(s, id);
  if (!st) return sqlite3_errcode(s->db);
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  return src == SQLITE_DONE || src == SQLITE_ROW ? SQLITE_OK : src;
}

int64_t mq_store_now(mq_store *s) { return s ? mqi_store_now(s) : 0; }

int64_t mqi_store_now(mq_store *s) {
  if (s->clock) return s->clock(s->clock_ctx);
  return mqi_os_boot_ms() + s->clock_offset;
}

uint64_t mqi_store_token(mq_store *s) {
  /* xorshift64*: fast, never zero from a non-zero state. */
  uint64_t x = s->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  s->rng = x;
  uint64_t t = (x * 0x2545F4914F6CDD1DULL) >> 1; /* fits an SQLite integer */
  return t ? t : 1;
}

int mqi_store_next_id(mq_store *s, mqi_op *op, int64_t *id) {
  if (s->id_state == 0) {
    sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_ID_GET);
    if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
    int src = sqlite3_step(st);
    int found = src == SQLITE_ROW;
    if (found) s->next_id = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    if (src != SQLITE_ROW && src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "reading ids");
    if (!found) { /* a new store: start after anything already there */
      if (!(st = mqi_store_stmt(s, MQI_ST_ID_MAX)))
        return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
      src = sqlite3_step(st);
      s->next_id = src == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 1;
      sqlite3_reset(st);
      if (src != SQLITE_ROW) return mqi_op_sqlite(s, op, src, "reading ids");
    }
    if (s->next_id < 1) s->next_id = 1;
    s->id_state = 1;
  }
  *id = s->next_id++;
  s->id_state = 2;
  return MQ_OK;
}

int mqi_store_next_ids(mq_store *s, mqi_op *op, size_t n, int64_t *first) {
  int rc = mqi_store_next_id(s, op, first);
  if (rc == MQ_OK && n > 1) s->next_id += (int64_t)n - 1;
  return rc;
}

int mqi_store_next_id_from(mq_store *s, mqi_op *op, int64_t floor, int64_t *id) {
  int rc = mqi_store_next_id(s, op, id);
  if (rc == MQ_OK && *id < floor) {
    *id = floor;
    s->next_id = floor + 1;
  }
  return rc;
}

int mqi_store_save_ids(mq_store *s) {
  if (s->id_state != 2) return SQLITE_OK;
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_ID_SET);
  if (!st) return sqlite3_errcode(s->db);
  sqlite3_bind_int64(st, 1, s->next_id);
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  return src == SQLITE_DONE ? SQLITE_OK : src;
}

/* Room for new messages: free space on the file system, plus the pages
** acked messages left free inside the file, which SQLite reuses before it
** grows the file.  -1 if the file system cannot say. */
static int64_t store_free_bytes(mq_store *s) {
  int64_t fs = mqi_os_free_bytes(s->path);
  if (fs < 0) return -1;
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_FREELIST);
  if (st && sqlite3_step(st) == SQLITE_ROW) fs += sqlite3_column_int64(st, 0);
  if (st) sqlite3_reset(st);
  return fs;
}

int mqi_store_low_space(mq_store *s) {
  if (s->min_free_bytes <= 0) return 0;
  int64_t now = mqi_os_monotonic_ms();
  if (now - s->free_checked_at >= STORE_FREE_RECHECK_MS) {
    s->free_bytes = store_free_bytes(s);
    s->free_checked_at = now;
  }
  return s->free_bytes >= 0 && s->free_bytes < s->min_free_bytes + STORE_FREE_MARGIN;
}

int mqi_store_space_ok(mq_store *s, mqi_op *op, int64_t incoming) {
  if (s->min_free_bytes <= 0) return MQ_OK;
  int64_t now = mqi_os_monotonic_ms();
  /* statvfs is read at most every STORE_FREE_RECHECK_MS while far from the
  ** floor.  In between, every put takes a pessimistic guess of what it
  ** will use (its payload in the WAL and again in the file, and the pages
  ** around it) off the figure, so the figure only falls between readings:
  ** a producer faster than the readings still meets a fresh one before it
  ** can reach the floor. */
  if (now - s->free_checked_at >= STORE_FREE_RECHECK_MS ||
      s->free_bytes < s->min_free_bytes + STORE_FREE_MARGIN) {
    s->free_bytes = store_free_bytes(s);
    s->free_checked_at = now;
  }
  if (s->free_bytes < 0) return MQ_OK; /* unknown: SQLite will tell */
  int64_t need = 2 * incoming + STORE_PUT_OVERHEAD;
  if (s->free_bytes - need < s->min_free_bytes) {
    op->flags |= MQI_OP_REFUSED;
    return mqi_op_fail(op, MQ_EFULL,
                       "%s: free space is below the floor of %lld bytes; puts are refused "
                       "so that acks and checkpoints keep working",
                       s->path, (long long)s->min_free_bytes);
  }
  s->free_bytes -= need;
  return MQ_OK;
}

int mq_store_checkpoint(mq_store *s) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if (mqi_store_reading(s))
    return mqi_err_set(s, MQ_EMISUSE, "%s: a checkpoint inside a scan or verify callback of it",
                       s->path);
  /* The handle's own reader first: a snapshot of it would make the
  ** TRUNCATE wait out the busy timeout inside the gate, holding up every
  ** writer of the file. */
  pthread_mutex_lock(&s->rdlock);
  if ((rc = mqi_store_lock(s)) != MQ_OK) {
    pthread_mutex_unlock(&s->rdlock);
    return rc;
  }
  uint32_t ticket = mqi_gate_enter(s->gate);
  int src = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
  mqi_gate_leave(s->gate, ticket);
  if (src != SQLITE_OK)
    rc = mqi_err_set(s, mqi_err_from_sqlite(src), "checkpoint of %s: %s", s->path,
                     sqlite3_errmsg(s->db));
  pthread_mutex_unlock(&s->dblock);
  pthread_mutex_unlock(&s->rdlock);
  return rc;
}
