/*
** queue.c -- queues as objects: create, drop, purge, list, stats, and the
** lookup every operation starts with.
**
** Queue options live in the mq_queue row and are read inside the same
** transaction as the operation that uses them, so a queue dropped or
** re-created by another process is never used with stale options.  The
** lookup is one probe of a unique index; in a group commit of many puts to
** one queue the row is read once per transaction and kept in the handle
** (valid only while the ops that follow write no mq_queue row).
*/
#include "mqi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mq_queue_options_init(mq_queue_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->visibility_ms = 30000;
  o->max_payload = 1024 * 1024;
  o->dedup_window_ms = 300000;
}

static void queue_row(sqlite3_stmt *st, mqi_queue *q) {
  q->id = sqlite3_column_int64(st, 0);
  q->kind = sqlite3_column_int(st, 1);
  q->visibility_ms = sqlite3_column_int64(st, 2);
  q->max_receives = sqlite3_column_int(st, 3);
  q->dlq_id = sqlite3_column_int64(st, 4);
  q->retention_ms = sqlite3_column_int64(st, 5);
  q->max_payload = sqlite3_column_int64(st, 6);
  q->compress_above = sqlite3_column_int64(st, 7);
  q->dedup_window_ms = sqlite3_column_int64(st, 8);
}

int mqi_queue_by_id(mq_store *s, mqi_op *op, int64_t id, mqi_queue *q) {
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_QUEUE_BY_ID);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing a queue lookup");
  sqlite3_bind_int64(st, 1, id);
  int src = sqlite3_step(st);
  if (src == SQLITE_ROW) queue_row(st, q);
  sqlite3_reset(st);
  if (src == SQLITE_ROW) return MQ_OK;
  return src == SQLITE_DONE ? MQ_ENOTFOUND : mqi_op_sqlite(s, op, src, "looking up a queue");
}

int mqi_queue_find(mq_store *s, mqi_op *op, const char *name, mqi_queue *q) {
  int cache = (op->how & MQI_RUN_KEEPS_QUEUES) != 0;
  if (cache && s->qcache_valid && strcmp(s->qcache_name, name) == 0) {
    *q = s->qcache;
    return MQ_OK;
  }
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_QUEUE_BY_NAME);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing a queue lookup");
  sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
  int src = sqlite3_step(st);
  if (src == SQLITE_ROW) {
    queue_row(st, q);
    sqlite3_reset(st);
    size_t len = strlen(name);
    if (cache && len < sizeof s->qcache_name) {
      memcpy(s->qcache_name, name, len + 1);
      s->qcache = *q;
      s->qcache_valid = 1;
    }
    return MQ_OK;
  }
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "looking up a queue");
  return mqi_op_fail(op, MQ_ENOTFOUND, "%s: no queue named \"%s\"", s->path, name);
}

int mqi_queue_check_dlq(mq_store *s, mqi_op *op, const char *name, int max_receives,
                        const mqi_queue *dlq) {
  /* Dead letters keep their receive count, so a dlq that allows no more
  ** deliveries than its source would dead-letter them again at once. */
  if (max_receives > 0 && dlq->max_receives > 0 && dlq->max_receives <= max_receives)
    return mqi_op_fail(op, MQ_EINVAL,
                       "%s: \"%s\": its dead-letter queue allows %d receives, and dead letters "
                       "arrive with the %d they already had; give the dlq max_receives 0 or more "
                       "than %d",
                       s->path, name, dlq->max_receives, max_receives, max_receives);
  return MQ_OK;
}

int mqi_queue_find_holder(mq_store *s, mqi_op *op, const char *name, mqi_queue *q) {
  int rc = mqi_queue_find(s, op, name, q);
  if (rc == MQ_OK && q->kind == MQI_KIND_TOPIC)
    return mqi_op_fail(op, MQ_EINVAL,
                       "%s: \"%s\" is a topic; its messages are in its subscriptions, "
                       "\"%s/SUB\"",
                       s->path, name, name);
  return rc;
}

