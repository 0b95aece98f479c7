/*
** topic.c -- topics, durable subscriptions, subject filters and publish.
**
** A topic is an mq_queue row of kind TOPIC that never holds messages
** itself.  Each subscription is an mq_queue row of kind SUBSCRIPTION named
** "topic/sub", with parent_id pointing at the topic and its filter in
** `filter`.  Publishing stores the payload once (mq_body.refs = number of
** matching subscriptions) and one small mq_msg row per matching
** subscription, all in the publisher's transaction: a crash leaves either
** every delivery or none.  From then on a subscription is a queue, so
** leases, acks, dead letters and waits need no code of their own here, and
** the payload goes away when the last subscription has acked it.
**
** Matching walks the filter and the subject level by level, with no
** allocation; a publish tests every subscription of the topic, so its cost
** grows with their number (bench/ measures it with thousands).
*/
#include "mqi.h"

#include <stdlib.h>
#include <string.h>

/* ---- subject matching ---------------------------------------------------- */

static int topic_is_sep(char c) { return c == '.' || c == '/'; }

/* The level starting at p: its length; *next is past its separator, or NULL
** when it was the last level. */
static size_t topic_level(const char *p, const char **next) {
  size_t n = 0;
  while (p[n] && !topic_is_sep(p[n])) n++;
  *next = p[n] ? p + n + 1 : NULL;
  return n;
}

static int topic_is_wild(const char *lv, size_t n) {
  return n == 1 && (lv[0] == '*' || lv[0] == '+' || lv[0] == '>' || lv[0] == '#');
}

/* 0 if filter is well formed, -1 if not. */
static int topic_check_filter(const char *f) {
  if (!f || !*f) return 0;
  if (strlen(f) > MQ_SUBJECT_MAX) return -1;
  for (const char *p = f; p;) {
    const char *next;
    size_t n = topic_level(p, &next);
    for (size_t i = 0; i < n; i++) {
      unsigned char c = (unsigned char)p[i];
      if (c < 0x20 || c == 0x7f) return -1;
      /* A wildcard must be a whole level: "a*" would be ambiguous. */
      if ((c == '*' || c == '>' || c == '#') && n != 1) return -1;
    }
    if (n == 1 && (p[0] == '>' || p[0] == '#') && next) return -1;
    p = next;
  }
  return 0;
}

static int topic_check_subject(const char *sj) {
  if (!sj) return 0;
  if (strlen(sj) > MQ_SUBJECT_MAX) return -1;
  for (const char *p = sj; p;) {
    const char *next;
    size_t n = topic_level(p, &next);
    for (size_t i = 0; i < n; i++) {
      unsigned char c = (unsigned char)p[i];
      if (c < 0x20 || c == 0x7f) return -1;
      /* No filter could name a level such as "c#" or "a*b" (a filter level
      ** with these in it is malformed), so no subscription could select it
      ** by name; '+' inside a level is text on both sides ("c++"). */
      if (c == '*' || c == '>' || c == '#') return -1;
    }
    /* A lone '+' would match differently than it reads. */
    if (topic_is_wild(p, n)) return -1;
    p = next;
  }
  return 0;
}

static int topic_match(const char *f, const char *sj) {
  if (!f || !*f) return 1;
  if (sj && !*sj) sj = NULL; /* an empty subject has no levels */
  const char *fp = f, *sp = sj;
  while (fp) {
    const char *fnext, *snext = NULL;
    size_t fn = topic_level(fp, &fnext);
    if (fn == 1 && fp[0] == '#') return 1;
    if (fn == 1 && fp[0] == '>') return sp != NULL;
    if (!sp) return 0;
    size_t sn = topic_level(sp, &snext);
    if (!(fn == 1 && (fp[0] == '*' || fp[0] == '+')) && (fn != sn || memcmp(fp, sp, fn) != 0))
      return 0;
    fp = fnext;
    sp = snext;
  }
  return sp == NULL;
}

int mq_subject_matches(const char *filter, const char *subject) {
  if (topic_check_filter(filter) != 0) return -1;
  return topic_match(filter, subject);
}

