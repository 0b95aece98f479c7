/*
** pack.c -- packs: the messages of a PULL endpoint, many to a row.
**
** One row per message costs about a microsecond of SQLite work, more than
** a ZMTP peer takes to send a small message: a PULL endpoint that stored
** each message as a put could not keep up with its peers (bench/README).
** So the endpoint stores each batch as packs: up to MQI_PACK_MSGS messages
** in one mq_pack row, durable at its commit like any put (format 3).
**
** Ops that take messages see rows only: a transaction with a get or a
** redrive turns packs into ordinary mq_msg rows ("settles" them) before
** that op runs (commit.c, MQI_RUN_SETTLE), as a batch of plain puts would
** have written them.  The ids are taken when the pack is written, and a
** pack's row id is its first message's, so messages keep the order of
** their commits whenever they are settled; enqueued_at is the pack's, so
** ages and retention count from the commit too.  Other writes need no
** settle: puts take later ids, acks and touches act on leased rows, purge
** and drop delete a queue's packs with its rows.  Reads do not settle (a
** read-only handle cannot, a read-write one's reads must not wait for
** writers): peek and scan read packed messages in place (pack_read.c),
** stats count them, verify checks them.
**
** Settling is not fsynced: the packs it deletes and the rows it writes
** are one transaction, so a power cut keeps either the packs or the rows.
** A settle that fails (a full disk, say) is logged and undone, and the
** gets of its transaction fail with its code rather than answer "empty";
** its other ops run without it, so acks keep working.
**
** A pack's data is, per message: its size (varint), its CRC32 (4 bytes,
** little-endian), the size of its encoded headers (varint), the headers,
** the payload.  The CRC is the one a put computes, copied into the row, so
** a payload damaged in its pack is refused by every later read as any
** damaged row is (msg.c).  Damaged framing (a size past the end) makes the
** rest of the pack one message whose CRC cannot match: it is dead-lettered
** like any corrupt message instead of being lost or blocking the settle.
*/
#include "mqi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define PACK_BYTES (256 * 1024) /* a pack is closed past this many bytes */
#define PACK_VARINT_MAX 10

static size_t pack_varint_put(unsigned char *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = (unsigned char)(v | 0x80);
    v >>= 7;
  }
  p[n++] = (unsigned char)v;
  return n;
}

static size_t pack_entry_max(const mqi_put_item *it) {
  return 2 * PACK_VARINT_MAX + 4 + it->headers_len + it->len;
}

typedef struct pack_arg {
  const char *queue;
  const mqi_put_item *items;
  size_t n;
} pack_arg;

/* One pack of items[0..n) into q, encoded in buf (big enough). */
static int pack_write(mq_store *s, mqi_op *op, const mqi_queue *q, const mqi_put_item *items,
                      size_t n, unsigned char *buf, int64_t now) {
  int64_t first;
  int rc = mqi_store_next_ids(s, op, n, &first);
  if (rc != MQ_OK) return rc;
  size_t at = 0;
  int64_t bytes = 0;
  for (size_t i = 0; i < n; i++) {
    const mqi_put_item *it = &items[i];
    at += pack_varint_put(buf + at, it->len);
    for (int k = 0; k < 4; k++) buf[at++] = (unsigned char)(it->crc >> (8 * k));
    at += pack_varint_put(buf + at, it->headers_len);
    if (it->headers_len) memcpy(buf + at, it->headers, it->headers_len);
    at += it->headers_len;
    if (it->len) memcpy(buf + at, it->data, it->len);
    at += it->len;
    bytes += (int64_t)it->len;
  }
  sqlite3_stmt *st = mqi_store_stmt_hot(s, MQI_ST_PACK_INSERT);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, first);
  sqlite3_bind_int64(st, 2, q->id);
  sqlite3_bind_int64(st, 3, (int64_t)n);
  sqlite3_bind_int64(st, 4, bytes);
  sqlite3_bind_int64(st, 5, now);
  sqlite3_bind_blob64(st, 6, buf, at, SQLITE_STATIC);
  op->flags |= MQI_OP_WROTE;
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "storing a pack");
  return MQ_OK;
}

