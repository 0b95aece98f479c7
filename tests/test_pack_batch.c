/*
** test_pack_batch.c -- packs (src/pack.c) in group commits: what a batch
** with a settle does to the id sequence, to the ops that share it, and to
** damaged packs.  Each case failed on a first version (found in review).
**
** Several cases need two or more ops in one group commit.  They get it
** without sleeping on chance: another connection holds the write lock, a
** first op (the "blocker", a queue create) becomes the leader and waits
** for the lock inside its batch, the ops under test queue up behind it
** (the test watches the handle's queue), and the lock is let go: the next
** leader takes them all in one batch.
*/
#include <pthread.h>

#include "faultvfs.h"
#include "harness.h"
#include "packutil.h"

/* ---- ops in one batch ------------------------------------------------------ */

enum { JOB_BLOCKER, JOB_GET, JOB_PUT_BIG, JOB_PUBLISH };

typedef struct job {
  mq_store *s;
  int what;
  int rc;
  int64_t delivered;
  char text[32];
  pthread_t t;
} job;

static void *job_main(void *arg) {
  job *j = arg;
  switch (j->what) {
    case JOB_BLOCKER:
      j->rc = mq_queue_create(j->s, j->text, NULL);
      break;
    case JOB_GET: {
      mq_msg *m = NULL;
      j->rc = mq_get(j->s, "q", NULL, &m);
      j->text[0] = '\0';
      if (m)
        snprintf(j->text, sizeof j->text, "%.*s", (int)mq_msg_size(m),
                 (const char *)mq_msg_data(m));
      mq_msg_free(m);
      break;
    }
    case JOB_PUT_BIG: {
      size_t len = 512 * 1024;
      char *big = calloc(1, len);
      j->rc = big ? mq_put(j->s, "q", big, len, NULL, NULL) : MQ_ENOMEM;
      free(big);
      break;
    }
    case JOB_PUBLISH:
      j->rc = mq_publish(j->s, "t", NULL, "news", 4, NULL, NULL, &j->delivered);
      break;
  }
  return NULL;
}

/* Whether the handle's leader is running a batch and n ops wait for the next. */
static int batch_state(mq_store *s, int n) {
  pthread_mutex_lock(&s->lock);
  int ok = s->leading && s->head == NULL ? n == 0 : (s->leading && (int)s->queued == n);
  pthread_mutex_unlock(&s->lock);
  return ok;
}

static int wait_state(mq_store *s, int n) {
  int64_t deadline = tu_mono_ms() + 10000;
  while (!batch_state(s, n)) {
    if (tu_mono_ms() > deadline) return 0;
    tu_sleep_ms(1);
  }
  return 1;
}

/* Run jobs[0..n) in one batch (see the file comment).  arm, if not NULL,
** runs once they are all queued, before the lock is let go. */
static void run_in_one_batch(mq_store *s, const char *path, job *jobs, int n, void (*arm)(void)) {
  static int blockers;
  sqlite3 *ext = NULL;
  CHECK(sqlite3_open(path, &ext) == SQLITE_OK);
  CHECK(sqlite3_exec(ext, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK);
  job blk = {s, JOB_BLOCKER, -1, 0, "", 0};
  snprintf(blk.text, sizeof blk.text, "blocker-%d", blockers++);
  CHECK(pthread_create(&blk.t, NULL, job_main, &blk) == 0);
  CHECK(wait_state(s, 0));
  for (int i = 0; i < n; i++) {
    jobs[i].s = s;
    jobs[i].rc = -1;
    CHECK(pthread_create(&jobs[i].t, NULL, job_main, &jobs[i]) == 0);
    CHECK(wait_state(s, i + 1));
  }
  if (arm) arm();
  sqlite3_exec(ext, "ROLLBACK", NULL, NULL, NULL);
  sqlite3_close(ext);
  pthread_join(blk.t, NULL);
  CHECK_OK(blk.rc);
  for (int i = 0; i < n; i++) pthread_join(jobs[i].t, NULL);
}

/* 1. A backlog (more than MQI_PACK_STEP / MQI_PACK_MSGS packs) is settled
** in transactions of its own (commit.c, commit_settle_backlog).  One of
** its packs has ids that collide with a row (damage), so it is settled
** under fresh ids, taken from the id sequence.  The sequence must move on
** with them: a put afterwards must get a new id, not one of theirs. */
static void backlog_keeps_id_sequence(void) {
  const char *p = test_path("packr-ids");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s, "q", 30000, 0, NULL);
  int64_t row = tu_put(s, "q", "row");
  mq_msg_free(tu_get(s, "q")); /* the row stays, leased */
  for (int k = 0; k < 17; k++) CHECK_OK(pack_n(s, "q", 3, 16, "p"));
  mq_store_close(s);
  CHECK(pack_take_id(p, row) == SQLITE_OK);
  s = test_open(p, MQ_SYNC_NORMAL);
  mq_msg *m = tu_get(s, "q"); /* settles the backlog */
  CHECK(m != NULL);
  mq_msg_free(m);
  CHECK(packs_in(p) == 0);
  int failed = 0;
  for (int i = 0; i < 3; i++) {
    int64_t id = 0;
    int rc = mq_put(s, "q", "new", 3, NULL, &id);
    if (rc != MQ_OK) {
      if (!failed++)
        fprintf(stderr, "  put after the backlog: %s: %s\n", mq_errstr(rc), mq_errmsg(s));
    }
  }
  CHECK(failed == 0);
  /* every message is there: the row, 17 * 3 settled (one leased), 3 new */
  CHECK(tu_stats(s, "q").total == 1 + 17 * 3 + 3 - failed);
  mq_store_close(s);
  test_unlink_store(p);
}