/* ---- topics and subscriptions ------------------------------------------ */

int mq_topic_create(mq_store *s, const char *topic, const mq_queue_options *opts) {
  return mqi_queue_create(s, topic, MQI_KIND_TOPIC, opts);
}

static int topic_find(mq_store *s, mqi_op *op, const char *name, mqi_queue *q) {
  int rc = mqi_queue_find(s, op, name, q);
  if (rc == MQ_ENOTFOUND)
    return mqi_op_fail(op, MQ_ENOTFOUND, "%s: no topic named \"%s\"", s->path, name);
  if (rc == MQ_OK && q->kind != MQI_KIND_TOPIC)
    return mqi_op_fail(op, MQ_EINVAL, "%s: \"%s\" is a queue, not a topic", s->path, name);
  return rc;
}

typedef struct topic_arg {
  const char *topic;
  const char *sub;
  char path[2 * MQ_NAME_MAX + 2]; /* "topic/sub" */
  const char *filter;
  mq_queue_options o;
  /* publish */
  mqi_put_item *items;
  size_t n;
  int64_t *ids;
  int64_t delivered;
} topic_arg;

static int topic_drop_op(mq_store *s, mqi_op *op) {
  topic_arg *a = op->arg;
  mqi_queue t;
  int rc = topic_find(s, op, a->topic, &t);
  if (rc != MQ_OK) return rc;
  sqlite3_stmt *st = NULL;
  int src =
      sqlite3_prepare_v2(s->db, "SELECT id, name FROM mq_queue WHERE parent_id=?1", -1, &st, NULL);
  if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "preparing");
  sqlite3_bind_int64(st, 1, t.id);
  /* Collect first: clearing a subscription deletes rows of this table. */
  int64_t *ids = NULL;
  size_t n = 0, cap = 0;
  while ((src = sqlite3_step(st)) == SQLITE_ROW) {
    if (n == cap) {
      int64_t *nid = realloc(ids, (cap ? cap * 2 : 16) * sizeof *nid);
      if (!nid) {
        src = SQLITE_NOMEM;
        break;
      }
      ids = nid;
      cap = cap ? cap * 2 : 16;
    }
    ids[n++] = sqlite3_column_int64(st, 0);
  }
  sqlite3_finalize(st);
  if (src != SQLITE_DONE) {
    free(ids);
    return src == SQLITE_NOMEM ? mqi_op_fail(op, MQ_ENOMEM, "out of memory dropping a topic")
                               : mqi_op_sqlite(s, op, src, "listing subscriptions");
  }
  for (size_t i = 0; i < n && rc == MQ_OK; i++)
    rc = mqi_queue_clear(s, op, ids[i], a->topic, 1, NULL);
  free(ids);
  if (rc == MQ_OK) rc = mqi_queue_clear(s, op, t.id, a->topic, 1, NULL);
  return rc;
}

int mq_topic_drop(mq_store *s, const char *topic) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_name(s, "topic", topic)) != MQ_OK) return rc;
  topic_arg a = {0};
  a.topic = topic;
  return mqi_commit_run(s, topic_drop_op, &a, MQI_RUN_DURABLE);
}

/* List names from mq_queue: topics (parent 0) or the subscriptions of one. */
static int topic_list(mq_store *s, const char *topic, char ***names, size_t *count) {
  if (names) *names = NULL;
  if (count) *count = 0;
  int rc = mqi_store_check(s, 0);
  if (rc != MQ_OK) return rc;
  if (topic && (rc = mqi_err_check_name(s, "topic", topic)) != MQ_OK) return rc;
  if (!names || !count) return mqi_err_set(s, MQ_EINVAL, "list: NULL output pointer");
  int rows;
  rc = mqi_queue_names(
      s,
      topic ? "SELECT t.id, s.name FROM mq_queue t LEFT JOIN mq_queue s ON s.parent_id = t.id"
              " WHERE t.name = ?1 AND t.kind = 1 ORDER BY s.name"
            : "SELECT id, name FROM mq_queue WHERE kind = 1 ORDER BY name",
      topic, topic ? strlen(topic) + 1 : 0, names, count, &rows);
  if (rc == MQ_OK && topic && rows == 0) {
    mq_list_free(*names, *count);
    *names = NULL;
    *count = 0;
    return mqi_err_set(s, MQ_ENOTFOUND, "%s: no topic named \"%s\"", s->path, topic);
  }
  return rc;
}

