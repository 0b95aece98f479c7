/*
** put.c -- putting messages: validation, checksums, compression,
** deduplication, and the rows a put writes.
**
** Everything that needs no database -- argument checks, the CRC32 of the
** payload, encoding headers -- is done by the calling thread before its op
** is queued, so the leader of a group commit spends its time only on what
** must be serialised.  A put writes one mq_msg row (the delivery state)
** and, when the payload is larger than s->inline_max, one mq_body row (the
** payload, never touched again); a smaller one goes in the mq_msg row.
**
** A batch is one op: all its messages are stored or none, and a bad entry
** fails the batch with that entry's error.  Its messages go in by
** MQI_PUT_ROWS at a time, one multi-row INSERT per table, which nearly
** doubles what one thread can store (each statement run has a fixed
** price), whenever the next MQI_PUT_ROWS entries have no dedup key; the
** others go one by one.
*/
#include "mqi.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define PUT_SWEEP_EVERY 1024 /* keyed puts between sweeps of old dedup keys */

void mq_put_options_init(mq_put_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
}

typedef struct put_arg {
  const char *queue;
  mqi_put_item *items;
  size_t n;
  int64_t *ids;
} put_arg;

int mqi_put_prepare(mq_store *s, mqi_put_item *it, size_t index, const void *data, size_t len,
                    const mq_put_options *opts) {
  mq_put_options_init(&it->o);
  it->data = data;
  it->len = len;
  it->headers = NULL;
  it->headers_len = 0;
  it->subject = NULL;
  if (!data && len)
    return mqi_err_set(s, MQ_EINVAL, "entry %zu: data is NULL but len is %zu", index, len);
  if (len > MQ_PAYLOAD_LIMIT)
    return mqi_err_set(s, MQ_ETOOBIG, "entry %zu: payload of %zu bytes is above the limit of %zu",
                       index, len, MQ_PAYLOAD_LIMIT);
  if (opts) {
    if (opts->size < offsetof(mq_put_options, n_headers) || opts->size > sizeof it->o)
      return mqi_err_set(s, MQ_EINVAL,
                         "entry %zu: mq_put_options.size is %zu: call mq_put_options_init first",
                         index, opts->size);
    memcpy(&it->o, opts, opts->size);
  }
  if (it->o.delay_ms < 0)
    return mqi_err_set(s, MQ_EINVAL, "entry %zu: delay_ms is negative", index);
  if (it->o.ttl_ms < 0) return mqi_err_set(s, MQ_EINVAL, "entry %zu: ttl_ms is negative", index);
  if (it->o.dedup_key) {
    size_t k = strlen(it->o.dedup_key);
    if (k == 0 || k > MQ_NAME_MAX)
      return mqi_err_set(s, MQ_EINVAL, "entry %zu: dedup_key must be 1..%d bytes", index,
                         MQ_NAME_MAX);
  }
  if (it->o.n_headers && !it->o.headers)
    return mqi_err_set(s, MQ_EINVAL, "entry %zu: n_headers is %zu but headers is NULL", index,
                       it->o.n_headers);
  int rc = mqi_headers_encode(it->o.headers, it->o.n_headers, &it->headers, &it->headers_len);
  if (rc != MQ_OK)
    return mqi_err_set(s, rc, "entry %zu: %s", index,
                       rc == MQ_ENOMEM ? "out of memory"
                                       : "a header name is NULL, empty or "
                                         "longer than 255 bytes, or a value is NULL");
  it->crc = mqi_crc32(data, len);
  return MQ_OK;
}

int mqi_put_dedup_find(mq_store *s, mqi_op *op, const mqi_queue *q, const mqi_put_item *it,
                       int64_t now, int64_t *id) {
  *id = 0;
  if (!it->o.dedup_key) return MQ_OK;
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_DEDUP_GET);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, q->id);
  sqlite3_bind_text(st, 2, it->o.dedup_key, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, now);
  int src = sqlite3_step(st);
  if (src == SQLITE_ROW) *id = sqlite3_column_int64(st, 0);
  sqlite3_reset(st);
  if (src != SQLITE_DONE && src != SQLITE_ROW)
    return mqi_op_sqlite(s, op, src, "reading a dedup key");
  return MQ_OK;
}

int mqi_put_dedup_store(mq_store *s, mqi_op *op, const mqi_queue *q, const mqi_put_item *it,
                        int64_t now, int64_t id) {
  if (!it->o.dedup_key) return MQ_OK;
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_DEDUP_PUT);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, q->id);
  sqlite3_bind_text(st, 2, it->o.dedup_key, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, id);
  sqlite3_bind_int64(st, 4, mqi_time_add(now, q->dedup_window_ms));
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "storing a dedup key");
  s->puts_since_sweep++;
  return MQ_OK;
}

