/*
** get.c -- leasing messages: the next ready message, the timers that bring
** hidden messages back, dead-lettering, blocking waits, and peek.
**
** Time-driven changes (a lease running out, a delay ending, a TTL passing)
** are applied lazily by the next get on the queue, inside its own
** transaction, in this order: expired messages are deleted; messages whose
** lease ran out after their last allowed delivery are dead-lettered; every
** other hidden message whose time has come becomes ready.  Each step is one
** probe of a small partial index and costs next to nothing when there is
** nothing to do.  Reads (stats, peek) apply the same rules on the fly
** without writing, so they agree with what the next get would do.
**
** A message whose payload fails its checksum is never returned: it is
** dead-lettered with the reason "corrupt payload", logged, and the get goes
** on to the next message.
**
** A get that finds nothing may wait.  It reads the gate's sequence number
** before looking, and sleeps on it afterwards, so a put committed in
** between -- in this process or another -- is never missed.  The sleep is
** cut short when the next hidden message is due.
*/
#include "mqi.h"

#include <stdlib.h>
#include <string.h>

#define GET_MAX_WAIT_SLICE_MS 1000 /* re-check at least this often */
#define GET_POLL_SLICE_MS 10       /* without a shared gate */

void mq_get_options_init(mq_get_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
}

/* A dead letter's expiry is the retention of the queue that keeps it (the
** dlq, or q itself without one) counted from now, or none: the TTL and the
** retention it was put with bounded its delivery, which is over, and must
** not delete it from under the operator who is to look at it. */
int mqi_get_deadletter(mq_store *s, mqi_op *op, const mqi_queue *q, int64_t msg_id,
                       const char *reason) {
  sqlite3_stmt *st;
  if (q->dlq_id) {
    if (!(st = mqi_store_stmt(s, MQI_ST_MSG_TO_DLQ)))
      return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
    sqlite3_bind_int64(st, 1, msg_id);
    sqlite3_bind_int64(st, 2, q->dlq_id);
    sqlite3_bind_int64(st, 3, mqi_store_now(s));
    if (reason) sqlite3_bind_text(st, 4, reason, -1, SQLITE_STATIC);
    op->flags |= MQI_OP_WAKE; /* consumers of the dlq */
  } else {
    if (!(st = mqi_store_stmt(s, MQI_ST_MSG_TO_DEAD)))
      return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
    sqlite3_bind_int64(st, 1, msg_id);
    if (reason) sqlite3_bind_text(st, 2, reason, -1, SQLITE_STATIC);
    if (q->retention_ms > 0)
      sqlite3_bind_int64(st, 3, mqi_time_add(mqi_store_now(s), q->retention_ms));
  }
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "dead-lettering a message");
  return MQ_OK;
}

/* Apply the queue's timers as of now (see the file comment). */
/* The earliest time stored in a partial index of the queue, or INT64_MAX. */
static int get_next_time(mq_store *s, mqi_op *op, enum mqi_stmt_id id, int64_t qid, int64_t *when) {
  sqlite3_stmt *st = mqi_store_stmt(s, id);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, qid);
  int src = sqlite3_step(st);
  *when = src == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL
              ? sqlite3_column_int64(st, 0)
              : INT64_MAX;
  sqlite3_reset(st);
  if (src != SQLITE_ROW) return mqi_op_sqlite(s, op, src, "reading timers");
  return MQ_OK;
}

