/*
** schema.c -- the on-disk format: creating it in a new file and refusing
** files that are not ours or are newer than we understand.
**
** The file is an ordinary SQLite database (doc/format.md describes it):
**
**   mq_queue  one row per queue, topic or subscription (`kind`); a
**             subscription is named "topic/sub", points at its topic with
**             `parent_id` and keeps its subject filter in `filter`.
**   mq_body   the payload, written once and never updated: leases change
**             only the small mq_msg row, never the payload's pages.  `refs`
**             counts the mq_msg rows that share it (a topic publish stores
**             one body for every subscription).
**   mq_msg    one row per message in a queue: state, lease, visibility,
**             receive count.  A small payload of a plain put lives in
**             the row itself (body_id 0, format version 2): one b-tree
**             insert and delete fewer per message.  Ready messages are found through
**             mq_msg_queue in priority-then-FIFO order; leases and delays
**             that run out are found through the small partial index
**             mq_msg_timer, which holds only hidden messages.
**   mq_dedup  deduplication keys, remembered for the queue's window even
**             after the message itself is gone.
**   mq_meta   key/value facts about the store: who created it, the clock of
**             the current boot, and `next_id`, the id sequence.
**   mq_pack   messages a PULL endpoint stored several to a row (format
**             version 3), until a transaction turns them into mq_msg rows
**             (pack.c); the pack's id is its first message's.
**
** Ids are never reused, even after the newest message is acked (SQLite
** alone would hand out max(rowid)+1 again): they come from `next_id`, read
** once per transaction and written back once at its commit, which costs a
** fraction of AUTOINCREMENT's per-row bookkeeping.  A plain put uses one id
** for its message and its body; a publish uses one for the body (the
** publish id) and one per subscription's message.  A new queue, topic or
** subscription takes one too, so a dead letter's origin_id never comes to
** name a queue created after its own was dropped.
**
** PRAGMA application_id marks the file as an mq store and PRAGMA
** user_version carries the format version.  A file is checked before
** anything is written to it: a foreign database or a newer format is
** refused untouched.
*/
#include "mqi.h"

#include <stdio.h>
#include <string.h>

/* The payload columns of mq_msg, added by format version 2.  A version 1
** file gets them by ALTER TABLE, which appends them: a created file lists
** them last too, so the two have the same columns in the same order.  No
** constraints, which ALTER TABLE could not add to existing rows: they are
** NULL in a row whose payload is in mq_body (body_id > 0).  C(name, type)
** is applied to each, with sep between. */
#define SCHEMA_INLINE_COLUMNS(C, sep) \
  C("size", "INTEGER") sep C("crc", "INTEGER") sep C("codec", "INTEGER") sep \
  C("headers", "BLOB") sep C("data", "BLOB")
#define SCHEMA_COLUMN_DEF(name, type) " " name " " type
#define SCHEMA_COLUMN_ADD(name, type) "ALTER TABLE mq_msg ADD COLUMN " name " " type ";"
#define SCHEMA_COLUMN_NAME(name, type) "'" name "'"
#define SCHEMA_COLUMN_ONE(name, type) +1
#define SCHEMA_INLINE_N (0 SCHEMA_INLINE_COLUMNS(SCHEMA_COLUMN_ONE, ))

/* Format version 3: packs (pack.c), added to older files as they are. */
#define SCHEMA_PACK_SQL                                                          \
  "CREATE TABLE mq_pack("                                                        \
  " id INTEGER PRIMARY KEY,"                                                     \
  " queue_id INTEGER NOT NULL,"                                                  \
  " n INTEGER NOT NULL,"                                                         \
  " bytes INTEGER NOT NULL,"                                                     \
  " enqueued_at INTEGER NOT NULL,"                                               \
  " data BLOB NOT NULL);"