/* A payload as it is stored: compressed only when that pays. */
typedef struct put_enc {
  const void *data;
  size_t len;
  int codec;
  unsigned char *z; /* the compressed copy, owned, or NULL */
} put_enc;

static int put_encode(mq_store *s, mqi_op *op, const mqi_queue *q, const mqi_put_item *it,
                      size_t index, put_enc *e) {
  e->data = it->data ? it->data : "";
  e->len = it->len;
  e->codec = MQI_CODEC_RAW;
  e->z = NULL;
  if ((int64_t)it->len > q->max_payload)
    return mqi_op_fail(op, MQ_ETOOBIG,
                       "%s: entry %zu: payload of %zu bytes is above the "
                       "max_payload of %lld",
                       s->path, index, it->len, (long long)q->max_payload);
  if (q->compress_above > 0 && (int64_t)it->len > q->compress_above) {
    uLongf zlen = compressBound((uLong)it->len);
    if ((e->z = malloc(zlen)) == NULL)
      return mqi_op_fail(op, MQ_ENOMEM, "out of memory compressing");
    if (compress2(e->z, &zlen, (const Bytef *)it->data, (uLong)it->len, Z_BEST_SPEED) == Z_OK &&
        zlen < it->len) {
      e->data = e->z;
      e->len = zlen;
      e->codec = MQI_CODEC_ZLIB;
    }
  }
  return MQ_OK;
}

/* Parameters per row of the INSERTs into mq_body and mq_msg (store.c). */
#define PUT_BODY_PARAMS 8
#define PUT_MSG_PARAMS 13

/* Whether the encoded payload goes in the message row (schema.c). */
static int put_inline(const mq_store *s, const mqi_put_item *it, const put_enc *e) {
  return (int64_t)(e->len + it->headers_len) <= s->inline_max;
}

static void put_bind_headers(sqlite3_stmt *st, int i, const mqi_put_item *it) {
  if (it->headers)
    sqlite3_bind_blob(st, i, it->headers, (int)it->headers_len, SQLITE_STATIC);
  else
    sqlite3_bind_null(st, i);
}

/* Bind one mq_body row from parameter o + 1 on (o is 0 for the single-row
** statement, PUT_BODY_PARAMS * row for the multi-row one).  Every
** parameter is bound, so the statements need no sqlite3_clear_bindings
** (mqi_store_stmt_hot). */
static void put_bind_body(sqlite3_stmt *st, int o, const mqi_put_item *it, const put_enc *e,
                          int refs, int64_t body_id) {
  sqlite3_bind_int(st, o + 1, refs);
  sqlite3_bind_int64(st, o + 2, (int64_t)it->len);
  sqlite3_bind_int64(st, o + 3, (int64_t)it->crc);
  sqlite3_bind_int(st, o + 4, e->codec);
  put_bind_headers(st, o + 5, it);
  sqlite3_bind_blob64(st, o + 6, e->data, e->len, SQLITE_STATIC);
  if (it->subject)
    sqlite3_bind_text(st, o + 7, it->subject, -1, SQLITE_STATIC);
  else
    sqlite3_bind_null(st, o + 7);
  sqlite3_bind_int64(st, o + 8, body_id);
}

/* Bind one mq_msg row from parameter o + 1 on, as put_bind_body; with its
** payload (e) when body_id is 0. */
static void put_bind_msg(sqlite3_stmt *st, int o, const mqi_queue *q, int64_t retention_ms,
                         int64_t body_id, const mqi_put_item *it, const put_enc *e, int64_t now,
                         int64_t id) {
  int64_t expires = 0;
  if (it->o.ttl_ms > 0) expires = mqi_time_add(now, it->o.ttl_ms);
  if (q->retention_ms > 0 && (!expires || mqi_time_add(now, q->retention_ms) < expires))
    expires = mqi_time_add(now, q->retention_ms);
  if (retention_ms > 0 && (!expires || mqi_time_add(now, retention_ms) < expires))
    expires = mqi_time_add(now, retention_ms);
  sqlite3_bind_int64(st, o + 1, q->id);
  sqlite3_bind_int64(st, o + 2, body_id);
  sqlite3_bind_int(st, o + 3, it->o.delay_ms > 0 ? MQI_DELAYED : MQI_READY);
  sqlite3_bind_int(st, o + 4, it->o.priority);
  sqlite3_bind_int64(st, o + 5, mqi_time_add(now, it->o.delay_ms));
  sqlite3_bind_int64(st, o + 6, now);
  if (expires)
    sqlite3_bind_int64(st, o + 7, expires);
  else
    sqlite3_bind_null(st, o + 7);
  sqlite3_bind_int64(st, o + 8, id);
  if (body_id) {
    for (int i = 9; i <= PUT_MSG_PARAMS; i++) sqlite3_bind_null(st, o + i);
    return;
  }
  sqlite3_bind_int64(st, o + 9, (int64_t)it->len);
  sqlite3_bind_int64(st, o + 10, (int64_t)it->crc);
  sqlite3_bind_int(st, o + 11, e->codec);
  put_bind_headers(st, o + 12, it);
  sqlite3_bind_blob64(st, o + 13, e->data, e->len, SQLITE_STATIC);
}

