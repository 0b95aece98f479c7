/*
** test_ioerr.c -- what a caller sees when the disk fails under a commit.
**
** - An fsync that fails at COMMIT leaves the outcome unknown (the bytes may
**   reach the disk anyway), so the call must say MQ_EUNKNOWN, never a
**   definite failure; the handle then reopens its connection by itself, and
**   a retry with the same dedup key yields exactly one message.
** - A write that fails before the commit is a definite failure: nothing is
**   stored, and the next call works.
** - SQLite's "disk full" becomes MQ_EFULL, and the free-space floor refuses
**   puts while gets and acks still work.
*/
#include "faultvfs.h"
#include "harness.h"

static int64_t count(mq_store *s, const char *q) {
  mq_queue_stats st;
  if (mq_queue_stats_get(s, q, &st) != MQ_OK) return -1;
  return st.total;
}

static void fsync_failure_is_unknown_then_recovers(void) {
  const char *p = test_path("ioerr-sync");
  mq_store *s = test_open(p, MQ_SYNC_FULL);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  mq_put_options po;
  mq_put_options_init(&po);
  po.dedup_key = "order-17";

  faultvfs_arm_reset();
  faultvfs.fail_sync_at = 1;
  int64_t id = -1;
  CHECK_RC(mq_put(s, "q", "pay", 3, &po, &id), MQ_EUNKNOWN);
  CHECK(id == 0);
  CHECK(faultvfs.faults == 1);
  CHECK(strstr(mq_errmsg(s), "may or may not be durable") != NULL);

  /* The handle reopens its connection and goes on; the producer retries
  ** with the same key and the queue holds the message exactly once. */
  faultvfs_arm_reset();
  int64_t id2 = 0;
  CHECK_OK(mq_put(s, "q", "pay", 3, &po, &id2));
  CHECK(id2 > 0);
  CHECK(count(s, "q") == 1);
  CHECK_OK(mq_put(s, "q", "other", 5, NULL, NULL));
  CHECK(count(s, "q") == 2);

  /* The same for an ack: unknown, then a retry either succeeds or finds
  ** the lease already settled; the message is not delivered again. */
  mq_msg *m = NULL;
  CHECK_OK(mq_get(s, "q", NULL, &m));
  char receipt[80];
  snprintf(receipt, sizeof receipt, "%s", mq_msg_receipt(m));
  mq_msg_free(m);
  faultvfs_arm_reset();
  faultvfs.fail_sync_at = 1;
  CHECK_RC(mq_ack(s, "q", receipt), MQ_EUNKNOWN);
  faultvfs_arm_reset();
  int rc = mq_ack(s, "q", receipt);
  CHECK(rc == MQ_OK || rc == MQ_ESTALE);
  CHECK(count(s, "q") == 1);
  mq_store_close(s);

  /* Reopened from disk, the store is sound. */
  s = test_open(p, MQ_SYNC_FULL);
  CHECK_OK(mq_store_verify(s, NULL, NULL, NULL));
  CHECK(count(s, "q") == 1);
  mq_store_close(s);
  test_unlink_store(p);
}

/* After an I/O error the handle reopens its file; if another file has
** taken the name meanwhile, it refuses it -- and does not first turn it
** into a store (an empty file would otherwise get the schema). */
static void reconnect_leaves_another_file_alone(void) {
  const char *p = test_path("ioerr-moved");
  char moved[600];
  snprintf(moved, sizeof moved, "%s.moved", p);
  mq_store *s = test_open(p, MQ_SYNC_FULL);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  faultvfs_arm_reset();
  faultvfs.fail_sync_at = 1;
  CHECK_RC(mq_put(s, "q", "pay", 3, NULL, NULL), MQ_EUNKNOWN);
  faultvfs_arm_reset();

  static const char *const sides[] = {"", "-wal", "-shm"};
  for (int i = 0; i < 3; i++) {
    char from[640], to[640];
    snprintf(from, sizeof from, "%s%s", p, sides[i]);
    snprintf(to, sizeof to, "%s%s", moved, sides[i]);
    CHECK(rename(from, to) == 0);
  }
  FILE *f = fopen(p, "w"); /* an empty file at the name */
  CHECK(f != NULL);
  if (f) fclose(f);

  CHECK_RC(mq_put(s, "q", "pay", 3, NULL, NULL), MQ_EIO);
  CHECK(strstr(mq_errmsg(s), "could not be reopened") != NULL);
  struct stat sb;
  CHECK(stat(p, &sb) == 0 && sb.st_size == 0);
  mq_store_close(s);
  test_unlink_store(p);
  test_unlink_store(moved);
}

static void write_failure_is_definite(void) {
  const char *p = test_path("ioerr-write");
  mq_store *s = test_open(p, MQ_SYNC_FULL);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  CHECK_OK(mq_put(s, "q", "before", 6, NULL, NULL));
  static char big[256 * 1024];
  memset(big, 'x', sizeof big);

  faultvfs_arm_reset();
  faultvfs.fail_write_at = 1;
  int rc = mq_put(s, "q", big, sizeof big, NULL, NULL);
  CHECK(rc == MQ_EIO || rc == MQ_EUNKNOWN);
  faultvfs_arm_reset();
  CHECK_OK(mq_put(s, "q", "after", 5, NULL, NULL));
  int64_t n = count(s, "q");
  /* A write failing before the commit record stores nothing. */
  if (rc == MQ_EIO) CHECK(n == 2);
  CHECK(n == 2 || n == 3);

  /* A full disk is reported as such. */
  faultvfs.write_budget = 1;
  CHECK_RC(mq_put(s, "q", big, sizeof big, NULL, NULL), MQ_EFULL);
  faultvfs_arm_reset();
  CHECK(count(s, "q") == n);
  mq_store_close(s);
  test_unlink_store(p);
}

static void free_space_floor_refuses_puts_only(void) {
  const char *p = test_path("ioerr-floor");
  mq_store *s = test_open(p, MQ_SYNC_FULL);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  CHECK_OK(mq_put(s, "q", "a", 1, NULL, NULL));
  CHECK_OK(mq_put(s, "q", "b", 1, NULL, NULL));
  mq_store_close(s);

  /* A floor above the free space of any disk: puts are refused... */
  mq_store_options o;
  mq_store_options_init(&o);
  o.clock = test_clock;
  o.min_free_bytes = INT64_MAX / 2;
  CHECK_OK(mq_store_open(p, &o, &s));
  CHECK_RC(mq_put(s, "q", "c", 1, NULL, NULL), MQ_EFULL);
  CHECK(strstr(mq_errmsg(s), "free space") != NULL);
  /* ...while consumers keep draining the queue. */
  mq_msg *m = NULL;
  CHECK_OK(mq_get(s, "q", NULL, &m));
  if (m) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
  mq_msg_free(m);
  CHECK_OK(mq_get(s, "q", NULL, &m));
  if (m) CHECK_OK(mq_nack(s, "q", mq_msg_receipt(m), 0, NULL));
  mq_msg_free(m);
  CHECK(count(s, "q") == 1);
  CHECK_OK(mq_store_checkpoint(s));
  mq_store_close(s);
  test_unlink_store(p);
}

int main(void) {
  faultvfs_install();
  TEST(fsync_failure_is_unknown_then_recovers);
  TEST(reconnect_leaves_another_file_alone);
  TEST(write_failure_is_definite);
  TEST(free_space_floor_refuses_puts_only);
  return test_done();
}