static const char schema_sql[] =
    "CREATE TABLE mq_meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
    "CREATE TABLE mq_queue("
    " id INTEGER PRIMARY KEY,"
    " name TEXT NOT NULL UNIQUE,"
    " kind INTEGER NOT NULL DEFAULT 0,"
    " parent_id INTEGER,"
    " filter TEXT,"
    " visibility_ms INTEGER NOT NULL,"
    " max_receives INTEGER NOT NULL,"
    " dlq_id INTEGER,"
    " retention_ms INTEGER NOT NULL,"
    " max_payload INTEGER NOT NULL,"
    " compress_above INTEGER NOT NULL,"
    " dedup_window_ms INTEGER NOT NULL,"
    " created_at INTEGER NOT NULL);"
    "CREATE INDEX mq_queue_parent ON mq_queue(parent_id) WHERE parent_id IS NOT NULL;"
    "CREATE TABLE mq_body("
    " id INTEGER PRIMARY KEY,"
    " refs INTEGER NOT NULL,"
    " size INTEGER NOT NULL,"
    " crc INTEGER NOT NULL,"
    " codec INTEGER NOT NULL,"
    " headers BLOB,"
    " subject TEXT,"
    " data BLOB NOT NULL);"
    "CREATE TABLE mq_msg("
    " id INTEGER PRIMARY KEY,"
    " queue_id INTEGER NOT NULL,"
    " body_id INTEGER NOT NULL,"
    " state INTEGER NOT NULL,"
    " priority INTEGER NOT NULL,"
    " visible_at INTEGER NOT NULL,"
    " lease INTEGER,"
    " receives INTEGER NOT NULL,"
    " enqueued_at INTEGER NOT NULL,"
    " expires_at INTEGER,"
    " origin_id INTEGER,"
    " reason TEXT,"
    SCHEMA_INLINE_COLUMNS(SCHEMA_COLUMN_DEF, ",") ");"
    "CREATE INDEX mq_msg_queue ON mq_msg(queue_id, state, priority DESC, id);"
    "CREATE INDEX mq_msg_timer ON mq_msg(queue_id, visible_at) WHERE state IN (1,2);"
    "CREATE INDEX mq_msg_expiry ON mq_msg(queue_id, expires_at) WHERE expires_at IS NOT NULL;"
    "CREATE TABLE mq_dedup("
    " queue_id INTEGER NOT NULL,"
    " key TEXT NOT NULL,"
    " msg_id INTEGER NOT NULL,"
    " expires_at INTEGER NOT NULL,"
    " PRIMARY KEY(queue_id, key)) WITHOUT ROWID;"
    "CREATE INDEX mq_dedup_expiry ON mq_dedup(expires_at);"
    SCHEMA_PACK_SQL;

static int schema_int(sqlite3 *db, const char *sql, int64_t *out, int *src) {
  sqlite3_stmt *st = NULL;
  *src = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
  if (*src != SQLITE_OK) return -1;
  *src = sqlite3_step(st);
  if (*src == SQLITE_ROW) {
    *out = sqlite3_column_int64(st, 0);
    *src = SQLITE_OK;
  } else if (*src == SQLITE_DONE) {
    *out = 0;
    *src = SQLITE_OK;
  }
  sqlite3_finalize(st);
  return *src == SQLITE_OK ? 0 : -1;
}

/* Read the identity of the file without writing to it. */
static int schema_identity(sqlite3 *db, int64_t *app, int64_t *version, int64_t *objects, char *err,
                           size_t errlen) {
  int src;
  if (schema_int(db, "PRAGMA application_id", app, &src) ||
      schema_int(db, "PRAGMA user_version", version, &src) ||
      schema_int(db, "SELECT count(*) FROM sqlite_schema", objects, &src)) {
    int rc = mqi_err_from_sqlite(src);
    if (rc == MQ_ENOTMQ || rc == MQ_ECORRUPT)
      snprintf(err, errlen, "%s: %s", sqlite3_db_filename(db, "main"),
               rc == MQ_ENOTMQ ? "not an mq store (not an SQLite database)"
                               : "the database file is damaged");
    else
      snprintf(err, errlen, "reading %s: %s", sqlite3_db_filename(db, "main"), sqlite3_errmsg(db));
    return rc == MQ_OK ? MQ_ERROR : rc;
  }
  return MQ_OK;
}

int mqi_schema_newer(const char *file, int64_t version, char *err, size_t errlen) {
  if (version <= MQI_FORMAT_VERSION) return MQ_OK;
  snprintf(err, errlen, "%s has format version %lld; this library (mq %s) reads up to version %d",
           file, (long long)version, MQ_VERSION, MQI_FORMAT_VERSION);
  return MQ_EVERSION;
}

static int schema_check(sqlite3 *db, int64_t app, int64_t version, char *err, size_t errlen) {
  const char *file = sqlite3_db_filename(db, "main");
  if (app != MQI_APPLICATION_ID) {
    snprintf(err, errlen, "%s is an SQLite database of another application (application_id %lld)",
             file, (long long)app);
    return MQ_ENOTMQ;
  }
  int rc = mqi_schema_newer(file, version, err, errlen);
  if (rc != MQ_OK) return rc;
  if (version < 1) {
    snprintf(err, errlen, "%s has an invalid mq format version %lld", file, (long long)version);
    return MQ_ECORRUPT;
  }
  return MQ_OK;
}

static int schema_fail(sqlite3 *db, int src, const char *what, char *err, size_t errlen) {
  snprintf(err, errlen, "%s %s: %s", what, sqlite3_db_filename(db, "main"), sqlite3_errmsg(db));
  return mqi_err_from_sqlite(src);
}

/* Switch to WAL mode and check that it took: SQLite answers with the mode
** now in force and reports success even when it could not switch (no
** shared memory on this file system, say).  Without WAL, mq's durability
** (it fsyncs the WAL itself) and its concurrency do not hold. */
static int schema_wal(sqlite3 *db, char *err, size_t errlen) {
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
  char mode[16] = "";
  if (src == SQLITE_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
    snprintf(mode, sizeof mode, "%s", (const char *)sqlite3_column_text(st, 0));
    src = SQLITE_OK;
  }
  sqlite3_finalize(st);
  if (src != SQLITE_OK) return schema_fail(db, src, "switching to WAL", err, errlen);
  if (sqlite3_stricmp(mode, "wal") != 0) {
    snprintf(err, errlen, "%s cannot be put in WAL mode (it stays in \"%s\" mode); mq needs WAL",
             sqlite3_db_filename(db, "main"), mode);
    return MQ_ECANTOPEN;
  }
  return MQ_OK;
}