static int pack_put_op(mq_store *s, mqi_op *op) {
  const pack_arg *a = op->arg;
  mqi_queue q;
  int rc = mqi_queue_find(s, op, a->queue, &q);
  if (rc != MQ_OK) return rc;
  if (q.kind != MQI_KIND_QUEUE)
    return mqi_op_fail(op, MQ_EINVAL, "%s: \"%s\" is a %s, not a queue", s->path, a->queue,
                       q.kind == MQI_KIND_TOPIC ? "topic" : "subscription");
  int64_t total = 0;
  for (size_t i = 0; i < a->n; i++) {
    if ((int64_t)a->items[i].len > q.max_payload)
      return mqi_op_fail(op, MQ_ETOOBIG,
                         "%s: entry %zu: payload of %zu bytes is above the max_payload of %lld",
                         s->path, i, a->items[i].len, (long long)q.max_payload);
    total += (int64_t)a->items[i].len;
  }
  if ((rc = mqi_store_space_ok(s, op, total)) != MQ_OK) return rc;
  int64_t now = mqi_store_now(s);
  unsigned char *buf = NULL;
  size_t cap = 0;
  for (size_t i = 0; i < a->n && rc == MQ_OK;) {
    size_t k = 0, need = 0;
    while (i + k < a->n && k < MQI_PACK_MSGS && (k == 0 || need < PACK_BYTES))
      need += pack_entry_max(&a->items[i + k++]);
    if (need > cap) {
      unsigned char *p = realloc(buf, need);
      if (!p) {
        rc = mqi_op_fail(op, MQ_ENOMEM, "out of memory for a pack of %zu bytes", need);
        break;
      }
      buf = p;
      cap = need;
    }
    rc = pack_write(s, op, &q, &a->items[i], k, buf, now);
    i += k;
  }
  free(buf);
  if (rc != MQ_OK) return rc;
  s->packs_pending = 1;
  op->flags |= MQI_OP_WAKE; /* a waiting get settles and takes them */
  return MQ_OK;
}

int mqi_pack_put(mq_store *s, const char *queue, const mqi_put_item *items, size_t n) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (n == 0) return MQ_OK;
  if (!items) return mqi_err_set(s, MQ_EINVAL, "mqi_pack_put: items is NULL");
  for (size_t i = 0; i < n; i++)
    if ((!items[i].data && items[i].len) || items[i].len > MQ_PAYLOAD_LIMIT)
      return mqi_err_set(s, items[i].data ? MQ_ETOOBIG : MQ_EINVAL,
                         "entry %zu: a payload of %zu bytes%s", i, items[i].len,
                         items[i].data ? " is above the limit" : " with no data");
  pack_arg a = {queue, items, n};
  return mqi_commit_run(s, pack_put_op, &a,
                        MQI_RUN_DURABLE | MQI_RUN_REPEATABLE | MQI_RUN_KEEPS_QUEUES | MQI_RUN_PACK);
}

/* A pack's row, its data copied: the statement is reset before the pack's
** row is deleted. */
typedef struct pack_row {
  int64_t id, qid, n, enqueued;
  unsigned char *data;
  size_t len;
} pack_row;

static int pack_row_read(sqlite3_stmt *st, pack_row *r) {
  r->id = sqlite3_column_int64(st, 0);
  r->qid = sqlite3_column_int64(st, 1);
  r->n = sqlite3_column_int64(st, 2);
  r->enqueued = sqlite3_column_int64(st, 3);
  r->len = (size_t)sqlite3_column_bytes(st, 4);
  r->data = r->len ? malloc(r->len) : NULL;
  if (r->data) memcpy(r->data, sqlite3_column_blob(st, 4), r->len);
  sqlite3_reset(st);
  return r->len && !r->data ? MQ_ENOMEM : MQ_OK;
}

/* Settle one pack: its rows in, its row out.  With fresh, the messages
** take new ids instead of the pack's (see mqi_pack_settle). */
static int pack_settle_one(mq_store *s, mqi_op *op, const pack_row *r, mqi_put_item *items,
                           int64_t now, int fresh) {
  mqi_queue q;
  int rc = mqi_queue_by_id(s, op, r->qid, &q);
  if (rc == MQ_ENOTFOUND) {
    /* Only damage can leave such a row: a queue's purge and drop take its
    ** packs with them. */
    mqi_log(s, MQ_LOG_ERROR, "%s: pack %lld (%lld messages) names no queue; dropped", s->path,
            (long long)r->id, (long long)r->n);
    rc = MQ_OK;
  } else if (rc == MQ_OK &&
             !(q.retention_ms > 0 && mqi_time_add(r->enqueued, q.retention_ms) <= now)) {
    size_t trailing;
    size_t k = mqi_pack_parse(r->data, r->len, items, &trailing);
    if (trailing || (int64_t)k != r->n)
      mqi_log(s, MQ_LOG_ERROR,
              "%s: pack %lld: %zu messages where %lld were stored, %zu bytes "
              "left over",
              s->path, (long long)r->id, k, (long long)r->n, trailing);
    int64_t first = r->id, span = k ? (int64_t)k : 1;
    if (fresh)
      rc = mqi_store_next_ids(s, op, (size_t)span, &first);
    else if (!mqi_pack_ids_ok(first, (size_t)span))
      rc = mqi_op_fail(op, MQ_ECORRUPT, "%s: pack %lld: its ids are out of range", s->path,
                       (long long)r->id); /* damage: settled under new ids */
    if (rc == MQ_OK) rc = mqi_put_rows_at(s, op, &q, items, k, r->enqueued, first);
  }
  if (rc != MQ_OK) return rc;
  sqlite3_stmt *del = mqi_store_stmt(s, MQI_ST_PACK_DELETE);
  if (!del) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(del, 1, r->id);
  int src = sqlite3_step(del);
  sqlite3_reset(del);
  return src == SQLITE_DONE ? MQ_OK : mqi_op_sqlite(s, op, src, "deleting a pack");
}

