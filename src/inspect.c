/*
** inspect.c -- reading a store without changing it: scanning every message
** of a queue (exports, backups), verifying the whole file, and the facts
** about the file as a whole.
**
** All run on the handle's read connection (mqi_store_read), scan and verify
** inside one read transaction so they see a single snapshot, and none takes
** the writer gate: other processes keep putting and getting while a scan
** runs, and so do this handle's other threads.  A read made from a scan or
** verify callback of the same handle returns MQ_EMISUSE (mq.h says why).
**
** Verification reports problems as text lines through a callback and goes
** on after each one, so a damaged store is described as a whole rather
** than by its first fault.
*/
#include "mqi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The visible state of a row as of now, as a get would see it. */
#define INSPECT_SCAN_SQL(P)                                                                     \
  "SELECT m.id, m.priority, m.receives, m.enqueued_at, m.reason, " MQI_PAYLOAD_COLS(P)          \
  ", m.visible_at, m.expires_at, m.state, b.subject, m.body_id"                                 \
  " FROM mq_msg m LEFT JOIN mq_body b ON b.id = m.body_id"                                      \
  " WHERE m.queue_id = ?1 AND " MQI_SQL_LIVE                                                    \
  " ORDER BY m.id"

/* A visible message that has used up max_receives is dead: the next get
** dead-letters it rather than deliver it. */
static int inspect_state(int state, int64_t visible_at, int receives, int max_receives,
                         int64_t now) {
  if ((state == MQI_INFLIGHT || state == MQI_DELAYED) && visible_at <= now) state = MQ_STATE_READY;
  if (state == MQ_STATE_READY && max_receives > 0 && receives >= max_receives)
    return MQ_STATE_DEAD;
  return state;
}

/* The message of the scan's current row, and its state. */
static int scan_row(sqlite3_stmt *st, int max_receives, int64_t now, mq_msg **m, int *state) {
  int rc = mqi_msg_build(
      sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 3), sqlite3_column_int(st, 2),
      sqlite3_column_int(st, 1), (const char *)sqlite3_column_text(st, 4),
      (const char *)sqlite3_column_text(st, 13), mqi_msg_body_size(st, 5, 6, 9),
      (uint32_t)sqlite3_column_int64(st, 6), sqlite3_column_int(st, 7), sqlite3_column_blob(st, 8),
      (size_t)sqlite3_column_bytes(st, 8), sqlite3_column_blob(st, 9),
      (size_t)sqlite3_column_bytes(st, 9), m);
  if (rc != MQ_OK) return rc;
  int64_t vis = sqlite3_column_int64(st, 10);
  mqi_msg_set_times(*m, vis, sqlite3_column_int64(st, 11));
  mqi_msg_set_body(*m, sqlite3_column_int64(st, 14));
  *state = inspect_state(sqlite3_column_int(st, 12), vis, sqlite3_column_int(st, 2), max_receives,
                         now);
  return MQ_OK;
}