/* Run one statement with up to three int64 bindings inside an op. */
static int queue_exec(mq_store *s, mqi_op *op, const char *sql, int n, int64_t a, int64_t b,
                      int64_t c, int64_t *changes) {
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
  if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "preparing");
  if (n > 0) sqlite3_bind_int64(st, 1, a);
  if (n > 1) sqlite3_bind_int64(st, 2, b);
  if (n > 2) sqlite3_bind_int64(st, 3, c);
  while ((src = sqlite3_step(st)) == SQLITE_ROW) {
  }
  sqlite3_finalize(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "updating");
  if (changes) *changes = sqlite3_changes64(s->db);
  return MQ_OK;
}

/* ---- create -------------------------------------------------------------- */

int mqi_queue_new_id(mq_store *s, mqi_op *op, int64_t *id) {
  /* Never an id a dropped queue had: dead letters remember the queue they
  ** came from (mq_msg.origin_id), and a redrive must not send them to a
  ** newer queue that SQLite's max(rowid) + 1 would give the same id.  So
  ** the id comes from the store's id sequence, which is never reused; and
  ** above every queue's, as libraries before 0.2.1 used max(rowid) + 1. */
  sqlite3_stmt *st = NULL;
  int64_t floor = 1;
  int src = sqlite3_prepare_v2(s->db, "SELECT coalesce(max(id), 0) + 1 FROM mq_queue", -1, &st,
                               NULL);
  if (src == SQLITE_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
    floor = sqlite3_column_int64(st, 0);
    src = SQLITE_OK;
  }
  sqlite3_finalize(st);
  if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "choosing a queue id");
  return mqi_store_next_id_from(s, op, floor, id);
}

typedef struct queue_create_arg {
  const char *name;
  int kind;
  mq_queue_options o;
} queue_create_arg;

static int queue_create_op(mq_store *s, mqi_op *op) {
  queue_create_arg *a = op->arg;
  mqi_queue dlq = {0}, old;
  int rc;
  if (a->o.dlq) {
    rc = mqi_queue_find(s, op, a->o.dlq, &dlq);
    if (rc == MQ_ENOTFOUND)
      return mqi_op_fail(op, MQ_EINVAL, "%s: dead-letter queue \"%s\" does not exist", s->path,
                         a->o.dlq);
    if (rc != MQ_OK) return rc;
    if (dlq.kind != MQI_KIND_QUEUE)
      return mqi_op_fail(op, MQ_EINVAL, "%s: dead-letter queue \"%s\" is a topic, not a queue",
                         s->path, a->o.dlq);
    if ((rc = mqi_queue_check_dlq(s, op, a->name, a->o.max_receives, &dlq)) != MQ_OK) return rc;
  }
  rc = mqi_queue_find(s, op, a->name, &old);
  if (rc == MQ_OK) {
    if (old.kind != a->kind)
      return mqi_op_fail(op, MQ_EEXIST, "%s: \"%s\" exists as a %s", s->path, a->name,
                         old.kind == MQI_KIND_TOPIC   ? "topic"
                         : old.kind == MQI_KIND_QUEUE ? "queue"
                                                      : "subscription");
    if (old.visibility_ms == a->o.visibility_ms && old.max_receives == a->o.max_receives &&
        old.dlq_id == dlq.id && old.retention_ms == a->o.retention_ms &&
        old.max_payload == (int64_t)a->o.max_payload &&
        old.compress_above == (int64_t)a->o.compress_above &&
        old.dedup_window_ms == a->o.dedup_window_ms)
      return MQ_OK;
    return mqi_op_fail(op, MQ_EEXIST, "%s: queue \"%s\" exists with other options", s->path,
                       a->name);
  }
  if (rc != MQ_ENOTFOUND) return rc;
  op->err[0] = 0;
  int64_t id;
  if ((rc = mqi_queue_new_id(s, op, &id)) != MQ_OK) return rc;
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(
      s->db,
      "INSERT INTO mq_queue(name, kind, visibility_ms, max_receives, dlq_id, retention_ms,"
      " max_payload, compress_above, dedup_window_ms, created_at, id)"
      " VALUES(?1, ?10, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?11)",
      -1, &st, NULL);
  if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "preparing queue creation");
  sqlite3_bind_text(st, 1, a->name, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, a->o.visibility_ms);
  sqlite3_bind_int(st, 3, a->o.max_receives);
  if (dlq.id)
    sqlite3_bind_int64(st, 4, dlq.id);
  else
    sqlite3_bind_null(st, 4);
  sqlite3_bind_int64(st, 5, a->o.retention_ms);
  sqlite3_bind_int64(st, 6, (int64_t)a->o.max_payload);
  sqlite3_bind_int64(st, 7, (int64_t)a->o.compress_above);
  sqlite3_bind_int64(st, 8, a->o.dedup_window_ms);
  sqlite3_bind_int64(st, 9, mqi_store_now(s));
  sqlite3_bind_int(st, 10, a->kind);
  sqlite3_bind_int64(st, 11, id);
  src = sqlite3_step(st);
  sqlite3_finalize(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "creating a queue");
  return MQ_OK;
}

