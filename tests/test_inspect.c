/*
** test_inspect.c -- mq_queue_scan sees every message in its current state
** without changing anything; mq_store_verify finds damaged payloads and
** broken invariants and says where they are.
*/
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sqlite3.h>
#include <time.h>

#include "testutil.h"

typedef struct seen {
  int n;
  int64_t ids[16];
  int states[16];
  size_t sizes[16];
  int stop_after;
} seen;

static int collect(void *ctx, const mq_msg *m, int state) {
  seen *s = ctx;
  if (s->n < 16) {
    s->ids[s->n] = mq_msg_id(m);
    s->states[s->n] = state;
    s->sizes[s->n] = mq_msg_size(m);
  }
  s->n++;
  return s->stop_after && s->n >= s->stop_after;
}

static void lines(void *ctx, const char *problem) {
  char *buf = ctx;
  strncat(buf, problem, 4000 - strlen(buf));
  strncat(buf, "\n", 4000 - strlen(buf));
}

static void scan_reports_states_and_changes_nothing(void) {
  const char *p = test_path("scan");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  mq_queue_options qo;
  mq_queue_options_init(&qo);
  qo.visibility_ms = 1000;
  CHECK_OK(mq_queue_create(s, "q", &qo));
  int64_t ready, leased, delayed;
  mq_put_options po;
  mq_put_options_init(&po);
  CHECK_OK(mq_put(s, "q", "a", 1, NULL, &leased));
  CHECK_OK(mq_put(s, "q", "bb", 2, NULL, &ready));
  po.delay_ms = 5000;
  CHECK_OK(mq_put(s, "q", "ccc", 3, &po, &delayed));
  mq_msg *m = NULL;
  CHECK_OK(mq_get(s, "q", NULL, &m));
  CHECK(mq_msg_id(m) == leased);
  CHECK(mq_msg_visible_at(m) == test_now_ms + 1000);
  mq_msg_free(m);

  seen got = {0};
  int64_t corrupt = -1;
  CHECK_OK(mq_queue_scan(s, "q", collect, &got, &corrupt));
  CHECK(got.n == 3);
  CHECK(corrupt == 0);
  CHECK(got.ids[0] == leased && got.states[0] == MQ_STATE_INFLIGHT && got.sizes[0] == 1);
  CHECK(got.ids[1] == ready && got.states[1] == MQ_STATE_READY && got.sizes[1] == 2);
  CHECK(got.ids[2] == delayed && got.states[2] == MQ_STATE_DELAYED && got.sizes[2] == 3);

  /* Scanning leased nothing: stats are as before. */
  mq_queue_stats st;
  CHECK_OK(mq_queue_stats_get(s, "q", &st));
  CHECK(st.ready == 1 && st.inflight == 1 && st.delayed == 1);

  /* Once the lease runs out the scan calls it ready, as a get would. */
  test_now_ms += 1001;
  got = (seen){0};
  CHECK_OK(mq_queue_scan(s, "q", collect, &got, NULL));
  CHECK(got.states[0] == MQ_STATE_READY);

  /* A callback can stop the scan. */
  got = (seen){0};
  got.stop_after = 1;
  CHECK_OK(mq_queue_scan(s, "q", collect, &got, NULL));
  CHECK(got.n == 1);

  CHECK_RC(mq_queue_scan(s, "nope", collect, &got, NULL), MQ_ENOTFOUND);
  CHECK_RC(mq_queue_scan(s, "q", NULL, NULL, NULL), MQ_EINVAL);
  mq_store_close(s);
  test_unlink_store(p);
}