int mq_topic_list(mq_store *s, char ***names, size_t *count) {
  return topic_list(s, NULL, names, count);
}

int mq_subscription_list(mq_store *s, const char *topic, char ***names, size_t *count) {
  if (!topic) {
    if (names) *names = NULL;
    if (count) *count = 0;
    int rc = mqi_store_check(s, 0);
    return rc != MQ_OK ? rc : mqi_err_set(s, MQ_EINVAL, "mq_subscription_list: topic is NULL");
  }
  return topic_list(s, topic, names, count);
}

static int topic_sub_create_op(mq_store *s, mqi_op *op) {
  topic_arg *a = op->arg;
  mqi_queue t, dlq = {0}, old;
  int rc = topic_find(s, op, a->topic, &t);
  if (rc != MQ_OK) return rc;
  if (a->o.dlq) {
    rc = mqi_queue_find(s, op, a->o.dlq, &dlq);
    if (rc == MQ_ENOTFOUND || (rc == MQ_OK && dlq.kind != MQI_KIND_QUEUE))
      return mqi_op_fail(op, MQ_EINVAL, "%s: dead-letter queue \"%s\" is not a queue", s->path,
                         a->o.dlq);
    if (rc != MQ_OK) return rc;
    if ((rc = mqi_queue_check_dlq(s, op, a->path, a->o.max_receives, &dlq)) != MQ_OK) return rc;
  }
  rc = mqi_queue_find(s, op, a->path, &old);
  if (rc == MQ_OK) {
    /* Same subscription again: fine if nothing differs. */
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(s->db, "SELECT coalesce(filter, '') FROM mq_queue WHERE id=?1", -1,
                                 &st, NULL);
    if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "preparing");
    sqlite3_bind_int64(st, 1, old.id);
    int same_filter =
        sqlite3_step(st) == SQLITE_ROW &&
        strcmp((const char *)sqlite3_column_text(st, 0), a->filter ? a->filter : "") == 0;
    sqlite3_finalize(st);
    if (same_filter && old.visibility_ms == a->o.visibility_ms &&
        old.max_receives == a->o.max_receives && old.dlq_id == dlq.id &&
        old.retention_ms == a->o.retention_ms)
      return MQ_OK;
    return mqi_op_fail(op, MQ_EEXIST,
                       "%s: subscription \"%s\" exists with another filter or "
                       "options",
                       s->path, a->path);
  }
  if (rc != MQ_ENOTFOUND) return rc;
  op->err[0] = 0;
  int64_t id;
  if ((rc = mqi_queue_new_id(s, op, &id)) != MQ_OK) return rc;
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(
      s->db,
      "INSERT INTO mq_queue(name, kind, parent_id, filter, visibility_ms, max_receives, dlq_id,"
      " retention_ms, max_payload, compress_above, dedup_window_ms, created_at, id)"
      " VALUES(?1, 2, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
      -1, &st, NULL);
  if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "preparing");
  sqlite3_bind_text(st, 1, a->path, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, t.id);
  if (a->filter && *a->filter) sqlite3_bind_text(st, 3, a->filter, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 4, a->o.visibility_ms);
  sqlite3_bind_int(st, 5, a->o.max_receives);
  if (dlq.id) sqlite3_bind_int64(st, 6, dlq.id);
  sqlite3_bind_int64(st, 7, a->o.retention_ms);
  sqlite3_bind_int64(st, 8, t.max_payload);
  sqlite3_bind_int64(st, 9, t.compress_above);
  sqlite3_bind_int64(st, 10, t.dedup_window_ms);
  sqlite3_bind_int64(st, 11, mqi_store_now(s));
  sqlite3_bind_int64(st, 12, id);
  src = sqlite3_step(st);
  sqlite3_finalize(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "creating a subscription");
  return MQ_OK;
}