int mqi_queue_create(mq_store *s, const char *name, int kind, const mq_queue_options *opts) {
  queue_create_arg a;
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_name(s, kind == MQI_KIND_TOPIC ? "topic" : "queue", name)) != MQ_OK)
    return rc;
  mq_queue_options_init(&a.o);
  if (opts) {
    if (opts->size < offsetof(mq_queue_options, dedup_window_ms) || opts->size > sizeof a.o)
      return mqi_err_set(s, MQ_EINVAL,
                         "mq_queue_options.size is %zu: call mq_queue_options_init first",
                         opts->size);
    memcpy(&a.o, opts, opts->size);
  }
  a.name = name;
  a.kind = kind;
  if (a.o.visibility_ms < 1)
    return mqi_err_set(s, MQ_EINVAL,
                       "queue \"%s\": visibility_ms must be at least 1 (a lease of 0 ms "
                       "would end as it starts)",
                       name);
  if (a.o.max_receives < 0)
    return mqi_err_set(s, MQ_EINVAL, "queue \"%s\": max_receives is negative", name);
  if (a.o.retention_ms < 0)
    return mqi_err_set(s, MQ_EINVAL, "queue \"%s\": retention_ms is negative", name);
  if (a.o.dedup_window_ms < 0)
    return mqi_err_set(s, MQ_EINVAL, "queue \"%s\": dedup_window_ms is negative", name);
  if (a.o.max_payload == 0 || a.o.max_payload > MQ_PAYLOAD_LIMIT)
    return mqi_err_set(s, MQ_EINVAL, "queue \"%s\": max_payload %zu is not in 1..%zu", name,
                       a.o.max_payload, MQ_PAYLOAD_LIMIT);
  if (a.o.dlq) {
    if ((rc = mqi_err_check_name(s, "dead-letter queue", a.o.dlq)) != MQ_OK) return rc;
    if (strcmp(a.o.dlq, name) == 0)
      return mqi_err_set(s, MQ_EINVAL, "queue \"%s\" cannot be its own dead-letter queue", name);
  }
  return mqi_commit_run(s, queue_create_op, &a, MQI_RUN_DURABLE);
}

int mq_queue_create(mq_store *s, const char *name, const mq_queue_options *opts) {
  return mqi_queue_create(s, name, MQI_KIND_QUEUE, opts);
}

/* ---- drop and purge -------------------------------------------------------- */

typedef struct queue_purge_arg {
  const char *name;
  int drop;
  int64_t deleted;
} queue_purge_arg;

static int queue_purge_op(mq_store *s, mqi_op *op) {
  queue_purge_arg *a = op->arg;
  mqi_queue q;
  int rc = mqi_queue_find(s, op, a->name, &q);
  if (rc != MQ_OK) return rc;
  if (a->drop && q.kind != MQI_KIND_QUEUE)
    return mqi_op_fail(op, MQ_EINVAL, "%s: \"%s\" is a %s; drop it with mq_%s_drop", s->path,
                       a->name, q.kind == MQI_KIND_TOPIC ? "topic" : "subscription",
                       q.kind == MQI_KIND_TOPIC ? "topic" : "subscription");
  if (q.kind == MQI_KIND_TOPIC) return mqi_queue_find_holder(s, op, a->name, &q);
  return mqi_queue_clear(s, op, q.id, a->name, a->drop, &a->deleted);
}