static void verify_finds_damage(void) {
  const char *p = test_path("verify");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(s, "jobs", NULL));
  int64_t id1, id2;
  static char first[2000]; /* in mq_body; the second in its message row */
  memset(first, '1', sizeof first);
  CHECK_OK(mq_put(s, "jobs", first, sizeof first, NULL, &id1));
  CHECK_OK(mq_put(s, "jobs", "second payload", 14, NULL, &id2));
  char report[4096] = "";
  int64_t problems = -1;
  CHECK_OK(mq_store_verify(s, lines, report, &problems));
  CHECK(problems == 0);
  CHECK(report[0] == 0);
  mq_store_close(s);

  /* Damage one payload byte and one reference count behind mq's back. */
  CHECK(tu_payload_inline(p, id1) == 0 && tu_payload_inline(p, id2) == 1);
  CHECK(tu_payload_set(p, id2, "data = CAST('second pAyload' AS BLOB)", NULL, 0) == 1);
  char sql[200];
  snprintf(sql, sizeof sql,
           "UPDATE mq_body SET refs = 3 WHERE id = (SELECT body_id FROM mq_msg WHERE id = %lld)",
           (long long)id1);
  CHECK(tu_sql_exec(p, sql) == SQLITE_OK);

  s = test_open(p, MQ_SYNC_NORMAL);
  report[0] = 0;
  CHECK_RC(mq_store_verify(s, lines, report, &problems), MQ_ECORRUPT);
  CHECK(problems == 2);
  char want[100];
  snprintf(want, sizeof want, "queue \"jobs\": message %lld: payload fails its checksum",
           (long long)id2);
  CHECK(strstr(report, want) != NULL);
  CHECK(strstr(report, "counts 3 references but has 1") != NULL);
  CHECK(strstr(mq_errmsg(s), "2 problem") != NULL);

  /* The damaged message is skipped by a scan and counted. */
  seen got = {0};
  int64_t corrupt = 0;
  CHECK_OK(mq_queue_scan(s, "jobs", collect, &got, &corrupt));
  CHECK(got.n == 1 && got.ids[0] == id1);
  CHECK(corrupt == 1);
  mq_store_close(s);
  test_unlink_store(p);
}

/* The facts about the file: what it is, how big, how much of it is free
** inside, how long the WAL is, what it holds -- and each moves as it
** should. */
static void store_info_follows_the_file(void) {
  const char *p = test_path("storeinfo");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  mq_store_info si;
  CHECK_OK(mq_store_info_get(s, &si));
  CHECK(si.format_version == 3 && strncmp(si.created_by, "mq ", 3) == 0);
  CHECK(si.page_size == 4096 && si.file_bytes > 0 && si.file_bytes % 4096 == 0);
  CHECK(si.queues == 0 && si.topics == 0 && si.subscriptions == 0);
  CHECK_OK(mq_queue_create(s, "a", NULL));
  CHECK_OK(mq_queue_create(s, "b", NULL));
  CHECK_OK(mq_topic_create(s, "t", NULL));
  CHECK_OK(mq_subscription_create(s, "t", "x", NULL, NULL));
  CHECK_OK(mq_subscription_create(s, "t", "y", NULL, NULL));
  static char big[8192];
  memset(big, 'z', sizeof big);
  for (int i = 0; i < 100; i++) CHECK_OK(mq_put(s, "a", big, sizeof big, NULL, NULL));
  CHECK_OK(mq_store_info_get(s, &si));
  CHECK(si.queues == 2 && si.topics == 1 && si.subscriptions == 2);
  CHECK(si.file_bytes > 100 * (int64_t)sizeof big); /* the pages in the WAL count */
  CHECK(si.wal_bytes > 0);
  int64_t full = si.file_bytes;

  /* Purged, the pages stay in the file as free pages (seen through the
  ** WAL at once); the checkpoint empties the WAL. */
  CHECK_OK(mq_queue_purge(s, "a", NULL));
  CHECK_OK(mq_store_info_get(s, &si));
  CHECK(si.free_bytes >= 100 * (int64_t)sizeof big);
  CHECK_OK(mq_store_checkpoint(s));
  CHECK_OK(mq_store_info_get(s, &si));
  CHECK(si.wal_bytes == 0);
  CHECK(si.file_bytes == full);
  CHECK(si.free_bytes >= 100 * (int64_t)sizeof big && si.free_bytes < si.file_bytes);
  CHECK_OK(mq_store_close(s));
  test_unlink_store(p);

  /* The page size a file was created with. */
  mq_store_options o;
  mq_store_options_init(&o);
  o.clock = test_clock;
  o.min_free_bytes = 0;
  o.page_size = 65536;
  CHECK_OK(mq_store_open(p, &o, &s));
  CHECK_OK(mq_store_info_get(s, &si));
  CHECK(si.page_size == 65536 && si.file_bytes % 65536 == 0);
  CHECK_OK(mq_store_close(s));
  test_unlink_store(p);
}