static int topic_path(mq_store *s, topic_arg *a, const char *topic, const char *sub) {
  int rc = mqi_err_check_name(s, "topic", topic);
  if (rc == MQ_OK) rc = mqi_err_check_name(s, "subscription", sub);
  if (rc != MQ_OK) return rc;
  a->topic = topic;
  a->sub = sub;
  strcpy(a->path, topic);
  strcat(a->path, "/");
  strcat(a->path, sub);
  return MQ_OK;
}

int mq_subscription_create(mq_store *s, const char *topic, const char *sub, const char *filter,
                           const mq_queue_options *opts) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  topic_arg a = {0};
  if ((rc = topic_path(s, &a, topic, sub)) != MQ_OK) return rc;
  if (topic_check_filter(filter) != 0)
    return mqi_err_set(s, MQ_EINVAL,
                       "filter \"%.60s\" is malformed: wildcards ('*', '+', '>', '#') must be "
                       "whole levels, '>' and '#' only last, at most %d bytes, no control "
                       "characters",
                       filter, MQ_SUBJECT_MAX);
  a.filter = filter;
  mq_queue_options_init(&a.o);
  if (opts) {
    if (opts->size < offsetof(mq_queue_options, dedup_window_ms) || opts->size > sizeof a.o)
      return mqi_err_set(s, MQ_EINVAL,
                         "mq_queue_options.size is %zu: call mq_queue_options_init first",
                         opts->size);
    memcpy(&a.o, opts, opts->size);
  }
  if (a.o.visibility_ms < 1 || a.o.max_receives < 0 || a.o.retention_ms < 0)
    return mqi_err_set(s, MQ_EINVAL,
                       "subscription \"%s\": visibility_ms must be at least 1, max_receives "
                       "and retention_ms not negative",
                       a.path);
  if (a.o.dlq && (rc = mqi_err_check_name(s, "dead-letter queue", a.o.dlq)) != MQ_OK) return rc;
  return mqi_commit_run(s, topic_sub_create_op, &a, MQI_RUN_DURABLE);
}

static int topic_sub_drop_op(mq_store *s, mqi_op *op) {
  topic_arg *a = op->arg;
  mqi_queue t, q;
  int rc = topic_find(s, op, a->topic, &t);
  if (rc != MQ_OK) return rc;
  rc = mqi_queue_find(s, op, a->path, &q);
  if (rc == MQ_ENOTFOUND)
    return mqi_op_fail(op, MQ_ENOTFOUND, "%s: topic \"%s\" has no subscription \"%s\"", s->path,
                       a->topic, a->sub);
  if (rc != MQ_OK) return rc;
  return mqi_queue_clear(s, op, q.id, a->path, 1, NULL);
}

int mq_subscription_drop(mq_store *s, const char *topic, const char *sub) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  topic_arg a = {0};
  if ((rc = topic_path(s, &a, topic, sub)) != MQ_OK) return rc;
  return mqi_commit_run(s, topic_sub_drop_op, &a, MQI_RUN_DURABLE);
}

/* ---- publish --------------------------------------------------------------- */

typedef struct topic_sub {
  mqi_queue q;
  char *filter;
  int hit; /* matches the message being published */
} topic_sub;