int mqi_queue_clear(mq_store *s, mqi_op *op, int64_t qid, const char *name, int drop,
                    int64_t *deleted) {
  int rc;
  mqi_queue q;
  q.id = qid;
  if (drop) {
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(s->db, "SELECT name FROM mq_queue WHERE dlq_id=?1 LIMIT 1", -1,
                                 &st, NULL);
    if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "preparing");
    sqlite3_bind_int64(st, 1, q.id);
    src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
      rc = mqi_op_fail(op, MQ_EINVAL,
                       "%s: queue \"%s\" is the dead-letter queue of \"%s\"; drop that first",
                       s->path, name, (const char *)sqlite3_column_text(st, 0));
      sqlite3_finalize(st);
      return rc;
    }
    sqlite3_finalize(st);
    if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "checking dead-letter users");
  }
  /* Bodies first, while the messages still say which bodies are theirs:
  ** a shared body loses one reference per message, an unshared one goes.
  ** Set-based through the queue's index: no scan of other queues. */
  rc = queue_exec(s, op,
                  "UPDATE mq_body SET refs = refs - x.n FROM"
                  " (SELECT body_id, count(*) AS n FROM mq_msg WHERE queue_id = ?1"
                  "  GROUP BY body_id) AS x WHERE mq_body.id = x.body_id",
                  1, q.id, 0, 0, NULL);
  if (rc == MQ_OK)
    rc = queue_exec(s, op,
                    "DELETE FROM mq_body WHERE refs <= 0 AND id IN"
                    " (SELECT body_id FROM mq_msg WHERE queue_id = ?1)",
                    1, q.id, 0, 0, NULL);
  if (rc == MQ_OK)
    rc = queue_exec(s, op, "DELETE FROM mq_msg WHERE queue_id = ?1", 1, q.id, 0, 0, deleted);
  /* Packs a failed settle left (pack.c), lest they settle after the purge. */
  if (rc == MQ_OK) rc = mqi_pack_clear(s, op, q.id, deleted);
  if (rc == MQ_OK && drop) {
    rc = queue_exec(s, op, "DELETE FROM mq_dedup WHERE queue_id = ?1", 1, q.id, 0, 0, NULL);
    if (rc == MQ_OK)
      rc = queue_exec(s, op, "DELETE FROM mq_queue WHERE id = ?1", 1, q.id, 0, 0, NULL);
  }
  return rc;
}

int mq_queue_drop(mq_store *s, const char *name) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_name(s, "queue", name)) != MQ_OK) return rc;
  queue_purge_arg a = {name, 1, 0};
  return mqi_commit_run(s, queue_purge_op, &a, MQI_RUN_DURABLE);
}

int mq_queue_purge(mq_store *s, const char *name, int64_t *deleted) {
  if (deleted) *deleted = 0;
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, name)) != MQ_OK) return rc;
  queue_purge_arg a = {name, 0, 0};
  rc = mqi_commit_run(s, queue_purge_op, &a, MQI_RUN_DURABLE);
  if (rc == MQ_OK && deleted) *deleted = a.deleted;
  return rc;
}

/* ---- list and stats (reads: no transaction of ours, no gate) --------------- */

void mq_list_free(char **names, size_t count) {
  if (!names) return;
  for (size_t i = 0; i < count; i++) free(names[i]);
  free(names);
}

int mqi_queue_names(mq_store *s, const char *sql, const char *bind, size_t skip, char ***names,
                    size_t *count, int *rows) {
  char **v = NULL;
  size_t n = 0, cap = 0;
  sqlite3_stmt *st = NULL;
  *rows = 0;
  sqlite3 *db;
  int rc = mqi_store_read(s, &db);
  if (rc != MQ_OK) return rc;
  int src = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
  if (src == SQLITE_OK && bind) sqlite3_bind_text(st, 1, bind, -1, SQLITE_STATIC);
  if (src == SQLITE_OK) {
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
      (*rows)++;
      const char *name = (const char *)sqlite3_column_text(st, 1);
      if (!name) continue; /* a row that only says its parent exists */
      if (n == cap) {
        size_t ncap = cap ? cap * 2 : 16;
        char **nv = realloc(v, ncap * sizeof *nv);
        if (!nv) {
          rc = MQ_ENOMEM;
          break;
        }
        v = nv;
        cap = ncap;
      }
      if (!(v[n] = strdup(name + skip))) {
        rc = MQ_ENOMEM;
        break;
      }
      n++;
    }
  }
  if (rc == MQ_ENOMEM)
    mqi_err_set(s, rc, "out of memory listing names");
  else if (src != SQLITE_DONE)
    rc = mqi_err_set(s, mqi_err_from_sqlite(src), "%s: listing: %s", s->path, sqlite3_errmsg(db));
  sqlite3_finalize(st);
  mqi_store_read_done(s, src);
  if (rc != MQ_OK) {
    mq_list_free(v, n);
    return rc;
  }
  *names = v;
  *count = n;
  return MQ_OK;
}