int mq_queue_scan(mq_store *s, const char *queue, mq_scan_fn fn, void *ctx, int64_t *corrupt) {
  if (corrupt) *corrupt = 0;
  int rc = mqi_store_check(s, 0);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (!fn) return mqi_err_set(s, MQ_EINVAL, "mq_queue_scan: fn is NULL");
  sqlite3 *db;
  if ((rc = mqi_store_read(s, &db)) != MQ_OK) return rc;
  int64_t now = mqi_store_now(s), bad = 0;
  sqlite3_stmt *st = NULL;
  mqi_pack_cursor pc;
  memset(&pc, 0, sizeof pc);
  int format;
  int src = mqi_store_snapshot(db, &format);
  int64_t qid = 0, retention_ms = 0;
  int max_receives = 0;
  if (src == SQLITE_OK) rc = mqi_store_format_ok(s, format);
  if (src == SQLITE_OK && rc == MQ_OK)
    src = sqlite3_prepare_v2(
        db, "SELECT id, kind, max_receives, retention_ms FROM mq_queue WHERE name=?1", -1, &st,
        NULL);
  if (src == SQLITE_OK && rc == MQ_OK) {
    sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
    src = sqlite3_step(st);
    if (src == SQLITE_ROW && sqlite3_column_int(st, 1) == MQI_KIND_TOPIC) {
      rc = mqi_err_set(s, MQ_EINVAL, "%s: \"%s\" is a topic; scan its subscriptions, \"%s/SUB\"",
                       s->path, queue, queue);
      src = SQLITE_OK;
    } else if (src == SQLITE_ROW) {
      qid = sqlite3_column_int64(st, 0);
      max_receives = sqlite3_column_int(st, 2);
      retention_ms = sqlite3_column_int64(st, 3);
      src = SQLITE_OK;
    } else if (src == SQLITE_DONE) {
      rc = mqi_err_set(s, MQ_ENOTFOUND, "%s: no queue named \"%s\"", s->path, queue);
      src = SQLITE_OK;
    }
    sqlite3_finalize(st);
    st = NULL;
  }
  if (src == SQLITE_OK && rc == MQ_OK)
    src = sqlite3_prepare_v2(db,
                             format < 2 ? INSPECT_SCAN_SQL(MQI_PAYLOAD_V1)
                                        : INSPECT_SCAN_SQL(MQI_PAYLOAD_V2),
                             -1, &st, NULL);
  if (src == SQLITE_OK && rc == MQ_OK)
    src = mqi_pack_cursor_open(&pc, db, format, qid, retention_ms, now);
  if (src == SQLITE_OK && rc == MQ_OK) {
    sqlite3_bind_int64(st, 1, qid);
    sqlite3_bind_int64(st, 2, now);
    /* Rows and packed messages, merged in id order. */
    int64_t pid = 0;
    int psrc = mqi_pack_cursor_peek(&pc, &pid);
    src = sqlite3_step(st);
    while (mqi_merge_more(src, psrc)) {
      mq_msg *m = NULL;
      int brc, state = MQ_STATE_READY;
      if (src == SQLITE_ROW && (psrc != SQLITE_ROW || sqlite3_column_int64(st, 0) < pid)) {
        brc = scan_row(st, max_receives, now, &m, &state);
        src = sqlite3_step(st);
      } else {
        brc = mqi_pack_cursor_take(&pc, &m);
        psrc = mqi_pack_cursor_peek(&pc, &pid);
      }
      if (brc == MQ_ECORRUPT) {
        bad++;
        continue;
      }
      if (brc != MQ_OK) {
        rc = mqi_err_set(s, brc, "out of memory scanning \"%s\"", queue);
        break;
      }
      int stop = fn(ctx, m, state);
      mq_msg_free(m);
      if (stop) break;
    }
    if (src == SQLITE_ROW || src == SQLITE_DONE) src = psrc == SQLITE_ROW ? SQLITE_DONE : psrc;
    if (src == SQLITE_DONE) src = SQLITE_OK;
  }
  if (src != SQLITE_OK && rc == MQ_OK)
    rc = mqi_err_set(s, mqi_err_from_sqlite(src), "%s: scanning \"%s\": %s", s->path, queue,
                     sqlite3_errmsg(db));
  sqlite3_finalize(st);
  mqi_pack_cursor_close(&pc);
  mqi_store_read_done(s, src);
  if (corrupt) *corrupt = bad;
  return rc;
}

/* ---- verify ------------------------------------------------------------------ */

typedef struct verify_ctx {
  mq_verify_fn fn;
  void *ctx;
  int64_t problems;
} verify_ctx;