/* Apply the queue's timers as of now (see the file comment).  Each kind of
** timer costs one probe of its partial index when nothing is due, which is
** the common case; the statements that change rows run only when needed. */
static int get_maintain(mq_store *s, mqi_op *op, const mqi_queue *q, int64_t now,
                        int64_t *next_hidden) {
  int64_t when;
  int src, rc = get_next_time(s, op, MQI_ST_MSG_NEXT_EXPIRY, q->id, &when);
  while (rc == MQ_OK && when <= now) {
    sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_MSG_EXPIRED);
    if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
    sqlite3_bind_int64(st, 1, q->id);
    sqlite3_bind_int64(st, 2, now);
    int64_t ids[64], bodies[64];
    int n = 0;
    while (n < 64 && (src = sqlite3_step(st)) == SQLITE_ROW) {
      ids[n] = sqlite3_column_int64(st, 0);
      bodies[n++] = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    if (n < 64 && src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "finding expired messages");
    for (int i = 0; rc == MQ_OK && i < n; i++) {
      if (!(st = mqi_store_stmt(s, MQI_ST_MSG_DELETE)))
        return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
      sqlite3_bind_int64(st, 1, ids[i]);
      src = sqlite3_step(st);
      sqlite3_reset(st);
      if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "deleting an expired message");
      rc = mqi_body_release(s, op, bodies[i]);
    }
    if (n < 64) break;
  }
  if (rc != MQ_OK) return rc;

  if ((rc = get_next_time(s, op, MQI_ST_MSG_NEXT_VISIBLE, q->id, next_hidden)) != MQ_OK) return rc;
  if (*next_hidden > now) return MQ_OK;

  if (q->max_receives > 0) {
    for (;;) {
      sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_MSG_OVERDUE);
      if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
      sqlite3_bind_int64(st, 1, q->id);
      sqlite3_bind_int64(st, 2, now);
      sqlite3_bind_int(st, 3, q->max_receives);
      int64_t ids[64];
      int n = 0;
      while (n < 64 && (src = sqlite3_step(st)) == SQLITE_ROW)
        ids[n++] = sqlite3_column_int64(st, 0);
      sqlite3_reset(st);
      if (n < 64 && src != SQLITE_DONE)
        return mqi_op_sqlite(s, op, src, "finding overdue messages");
      for (int i = 0; i < n; i++)
        if ((rc = mqi_get_deadletter(s, op, q, ids[i], NULL)) != MQ_OK) return rc;
      if (n < 64) break;
    }
  }

  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_MSG_PROMOTE);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, q->id);
  sqlite3_bind_int64(st, 2, now);
  src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "returning hidden messages");
  /* Everything due is ready now; what stays hidden is due later. */
  return get_next_time(s, op, MQI_ST_MSG_NEXT_VISIBLE, q->id, next_hidden);
}

typedef struct get_arg {
  const char *queue;
  int64_t visibility_ms; /* 0: the queue's */
  size_t max;
  mq_msg **msgs;
  size_t count;
  int64_t next_visible; /* when nothing was ready: when something will be */
  /* mqi_get_batch_fit: the byte budget (fit NULL: none). */
  size_t (*fit)(const mq_msg *, const void *);
  const void *fit_ctx;
  size_t budget, first, used, over;
} get_arg;

/* A candidate read from the ready index. */
typedef struct get_cand {
  int64_t id, body_id, enqueued_at, expires_at;
  int priority, receives;
  char *reason;
} get_cand;

/* Read one candidate's payload (from its body, or from its own row when
** body_id is 0) and build the message; MQ_ECORRUPT when the stored payload
** is damaged. */
static int get_load(mq_store *s, mqi_op *op, const get_cand *c, mq_msg **out) {
  sqlite3_stmt *st = mqi_store_stmt(s, c->body_id ? MQI_ST_BODY_GET : MQI_ST_MSG_PAYLOAD);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, c->body_id ? c->body_id : c->id);
  int src = sqlite3_step(st);
  if (src != SQLITE_ROW) {
    sqlite3_reset(st);
    if (src == SQLITE_DONE) return MQ_ECORRUPT; /* the body is missing */
    return mqi_op_sqlite(s, op, src, "reading a payload");
  }
  const void *data = sqlite3_column_blob(st, 4);
  size_t len = (size_t)sqlite3_column_bytes(st, 4);
  const void *hdr = sqlite3_column_blob(st, 3);
  size_t hlen = (size_t)sqlite3_column_bytes(st, 3);
  int rc = mqi_msg_build(c->id, c->enqueued_at, c->receives + 1, c->priority, c->reason,
                         (const char *)sqlite3_column_text(st, 5), mqi_msg_body_size(st, 0, 1, 4),
                         (uint32_t)sqlite3_column_int64(st, 1), sqlite3_column_int(st, 2), hdr,
                         hlen, data, len, out);
  sqlite3_reset(st);
  if (rc == MQ_ENOMEM) return mqi_op_fail(op, rc, "out of memory reading a message");
  return rc;
}