static void info_and_now(void) {
  const char *p = test_path("info");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  CHECK(mq_store_now(s) == test_now_ms);
  mq_queue_options qo;
  mq_queue_options_init(&qo);
  CHECK_OK(mq_queue_create(s, "dead", NULL));
  qo.visibility_ms = 1234;
  qo.max_receives = 3;
  qo.dlq = "dead";
  qo.retention_ms = 99000;
  qo.compress_above = 512;
  CHECK_OK(mq_queue_create(s, "jobs", &qo));
  CHECK_OK(mq_topic_create(s, "t", NULL));
  CHECK_OK(mq_subscription_create(s, "t", "k", "a.*", &qo));
  mq_queue_info in;
  CHECK_OK(mq_queue_info_get(s, "jobs", &in));
  CHECK(in.kind == MQ_KIND_QUEUE && in.visibility_ms == 1234 && in.max_receives == 3);
  CHECK(strcmp(in.dlq, "dead") == 0 && in.retention_ms == 99000 && in.compress_above == 512);
  CHECK(in.max_payload == 1024 * 1024 && in.created_at == test_now_ms && in.filter[0] == 0);
  CHECK_OK(mq_queue_info_get(s, "dead", &in));
  CHECK(in.dlq[0] == 0 && in.max_receives == 0);
  CHECK_OK(mq_queue_info_get(s, "t", &in));
  CHECK(in.kind == MQ_KIND_TOPIC);
  CHECK_OK(mq_queue_info_get(s, "t/k", &in));
  CHECK(in.kind == MQ_KIND_SUBSCRIPTION && strcmp(in.filter, "a.*") == 0);
  CHECK_RC(mq_queue_info_get(s, "nope", &in), MQ_ENOTFOUND);
  CHECK(in.kind == 0 && in.visibility_ms == 0);
  CHECK_RC(mq_queue_info_get(s, "jobs", NULL), MQ_EINVAL);
  CHECK(mq_store_now(NULL) == 0);
  mq_store_close(s);
  test_unlink_store(p);
}

/* A scan runs on the handle's reader connection: while its callback is
** inside, another thread's put on the same handle commits, and the
** callback itself may put.  The wait is bounded only so that a regression
** (reads holding up the handle's commits) fails instead of hanging. */
/* Wait (mu held) until *flag is set or ms have passed; returns *flag.
** The bound only turns a regression into a failure instead of a hang. */
static int wait_flag(pthread_mutex_t *mu, pthread_cond_t *cv, const int *flag, long ms) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += ms / 1000;
  until.tv_nsec += (ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  while (!*flag && pthread_cond_timedwait(cv, mu, &until) == 0) {
  }
  return *flag;
}

/* Set *flag under mu and wake its waiters (wait_flag). */
static void raise_flag(pthread_mutex_t *mu, pthread_cond_t *cv, int *flag) {
  pthread_mutex_lock(mu);
  *flag = 1;
  pthread_cond_broadcast(cv);
  pthread_mutex_unlock(mu);
}

typedef struct busy_scan {
  mq_store *s;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int started, put_done, put_rc, in_fn_rc, calls, have_thread, nested_read_rc, nested_ckpt_rc;
  pthread_t th;
} busy_scan;