static int put_body_row(mq_store *s, mqi_op *op, const mqi_put_item *it, const put_enc *e,
                        int refs, int64_t body_id) {
  sqlite3_stmt *st = mqi_store_stmt_hot(s, MQI_ST_BODY_INSERT);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  put_bind_body(st, 0, it, e, refs, body_id);
  op->flags |= MQI_OP_WROTE; /* before the first write of a put */
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "storing a payload");
  return MQ_OK;
}

static int put_msg_row(mq_store *s, mqi_op *op, const mqi_queue *q, int64_t retention_ms,
                       int64_t body_id, const mqi_put_item *it, const put_enc *e, int64_t now,
                       int64_t id) {
  sqlite3_stmt *st = mqi_store_stmt_hot(s, MQI_ST_MSG_INSERT);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  put_bind_msg(st, 0, q, retention_ms, body_id, it, e, now, id);
  op->flags |= MQI_OP_WROTE;
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "storing a message");
  return MQ_OK;
}

int mqi_put_body(mq_store *s, mqi_op *op, const mqi_queue *q, const mqi_put_item *it, size_t index,
                 int refs, int64_t body_id) {
  put_enc e;
  int rc = put_encode(s, op, q, it, index, &e);
  if (rc == MQ_OK) rc = put_body_row(s, op, it, &e, refs, body_id);
  free(e.z);
  return rc;
}

int mqi_put_msg(mq_store *s, mqi_op *op, const mqi_queue *q, int64_t retention_ms, int64_t body_id,
                const mqi_put_item *it, int64_t now, int64_t id) {
  return put_msg_row(s, op, q, retention_ms, body_id, it, NULL, now, id);
}

int mqi_put_fanout(mq_store *s, mqi_op *op, const mqi_queue *const *qs, size_t n,
                   int64_t retention_ms, int64_t body_id, const mqi_put_item *it, int64_t now) {
  int64_t ids[MQI_PUT_ROWS];
  size_t i = 0;
  for (; n - i >= MQI_PUT_ROWS; i += MQI_PUT_ROWS) {
    sqlite3_stmt *st = mqi_store_stmt_hot(s, MQI_ST_MSG_INSERT_ROWS);
    if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
    for (size_t k = 0; k < MQI_PUT_ROWS; k++) {
      int rc = mqi_store_next_id(s, op, &ids[k]);
      if (rc != MQ_OK) {
        sqlite3_clear_bindings(st); /* no pointers into it kept */
        return rc;
      }
      put_bind_msg(st, PUT_MSG_PARAMS * (int)k, qs[i + k], retention_ms, body_id, it, NULL, now,
                   ids[k]);
    }
    int src = sqlite3_step(st);
    sqlite3_reset(st);
    if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "storing messages");
  }
  for (; i < n; i++) {
    int rc = mqi_store_next_id(s, op, &ids[0]);
    if (rc == MQ_OK) rc = mqi_put_msg(s, op, qs[i], retention_ms, body_id, it, now, ids[0]);
    if (rc != MQ_OK) return rc;
  }
  return MQ_OK;
}

void mqi_put_sweep(mq_store *s, int64_t now) {
  if (s->puts_since_sweep < PUT_SWEEP_EVERY) return;
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_DEDUP_SWEEP);
  if (st) {
    sqlite3_bind_int64(st, 1, now);
    sqlite3_step(st);
    sqlite3_reset(st);
  }
  s->puts_since_sweep = 0;
}