/* 2. A pack that cannot be settled even under fresh ids is set aside "not
** allowed to hold back the packs after it" (pack.c).  Here 16 such packs
** of 256 messages are in a backlog: a get must still end, and deliver
** the good pack behind them.  (The trigger stands for any damage that
** makes every insert of those messages fail.)  The get runs in a child so
** that a hang is seen as one. */
static void backlog_of_set_aside_packs_ends(void) {
  const char *p = test_path("packr-aside");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s, "q", 30000, 0, NULL);
  int64_t bad_at = test_now_ms;
  for (int k = 0; k < 16; k++) CHECK_OK(pack_n(s, "q", 256, 8, "bad"));
  test_now_ms += 1000;
  CHECK_OK(pack_n(s, "q", 3, 8, "good"));
  mq_store_close(s);
  char sql[256];
  snprintf(sql, sizeof sql,
           "CREATE TRIGGER damage BEFORE INSERT ON mq_msg WHEN NEW.enqueued_at = %lld"
           " BEGIN SELECT RAISE(ABORT, 'damaged'); END",
           (long long)bad_at);
  CHECK(tu_sql_exec(p, sql) == SQLITE_OK);
  pid_t pid = fork();
  if (pid == 0) {
    tu_child_setup();
    mq_store *c = test_open(p, MQ_SYNC_NORMAL);
    mq_msg *m = NULL;
    int rc = c ? mq_get(c, "q", NULL, &m) : MQ_ERROR;
    int good = rc == MQ_OK && strcmp(mq_msg_data(m), "good-0") == 0; /* NUL, then padding */
    if (!good) fprintf(stderr, "  child: get: %s\n", mq_errstr(rc));
    mq_msg_free(m);
    mq_store_close(c);
    _exit(good ? 0 : 1);
  }
  int status = -1;
  int64_t deadline = tu_mono_ms() + 30000;
  for (;;) {
    int st = 0;
    pid_t w = waitpid(pid, &st, WNOHANG);
    if (w == pid) {
      status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      break;
    }
    if (tu_mono_ms() > deadline) {
      fprintf(stderr, "  the get did not end in 30 s: killed\n");
      kill(pid, SIGKILL);
      tu_wait(pid);
      break;
    }
    tu_sleep_ms(20);
  }
  CHECK(status == 0);
  test_unlink_store(p);
}

/* 3. A get shares its batch with a put the free-space floor refuses
** (MQ_EFULL, nothing written).  The settle worked and a packed message is
** there: the get must deliver it, not fail with MQ_EFULL ("stored packs
** could not be turned into rows").  Consumers are what frees the space. */
static void get_beside_refused_put(void) {
  const char *p = test_path("packr-floor");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s, "q", 30000, 0, NULL);
  CHECK_OK(pack_n(s, "q", 3, 8, "p"));
  mq_store_close(s);
  mq_store_options o;
  tu_options(&o, MQ_SYNC_NORMAL);
  o.min_free_bytes = INT64_MAX / 4; /* the disk is below the floor */
  s = NULL;
  CHECK_OK(mq_store_open(p, &o, &s));
  if (!s) return;
  job jobs[2] = {{.what = JOB_GET}, {.what = JOB_PUT_BIG}};
  run_in_one_batch(s, p, jobs, 2, NULL);
  CHECK_RC(jobs[1].rc, MQ_EFULL); /* the put: refused by the floor */
  CHECK_RC(jobs[0].rc, MQ_OK);    /* the get */
  if (jobs[0].rc != MQ_OK) fprintf(stderr, "  get: %s\n", mq_errmsg(s));
  CHECK(strcmp(jobs[0].text, "p-0") == 0);
  mq_store_close(s);
  test_unlink_store(p);
}

/* 4. A publish shares its batch with a get whose settle meets a full disk:
** the batch is run again without the settle (commit.c).  The publish
** reached one subscription and must say so once, not once per run. */
static void arm_full(void) {
  faultvfs_arm_reset();
  faultvfs.write_budget = 64 * 1024;
  faultvfs.budget_growth_only = 1;
}

