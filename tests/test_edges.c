/*
** test_edges.c -- edges a review found, each once a real defect:
**
** - Durations near INT64_MAX ("forever") used to overflow into the past:
**   a lease that ended at once (two live holders), a TTL that deleted an
**   acknowledged put, a dedup window that let a duplicate in.
** - A dead-letter queue allowing no more receives than its source would
**   dead-letter every message at once: refused at creation.
** - mq_redrive moved a dead letter someone held a live lease on.
** - A handle opened with MQ_SYNC_OFF checkpointed without fsync, undoing
**   the durability FULL handles on the same file had promised.
** - A forked child's close unlinked the parent's live writer gate.
*/
#include <sys/stat.h>
#include <sys/wait.h>

#include "faultvfs.h"
#include "harness.h"

static void forever_means_forever(void) {
  const char *p = test_path("edges-forever");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  mq_queue_options qo;
  mq_queue_options_init(&qo);
  qo.dedup_window_ms = INT64_MAX;
  CHECK_OK(mq_queue_create(s, "q", &qo));

  mq_put_options po;
  mq_put_options_init(&po);
  po.ttl_ms = INT64_MAX;
  po.dedup_key = "k";
  int64_t id1, id2;
  CHECK_OK(mq_put(s, "q", "a", 1, &po, &id1));
  CHECK_OK(mq_put(s, "q", "a", 1, &po, &id2));
  CHECK(id1 == id2); /* the window did not wrap into the past */

  mq_get_options go;
  mq_get_options_init(&go);
  go.visibility_ms = INT64_MAX;
  mq_msg *m = NULL, *m2 = NULL;
  CHECK_OK(mq_get(s, "q", &go, &m)); /* the TTL did not delete it */
  CHECK(m && mq_msg_id(m) == id1);
  CHECK_RC(mq_get(s, "q", NULL, &m2), MQ_EMPTY); /* nor did the lease end */
  test_now_ms += 365LL * 24 * 3600 * 1000;
  CHECK_RC(mq_get(s, "q", NULL, &m2), MQ_EMPTY);
  CHECK_OK(mq_touch(s, "q", mq_msg_receipt(m), INT64_MAX));
  CHECK_RC(mq_get(s, "q", NULL, &m2), MQ_EMPTY);
  CHECK_OK(mq_nack(s, "q", mq_msg_receipt(m), INT64_MAX, NULL));
  CHECK_RC(mq_get(s, "q", NULL, &m2), MQ_EMPTY); /* delayed "forever" */
  mq_msg_free(m);

  po.dedup_key = NULL;
  po.delay_ms = INT64_MAX;
  CHECK_OK(mq_put(s, "q", "b", 1, &po, NULL));
  mq_queue_stats st;
  CHECK_OK(mq_queue_stats_get(s, "q", &st));
  CHECK(st.delayed == 2 && st.ready == 0 && st.total == 2);
  mq_store_close(s);
  test_unlink_store(p);
}

static void dlq_must_allow_more_receives(void) {
  const char *p = test_path("edges-dlq");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  mq_queue_options d, q;
  mq_queue_options_init(&d);
  d.max_receives = 2;
  CHECK_OK(mq_queue_create(s, "dead", &d));
  mq_queue_options_init(&q);
  q.dlq = "dead";
  q.max_receives = 2;
  CHECK_RC(mq_queue_create(s, "work", &q), MQ_EINVAL);
  CHECK(strstr(mq_errmsg(s), "max_receives") != NULL);
  CHECK_OK(mq_topic_create(s, "t", NULL));
  CHECK_RC(mq_subscription_create(s, "t", "sub", NULL, &q), MQ_EINVAL);
  q.max_receives = 1;
  CHECK_OK(mq_queue_create(s, "work", &q));
  /* A lease of 0 ms would end as it starts. */
  mq_queue_options z;
  mq_queue_options_init(&z);
  z.visibility_ms = 0;
  CHECK_RC(mq_queue_create(s, "zero", &z), MQ_EINVAL);
  CHECK_RC(mq_subscription_create(s, "t", "zero", NULL, &z), MQ_EINVAL);

  /* A message dead-lettered after 1 delivery can still be delivered once
  ** from the dlq (its count arrives with it: 1, then 2). */
  q.visibility_ms = 1000;
  CHECK_OK(mq_put(s, "work", "x", 1, NULL, NULL));
  mq_msg *m = NULL;
  CHECK_OK(mq_get(s, "work", NULL, &m));
  CHECK_OK(mq_nack(s, "work", mq_msg_receipt(m), 0, "bad"));
  mq_msg_free(m);
  CHECK_OK(mq_get(s, "dead", NULL, &m));
  CHECK(m && mq_msg_receives(m) == 2);

  /* Redrive leaves a dead letter alone while someone holds its lease. */
  int64_t moved = -1;
  CHECK_OK(mq_redrive(s, "dead", 0, &moved));
  CHECK(moved == 0);
  CHECK_OK(mq_ack(s, "dead", mq_msg_receipt(m)));
  mq_msg_free(m);
  mq_store_close(s);
  test_unlink_store(p);
}

static void sync_off_checkpoints_still_fsync(void) {
  const char *p = test_path("edges-off");
  mq_store *full = test_open(p, MQ_SYNC_FULL);
  CHECK_OK(mq_queue_create(full, "q", NULL));
  for (int i = 0; i < 20; i++) CHECK_OK(mq_put(full, "q", "durable", 7, NULL, NULL));
  mq_store *off = test_open(p, MQ_SYNC_OFF);
  faultvfs_arm_reset();
  CHECK_OK(mq_store_checkpoint(off));
  /* Copying FULL's fsynced WAL into the file and restarting the WAL
  ** without an fsync would leave acknowledged puts exposed to power loss. */
  CHECK(faultvfs.syncs > 0);
  mq_store_close(off);
  mq_store_close(full);
  test_unlink_store(p);
}

static void forked_child_close_keeps_parent_gate(void) {
  const char *p = test_path("edges-fork");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  struct stat st;
  char shm[128];
  CHECK(stat(p, &st) == 0);
  snprintf(shm, sizeof shm, "/dev/shm/mq-%llx-%llx", (unsigned long long)st.st_dev,
           (unsigned long long)st.st_ino);
  if (access(shm, F_OK) != 0) {
    fprintf(stderr, "  no shared gate here; skipping\n");
    mq_store_close(s);
    test_unlink_store(p);
    return;
  }
  pid_t pid = fork();
  if (pid == 0) _exit(mq_store_close(s) == MQ_EMISUSE ? 0 : 1);
  int status = 0;
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK(access(shm, F_OK) == 0); /* still there for the parent */
  mq_store_close(s);
  CHECK(access(shm, F_OK) != 0); /* and gone with the last close */
  test_unlink_store(p);
}

int main(void) {
  faultvfs_install();
  TEST(forever_means_forever);
  TEST(dlq_must_allow_more_receives);
  TEST(sync_off_checkpoints_still_fsync);
  TEST(forked_child_close_keeps_parent_gate);
  return test_done();
}