/* One message's rows; one id names the message and its body, if it has
** one. */
static int put_row_at(mq_store *s, mqi_op *op, const mqi_queue *q, const mqi_put_item *it,
                      size_t index, int64_t now, int64_t id) {
  put_enc e;
  int rc = put_encode(s, op, q, it, index, &e);
  if (rc != MQ_OK) return rc;
  int64_t body = put_inline(s, it, &e) ? 0 : id;
  if (body) rc = put_body_row(s, op, it, &e, 1, body);
  if (rc == MQ_OK) rc = put_msg_row(s, op, q, 0, body, it, &e, now, id);
  free(e.z);
  return rc;
}

static int put_one(mq_store *s, mqi_op *op, const mqi_queue *q, mqi_put_item *it, size_t index,
                   int64_t now, int64_t *id) {
  int rc = mqi_put_dedup_find(s, op, q, it, now, id);
  if (rc != MQ_OK || *id) return rc;
  if ((rc = mqi_store_next_id(s, op, id)) != MQ_OK) return rc;
  if ((rc = put_row_at(s, op, q, it, index, now, *id)) != MQ_OK) return rc;
  return mqi_put_dedup_store(s, op, q, it, now, *id);
}

/* The first of items[from, n) with a dedup key, or n: a keyed entry
** needs its own lookup before its insert, so only a run of unkeyed ones
** can go in the multi-row INSERTs. */
static size_t put_next_keyed(const mqi_put_item *items, size_t from, size_t n) {
  while (from < n && !items[from].o.dedup_key) from++;
  return from;
}

/* The bodies of put_rows: one multi-row INSERT when all MQI_PUT_ROWS
** payloads need one (none inline), else one INSERT each. */
static int put_rows_bodies(mq_store *s, mqi_op *op, const mqi_put_item *items, const put_enc *e,
                           const int64_t *bodies, const int64_t *ids) {
  size_t nb = 0;
  for (size_t k = 0; k < MQI_PUT_ROWS; k++) nb += bodies[k] != 0;
  if (nb < MQI_PUT_ROWS) {
    int rc = MQ_OK;
    for (size_t k = 0; k < MQI_PUT_ROWS && rc == MQ_OK; k++)
      if (bodies[k]) rc = put_body_row(s, op, &items[k], &e[k], 1, bodies[k]);
    return rc;
  }
  sqlite3_stmt *st = mqi_store_stmt_hot(s, MQI_ST_BODY_INSERT_ROWS);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  for (size_t k = 0; k < MQI_PUT_ROWS; k++)
    put_bind_body(st, PUT_BODY_PARAMS * (int)k, &items[k], &e[k], 1, ids[k]);
  op->flags |= MQI_OP_WROTE; /* before the first write of a put */
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "storing payloads");
  return MQ_OK;
}

/* MQI_PUT_ROWS puts without dedup keys, entries first.. of the batch: the
** same rows as put_one writes, with one statement per table.  The ids are
** taken, or with given, already in ids. */
static int put_rows(mq_store *s, mqi_op *op, const mqi_queue *q, mqi_put_item *items, size_t first,
                    int64_t now, int64_t *ids, int given) {
  put_enc e[MQI_PUT_ROWS];
  int64_t bodies[MQI_PUT_ROWS];
  size_t ne = 0;
  int rc = MQ_OK;
  for (; ne < MQI_PUT_ROWS; ne++) {
    if (!given && (rc = mqi_store_next_id(s, op, &ids[ne])) != MQ_OK) break;
    if ((rc = put_encode(s, op, q, &items[ne], first + ne, &e[ne])) != MQ_OK) break;
    bodies[ne] = put_inline(s, &items[ne], &e[ne]) ? 0 : ids[ne];
  }
  if (rc == MQ_OK) rc = put_rows_bodies(s, op, items, e, bodies, ids);
  sqlite3_stmt *st = NULL;
  if (rc == MQ_OK && !(st = mqi_store_stmt_hot(s, MQI_ST_MSG_INSERT_ROWS)))
    rc = mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  if (rc == MQ_OK) {
    for (size_t k = 0; k < MQI_PUT_ROWS; k++)
      put_bind_msg(st, PUT_MSG_PARAMS * (int)k, q, 0, bodies[k], &items[k], &e[k], now, ids[k]);
    op->flags |= MQI_OP_WROTE;
    int src = sqlite3_step(st);
    /* The bindings point into e[], freed below. */
    sqlite3_reset(st);
    if (src != SQLITE_DONE) rc = mqi_op_sqlite(s, op, src, "storing messages");
  }
  for (size_t k = 0; k < ne; k++) free(e[k].z);
  return rc;
}