static void *busy_put(void *arg) {
  busy_scan *b = arg;
  b->put_rc = mq_put(b->s, "q", "late", 4, NULL, NULL); /* read after the join */
  raise_flag(&b->mu, &b->cv, &b->put_done);
  return NULL;
}

static int busy_fn(void *ctx, const mq_msg *m, int state) {
  busy_scan *b = ctx;
  (void)m;
  (void)state;
  if (b->calls++ > 0) return 0;
  if (pthread_create(&b->th, NULL, busy_put, b) != 0) return 0;
  b->have_thread = 1;
  pthread_mutex_lock(&b->mu);
  /* the put finished while the scan was open */
  b->started = wait_flag(&b->mu, &b->cv, &b->put_done, 20000);
  pthread_mutex_unlock(&b->mu);
  /* Only then the calls that would wait forever if reads held the lock
  ** of writes: a put of our own, and (refused at once) another read and
  ** a checkpoint of the same handle. */
  if (!b->started) return 0;
  b->in_fn_rc = mq_put(b->s, "q", "from fn", 7, NULL, NULL);
  mq_queue_stats st;
  b->nested_read_rc = mq_queue_stats_get(b->s, "q", &st);
  b->nested_ckpt_rc = mq_store_checkpoint(b->s);
  return 0;
}

static void reads_do_not_hold_up_commits(void) {
  const char *p = test_path("busyscan");
  mq_store *s = test_open(p, MQ_SYNC_FULL);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  CHECK_OK(mq_put(s, "q", "first", 5, NULL, NULL));
  busy_scan b;
  memset(&b, 0, sizeof b);
  b.s = s;
  pthread_mutex_init(&b.mu, NULL);
  pthread_cond_init(&b.cv, NULL);
  CHECK_OK(mq_queue_scan(s, "q", busy_fn, &b, NULL));
  if (b.have_thread) pthread_join(b.th, NULL);
  CHECK(b.calls == 1); /* the snapshot holds only what came before */
  CHECK(b.started == 1);
  CHECK_OK(b.in_fn_rc);
  CHECK_OK(b.put_rc);
  CHECK_RC(b.nested_read_rc, MQ_EMISUSE);
  CHECK_RC(b.nested_ckpt_rc, MQ_EMISUSE);
  mq_queue_stats st;
  CHECK_OK(mq_queue_stats_get(s, "q", &st));
  CHECK(st.total == 3);
  pthread_mutex_destroy(&b.mu);
  pthread_cond_destroy(&b.cv);
  CHECK_OK(mq_store_close(s));
  test_unlink_store(p);
}

/* Nested calls from scan callbacks: reads of another handle work, reads
** and checkpoints of a handle whose scan is running are refused however
** deep the nesting, never a wait for itself. */
typedef struct nest_ctx {
  mq_store *a, *b;
  int calls, rc_other, rc_same, rc_put;
} nest_ctx;

static int nest_inner_fn(void *ctx, const mq_msg *m, int state) {
  nest_ctx *n = ctx;
  mq_queue_stats st;
  (void)m;
  (void)state;
  n->rc_same = mq_queue_stats_get(n->a, "q", &st); /* a's scan is still open */
  return 1;
}

static int nest_outer_fn(void *ctx, const mq_msg *m, int state) {
  nest_ctx *n = ctx;
  mq_queue_stats st;
  (void)m;
  (void)state;
  if (n->calls++) return 0;
  n->rc_other = mq_queue_stats_get(n->b, "q", &st);
  /* After a read of b has come and gone, a is still being read. */
  if (mq_queue_stats_get(n->a, "q", &st) != MQ_EMISUSE) n->rc_same = -1;
  if (mq_store_checkpoint(n->a) != MQ_EMISUSE) n->rc_same = -1;
  mq_store_info si;
  if (mq_store_info_get(n->a, &si) != MQ_EMISUSE) n->rc_same = -1;
  if (n->rc_same == 0) mq_queue_scan(n->b, "q", nest_inner_fn, n, NULL);
  return 0;
}