static int get_op(mq_store *s, mqi_op *op) {
  get_arg *a = op->arg;
  mqi_queue q;
  int rc = mqi_queue_find_holder(s, op, a->queue, &q);
  if (rc != MQ_OK) return rc;
  int64_t now = mqi_store_now(s);
  int64_t next_hidden;
  if ((rc = get_maintain(s, op, &q, now, &next_hidden)) != MQ_OK) return rc;
  int64_t vis = a->visibility_ms > 0 ? a->visibility_ms : q.visibility_ms;
  a->used = 0;
  a->over = 0;

  while (a->count < a->max) {
    size_t want = a->max - a->count;
    get_cand cands[32];
    size_t nc = 0;
    if (want > 32) want = 32;
    sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_MSG_READY);
    if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
    sqlite3_bind_int64(st, 1, q.id);
    sqlite3_bind_int64(st, 2, (int64_t)want);
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
      get_cand *c = &cands[nc++];
      c->id = sqlite3_column_int64(st, 0);
      c->body_id = sqlite3_column_int64(st, 1);
      c->priority = sqlite3_column_int(st, 2);
      c->receives = sqlite3_column_int(st, 3);
      c->enqueued_at = sqlite3_column_int64(st, 4);
      c->expires_at = sqlite3_column_int64(st, 6);
      const char *r = (const char *)sqlite3_column_text(st, 5);
      c->reason = r ? strdup(r) : NULL;
      if (r && !c->reason) {
        src = SQLITE_NOMEM; /* freed below with the others */
        break;
      }
    }
    sqlite3_reset(st);
    if (src != SQLITE_DONE) {
      rc = mqi_op_sqlite(s, op, src, "finding ready messages");
    }
    for (size_t i = 0; i < nc && rc == MQ_OK; i++) {
      get_cand *c = &cands[i];
      if (q.max_receives > 0 && c->receives >= q.max_receives) {
        rc = mqi_get_deadletter(s, op, &q, c->id, NULL);
        continue;
      }
      mq_msg *m = NULL;
      rc = get_load(s, op, c, &m);
      if (rc == MQ_ECORRUPT) {
        mqi_log(s, MQ_LOG_ERROR,
                "%s: queue \"%s\": message %lld has a corrupt payload; "
                "dead-lettered",
                s->path, a->queue, (long long)c->id);
        rc = mqi_get_deadletter(s, op, &q, c->id, "corrupt payload");
        continue;
      }
      if (rc != MQ_OK) break;
      uint64_t lease = mqi_store_token(s);
      /* The receipt is part of what the message costs the caller, so it is
      ** made before the cost is asked; a message that does not fit is
      ** dropped before its lease is written, so it was never leased. */
      mqi_msg_set_receipt(m, c->id, lease);
      if (a->fit) {
        size_t cost = a->fit(m, a->fit_ctx);
        size_t cap = a->count == 0 && a->first > a->budget ? a->first : a->budget;
        if (cost > cap - a->used) {
          a->over = cost;
          mq_msg_free(m);
          break;
        }
        a->used = cost > a->budget - a->used ? a->budget : a->used + cost;
      }
      if (!(st = mqi_store_stmt(s, MQI_ST_MSG_LEASE))) {
        mq_msg_free(m);
        rc = mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
        break;
      }
      sqlite3_bind_int64(st, 1, c->id);
      sqlite3_bind_int64(st, 2, (int64_t)lease);
      sqlite3_bind_int64(st, 3, mqi_time_add(now, vis));
      src = sqlite3_step(st);
      sqlite3_reset(st);
      if (src != SQLITE_DONE) {
        mq_msg_free(m);
        rc = mqi_op_sqlite(s, op, src, "leasing a message");
        break;
      }
      mqi_msg_set_times(m, mqi_time_add(now, vis), c->expires_at);
      mqi_msg_set_body(m, c->body_id);
      a->msgs[a->count++] = m;
    }
    for (size_t i = 0; i < nc; i++) free(cands[i].reason);
    if (rc != MQ_OK || a->over) break;
    if (nc < want) break; /* the queue has nothing more ready */
  }
  if (rc != MQ_OK) {
    /* The savepoint (or the whole transaction) is rolled back: the leases
    ** above never happened, so neither do the messages. */
    for (size_t i = 0; i < a->count; i++) {
      mq_msg_free(a->msgs[i]);
      a->msgs[i] = NULL;
    }
    a->count = 0;
    return rc;
  }
  if (a->count) return MQ_OK;

  /* Nothing was leased, so what maintenance saw hidden is still so. */
  a->next_visible = next_hidden == INT64_MAX ? 0 : next_hidden;
  return MQ_EMPTY;
}