int mq_queue_list(mq_store *s, char ***names, size_t *count) {
  if (names) *names = NULL;
  if (count) *count = 0;
  int rc = mqi_store_check(s, 0);
  if (rc != MQ_OK) return rc;
  if (!names || !count) return mqi_err_set(s, MQ_EINVAL, "mq_queue_list: NULL output pointer");
  int rows;
  return mqi_queue_names(s, "SELECT id, name FROM mq_queue WHERE kind = 0 ORDER BY name", NULL, 0,
                         names, count, &rows);
}

/* Hidden messages whose time has come count as ready, and expired ones as
** gone, exactly as the next get would see them; a visible message that has
** used up max_receives counts as dead, as that get dead-letters it. */
#define QUEUE_STATS_SQL(P)                                                                      \
  "SELECT q.kind,"                                                                              \
  " sum(" MQI_SQL_DUE " AND NOT " MQI_SQL_SPENT "),"                                            \
  " sum(m.state = 1 AND m.visible_at > ?2),"                                                    \
  " sum(m.state = 2 AND m.visible_at > ?2),"                                                    \
  " sum(m.state = 3 OR (" MQI_SQL_DUE " AND " MQI_SQL_SPENT ")), count(m.id), min(m.enqueued_at)," \
  " sum(" P("size") ")"                                                                         \
  " FROM mq_queue q LEFT JOIN mq_msg m ON m.queue_id = q.id"                                    \
  "  AND " MQI_SQL_LIVE                                                                         \
  " LEFT JOIN mq_body b ON b.id = m.body_id"                                                    \
  " WHERE q.name = ?1 GROUP BY q.id"

/* Messages still in packs (pack.c), which reads do not settle: ready,
** unless past the retention.  A pack holds 1..256 messages of at most
** MQ_PAYLOAD_LIMIT bytes: damaged counts are bounded so, not summed into
** an overflow. */
#define QUEUE_PACK_STATS_SQL                                                  \
  "SELECT coalesce(sum(min(max(p.n, 1), 256)), 0), min(p.enqueued_at),"       \
  " coalesce(sum(min(max(p.bytes, 0), 68719476736)), 0)"                      \
  " FROM mq_pack p JOIN mq_queue q ON q.id = p.queue_id WHERE q.name = ?1"    \
  " AND (q.retention_ms <= 0 OR q.retention_ms > ?2 - p.enqueued_at)"

static int queue_pack_stats(sqlite3 *db, const char *name, int64_t now, mq_queue_stats *out) {
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(db, QUEUE_PACK_STATS_SQL, -1, &st, NULL);
  if (src == SQLITE_OK) {
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    src = sqlite3_step(st);
  }
  if (src == SQLITE_ROW) {
    int64_t n = sqlite3_column_int64(st, 0);
    out->ready += n;
    out->total += n;
    out->bytes += sqlite3_column_int64(st, 2);
    if (n && sqlite3_column_type(st, 1) != SQLITE_NULL) {
      int64_t age = now - sqlite3_column_int64(st, 1);
      if (age > out->oldest_age_ms) out->oldest_age_ms = age;
    }
    src = SQLITE_OK;
  }
  sqlite3_finalize(st);
  return src;
}

