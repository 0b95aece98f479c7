/*
** settle.c -- what a consumer does with a leased message: ack, nack, touch;
** and redrive, which settles dead letters by sending them back.
**
** A receipt names a message and one lease on it (mq_msg.lease).  Every
** statement here matches both, so a receipt from an earlier delivery can
** never touch a later one: that is the whole of stale-receipt detection.
** A lease that ran out but whose message was not delivered again still
** matches (its message is ready with the old lease value), so a slow
** consumer's ack is honoured as long as nobody else has the message --
** the SQS behaviour.  Nack and dead-lettering clear the lease.
**
** Acks are durable (fsynced under MQ_SYNC_FULL): an ack that returned MQ_OK
** must not bring the message back after a power cut.  Nack and touch are
** not: losing one only changes when the message is delivered again.
*/
#include "mqi.h"

#include <stdlib.h>
#include <string.h>

typedef struct settle_arg {
  const char *queue;
  const char *const *receipts;
  int64_t *ids;
  uint64_t *leases;
  size_t n;
  int *results;
  int64_t delay_ms;      /* nack */
  const char *reason;    /* nack */
  int64_t visibility_ms; /* touch */
  int64_t max;           /* redrive */
  int64_t moved;         /* redrive */
} settle_arg;

/* Bind the receipt (?1 message id, ?3 lease) and its queue (?2): every
** statement that settles a lease matches all three. */
static void settle_bind_receipt(sqlite3_stmt *st, int64_t id, int64_t qid, uint64_t lease) {
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int64(st, 2, qid);
  sqlite3_bind_int64(st, 3, (int64_t)lease);
}

static int settle_stale(mq_store *s, mqi_op *op, const char *name, int64_t id) {
  return mqi_op_fail(op, MQ_ESTALE,
                     "%s: queue \"%s\": message %lld is not leased under this receipt "
                     "(acked already, expired, or delivered again)",
                     s->path, name, (long long)id);
}

static int settle_ack_one(mq_store *s, mqi_op *op, const char *name, const mqi_queue *q, int64_t id,
                          uint64_t lease, int64_t now) {
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_MSG_ACK);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  settle_bind_receipt(st, id, q->id, lease);
  sqlite3_bind_int64(st, 4, now);
  int src = sqlite3_step(st);
  int64_t body = src == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  sqlite3_reset(st);
  if (src != SQLITE_ROW && src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "finding a lease");
  if (src == SQLITE_DONE) return settle_stale(s, op, name, id);
  /* A plain DELETE by id: DELETE ... RETURNING would build a temporary
  ** table on every ack. */
  if (!(st = mqi_store_stmt(s, MQI_ST_MSG_DELETE)))
    return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, id);
  src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "deleting a message");
  return mqi_body_release(s, op, body);
}

static int settle_ack_op(mq_store *s, mqi_op *op) {
  settle_arg *a = op->arg;
  mqi_queue q;
  int rc = mqi_queue_find_holder(s, op, a->queue, &q);
  if (rc != MQ_OK) return rc;
  int64_t now = mqi_store_now(s);
  int last = MQ_OK;
  for (size_t i = 0; i < a->n; i++) {
    rc = settle_ack_one(s, op, a->queue, &q, a->ids[i], a->leases[i], now);
    if (rc != MQ_OK && rc != MQ_ESTALE) return rc;
    if (a->results) a->results[i] = rc;
    last = rc;
  }
  /* A single ack reports its own outcome; a batch succeeds as a whole and
  ** reports each receipt in results. */
  return a->n == 1 ? last : MQ_OK;
}

/* Parse every receipt before anything is queued: a malformed one is bad
** input and changes nothing. */
static int settle_parse(mq_store *s, settle_arg *a) {
  for (size_t i = 0; i < a->n; i++) {
    if (!a->receipts[i] || mqi_receipt_parse(a->receipts[i], &a->ids[i], &a->leases[i]) != MQ_OK)
      return a->n == 1
                 ? mqi_err_set(s, MQ_EINVAL, "\"%.40s\" is not a receipt of mq_get",
                               a->receipts[i] ? a->receipts[i] : "(null)")
                 : mqi_err_set(s, MQ_EINVAL, "receipt %zu (\"%.40s\") is not a receipt of mq_get",
                               i, a->receipts[i] ? a->receipts[i] : "(null)");
  }
  return MQ_OK;
}

/* Parse one receipt into a and run fn on it: the common end of ack, nack
** and touch, after each has checked its own arguments. */
static int settle_one(mq_store *s, const char *queue, const char *receipt, settle_arg *a,
                      mqi_op_fn fn, int durable) {
  int64_t id;
  uint64_t lease;
  a->queue = queue;
  a->receipts = &receipt;
  a->ids = &id;
  a->leases = &lease;
  a->n = 1;
  int rc = settle_parse(s, a);
  return rc != MQ_OK ? rc : mqi_commit_run(s, fn, a, durable ? MQI_RUN_DURABLE : 0);
}