int mqi_put_rows_at(mq_store *s, mqi_op *op, const mqi_queue *q, mqi_put_item *items,
                    size_t n, int64_t now, int64_t first_id) {
  mqi_queue any = *q;
  any.max_payload = INT64_MAX; /* checked when the messages were taken */
  int64_t ids[MQI_PUT_ROWS];
  size_t i = 0;
  int rc = MQ_OK;
  for (; n - i >= MQI_PUT_ROWS && rc == MQ_OK; i += MQI_PUT_ROWS) {
    for (size_t k = 0; k < MQI_PUT_ROWS; k++) ids[k] = first_id + (int64_t)(i + k);
    rc = put_rows(s, op, &any, &items[i], i, now, ids, 1);
  }
  for (; i < n && rc == MQ_OK; i++)
    rc = put_row_at(s, op, &any, &items[i], i, now, first_id + (int64_t)i);
  return rc;
}

static int64_t put_bytes(const mqi_put_item *items, size_t n) {
  int64_t total = 0;
  for (size_t i = 0; i < n; i++) total += (int64_t)items[i].len;
  return total;
}

static int put_op(mq_store *s, mqi_op *op) {
  put_arg *a = op->arg;
  mqi_queue q;
  int rc = mqi_queue_find(s, op, a->queue, &q);
  if (rc != MQ_OK) return rc;
  if (q.kind != MQI_KIND_QUEUE)
    return mqi_op_fail(op, MQ_EINVAL, "%s: \"%s\" is a %s: %s", s->path, a->queue,
                       q.kind == MQI_KIND_TOPIC ? "topic" : "subscription",
                       q.kind == MQI_KIND_TOPIC ? "use mq_publish" : "publish to its topic");
  if ((rc = mqi_store_space_ok(s, op, put_bytes(a->items, a->n))) != MQ_OK) return rc;
  int64_t now = mqi_store_now(s);
  size_t keyed = put_next_keyed(a->items, 0, a->n);
  for (size_t i = 0; i < a->n;) {
    if (keyed < i) keyed = put_next_keyed(a->items, i, a->n);
    if (keyed - i >= MQI_PUT_ROWS) {
      rc = put_rows(s, op, &q, &a->items[i], i, now, &a->ids[i], 0);
      i += MQI_PUT_ROWS;
    } else {
      rc = put_one(s, op, &q, &a->items[i], i, now, &a->ids[i]);
      i++;
    }
    if (rc != MQ_OK) return rc;
  }
  mqi_put_sweep(s, now);
  op->flags |= MQI_OP_WAKE;
  return MQ_OK;
}

static int put_run(mq_store *s, const char *queue, const mq_entry *entries, size_t n,
                   int64_t *ids) {
  mqi_put_item one;
  int64_t one_id;
  mqi_put_item *items = n == 1 ? &one : calloc(n, sizeof *items);
  int64_t *out = ids ? ids : n == 1 ? &one_id : calloc(n, sizeof *out);
  int rc = MQ_OK;
  size_t prepared = 0;
  if (!items || !out) {
    rc = mqi_err_set(s, MQ_ENOMEM, "out of memory for a batch of %zu", n);
    goto done;
  }
  for (; prepared < n; prepared++) {
    const mq_entry *e = &entries[prepared];
    rc = mqi_put_prepare(s, &items[prepared], prepared, e->data, e->len, e->opts);
    if (rc != MQ_OK) {
      free(items[prepared].headers);
      goto done;
    }
  }
  put_arg a = {queue, items, n, out};
  rc = mqi_commit_run(s, put_op, &a, MQI_RUN_DURABLE | MQI_RUN_REPEATABLE | MQI_RUN_KEEPS_QUEUES);
done:
  for (size_t i = 0; i < prepared; i++) free(items[i].headers);
  if (items && items != &one) free(items);
  if (out && out != ids && out != &one_id) free(out);
  if (rc != MQ_OK && ids)
    for (size_t i = 0; i < n; i++) ids[i] = 0;
  return rc;
}

int mq_put(mq_store *s, const char *queue, const void *data, size_t len, const mq_put_options *opts,
           int64_t *id) {
  if (id) *id = 0;
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  mq_entry e = {data, len, opts};
  return put_run(s, queue, &e, 1, id);
}

int mq_put_batch(mq_store *s, const char *queue, const mq_entry *entries, size_t n, int64_t *ids) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (n == 0) return MQ_OK;
  if (!entries) return mqi_err_set(s, MQ_EINVAL, "mq_put_batch: entries is NULL");
  return put_run(s, queue, entries, n, ids);
}