/* A pack that failed for another reason than a passing one (a full disk,
** memory, I/O, a lock) is damaged: it is set aside for this transaction,
** not allowed to hold back the packs after it. */
static int pack_transient(int rc) {
  return rc == MQ_ENOMEM || rc == MQ_EFULL || rc == MQ_EIO || rc == MQ_EBUSY;
}

/* Settle one pack in a savepoint of its own.  A pack that fails for any
** other reason than a passing one can only be damaged: its ids collide
** with rows, say.  It is settled again under new ids (its messages go to
** the back of the queue rather than be lost), and if even that fails it is
** set aside for this transaction (*aside), not allowed to hold back the
** packs after it. */
static int pack_settle_saved(mq_store *s, mqi_op *op, const pack_row *r, mqi_put_item *items,
                             int64_t now, int *aside) {
  int rc = MQ_OK;
  *aside = 0;
  for (int fresh = 0; fresh < 2; fresh++) {
    /* Savepoints of one name nest: these act on the innermost. */
    int src = mqi_store_exec(s, MQI_ST_SAVEPOINT);
    if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "savepoint");
    rc = pack_settle_one(s, op, r, items, now, fresh);
    if (rc != MQ_OK && sqlite3_get_autocommit(s->db)) return rc; /* the transaction is gone */
    if (rc != MQ_OK && (src = mqi_store_exec(s, MQI_ST_ROLLBACK_TO)) != SQLITE_OK)
      return mqi_op_sqlite(s, op, src, "undoing a pack");
    if ((src = mqi_store_exec(s, MQI_ST_RELEASE)) != SQLITE_OK)
      return mqi_op_sqlite(s, op, src, "savepoint");
    if (rc == MQ_OK || pack_transient(rc)) return rc;
    mqi_log(s, MQ_LOG_ERROR, "%s: pack %lld cannot be settled%s (%s)", s->path, (long long)r->id,
            fresh ? " under new ids either; it waits" : "; trying new ids", op->err);
    op->err[0] = '\0';
  }
  *aside = 1;
  return MQ_OK;
}

int mqi_pack_settle(mq_store *s, mqi_op *op, int64_t max, int *left) {
  int64_t now = mqi_store_now(s), done = 0, after = INT64_MIN;
  *left = 0;
  mqi_put_item *items = malloc(MQI_PACK_MSGS * sizeof *items);
  if (!items) return mqi_op_fail(op, MQ_ENOMEM, "out of memory settling packs");
  int rc = MQ_OK;
  for (;;) {
    sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_PACK_OLDEST);
    if (!st) {
      rc = mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
      break;
    }
    sqlite3_bind_int64(st, 1, after);
    int src = sqlite3_step(st);
    if (src != SQLITE_ROW || done >= max) {
      sqlite3_reset(st);
      if (src == SQLITE_ROW)
        *left = 1;
      else if (src != SQLITE_DONE)
        rc = mqi_op_sqlite(s, op, src, "reading a pack");
      break;
    }
    if (after != INT64_MIN && sqlite3_column_int64(st, 0) <= after) {
      /* Only a damaged b-tree answers so; going on would never end. */
      sqlite3_reset(st);
      rc = mqi_op_fail(op, MQ_ECORRUPT, "%s: the packs' table is damaged", s->path);
      break;
    }
    op->flags |= MQI_OP_WROTE;
    pack_row r;
    int aside = 0;
    rc = pack_row_read(st, &r);
    if (rc == MQ_OK)
      rc = pack_settle_saved(s, op, &r, items, now, &aside);
    else
      rc = mqi_op_fail(op, rc, "out of memory settling a pack of %zu bytes", r.len);
    free(r.data);
    if (rc != MQ_OK) break;
    /* Only settled packs count towards max: packs set aside stay, and the
    ** next call meets them again first; counted, enough of them would
    ** make every call end with *left and no progress (a caller looping
    ** on *left would never end).  The count is the stored one, bounded
    ** (damage). */
    if (!aside) done += r.n < 1 ? 1 : r.n > MQI_PACK_MSGS ? MQI_PACK_MSGS : r.n;
    after = r.id;
  }
  free(items);
  return rc;
}