static void verify_report(verify_ctx *v, const char *fmt, ...) {
  char line[MQI_ERRMSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  v->problems++;
  if (v->fn) v->fn(v->ctx, line);
}

/* Run a query whose every row is a problem, described by column 0; ?1,
** if the query has it, is the file's format version.  Returns the SQLite
** code of the query. */
static int verify_rows(sqlite3 *db, verify_ctx *v, const char *sql, int format) {
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
  if (src != SQLITE_OK) return src;
  if (sqlite3_bind_parameter_count(st) > 0) sqlite3_bind_int(st, 1, format);
  while ((src = sqlite3_step(st)) == SQLITE_ROW) {
    const char *text = (const char *)sqlite3_column_text(st, 0);
    verify_report(v, "%s", text ? text : "");
  }
  sqlite3_finalize(st);
  return src == SQLITE_DONE ? SQLITE_OK : src;
}

/* Every payload against its checksum: bodies, and from format 2 on the
** payloads kept in message rows (a missing body is reported apart). */
#define VERIFY_PAYLOADS_SQL(P, WHERE)                                                         \
  "SELECT m.id, q.name, " MQI_PAYLOAD_COLS(P) " FROM mq_msg m"                              \
  " LEFT JOIN mq_body b ON b.id = m.body_id"                                                \
  " LEFT JOIN mq_queue q ON q.id = m.queue_id WHERE " WHERE " ORDER BY m.id"

static int verify_payloads(sqlite3 *db, int format, verify_ctx *v) {
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(
      db,
      format < 2 ? VERIFY_PAYLOADS_SQL(MQI_PAYLOAD_V1, "b.id IS NOT NULL")
                 : VERIFY_PAYLOADS_SQL(MQI_PAYLOAD_V2, "(m.body_id = 0 OR b.id IS NOT NULL)"),
      -1, &st, NULL);
  if (src != SQLITE_OK) return src;
  while ((src = sqlite3_step(st)) == SQLITE_ROW) {
    mq_msg *m = NULL;
    int rc =
        mqi_msg_build(sqlite3_column_int64(st, 0), 0, 0, 0, NULL, NULL, mqi_msg_body_size(st, 2, 3, 6),
                      (uint32_t)sqlite3_column_int64(st, 3), sqlite3_column_int(st, 4),
                      sqlite3_column_blob(st, 5), (size_t)sqlite3_column_bytes(st, 5),
                      sqlite3_column_blob(st, 6), (size_t)sqlite3_column_bytes(st, 6), &m);
    mq_msg_free(m);
    if (rc == MQ_ECORRUPT) {
      const char *q = (const char *)sqlite3_column_text(st, 1);
      /* Columns that cannot be NULL for a stored payload are: it is gone. */
      verify_report(v,
                    mqi_msg_body_size(st, 2, 3, 6) < 0
                        ? "queue \"%s\": message %lld: has no payload (its size, checksum or "
                          "data is missing)"
                        : "queue \"%s\": message %lld: payload fails its checksum",
                    q ? q : "?", (long long)sqlite3_column_int64(st, 0));
    } else if (rc != MQ_OK) {
      sqlite3_finalize(st);
      return SQLITE_NOMEM;
    }
  }
  sqlite3_finalize(st);
  return src == SQLITE_DONE ? SQLITE_OK : src;
}

/* Every pack (format 3): its queue, its framing, its messages' checksums. */
static int verify_packs(sqlite3 *db, verify_ctx *v) {
  sqlite3_stmt *st = NULL;
  /* A pack's ids must be its own: a message or a later pack with one of
  ** them would collide when it settles. */
  int src = sqlite3_prepare_v2(
      db,
      "SELECT p.id, q.name, p.n, p.data,"
      " EXISTS (SELECT 1 FROM mq_msg m WHERE m.id BETWEEN p.id AND p.id + p.n - 1)"
      " OR EXISTS (SELECT 1 FROM mq_pack o WHERE o.id > p.id AND o.id < p.id + p.n)"
      " FROM mq_pack p LEFT JOIN mq_queue q ON q.id = p.queue_id ORDER BY p.id",
      -1, &st, NULL);
  mqi_put_item *items = src == SQLITE_OK ? malloc(MQI_PACK_MSGS * sizeof *items) : NULL;
  if (src == SQLITE_OK && !items) src = SQLITE_NOMEM;
  while (src == SQLITE_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
    src = SQLITE_OK;
    long long id = sqlite3_column_int64(st, 0), n = sqlite3_column_int64(st, 2);
    const char *q = (const char *)sqlite3_column_text(st, 1);
    int64_t bad = 0;
    const char *what = q ? mqi_pack_damage(sqlite3_column_blob(st, 3),
                                           (size_t)sqlite3_column_bytes(st, 3), n, id, items, &bad)
                         : "belongs to no queue";
    if (what && bad)
      verify_report(v, "queue \"%s\": pack %lld: message %lld fails its checksum", q, id,
                    (long long)bad);
    else if (what)
      verify_report(v, "queue \"%s\": pack %lld (%lld messages) %s", q ? q : "?", id, n, what);
    if (sqlite3_column_int(st, 4))
      verify_report(v, "queue \"%s\": pack %lld shares message ids with other messages",
                    q ? q : "?", id);
  }
  free(items);
  sqlite3_finalize(st);
  return src == SQLITE_DONE ? SQLITE_OK : src;
}

int mq_store_verify(mq_store *s, mq_verify_fn fn, void *ctx, int64_t *problems) {
  if (problems) *problems = 0;
  int rc = mqi_store_check(s, 0);
  if (rc != MQ_OK) return rc;
  verify_ctx v = {fn, ctx, 0};
  sqlite3 *db;
  if ((rc = mqi_store_read(s, &db)) != MQ_OK) return rc;
  int format;
  int src = mqi_store_snapshot(db, &format);
  if (src == SQLITE_OK && (rc = mqi_store_format_ok(s, format)) != MQ_OK) {
    mqi_store_read_done(s, src);
    return rc;
  }
  if (src == SQLITE_OK) {
    /* SQLite's own check first: if the b-trees are damaged, the rest may
    ** read garbage, but it still runs and reports what it can. */
    sqlite3_stmt *st = NULL;
    src = sqlite3_prepare_v2(db, "PRAGMA integrity_check(100)", -1, &st, NULL);
    int step = SQLITE_DONE;
    while (src == SQLITE_OK && (step = sqlite3_step(st)) == SQLITE_ROW) {
      const char *line = (const char *)sqlite3_column_text(st, 0);
      if (!line || strcmp(line, "ok") == 0) continue;
      /* A page that could not be read (I/O error, out of memory) is not
      ** damage: the check could not run, which is another answer. */
      const char *code = strstr(line, "error code=");
      int ec = code ? atoi(code + 11) & 0xff : 0;
      if (ec == SQLITE_IOERR || ec == SQLITE_NOMEM) {
        step = ec;
        break;
      }
      verify_report(&v, "file: %s", line);
    }
    if (src == SQLITE_OK && step != SQLITE_DONE) src = step;
    sqlite3_finalize(st);
  }
  if (src == SQLITE_OK)
    src = verify_rows(db, &v,
                      "SELECT 'message ' || m.id || ' belongs to no queue (queue id '"
                      " || m.queue_id || ')' FROM mq_msg m"
                      " WHERE m.queue_id NOT IN (SELECT id FROM mq_queue)",
                      format);
  if (src == SQLITE_OK)
    src = verify_rows(db, &v,
                      "SELECT 'queue \"' || coalesce(q.name, '?') || '\": message ' || m.id"
                      " || ' has no payload (body ' || m.body_id || ' is missing)'"
                      " FROM mq_msg m LEFT JOIN mq_queue q ON q.id = m.queue_id"
                      " WHERE m.body_id NOT IN (SELECT id FROM mq_body)"
                      " AND (m.body_id != 0 OR ?1 < 2)",
                      format);
  if (src == SQLITE_OK)
    src = verify_rows(db, &v,
                      "SELECT 'payload ' || b.id || ' counts ' || b.refs || ' references but "
                      "has ' || count(m.id) FROM mq_body b LEFT JOIN mq_msg m"
                      " ON m.body_id = b.id GROUP BY b.id HAVING b.refs != count(m.id)",
                      format);
  if (src == SQLITE_OK)
    src = verify_rows(db, &v,
                      "SELECT 'message ' || id || ' has an invalid state ' || state"
                      " FROM mq_msg WHERE state NOT IN (0,1,2,3)",
                      format);
  if (src == SQLITE_OK) src = verify_payloads(db, format, &v);
  if (src == SQLITE_OK && format >= 3) src = verify_packs(db, &v);
  if (src != SQLITE_OK) {
    int code = mqi_err_from_sqlite(src);
    if (code == MQ_ECORRUPT) {
      verify_report(&v, "file: %s", sqlite3_errmsg(db));
      rc = MQ_ECORRUPT;
    } else {
      rc = mqi_err_set(s, code == MQ_OK ? MQ_ERROR : code, "%s: verifying: %s", s->path,
                       sqlite3_errmsg(db));
    }
  } else if (v.problems) {
    rc = mqi_err_set(s, MQ_ECORRUPT, "%s: %lld problem(s) found", s->path, (long long)v.problems);
  }
  mqi_store_read_done(s, src);
  if (problems) *problems = v.problems;
  return rc;
}

int mq_store_info_get(mq_store *s, mq_store_info *out) {
  if (out) memset(out, 0, sizeof *out);
  int rc = mqi_store_check(s, 0);
  if (rc != MQ_OK) return rc;
  if (!out) return mqi_err_set(s, MQ_EINVAL, "mq_store_info_get: out is NULL");
  sqlite3 *db;
  if ((rc = mqi_store_read(s, &db)) != MQ_OK) return rc;
  sqlite3_stmt *st = NULL;
  /* One statement, one snapshot. */
  int src = sqlite3_prepare_v2(db,
                               "SELECT (SELECT user_version FROM pragma_user_version),"
                               " (SELECT page_size FROM pragma_page_size),"
                               " (SELECT page_count FROM pragma_page_count),"
                               " (SELECT freelist_count FROM pragma_freelist_count),"
                               " (SELECT value FROM mq_meta WHERE key = 'created_by'),"
                               " (SELECT count(*) FROM mq_queue WHERE kind = 0),"
                               " (SELECT count(*) FROM mq_queue WHERE kind = 1),"
                               " (SELECT count(*) FROM mq_queue WHERE kind = 2)",
                               -1, &st, NULL);
  if (src == SQLITE_OK) src = sqlite3_step(st);
  if (src == SQLITE_ROW) {
    out->format_version = sqlite3_column_int(st, 0);
    out->page_size = sqlite3_column_int(st, 1);
    out->file_bytes = sqlite3_column_int64(st, 2) * out->page_size;
    out->free_bytes = sqlite3_column_int64(st, 3) * out->page_size;
    const unsigned char *by = sqlite3_column_text(st, 4);
    snprintf(out->created_by, sizeof out->created_by, "%s", by ? (const char *)by : "");
    out->queues = sqlite3_column_int64(st, 5);
    out->topics = sqlite3_column_int64(st, 6);
    out->subscriptions = sqlite3_column_int64(st, 7);
    src = SQLITE_OK;
  } else {
    rc = mqi_err_set(s, mqi_err_from_sqlite(src), "%s: reading the store's facts: %s", s->path,
                     sqlite3_errmsg(db));
    if (rc == MQ_OK) rc = MQ_ERROR;
  }
  sqlite3_finalize(st);
  if (rc == MQ_OK) {
    /* The unix VFS names the WAL after the file SQLite opened. */
    const char *file = sqlite3_db_filename(db, "main");
    size_t n = file ? strlen(file) : 0;
    char *wal = n ? malloc(n + 5) : NULL;
    struct stat sb;
    if (wal) {
      memcpy(wal, file, n);
      memcpy(wal + n, "-wal", 5);
      if (stat(wal, &sb) == 0) out->wal_bytes = (int64_t)sb.st_size;
      free(wal);
    }
  }
  mqi_store_read_done(s, src);
  if (rc != MQ_OK) memset(out, 0, sizeof *out);
  return rc;
}