/* The common end of the batch forms: parse n receipts of queue into a and
** run fn on them in one transaction.  A batch succeeds as a whole, so a
** lone receipt's MQ_ESTALE (the op's own answer for n == 1) is MQ_OK. */
static int settle_batch(mq_store *s, const char *fname, const char *queue,
                        const char *const *receipts, size_t n, settle_arg *a, mqi_op_fn fn,
                        int how) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (n == 0) return MQ_OK;
  if (!receipts) return mqi_err_set(s, MQ_EINVAL, "%s: receipts is NULL", fname);
  a->queue = queue;
  a->receipts = receipts;
  a->n = n;
  a->ids = malloc(n * sizeof *a->ids);
  a->leases = malloc(n * sizeof *a->leases);
  if (!a->ids || !a->leases)
    rc = mqi_err_set(s, MQ_ENOMEM, "out of memory settling %zu receipts", n);
  else if ((rc = settle_parse(s, a)) == MQ_OK)
    rc = mqi_commit_run(s, fn, a, how);
  if (n == 1 && rc == MQ_ESTALE) rc = MQ_OK;
  free(a->ids);
  free(a->leases);
  return rc;
}

int mq_ack(mq_store *s, const char *queue, const char *receipt) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  settle_arg a = {0};
  return settle_one(s, queue, receipt, &a, settle_ack_op, 1);
}

int mq_ack_batch(mq_store *s, const char *queue, const char *const *receipts, size_t n,
                 int *results) {
  settle_arg a = {0};
  a.results = results;
  return settle_batch(s, "mq_ack_batch", queue, receipts, n, &a, settle_ack_op, MQI_RUN_DURABLE);
}

/* ---- nack and touch -------------------------------------------------------- */

static int settle_nack_one(mq_store *s, mqi_op *op, const settle_arg *a, const mqi_queue *q,
                           int64_t id, uint64_t lease, int64_t now) {
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_MSG_NACK);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  settle_bind_receipt(st, id, q->id, lease);
  sqlite3_bind_int64(st, 4, now);
  int src = sqlite3_step(st);
  int receives = src == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
  sqlite3_reset(st);
  if (src != SQLITE_ROW && src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "reading a lease");
  if (receives < 0) return settle_stale(s, op, a->queue, id);
  if (q->max_receives > 0 && receives >= q->max_receives)
    return mqi_get_deadletter(s, op, q, id, a->reason);
  if (!(st = mqi_store_stmt(s, MQI_ST_MSG_NACK_SET)))
    return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int(st, 2, a->delay_ms > 0 ? MQI_DELAYED : MQI_READY);
  sqlite3_bind_int64(st, 3, mqi_time_add(now, a->delay_ms));
  if (a->reason)
    sqlite3_bind_text(st, 4, a->reason, -1, SQLITE_STATIC);
  else
    sqlite3_bind_null(st, 4);
  src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "releasing a message");
  op->flags |= MQI_OP_WAKE;
  return MQ_OK;
}

static int settle_nack_op(mq_store *s, mqi_op *op) {
  settle_arg *a = op->arg;
  mqi_queue q;
  int rc = mqi_queue_find_holder(s, op, a->queue, &q);
  if (rc != MQ_OK) return rc;
  int64_t now = mqi_store_now(s);
  for (size_t i = 0; i < a->n; i++) {
    rc = settle_nack_one(s, op, a, &q, a->ids[i], a->leases[i], now);
    /* In a batch a receipt whose lease is over is simply not ours to give
    ** back any more; a single nack reports it. */
    if (rc != MQ_OK && (rc != MQ_ESTALE || a->n == 1)) return rc;
  }
  return MQ_OK;
}

int mq_nack(mq_store *s, const char *queue, const char *receipt, int64_t delay_ms,
            const char *reason) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (delay_ms < 0) return mqi_err_set(s, MQ_EINVAL, "mq_nack: delay_ms is negative");
  if (reason && strlen(reason) > 1000)
    return mqi_err_set(s, MQ_EINVAL, "mq_nack: reason is longer than 1000 bytes");
  settle_arg a = {0};
  a.delay_ms = delay_ms;
  a.reason = reason;
  return settle_one(s, queue, receipt, &a, settle_nack_op, 0);
}

int mqi_nack_batch(mq_store *s, const char *queue, const char *const *receipts, size_t n) {
  settle_arg a = {0};
  return settle_batch(s, "mqi_nack_batch", queue, receipts, n, &a, settle_nack_op, 0);
}

static int settle_touch_op(mq_store *s, mqi_op *op) {
  settle_arg *a = op->arg;
  mqi_queue q;
  int rc = mqi_queue_find_holder(s, op, a->queue, &q);
  if (rc != MQ_OK) return rc;
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_MSG_TOUCH);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  int64_t now = mqi_store_now(s);
  settle_bind_receipt(st, a->ids[0], q.id, a->leases[0]);
  sqlite3_bind_int64(st, 4, mqi_time_add(now, a->visibility_ms));
  sqlite3_bind_int64(st, 5, now);
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "extending a lease");
  if (sqlite3_changes(s->db) == 0)
    return mqi_op_fail(op, MQ_ESTALE,
                       "%s: queue \"%s\": the lease of message %lld is over (or it expired)",
                       s->path, a->queue, (long long)a->ids[0]);
  return MQ_OK;
}