int mqi_pack_clear(mq_store *s, mqi_op *op, int64_t qid, int64_t *deleted) {
  sqlite3_stmt *st = NULL;
  /* A damaged count is bounded as stats bound it, not summed into an
  ** overflow. */
  int src = sqlite3_prepare_v2(
      s->db, "DELETE FROM mq_pack WHERE queue_id = ?1 RETURNING min(max(n, 1), 256)", -1, &st,
      NULL);
  if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "preparing");
  sqlite3_bind_int64(st, 1, qid);
  while ((src = sqlite3_step(st)) == SQLITE_ROW)
    if (deleted) *deleted += sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return src == SQLITE_DONE ? MQ_OK : mqi_op_sqlite(s, op, src, "deleting packs");
}

int mqi_pack_check(mq_store *s, int *backlog, char *msg, size_t cap) {
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_PACK_ANY);
  int src = st ? sqlite3_step(st) : sqlite3_errcode(s->db);
  int64_t packs = src == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  if (st) sqlite3_reset(st);
  s->packs_pending = packs > 0;
  *backlog = packs > MQI_PACK_STEP / MQI_PACK_MSGS;
  if (src == SQLITE_ROW) return MQ_OK;
  snprintf(msg, cap, "%s: looking for packs: %s (SQLite code %d)", s->path, sqlite3_errmsg(s->db),
           src);
  int rc = mqi_err_from_sqlite(src);
  return rc == MQ_OK ? MQ_ERROR : rc;
}

static void pack_op_init(mqi_op *op) {
  op->how = MQI_RUN_PACK;
  op->flags = 0;
  op->rc = MQ_OK;
  op->err[0] = '\0';
}

static void pack_failed(mq_store *s, const mqi_op *op) {
  if (s->pack_log_failed) return;
  s->pack_log_failed = 1;
  mqi_log(s, MQ_LOG_WARN,
          "%s: packed messages could not be turned into rows (%s); trying again with the "
          "next transaction",
          s->path, op->err[0] ? op->err : "unknown error");
}

int mqi_pack_settle_all(mq_store *s, int *redo) {
  *redo = 0;
  if (!s->packs_pending) return MQ_OK;
  s->packs_pending = 0;
  mqi_op op;
  pack_op_init(&op);
  int src = mqi_store_exec(s, MQI_ST_SAVEPOINT);
  int rc = src != SQLITE_OK ? mqi_op_sqlite(s, &op, src, "savepoint")
                            : mqi_pack_settle(s, &op, INT64_MAX, &(int){0});
  if (rc != MQ_OK) {
    pack_failed(s, &op);
    /* Some errors (out of memory, a full disk) make SQLite roll the whole
    ** transaction back; and one whose undo fails must be rolled back. */
    *redo = sqlite3_get_autocommit(s->db) ||
            (src == SQLITE_OK && (mqi_store_exec(s, MQI_ST_ROLLBACK_TO) != SQLITE_OK ||
                                  mqi_store_exec(s, MQI_ST_RELEASE) != SQLITE_OK));
    return rc;
  }
  if ((src = mqi_store_exec(s, MQI_ST_RELEASE)) != SQLITE_OK) {
    *redo = 1;
    return mqi_op_sqlite(s, &op, src, "savepoint");
  }
  s->pack_log_failed = 0;
  return MQ_OK;
}

int mqi_pack_settle_step(mq_store *s, int *left) {
  mqi_op op;
  pack_op_init(&op);
  int rc = mqi_pack_settle(s, &op, MQI_PACK_STEP, left);
  if (rc != MQ_OK)
    pack_failed(s, &op);
  else
    s->pack_log_failed = 0;
  return rc;
}

typedef struct pack_some_arg {
  int64_t max;
  int left;
} pack_some_arg;

static int pack_some_op(mq_store *s, mqi_op *op) {
  pack_some_arg *a = op->arg;
  return mqi_pack_settle(s, op, a->max, &a->left);
}

int mqi_pack_settle_some(mq_store *s, int64_t max, int *left) {
  pack_some_arg a = {max, 0};
  *left = 0;
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  rc = mqi_commit_run(s, pack_some_op, &a, MQI_RUN_PACK);
  *left = a.left;
  return rc;
}