/* Bring a version 1 or 2 file to the current format in one transaction;
** a process that gets the lock after another did it finds nothing to do.
** Existing rows are not touched: ADD COLUMN only rewrites the schema, so
** this costs the same on a file of a billion messages as on an empty one. */
static int schema_upgrade(sqlite3 *db, char *err, size_t errlen) {
  int src = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
  if (src != SQLITE_OK) return schema_fail(db, src, "locking", err, errlen);
  int64_t version = 0, have = 0, packs = 0;
  if (schema_int(db, "PRAGMA user_version", &version, &src) == 0 && version >= 1 &&
      version < MQI_FORMAT_VERSION &&
      schema_int(db,
                 "SELECT count(*) FROM pragma_table_info('mq_msg')"
                 " WHERE name IN (" SCHEMA_INLINE_COLUMNS(SCHEMA_COLUMN_NAME, ",") ")",
                 &have, &src) == 0 &&
      schema_int(db, "SELECT count(*) FROM sqlite_schema WHERE name = 'mq_pack'", &packs,
                 &src) == 0) {
    /* A version 1 file may already have the columns (set back to version
    ** 1 by hand): then only the version is missing.  Some of them is
    ** damage no upgrade can mend. */
    if (have != 0 && have != SCHEMA_INLINE_N) {
      sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
      snprintf(err, errlen, "%s: format version %lld, but mq_msg has %lld of the %d columns of version 2",
               sqlite3_db_filename(db, "main"), (long long)version, (long long)have,
               SCHEMA_INLINE_N);
      return MQ_ECORRUPT;
    }
    char sql[768];
    snprintf(sql, sizeof sql, "%s%s PRAGMA user_version=%d;",
             have ? "" : SCHEMA_INLINE_COLUMNS(SCHEMA_COLUMN_ADD, ""),
             packs ? "" : SCHEMA_PACK_SQL, MQI_FORMAT_VERSION);
    src = sqlite3_exec(db, sql, NULL, NULL, NULL);
  }
  if (src == SQLITE_OK) src = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  if (src == SQLITE_OK) return MQ_OK;
  int rc = schema_fail(db, src, "upgrading the format of", err, errlen);
  sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
  return rc;
}

int mqi_schema_open(sqlite3 *db, int readonly, int page_size, char *err, size_t errlen) {
  int64_t app, version, objects;
  int rc = schema_identity(db, &app, &version, &objects, err, errlen);
  if (rc != MQ_OK) return rc;
  if (app != 0 || objects != 0 || version != 0) {
    rc = schema_check(db, app, version, err, errlen);
    if (rc != MQ_OK) return rc;
    if (readonly) return MQ_OK;
    if ((rc = schema_wal(db, err, errlen)) != MQ_OK) return rc;
    return version < MQI_FORMAT_VERSION ? schema_upgrade(db, err, errlen) : MQ_OK;
  }
  /* An empty database: make it a store.  Another process may be doing the
  ** same right now, so the check is repeated under the write lock. */
  if (readonly) {
    snprintf(err, errlen, "%s is empty, and a read-only open cannot create a store",
             sqlite3_db_filename(db, "main"));
    return MQ_ENOTMQ;
  }
  /* The page size must be set before the first write (switching to WAL
  ** writes the header); if another process created the file meanwhile,
  ** SQLite ignores it and the file keeps that process's choice. */
  if (page_size > 0) {
    char sql[40];
    snprintf(sql, sizeof sql, "PRAGMA page_size=%d", page_size);
    int src = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (src != SQLITE_OK) return schema_fail(db, src, "setting the page size of", err, errlen);
  }
  if ((rc = schema_wal(db, err, errlen)) != MQ_OK) return rc;
  int src = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
  if (src != SQLITE_OK) return schema_fail(db, src, "locking", err, errlen);
  rc = schema_identity(db, &app, &version, &objects, err, errlen);
  if (rc == MQ_OK && (app != 0 || objects != 0 || version != 0)) {
    rc = schema_check(db, app, version, err, errlen);
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
  }
  if (rc == MQ_OK) {
    char sql[160];
    src = sqlite3_exec(db, schema_sql, NULL, NULL, NULL);
    if (src == SQLITE_OK) {
      snprintf(sql, sizeof sql,
               "PRAGMA application_id=%d; PRAGMA user_version=%d;"
               "INSERT INTO mq_meta VALUES('created_by', 'mq " MQ_VERSION "');",
               MQI_APPLICATION_ID, MQI_FORMAT_VERSION);
      src = sqlite3_exec(db, sql, NULL, NULL, NULL);
    }
    if (src == SQLITE_OK) src = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    if (src != SQLITE_OK) rc = schema_fail(db, src, "creating the schema in", err, errlen);
  }
  if (rc != MQ_OK) sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
  return rc;
}