static int nest_put_fn(void *ctx, const mq_msg *m, int state) {
  nest_ctx *n = ctx;
  (void)m;
  (void)state;
  if (n->calls++ == 0) n->rc_put = mq_put(n->a, "q", "x", 1, NULL, NULL);
  return 0;
}

static void nested_calls_in_callbacks(void) {
  const char *pa = test_path("nest-a"), *pb = test_path("nest-b");
  nest_ctx n = {test_open(pa, MQ_SYNC_NORMAL), test_open(pb, MQ_SYNC_NORMAL), 0, -2, 0, 0};
  CHECK_OK(mq_queue_create(n.a, "q", NULL));
  CHECK_OK(mq_queue_create(n.b, "q", NULL));
  CHECK_OK(mq_put(n.a, "q", "a", 1, NULL, NULL));
  CHECK_OK(mq_put(n.b, "q", "b", 1, NULL, NULL));
  CHECK_OK(mq_queue_scan(n.a, "q", nest_outer_fn, &n, NULL));
  CHECK_OK(n.rc_other);
  CHECK_RC(n.rc_same, MQ_EMISUSE); /* from inside b's scan, inside a's */
  mq_queue_stats st;
  CHECK_OK(mq_queue_stats_get(n.a, "q", &st)); /* and all is well after */
  CHECK_OK(mq_store_close(n.a));
  CHECK_OK(mq_store_close(n.b));
  test_unlink_store(pa);
  test_unlink_store(pb);
}