int mq_get_batch(mq_store *s, const char *queue, const mq_get_options *opts, size_t max,
                 mq_msg **msgs, size_t *count) {
  if (count) *count = 0;
  if (msgs)
    for (size_t i = 0; i < max; i++) msgs[i] = NULL;
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (!msgs || !count) return mqi_err_set(s, MQ_EINVAL, "get: NULL output pointer");
  if (max == 0) return mqi_err_set(s, MQ_EINVAL, "get: max is 0");
  mq_get_options o;
  mq_get_options_init(&o);
  if (opts) {
    if (opts->size < offsetof(mq_get_options, wait_ms) || opts->size > sizeof o)
      return mqi_err_set(s, MQ_EINVAL, "mq_get_options.size is %zu: call mq_get_options_init first",
                         opts->size);
    memcpy(&o, opts, opts->size);
  }
  if (o.visibility_ms < 0) return mqi_err_set(s, MQ_EINVAL, "get: visibility_ms is negative");
  if (o.wait_ms < 0) return mqi_err_set(s, MQ_EINVAL, "get: wait_ms is negative");

  get_arg a = {.queue = queue, .visibility_ms = o.visibility_ms, .max = max, .msgs = msgs};
  int64_t deadline = mqi_time_add(mqi_os_monotonic_ms(), o.wait_ms);
  for (;;) {
    uint32_t seq = mqi_gate_seq(s->gate);
    a.count = 0;
    rc = mqi_commit_run(s, get_op, &a, MQI_RUN_SETTLE);
    if (rc != MQ_EMPTY) break;
    int64_t left = deadline - mqi_os_monotonic_ms();
    if (left <= 0) break;
    int64_t slice = mqi_gate_is_shared(s->gate) ? GET_MAX_WAIT_SLICE_MS : GET_POLL_SLICE_MS;
    if (a.next_visible && a.next_visible < INT64_MAX) {
      int64_t due = a.next_visible - mqi_store_now(s);
      if (due < slice) slice = due < 1 ? 1 : due;
    }
    if (slice > left) slice = left;
    mqi_gate_wait(s->gate, seq, slice);
  }
  if (rc == MQ_OK) {
    *count = a.count;
  } else {
    /* The op may have built messages for a transaction whose commit then
    ** failed: those leases never happened, so the messages go. */
    for (size_t i = 0; i < a.count; i++) {
      mq_msg_free(msgs[i]);
      msgs[i] = NULL;
    }
  }
  return rc;
}