static int topic_publish_op(mq_store *s, mqi_op *op) {
  topic_arg *a = op->arg;
  /* The op may run again in the same call (a batch whose settle failed
  ** is run again without it, commit.c): count this run's only. */
  a->delivered = 0;
  mqi_queue t;
  int rc = topic_find(s, op, a->topic, &t);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_store_space_ok(s, op, 0)) != MQ_OK) return rc;
  /* Size is checked whether or not anyone listens: the answer to a bad
  ** publish must not depend on which subscriptions exist. */
  for (size_t i = 0; i < a->n; i++)
    if ((int64_t)a->items[i].len > t.max_payload)
      return mqi_op_fail(op, MQ_ETOOBIG,
                         "%s: entry %zu: payload of %zu bytes is above the topic's max_payload "
                         "of %lld",
                         s->path, i, a->items[i].len, (long long)t.max_payload);
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(s->db,
                               "SELECT id, retention_ms, filter FROM mq_queue"
                               " WHERE parent_id = ?1 AND kind = 2",
                               -1, &st, NULL);
  if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "preparing");
  sqlite3_bind_int64(st, 1, t.id);
  topic_sub *subs = NULL;
  size_t ns = 0, cap = 0;
  while ((src = sqlite3_step(st)) == SQLITE_ROW) {
    if (ns == cap) {
      topic_sub *nsubs = realloc(subs, (cap ? cap * 2 : 16) * sizeof *nsubs);
      if (!nsubs) {
        src = SQLITE_NOMEM;
        break;
      }
      subs = nsubs;
      cap = cap ? cap * 2 : 16;
    }
    topic_sub *u = &subs[ns];
    memset(u, 0, sizeof *u);
    u->q.id = sqlite3_column_int64(st, 0);
    u->q.retention_ms = sqlite3_column_int64(st, 1);
    const char *f = (const char *)sqlite3_column_text(st, 2);
    if (f && !(u->filter = strdup(f))) {
      src = SQLITE_NOMEM;
      break;
    }
    ns++;
  }
  sqlite3_finalize(st);
  int64_t now = mqi_store_now(s);
  const mqi_queue **hits = NULL; /* the subscriptions one message goes to */
  if (src == SQLITE_DONE && ns && !(hits = malloc(ns * sizeof *hits))) src = SQLITE_NOMEM;
  if (src != SQLITE_DONE)
    rc = src == SQLITE_NOMEM ? mqi_op_fail(op, MQ_ENOMEM, "out of memory publishing")
                             : mqi_op_sqlite(s, op, src, "reading subscriptions");
  for (size_t i = 0; rc == MQ_OK && i < a->n; i++) {
    mqi_put_item *it = &a->items[i];
    int64_t body = 0, id = 0;
    rc = mqi_put_dedup_find(s, op, &t, it, now, &id);
    if (rc != MQ_OK || id) {
      a->ids[i] = id;
      continue;
    }
    int matches = 0;
    for (size_t k = 0; k < ns; k++)
      matches += subs[k].hit = topic_match(subs[k].filter, it->subject);
    if (matches == 0) {
      a->ids[i] = 0; /* nobody listens: nothing to store */
      continue;
    }
    size_t nh = 0;
    for (size_t k = 0; k < ns; k++)
      if (subs[k].hit) hits[nh++] = &subs[k].q;
    rc = mqi_store_next_id(s, op, &body);
    if (rc == MQ_OK) rc = mqi_put_body(s, op, &t, it, i, matches, body);
    if (rc == MQ_OK) rc = mqi_put_fanout(s, op, hits, nh, t.retention_ms, body, it, now);
    a->delivered += (int64_t)nh;
    if (rc == MQ_OK) rc = mqi_put_dedup_store(s, op, &t, it, now, body);
    a->ids[i] = body;
  }
  for (size_t k = 0; k < ns; k++) free(subs[k].filter);
  free(subs);
  free(hits);
  if (rc != MQ_OK) return rc;
  mqi_put_sweep(s, now);
  if (a->delivered) op->flags |= MQI_OP_WAKE;
  return MQ_OK;
}