static void publish_beside_full_settle(void) {
  const char *p = test_path("packr-pub");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s, "q", 30000, 0, NULL);
  CHECK_OK(mq_topic_create(s, "t", NULL));
  CHECK_OK(mq_subscription_create(s, "t", "a", NULL, NULL));
  /* 4096 small messages: some hundreds of KB of rows to settle */
  for (int k = 0; k < 16; k++) CHECK_OK(pack_n(s, "q", 256, 8, "small"));
  job jobs[2] = {{.what = JOB_PUBLISH}, {.what = JOB_GET}};
  run_in_one_batch(s, p, jobs, 2, arm_full);
  faultvfs_arm_reset();
  CHECK_OK(jobs[0].rc);
  fprintf(stderr, "  get: %s; publish: %s, delivered %lld\n", mq_errstr(jobs[1].rc),
          mq_errstr(jobs[0].rc), (long long)jobs[0].delivered);
  CHECK(jobs[1].rc == MQ_EFULL || jobs[1].rc == MQ_OK); /* the get: either is right */
  CHECK(jobs[0].delivered == 1);
  CHECK(tu_stats(s, "t/a").total == (jobs[0].rc == MQ_OK ? 1 : 0));
  mq_store_close(s);
  test_unlink_store(p);
}

/* 5. Damaged integers of a pack row (an id at the end of the int64 range,
** a huge message count) are damage like any other: reads, verify and the
** settle report or work around them; no signed overflow (UBSan), no
** message with a negative id. */
static void damaged_pack_integers(void) {
  const char *p = test_path("packr-ints");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s, "q", 30000, 0, NULL);
  tu_put(s, "q", "row");
  CHECK_OK(pack_n(s, "q", 3, 8, "a"));
  CHECK_OK(pack_n(s, "q", 3, 8, "b"));
  int64_t b = tu_sql_int(p, "SELECT max(id) FROM mq_pack");
  mq_store_close(s);
  char sql[200];
  snprintf(sql, sizeof sql, "UPDATE mq_pack SET id = 9223372036854775806 WHERE id = %lld",
           (long long)b);
  CHECK(tu_sql_exec(p, sql) == SQLITE_OK);
  CHECK(tu_sql_exec(p, "UPDATE mq_pack SET n = 9223372036854775807 WHERE id < 1000000") ==
        SQLITE_OK);
  s = test_open(p, MQ_SYNC_NORMAL);
  mq_msg *m[16];
  size_t n = 0;
  int rc = mq_peek(s, "q", 16, m, &n);
  CHECK(rc == MQ_OK);
  for (size_t i = 0; i < n; i++) {
    if (mq_msg_id(m[i]) <= 0)
      fprintf(stderr, "  peek: message %.*s has id %lld\n", (int)mq_msg_size(m[i]),
              (const char *)mq_msg_data(m[i]), (long long)mq_msg_id(m[i]));
    CHECK(mq_msg_id(m[i]) > 0);
    mq_msg_free(m[i]);
  }
  mq_queue_stats st;
  rc = mq_queue_stats_get(s, "q", &st);
  CHECK(rc != MQ_OK || (st.ready >= 0 && st.total >= 0));
  int64_t problems = 0;
  CHECK_RC(mq_store_verify(s, NULL, NULL, &problems), MQ_ECORRUPT);
  int got = 0;
  for (int i = 0; i < 10; i++) {
    mq_msg *g = NULL;
    if (mq_get(s, "q", NULL, &g) != MQ_OK) break;
    CHECK(mq_msg_id(g) > 0);
    got++;
    mq_ack(s, "q", mq_msg_receipt(g));
    mq_msg_free(g);
  }
  CHECK(got == 7); /* the row, a's 3, b's 3 */
  CHECK(tu_put(s, "q", "after") > 0);
  /* A purge counts a pack with a damaged count as at most 256 messages. */
  CHECK_OK(pack_n(s, "q", 2, 8, "c"));
  mq_store_close(s);
  CHECK(tu_sql_exec(p, "UPDATE mq_pack SET n = 9223372036854775807") == SQLITE_OK);
  s = test_open(p, MQ_SYNC_NORMAL);
  int64_t deleted = 0;
  CHECK_OK(mq_queue_purge(s, "q", &deleted));
  CHECK(deleted == 1 + 256); /* "after", and the pack */
  mq_store_close(s);
  test_unlink_store(p);
}

int main(void) {
  tu_watchdog(240);
  faultvfs_install();
  faultvfs_arm_reset();
  TEST(backlog_keeps_id_sequence);
  TEST(backlog_of_set_aside_packs_ends);
  TEST(get_beside_refused_put);
  TEST(publish_beside_full_settle);
  TEST(damaged_pack_integers);
  return test_done();
}