int mqi_get_batch_fit(mq_store *s, const char *queue, int64_t visibility_ms, size_t max,
                      size_t (*fit)(const mq_msg *, const void *), const void *ctx, size_t budget,
                      size_t first, mq_msg **msgs, size_t *count, size_t *over) {
  *count = 0;
  *over = 0;
  for (size_t i = 0; i < max; i++) msgs[i] = NULL;
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (max == 0 || !fit || visibility_ms < 0)
    return mqi_err_set(s, MQ_EINVAL, "mqi_get_batch_fit: bad arguments");
  get_arg a = {.queue = queue, .visibility_ms = visibility_ms, .max = max, .msgs = msgs,
               .fit = fit, .fit_ctx = ctx, .budget = budget, .first = first};
  rc = mqi_commit_run(s, get_op, &a, MQI_RUN_SETTLE);
  if (rc == MQ_OK) {
    *count = a.count;
  } else {
    for (size_t i = 0; i < a.count; i++) {
      mq_msg_free(msgs[i]);
      msgs[i] = NULL;
    }
    if (rc == MQ_EMPTY) *over = a.over;
  }
  return rc;
}

int mq_get(mq_store *s, const char *queue, const mq_get_options *opts, mq_msg **out) {
  size_t n = 0;
  if (out) *out = NULL;
  if (!out) {
    int rc = mqi_store_check(s, 1);
    return rc != MQ_OK ? rc : mqi_err_set(s, MQ_EINVAL, "mq_get: out is NULL");
  }
  return mq_get_batch(s, queue, opts, 1, out, &n);
}

/* ---- peek: a read, no transaction of ours ---------------------------------- */

/* What the next get would deliver: a message that has used up max_receives
** is left out although visible, as that get dead-letters it instead. */
#define GET_PEEK_SQL(P)                                                                         \
  "SELECT m.id, m.priority, m.receives, m.enqueued_at, m.reason, " MQI_PAYLOAD_COLS(P)          \
  ", m.visible_at, m.expires_at, b.subject,"                                                    \
  " q.kind, m.body_id, q.id, q.retention_ms FROM mq_queue q"                                    \
  " LEFT JOIN mq_msg m ON m.queue_id = q.id"                                                    \
  "  AND " MQI_SQL_DUE " AND " MQI_SQL_LIVE                                                     \
  "  AND NOT " MQI_SQL_SPENT                                                                    \
  " LEFT JOIN mq_body b ON b.id = m.body_id"                                                    \
  " WHERE q.name = ?1 ORDER BY m.priority DESC, m.id LIMIT ?3"

/* The message of peek's current row. */
static int peek_row(sqlite3_stmt *st, mq_msg **m) {
  int rc = mqi_msg_build(
      sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 3), sqlite3_column_int(st, 2),
      sqlite3_column_int(st, 1), (const char *)sqlite3_column_text(st, 4),
      (const char *)sqlite3_column_text(st, 12),
      /* a missing body (NULL size) is damage, not an empty payload */
      mqi_msg_body_size(st, 5, 6, 9), (uint32_t)sqlite3_column_int64(st, 6),
      sqlite3_column_int(st, 7), sqlite3_column_blob(st, 8), (size_t)sqlite3_column_bytes(st, 8),
      sqlite3_column_blob(st, 9), (size_t)sqlite3_column_bytes(st, 9), m);
  if (rc == MQ_OK) {
    mqi_msg_set_times(*m, sqlite3_column_int64(st, 10), sqlite3_column_int64(st, 11));
    mqi_msg_set_body(*m, sqlite3_column_int64(st, 14));
  }
  return rc;
}

static void peek_corrupt(mq_store *s, const char *queue, int64_t id) {
  mqi_log(s, MQ_LOG_ERROR, "%s: queue \"%s\": message %lld has a corrupt payload", s->path, queue,
          (long long)id);
}