int mq_touch(mq_store *s, const char *queue, const char *receipt, int64_t visibility_ms) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (visibility_ms < 0) return mqi_err_set(s, MQ_EINVAL, "mq_touch: visibility_ms is negative");
  settle_arg a = {0};
  a.visibility_ms = visibility_ms;
  return settle_one(s, queue, receipt, &a, settle_touch_op, 0);
}

/* ---- release (the server's) ------------------------------------------------ */

/* As if the leases had never been taken (MQI_ST_MSG_RELEASE): ready at
** once, receive count as it was.  For messages a server leased but could
** not hand to any peer, which must not move towards the dead-letter queue
** for that. */
static int settle_release_op(mq_store *s, mqi_op *op) {
  settle_arg *a = op->arg;
  mqi_queue q;
  int rc = mqi_queue_find_holder(s, op, a->queue, &q);
  if (rc != MQ_OK) return rc;
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_MSG_RELEASE);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  int64_t now = mqi_store_now(s);
  int src = SQLITE_DONE;
  for (size_t i = 0; i < a->n && src == SQLITE_DONE; i++) {
    settle_bind_receipt(st, a->ids[i], q.id, a->leases[i]);
    sqlite3_bind_int64(st, 4, now);
    src = sqlite3_step(st);
    sqlite3_reset(st);
  }
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "releasing leases");
  op->flags |= MQI_OP_WAKE;
  return MQ_OK;
}

int mqi_settle_release(mq_store *s, const char *queue, const char *const *receipts, size_t n) {
  settle_arg a = {0};
  return settle_batch(s, "mqi_settle_release", queue, receipts, n, &a, settle_release_op, 0);
}

/* ---- redrive ---------------------------------------------------------------- */

static int settle_redrive_op(mq_store *s, mqi_op *op) {
  settle_arg *a = op->arg;
  mqi_queue q;
  int rc = mqi_queue_find_holder(s, op, a->queue, &q);
  if (rc != MQ_OK) return rc;
  int64_t now = mqi_store_now(s);
  int64_t limit = a->max > 0 ? a->max : INT64_MAX;
  /* Dead letters that came from another queue go back there if it still
  ** exists (queue ids are never reused: mqi_queue_new_id); this queue's own
  ** dead messages, and dead ones whose queue is gone, become ready here.
  ** Like a new put, each is kept by the retention of the queue it lands in,
  ** counted from now (saturating as mqi_time_add does); the TTL it was put
  ** with is not restored.  An expired dead letter is gone, not redriven. */
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(
      s->db,
      "UPDATE mq_msg SET queue_id = coalesce((SELECT id FROM mq_queue"
      "  WHERE id = mq_msg.origin_id), queue_id),"
      " expires_at = (SELECT " MQI_SQL_RETAIN_FROM("?2") " FROM mq_queue"
      "  WHERE id = coalesce((SELECT id FROM mq_queue WHERE id = mq_msg.origin_id),"
      "   mq_msg.queue_id)),"
      " origin_id = NULL, state = 0, receives = 0, visible_at = ?2, lease = NULL"
      " WHERE id IN (SELECT m.id FROM mq_msg m WHERE m.queue_id = ?1"
      "  AND " MQI_SQL_LIVE
      "  AND (m.state = 3 OR (m.origin_id IS NOT NULL"
      "   AND m.origin_id IN (SELECT id FROM mq_queue)"
      /* a dead letter someone is working on (a live lease) stays put */
      "   AND (m.state IN (0, 2) OR m.visible_at <= ?2)))"
      "  ORDER BY m.id LIMIT ?3)",
      -1, &st, NULL);
  if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "preparing");
  sqlite3_bind_int64(st, 1, q.id);
  sqlite3_bind_int64(st, 2, now);
  sqlite3_bind_int64(st, 3, limit);
  src = sqlite3_step(st);
  sqlite3_finalize(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "redriving");
  a->moved = sqlite3_changes64(s->db);
  if (a->moved) op->flags |= MQI_OP_WAKE;
  return MQ_OK;
}

int mq_redrive(mq_store *s, const char *queue, int64_t max, int64_t *moved) {
  if (moved) *moved = 0;
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (max < 0) return mqi_err_set(s, MQ_EINVAL, "mq_redrive: max is negative");
  settle_arg a = {0};
  a.queue = queue;
  a.max = max;
  rc = mqi_commit_run(s, settle_redrive_op, &a, MQI_RUN_DURABLE | MQI_RUN_SETTLE);
  if (rc == MQ_OK && moved) *moved = a.moved;
  return rc;
}