/* Reads open their connection later than the handle's own, and by name:
** they must still read the handle's file after the process changed
** directory, and after another file was renamed over its path. */
static void reads_follow_the_file_not_the_path(void) {
  char cwd[1024], a[600], b[600];
  CHECK(getcwd(cwd, sizeof cwd) != NULL);
  snprintf(a, sizeof a, "%s", test_path("dir-a"));
  snprintf(b, sizeof b, "%s", test_path("dir-b"));
  CHECK(mkdir(a, 0700) == 0 && mkdir(b, 0700) == 0);
  char other[700];
  snprintf(other, sizeof other, "%s/q.db", b);
  mq_store *o = test_open(other, MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(o, "q", NULL));
  for (int i = 0; i < 5; i++) CHECK_OK(mq_put(o, "q", "other", 5, NULL, NULL));
  CHECK_OK(mq_store_close(o));

  CHECK(chdir(a) == 0);
  mq_store *s = test_open("q.db", MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  CHECK_OK(mq_put(s, "q", "mine", 4, NULL, NULL));
  CHECK_OK(mq_put(s, "q", "mine", 4, NULL, NULL));
  CHECK(chdir(b) == 0); /* "q.db" is the other store now */
  mq_queue_stats st;
  CHECK_OK(mq_queue_stats_get(s, "q", &st));
  CHECK(st.total == 2);
  CHECK_OK(mq_store_close(s));

  /* The other store renamed over ours while ours is open (nothing read
  ** yet): reads keep to the open file. */
  char mine[700], moved[700];
  snprintf(mine, sizeof mine, "%s/q.db", a);
  snprintf(moved, sizeof moved, "%s/moved.db", b);
  CHECK(chdir(cwd) == 0);
  s = test_open(mine, MQ_SYNC_NORMAL);
  CHECK_OK(mq_put(s, "q", "mine", 4, NULL, NULL));
  CHECK_OK(mq_store_checkpoint(s)); /* an empty WAL: only the file speaks */
  CHECK(rename(other, moved) == 0 && rename(moved, mine) == 0);
  CHECK_OK(mq_queue_stats_get(s, "q", &st));
  CHECK(st.total == 3);
  int64_t problems = -1;
  CHECK_OK(mq_store_verify(s, NULL, NULL, &problems));
  CHECK(problems == 0);
  mq_msg *m = NULL;
  size_t n = 0;
  CHECK_OK(mq_peek(s, "q", 1, &m, &n));
  CHECK(n == 1 && m && mq_msg_size(m) == 4 && memcmp(mq_msg_data(m), "mine", 4) == 0);
  mq_msg_free(m);
  /* Reading on its own connection, the scan holds the handle's writes:
  ** a put from its callback is refused rather than waiting forever. */
  nest_ctx w = {s, NULL, 0, 0, 0, 0};
  CHECK_OK(mq_queue_scan(s, "q", nest_put_fn, &w, NULL));
  CHECK(w.calls == 3);
  CHECK_RC(w.rc_put, MQ_EMISUSE);
  CHECK_OK(mq_store_close(s));
  test_unlink_store(mine);
  rmdir(a);
  rmdir(b);
}

/* mq_store_checkpoint from another thread while a scan of the same handle
** is open: it waits for the scan, then succeeds -- it must not sit in the
** gate waiting out the busy timeout and give up with MQ_EBUSY (holding up
** every writer of the file meanwhile).  The scan stays open half a second
** after the checkpoint was called; a checkpoint that finishes inside that
** window did not wait. */
typedef struct ckpt_scan {
  mq_store *s;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int calling, done, rc, done_during_scan, calls, have_thread;
  pthread_t th;
} ckpt_scan;

static void *ckpt_thread(void *arg) {
  ckpt_scan *c = arg;
  raise_flag(&c->mu, &c->cv, &c->calling);
  c->rc = mq_store_checkpoint(c->s); /* read after the join */
  raise_flag(&c->mu, &c->cv, &c->done);
  return NULL;
}

static int ckpt_fn(void *ctx, const mq_msg *m, int state) {
  ckpt_scan *c = ctx;
  (void)m;
  (void)state;
  if (c->calls++) return 0;
  /* Started here, the checkpoint is called while this scan is open. */
  if (pthread_create(&c->th, NULL, ckpt_thread, c) != 0) return 0;
  c->have_thread = 1;
  pthread_mutex_lock(&c->mu);
  wait_flag(&c->mu, &c->cv, &c->calling, 20000);
  wait_flag(&c->mu, &c->cv, &c->done, 500);
  c->done_during_scan = c->done;
  pthread_mutex_unlock(&c->mu);
  return 0;
}

static void checkpoint_waits_for_its_own_reads(void) {
  const char *p = test_path("ckptscan");
  mq_store_options o;
  mq_store_options_init(&o);
  o.sync = MQ_SYNC_NORMAL;
  o.busy_timeout_ms = 100;
  ckpt_scan c;
  memset(&c, 0, sizeof c);
  CHECK_OK(mq_store_open(p, &o, &c.s));
  CHECK_OK(mq_queue_create(c.s, "q", NULL));
  for (int i = 0; i < 3; i++) CHECK_OK(mq_put(c.s, "q", "m", 1, NULL, NULL));
  pthread_mutex_init(&c.mu, NULL);
  pthread_cond_init(&c.cv, NULL);
  CHECK_OK(mq_queue_scan(c.s, "q", ckpt_fn, &c, NULL));
  CHECK(c.have_thread);
  if (c.have_thread) pthread_join(c.th, NULL);
  CHECK(c.done_during_scan == 0);
  CHECK_OK(c.rc);
  pthread_mutex_destroy(&c.mu);
  pthread_cond_destroy(&c.cv);
  CHECK_OK(mq_store_close(c.s));
  test_unlink_store(p);
}

int main(void) {
  /* The nested-call cases fail by deadlocking: fail in a minute (the run
  ** takes about one second), not at ctest's timeout. */
  tu_watchdog(60);
  TEST(info_and_now);
  TEST(store_info_follows_the_file);
  TEST(scan_reports_states_and_changes_nothing);
  TEST(verify_finds_damage);
  TEST(reads_do_not_hold_up_commits);
  TEST(reads_follow_the_file_not_the_path);
  TEST(nested_calls_in_callbacks);
  TEST(checkpoint_waits_for_its_own_reads);
  return test_done();
}