int mq_peek(mq_store *s, const char *queue, size_t max, mq_msg **msgs, size_t *count) {
  if (count) *count = 0;
  if (msgs)
    for (size_t i = 0; i < max; i++) msgs[i] = NULL;
  int rc = mqi_store_check(s, 0);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (!msgs || !count) return mqi_err_set(s, MQ_EINVAL, "mq_peek: NULL output pointer");
  if (max == 0) return MQ_OK;
  sqlite3 *db;
  if ((rc = mqi_store_read(s, &db)) != MQ_OK) return rc;
  int64_t now = mqi_store_now(s);
  sqlite3_stmt *st = NULL;
  mqi_pack_cursor pc;
  memset(&pc, 0, sizeof pc);
  size_t n = 0;
  int format;
  int src = mqi_store_snapshot(db, &format);
  if (src == SQLITE_OK) rc = mqi_store_format_ok(s, format);
  if (src == SQLITE_OK && rc == MQ_OK)
    src = sqlite3_prepare_v2(
        db, format < 2 ? GET_PEEK_SQL(MQI_PAYLOAD_V1) : GET_PEEK_SQL(MQI_PAYLOAD_V2), -1, &st, NULL);
  int found = 0;
  if (src == SQLITE_OK && rc == MQ_OK) {
    sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    /* A few extra rows leave room for corrupt ones being skipped. */
    sqlite3_bind_int64(st, 3, max > INT32_MAX ? INT32_MAX : (int64_t)max + 8);
    int psrc = SQLITE_DONE;
    int64_t pid = 0;
    src = sqlite3_step(st);
    if (src == SQLITE_ROW && sqlite3_column_int(st, 13) == MQI_KIND_TOPIC) {
      rc = mqi_err_set(s, MQ_EINVAL,
                       "%s: \"%s\" is a topic; peek at one of its subscriptions, \"%s/SUB\"",
                       s->path, queue, queue);
      src = SQLITE_DONE;
    } else if (src == SQLITE_ROW) {
      found = 1;
      psrc = mqi_pack_cursor_open(&pc, db, format, sqlite3_column_int64(st, 15),
                                  sqlite3_column_int64(st, 16), now);
      if (psrc == SQLITE_OK) psrc = mqi_pack_cursor_peek(&pc, &pid);
      if (sqlite3_column_type(st, 0) == SQLITE_NULL) src = SQLITE_DONE; /* no row is due */
    }
    /* Rows by priority, then id; packed messages have priority 0. */
    while (n < max && mqi_merge_more(src, psrc)) {
      mq_msg *m = NULL;
      int64_t id = pid;
      int prio = src == SQLITE_ROW ? sqlite3_column_int(st, 1) : 0;
      if (src == SQLITE_ROW &&
          (psrc != SQLITE_ROW || prio > 0 || (prio == 0 && sqlite3_column_int64(st, 0) < pid))) {
        id = sqlite3_column_int64(st, 0);
        rc = peek_row(st, &m);
        src = sqlite3_step(st);
      } else {
        rc = mqi_pack_cursor_take(&pc, &m);
        psrc = mqi_pack_cursor_peek(&pc, &pid);
      }
      if (rc == MQ_ECORRUPT) {
        peek_corrupt(s, queue, id);
        rc = MQ_OK;
        continue;
      }
      if (rc != MQ_OK) break;
      msgs[n++] = m;
    }
    if (src == SQLITE_ROW || src == SQLITE_DONE)
      src = psrc == SQLITE_ROW || psrc == SQLITE_DONE ? SQLITE_DONE : psrc;
  }
  if (rc == MQ_EINVAL || rc == MQ_EVERSION) {
    /* the message is set */
  } else if (rc == MQ_ENOMEM) {
    mqi_err_set(s, rc, "out of memory peeking");
  } else if (src != SQLITE_DONE && src != SQLITE_OK) {
    rc = mqi_err_set(s, mqi_err_from_sqlite(src), "%s: peeking \"%s\": %s", s->path, queue,
                     sqlite3_errmsg(db));
  } else if (!found) {
    rc = mqi_err_set(s, MQ_ENOTFOUND, "%s: no queue named \"%s\"", s->path, queue);
  }
  sqlite3_finalize(st);
  mqi_pack_cursor_close(&pc);
  mqi_store_read_done(s, src);
  if (rc != MQ_OK) {
    for (size_t i = 0; i < n; i++) {
      mq_msg_free(msgs[i]);
      msgs[i] = NULL;
    }
    return rc;
  }
  *count = n;
  return MQ_OK;
}
