/*
** put.c -- putting messages: validation, checksums, compression,
** deduplication, and the rows a put writes.
**
** Everything that needs no database -- argument checks, the CRC32 of the
** payload, encoding headers -- is done by the calling thread before its op
** is queued, so the leader of a group commit spends its time only on what
** must be serialised.  A put writes one mq_body row (the payload, never
** touched again) and one mq_msg row (the small, mutable delivery state).
**
** A batch is one op: all its messages are stored or none, and a bad entry
** fails the batch with that entry's error.
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
  it->crc = (uint32_t)crc32_z(0L, (const Bytef *)(data ? data : ""), len);
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

int mqi_put_body(mq_store *s, mqi_op *op, const mqi_queue *q, const mqi_put_item *it, size_t index,
                 int refs, int64_t body_id) {
  if ((int64_t)it->len > q->max_payload)
    return mqi_op_fail(op, MQ_ETOOBIG,
                       "%s: entry %zu: payload of %zu bytes is above the "
                       "max_payload of %lld",
                       s->path, index, it->len, (long long)q->max_payload);
  /* Compress only when it pays: an incompressible payload is kept raw. */
  const void *stored = it->data ? it->data : "";
  size_t stored_len = it->len;
  int codec = MQI_CODEC_RAW;
  unsigned char *z = NULL;
  if (q->compress_above > 0 && (int64_t)it->len > q->compress_above) {
    uLongf zlen = compressBound((uLong)it->len);
    if ((z = malloc(zlen)) == NULL) return mqi_op_fail(op, MQ_ENOMEM, "out of memory compressing");
    if (compress2(z, &zlen, (const Bytef *)it->data, (uLong)it->len, Z_BEST_SPEED) == Z_OK &&
        zlen < it->len) {
      stored = z;
      stored_len = zlen;
      codec = MQI_CODEC_ZLIB;
    }
  }
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_BODY_INSERT);
  if (!st) {
    free(z);
    return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  }
  sqlite3_bind_int(st, 1, refs);
  sqlite3_bind_int64(st, 2, (int64_t)it->len);
  sqlite3_bind_int64(st, 3, (int64_t)it->crc);
  sqlite3_bind_int(st, 4, codec);
  if (it->headers) sqlite3_bind_blob(st, 5, it->headers, (int)it->headers_len, SQLITE_STATIC);
  sqlite3_bind_blob64(st, 6, stored, stored_len, SQLITE_STATIC);
  if (it->subject) sqlite3_bind_text(st, 7, it->subject, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 8, body_id);
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  free(z);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "storing a payload");
  return MQ_OK;
}

int mqi_put_msg(mq_store *s, mqi_op *op, const mqi_queue *q, int64_t retention_ms, int64_t body_id,
                const mqi_put_item *it, int64_t now, int64_t id) {
  int64_t expires = 0;
  if (it->o.ttl_ms > 0) expires = mqi_time_add(now, it->o.ttl_ms);
  if (q->retention_ms > 0 && (!expires || mqi_time_add(now, q->retention_ms) < expires))
    expires = mqi_time_add(now, q->retention_ms);
  if (retention_ms > 0 && (!expires || mqi_time_add(now, retention_ms) < expires))
    expires = mqi_time_add(now, retention_ms);
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_MSG_INSERT);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, q->id);
  sqlite3_bind_int64(st, 2, body_id);
  sqlite3_bind_int(st, 3, it->o.delay_ms > 0 ? MQI_DELAYED : MQI_READY);
  sqlite3_bind_int(st, 4, it->o.priority);
  sqlite3_bind_int64(st, 5, mqi_time_add(now, it->o.delay_ms));
  sqlite3_bind_int64(st, 6, now);
  if (expires) sqlite3_bind_int64(st, 7, expires);
  sqlite3_bind_int64(st, 8, id);
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "storing a message");
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

static int put_one(mq_store *s, mqi_op *op, const mqi_queue *q, mqi_put_item *it, size_t index,
                   int64_t now, int64_t *id) {
  int rc = mqi_put_dedup_find(s, op, q, it, now, id);
  if (rc != MQ_OK || *id) return rc;
  /* One id names both the message and its body. */
  if ((rc = mqi_store_next_id(s, op, id)) != MQ_OK) return rc;
  if ((rc = mqi_put_body(s, op, q, it, index, 1, *id)) != MQ_OK) return rc;
  if ((rc = mqi_put_msg(s, op, q, 0, *id, it, now, *id)) != MQ_OK) return rc;
  return mqi_put_dedup_store(s, op, q, it, now, *id);
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
  if (mqi_store_space_ok(s, put_bytes(a->items, a->n)) != MQ_OK)
    return mqi_op_fail(op, MQ_EFULL,
                       "%s: free space is below the floor of %lld bytes; puts are refused "
                       "so that acks and checkpoints keep working",
                       s->path, (long long)s->min_free_bytes);
  int64_t now = mqi_store_now(s);
  for (size_t i = 0; i < a->n; i++) {
    rc = put_one(s, op, &q, &a->items[i], i, now, &a->ids[i]);
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
  rc = mqi_commit_run(s, put_op, &a, 1);
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