int mq_queue_stats_get(mq_store *s, const char *name, mq_queue_stats *out) {
  if (out) memset(out, 0, sizeof *out);
  int rc = mqi_store_check(s, 0);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, name)) != MQ_OK) return rc;
  if (!out) return mqi_err_set(s, MQ_EINVAL, "mq_queue_stats_get: out is NULL");
  sqlite3 *db;
  if ((rc = mqi_store_read(s, &db)) != MQ_OK) return rc;
  int64_t now = mqi_store_now(s);
  sqlite3_stmt *st = NULL;
  int format;
  int src = mqi_store_snapshot(db, &format);
  if (src == SQLITE_OK) rc = mqi_store_format_ok(s, format);
  if (src == SQLITE_OK && rc == MQ_OK)
    src = sqlite3_prepare_v2(
        db, format < 2 ? QUEUE_STATS_SQL(MQI_PAYLOAD_V1) : QUEUE_STATS_SQL(MQI_PAYLOAD_V2), -1,
        &st, NULL);
  if (src == SQLITE_OK && rc == MQ_OK) {
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    src = sqlite3_step(st);
  }
  if (rc != MQ_OK) {
    /* the message is set */
  } else if (src == SQLITE_ROW && sqlite3_column_int(st, 0) == MQI_KIND_TOPIC) {
    rc = mqi_err_set(s, MQ_EINVAL,
                     "%s: \"%s\" is a topic: see mq_topic_stats_get, or the stats of "
                     "\"%s/SUB\"",
                     s->path, name, name);
  } else if (src == SQLITE_ROW) {
    out->ready = sqlite3_column_int64(st, 1);
    out->inflight = sqlite3_column_int64(st, 2);
    out->delayed = sqlite3_column_int64(st, 3);
    out->dead = sqlite3_column_int64(st, 4);
    out->total = sqlite3_column_int64(st, 5);
    if (sqlite3_column_type(st, 6) != SQLITE_NULL) {
      int64_t age = now - sqlite3_column_int64(st, 6);
      out->oldest_age_ms = age > 0 ? age : 0;
    }
    out->bytes = sqlite3_column_int64(st, 7);
    if (format >= 3 && (src = queue_pack_stats(db, name, now, out)) != SQLITE_OK)
      rc = mqi_err_set(s, mqi_err_from_sqlite(src), "%s: reading stats of \"%s\": %s", s->path,
                       name, sqlite3_errmsg(db));
  } else if (src == SQLITE_DONE) {
    rc = mqi_err_set(s, MQ_ENOTFOUND, "%s: no queue named \"%s\"", s->path, name);
  } else {
    rc = mqi_err_set(s, mqi_err_from_sqlite(src), "%s: reading stats of \"%s\": %s", s->path, name,
                     sqlite3_errmsg(db));
  }
  sqlite3_finalize(st);
  mqi_store_read_done(s, src);
  return rc;
}

int mq_queue_info_get(mq_store *s, const char *name, mq_queue_info *out) {
  if (out) memset(out, 0, sizeof *out);
  int rc = mqi_store_check(s, 0);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, name)) != MQ_OK) return rc;
  if (!out) return mqi_err_set(s, MQ_EINVAL, "mq_queue_info_get: out is NULL");
  sqlite3 *db;
  if ((rc = mqi_store_read(s, &db)) != MQ_OK) return rc;
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(
      db,
      "SELECT q.kind, q.visibility_ms, q.max_receives, coalesce(d.name, ''), q.retention_ms,"
      " q.max_payload, q.compress_above, q.dedup_window_ms, coalesce(q.filter, ''),"
      " q.created_at FROM mq_queue q LEFT JOIN mq_queue d ON d.id = q.dlq_id WHERE q.name = ?1",
      -1, &st, NULL);
  if (src == SQLITE_OK) {
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    src = sqlite3_step(st);
  }
  if (src == SQLITE_ROW) {
    out->kind = sqlite3_column_int(st, 0);
    out->visibility_ms = sqlite3_column_int64(st, 1);
    out->max_receives = sqlite3_column_int(st, 2);
    snprintf(out->dlq, sizeof out->dlq, "%s", (const char *)sqlite3_column_text(st, 3));
    out->retention_ms = sqlite3_column_int64(st, 4);
    out->max_payload = (size_t)sqlite3_column_int64(st, 5);
    out->compress_above = (size_t)sqlite3_column_int64(st, 6);
    out->dedup_window_ms = sqlite3_column_int64(st, 7);
    snprintf(out->filter, sizeof out->filter, "%s", (const char *)sqlite3_column_text(st, 8));
    out->created_at = sqlite3_column_int64(st, 9);
  } else if (src == SQLITE_DONE) {
    rc = mqi_err_set(s, MQ_ENOTFOUND, "%s: no queue named \"%s\"", s->path, name);
  } else {
    rc = mqi_err_set(s, mqi_err_from_sqlite(src), "%s: reading \"%s\": %s", s->path, name,
                     sqlite3_errmsg(db));
  }
  sqlite3_finalize(st);
  mqi_store_read_done(s, src);
  return rc;
}