int mq_publish_batch(mq_store *s, const char *topic, const mq_pub_entry *entries, size_t n,
                     int64_t *ids, int64_t *delivered) {
  if (delivered) *delivered = 0;
  if (ids && entries)
    for (size_t i = 0; i < n; i++) ids[i] = 0;
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_name(s, "topic", topic)) != MQ_OK) return rc;
  if (n == 0) return MQ_OK;
  if (!entries) return mqi_err_set(s, MQ_EINVAL, "mq_publish_batch: entries is NULL");
  topic_arg a = {0};
  a.topic = topic;
  a.n = n;
  a.items = calloc(n, sizeof *a.items);
  a.ids = ids ? ids : calloc(n, sizeof *a.ids);
  size_t prepared = 0;
  if (!a.items || !a.ids) {
    rc = mqi_err_set(s, MQ_ENOMEM, "out of memory publishing %zu messages", n);
    goto done;
  }
  for (; prepared < n; prepared++) {
    const mq_pub_entry *e = &entries[prepared];
    rc = mqi_put_prepare(s, &a.items[prepared], prepared, e->data, e->len, e->opts);
    if (rc == MQ_OK && topic_check_subject(e->subject) != 0)
      rc = mqi_err_set(s, MQ_EINVAL,
                       "entry %zu: subject \"%.60s\" is malformed: at most %d bytes, no control "
                       "characters, no '*', '>' or '#', no level that is only '+'",
                       prepared, e->subject, MQ_SUBJECT_MAX);
    if (rc != MQ_OK) {
      free(a.items[prepared].headers);
      goto done;
    }
    a.items[prepared].subject = e->subject;
  }
  rc = mqi_commit_run(s, topic_publish_op, &a, MQI_RUN_DURABLE);
  if (rc == MQ_OK && delivered) *delivered = a.delivered;
done:
  for (size_t i = 0; i < prepared; i++) free(a.items[i].headers);
  free(a.items);
  if (a.ids != ids) free(a.ids);
  if (rc != MQ_OK && ids)
    for (size_t i = 0; i < n; i++) ids[i] = 0;
  return rc;
}

int mq_publish(mq_store *s, const char *topic, const char *subject, const void *data, size_t len,
               const mq_put_options *opts, int64_t *id, int64_t *delivered) {
  mq_pub_entry e = {subject, data, len, opts};
  if (id) *id = 0;
  return mq_publish_batch(s, topic, &e, 1, id, delivered);
}

/* The deliveries of topic t that subscribers can still get: an expired one
** is gone (mq_queue_stats_get leaves it out too), and so is a payload that
** only such deliveries share. */
#define TOPIC_LIVE                                                                            \
  "(SELECT body_id FROM mq_msg WHERE queue_id IN"                                             \
  "  (SELECT id FROM mq_queue WHERE parent_id = t.id)"                                        \
  " AND (expires_at IS NULL OR expires_at > ?2))"
#define TOPIC_STATS_SQL                                                                       \
  "SELECT (SELECT count(*) FROM mq_queue WHERE parent_id = t.id),"                            \
  " (SELECT count(*) FROM " TOPIC_LIVE "),"                                                   \
  " (SELECT count(*) FROM mq_body WHERE id IN " TOPIC_LIVE "),"                               \
  " (SELECT coalesce(sum(size), 0) FROM mq_body WHERE id IN " TOPIC_LIVE ")"                  \
  " FROM mq_queue t WHERE t.name = ?1 AND t.kind = 1"

int mq_topic_stats_get(mq_store *s, const char *topic, mq_topic_stats *out) {
  if (out) memset(out, 0, sizeof *out);
  int rc = mqi_store_check(s, 0);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_name(s, "topic", topic)) != MQ_OK) return rc;
  if (!out) return mqi_err_set(s, MQ_EINVAL, "mq_topic_stats_get: out is NULL");
  sqlite3 *db;
  if ((rc = mqi_store_read(s, &db)) != MQ_OK) return rc;
  int64_t now = mqi_store_now(s);
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(db, TOPIC_STATS_SQL, -1, &st, NULL);
  if (src == SQLITE_OK) {
    sqlite3_bind_text(st, 1, topic, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    src = sqlite3_step(st);
  }
  if (src == SQLITE_ROW) {
    out->subscriptions = sqlite3_column_int64(st, 0);
    out->messages = sqlite3_column_int64(st, 1);
    out->payloads = sqlite3_column_int64(st, 2);
    out->bytes = sqlite3_column_int64(st, 3);
  } else if (src == SQLITE_DONE) {
    rc = mqi_err_set(s, MQ_ENOTFOUND, "%s: no topic named \"%s\"", s->path, topic);
  } else {
    rc = mqi_err_set(s, mqi_err_from_sqlite(src), "%s: topic stats: %s", s->path,
                     sqlite3_errmsg(db));
  }
  sqlite3_finalize(st);
  mqi_store_read_done(s, src);
  return rc;
}
