/*
** test_lease.c -- leases, receipts and the verbs that settle them.
**
** A lease is the whole of at-least-once delivery: while it lasts the
** message is hidden from everyone else; when it runs out the message comes
** back with a new receipt, and the old receipt must then be worthless --
** an ack with it fails with MQ_ESTALE and changes nothing, or a slow worker
** would delete work that someone else is doing.  An ack that arrives late
** but before anyone else took the message still counts.  touch moves the
** end of a lease, nack ends it early (optionally with a delay), a malformed
** receipt is MQ_EINVAL, and a receipt only ever works on its own queue.
** Time moves by hand on the injected clock, one millisecond either side of
** each deadline.
*/
#include "testutil.h"

/* Each case opens one fresh store and removes its files at the end. */
static const char *g_path;

static mq_store *fresh(const char *tag) {
  g_path = test_path(tag);
  return test_open(g_path, MQ_SYNC_NORMAL);
}

static void finish(mq_store *s) {
  CHECK_OK(mq_store_close(s));
  test_unlink_store(g_path);
}

static void copy_receipt(char *dst, const mq_msg *m) {
  snprintf(dst, MQ_RECEIPT_MAX + 1, "%s", m ? mq_msg_receipt(m) : "");
}

static void test_lease_hides_and_expires(void) {
  mq_store *s = fresh("expire");
  tu_create(s, "q", 1000, 0, NULL);
  int64_t t0 = test_now_ms;
  int64_t id = tu_put(s, "q", "work");
  mq_msg *m1 = tu_get(s, "q");
  CHECK(m1 && mq_msg_id(m1) == id && mq_msg_receives(m1) == 1);
  char r1[MQ_RECEIPT_MAX + 1];
  copy_receipt(r1, m1);

  CHECK(tu_get(s, "q") == NULL); /* hidden from everyone else */
  mq_msg *pk[2];
  size_t n = 9;
  CHECK_OK(mq_peek(s, "q", 2, pk, &n));
  CHECK(n == 0);
  CHECK_STATS(s, "q", 0, 1, 0, 0, 1);

  test_now_ms = t0 + 999;
  CHECK(tu_get(s, "q") == NULL);
  test_now_ms = t0 + 1001;
  CHECK_STATS(s, "q", 1, 0, 0, 0, 1);
  mq_msg *m2 = tu_get(s, "q");
  CHECK(m2 && mq_msg_id(m2) == id && mq_msg_receives(m2) == 2);
  CHECK(m2 && tu_msg_is(m2, "work"));
  char r2[MQ_RECEIPT_MAX + 1];
  copy_receipt(r2, m2);
  CHECK(strcmp(r1, r2) != 0);

  /* The first worker comes back late: its receipt is stale now. */
  tu_snapshot before, after;
  tu_snap(s, &before);
  CHECK_RC(mq_ack(s, "q", r1), MQ_ESTALE);
  CHECK(mq_errmsg(s)[0] != 0);
  CHECK_RC(mq_nack(s, "q", r1, 0, "late"), MQ_ESTALE);
  CHECK_RC(mq_touch(s, "q", r1, 60000), MQ_ESTALE);
  tu_snap(s, &after);
  CHECK(tu_snap_eq(&before, &after));
  CHECK_STATS(s, "q", 0, 1, 0, 0, 1);
  CHECK(tu_get(s, "q") == NULL); /* the stale nack did not release it */

  CHECK_OK(mq_ack(s, "q", r2));
  CHECK_STATS(s, "q", 0, 0, 0, 0, 0);
  test_now_ms += 100000;
  CHECK(tu_get(s, "q") == NULL);
  mq_msg_free(m1);
  mq_msg_free(m2);
  finish(s);
}

static void test_late_ack_before_redelivery(void) {
  mq_store *s = fresh("lateack");
  tu_create(s, "q", 1000, 0, NULL);
  tu_put(s, "q", "slow");
  mq_msg *m = tu_get(s, "q");
  CHECK(m != NULL);
  test_now_ms += 5000; /* long past the lease, but nobody took it */
  CHECK_STATS(s, "q", 1, 0, 0, 0, 1);
  if (m) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
  CHECK_STATS(s, "q", 0, 0, 0, 0, 0);
  CHECK(tu_get(s, "q") == NULL);
  mq_msg_free(m);
  finish(s);
}

static void test_visibility_override(void) {
  mq_store *s = fresh("override");
  tu_create(s, "q", 30000, 0, NULL);
  int64_t t0 = test_now_ms;
  tu_put(s, "q", "short");
  mq_msg *m = tu_get_vis(s, "q", 2000);
  CHECK(m != NULL);
  mq_msg_free(m);
  test_now_ms = t0 + 1999;
  CHECK(tu_get(s, "q") == NULL);
  test_now_ms = t0 + 2001;
  m = tu_get_vis(s, "q", 60000); /* longer than the queue's default too */
  CHECK(m && mq_msg_receives(m) == 2);
  mq_msg_free(m);
  test_now_ms = t0 + 2001 + 30001;
  CHECK(tu_get(s, "q") == NULL);
  test_now_ms = t0 + 2001 + 60001;
  m = tu_get(s, "q"); /* the default applies again to a plain get */
  CHECK(m && mq_msg_receives(m) == 3);
  mq_msg_free(m);
  int64_t t1 = test_now_ms;
  test_now_ms = t1 + 29999;
  CHECK(tu_get(s, "q") == NULL);
  test_now_ms = t1 + 30001;
  m = tu_get(s, "q");
  CHECK(m && mq_msg_receives(m) == 4);
  if (m) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
  mq_msg_free(m);
  finish(s);
}

static void test_touch(void) {
  mq_store *s = fresh("touch");
  tu_create(s, "q", 1000, 0, NULL);
  int64_t t0 = test_now_ms;
  tu_put(s, "q", "long job");
  mq_msg *m = tu_get(s, "q");
  CHECK(m != NULL);
  test_now_ms = t0 + 500;
  if (m) CHECK_OK(mq_touch(s, "q", mq_msg_receipt(m), 5000)); /* until t0+5500 */
  test_now_ms = t0 + 1001;
  CHECK(tu_get(s, "q") == NULL);
  CHECK_STATS(s, "q", 0, 1, 0, 0, 1);
  test_now_ms = t0 + 5499;
  CHECK(tu_get(s, "q") == NULL);
  /* The same receipt keeps working after a touch. */
  if (m) CHECK_OK(mq_touch(s, "q", mq_msg_receipt(m), 1000)); /* t0+6499 */
  test_now_ms = t0 + 6498;
  CHECK(tu_get(s, "q") == NULL);
  test_now_ms = t0 + 6500;
  mq_msg *m2 = tu_get(s, "q");
  CHECK(m2 && mq_msg_receives(m2) == 2);

  /* The old lease is over and the message was delivered again. */
  tu_snapshot before, after;
  tu_snap(s, &before);
  if (m) CHECK_RC(mq_touch(s, "q", mq_msg_receipt(m), 100000), MQ_ESTALE);
  tu_snap(s, &after);
  CHECK(tu_snap_eq(&before, &after));
  /* ... and the new lease was not stretched by it. */
  int64_t t1 = test_now_ms;
  test_now_ms = t1 + 1001;
  mq_msg *m3 = tu_get(s, "q");
  CHECK(m3 && mq_msg_receives(m3) == 3);

  /* Shortening works too. */
  if (m3) CHECK_OK(mq_touch(s, "q", mq_msg_receipt(m3), 100));
  test_now_ms += 101;
  mq_msg *m4 = tu_get(s, "q");
  CHECK(m4 && mq_msg_receives(m4) == 4);

  /* A lease that ran out cannot be touched, even if nobody took the
  ** message since; the message stays deliverable. */
  test_now_ms += 1001;
  if (m4) CHECK_RC(mq_touch(s, "q", mq_msg_receipt(m4), 5000), MQ_ESTALE);
  CHECK_STATS(s, "q", 1, 0, 0, 0, 1);
  mq_msg *m5 = tu_get(s, "q");
  CHECK(m5 && mq_msg_receives(m5) == 5);
  if (m5) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m5)));
  mq_msg_free(m);
  mq_msg_free(m2);
  mq_msg_free(m3);
  mq_msg_free(m4);
  mq_msg_free(m5);
  finish(s);
}

static void test_nack(void) {
  mq_store *s = fresh("nack");
  tu_create(s, "q", 30000, 0, NULL);
  int64_t id = tu_put(s, "q", "retry me");
  mq_msg *m = tu_get(s, "q");
  CHECK(m != NULL);
  if (m) CHECK_OK(mq_nack(s, "q", mq_msg_receipt(m), 0, NULL));
  CHECK_STATS(s, "q", 1, 0, 0, 0, 1);
  mq_msg *m2 = tu_get(s, "q"); /* visible at once, no clock move */
  CHECK(m2 && mq_msg_id(m2) == id && mq_msg_receives(m2) == 2);
  if (m) CHECK_RC(mq_ack(s, "q", mq_msg_receipt(m)), MQ_ESTALE);
  if (m) CHECK_RC(mq_nack(s, "q", mq_msg_receipt(m), 0, NULL), MQ_ESTALE);

  /* Nack with a delay: hidden, and counted as delayed, until then. */
  int64_t t0 = test_now_ms;
  char reason[1001];
  memset(reason, 'r', 1000);
  reason[1000] = 0; /* the longest reason allowed */
  if (m2) CHECK_OK(mq_nack(s, "q", mq_msg_receipt(m2), 3000, reason));
  CHECK_STATS(s, "q", 0, 0, 1, 0, 1);
  CHECK(tu_get(s, "q") == NULL);
  test_now_ms = t0 + 2999;
  CHECK(tu_get(s, "q") == NULL);
  CHECK_STATS(s, "q", 0, 0, 1, 0, 1);
  test_now_ms = t0 + 3001;
  CHECK_STATS(s, "q", 1, 0, 0, 0, 1);
  mq_msg *m3 = tu_get(s, "q");
  CHECK(m3 && mq_msg_id(m3) == id && mq_msg_receives(m3) == 3);
  CHECK(m3 && mq_msg_reason(m3) && strcmp(mq_msg_reason(m3), reason) == 0);
  CHECK(tu_msg_is(m3, "retry me"));

  /* The nacked message keeps its place: it is older than a newer one. */
  if (m3) CHECK_OK(mq_nack(s, "q", mq_msg_receipt(m3), 0, "again"));
  tu_put(s, "q", "newer");
  mq_msg *m4 = tu_get(s, "q");
  CHECK(m4 && mq_msg_id(m4) == id);
  CHECK(m4 && mq_msg_reason(m4) && strcmp(mq_msg_reason(m4), "again") == 0);
  if (m4) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m4)));
  mq_msg_free(m);
  mq_msg_free(m2);
  mq_msg_free(m3);
  mq_msg_free(m4);
  finish(s);
}

static void test_double_ack(void) {
  mq_store *s = fresh("double");
  CHECK_OK(mq_queue_create(s, "q", NULL));
  tu_put(s, "q", "once");
  tu_put(s, "q", "bystander");
  mq_msg *m = tu_get(s, "q");
  CHECK(m != NULL);
  if (m) {
    CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
    tu_snapshot before, after;
    tu_snap(s, &before);
    CHECK_RC(mq_ack(s, "q", mq_msg_receipt(m)), MQ_ESTALE);
    CHECK_RC(mq_nack(s, "q", mq_msg_receipt(m), 0, NULL), MQ_ESTALE);
    CHECK_RC(mq_touch(s, "q", mq_msg_receipt(m), 1000), MQ_ESTALE);
    tu_snap(s, &after);
    CHECK(tu_snap_eq(&before, &after));
    CHECK_STATS(s, "q", 1, 0, 0, 0, 1);
  }
  mq_msg_free(m);
  finish(s);
}

static void test_ack_batch(void) {
  mq_store *s = fresh("ackbatch");
  tu_create(s, "q", 1000, 0, NULL);
  tu_put(s, "q", "a");
  tu_put(s, "q", "b");
  tu_put(s, "q", "c");
  mq_msg *a = tu_get(s, "q"), *b = tu_get(s, "q"), *c = tu_get(s, "q");
  CHECK(a && b && c);
  if (!(a && b && c)) return;
  CHECK_OK(mq_ack(s, "q", mq_msg_receipt(b)));
  const char *rs[3] = {mq_msg_receipt(a), mq_msg_receipt(b), mq_msg_receipt(c)};
  int results[3] = {-1, -1, -1};
  CHECK_OK(mq_ack_batch(s, "q", rs, 3, results));
  CHECK(results[0] == MQ_OK);
  CHECK(results[1] == MQ_ESTALE);
  CHECK(results[2] == MQ_OK);
  CHECK_STATS(s, "q", 0, 0, 0, 0, 0);
  CHECK_OK(mq_ack_batch(s, "q", rs, 3, NULL)); /* all stale, still MQ_OK */
  mq_msg_free(a);
  mq_msg_free(b);
  mq_msg_free(c);
  finish(s);
}

static void test_malformed_receipts(void) {
  mq_store *s = fresh("malformed");
  CHECK_OK(mq_queue_create(s, "q", NULL));
  tu_put(s, "q", "x");
  mq_msg *m = tu_get(s, "q");
  CHECK(m != NULL);
  char toolong[MQ_RECEIPT_MAX + 20];
  memset(toolong, '7', sizeof toolong - 1);
  toolong[sizeof toolong - 1] = 0;
  const char *bad[] = {"", "x", "not a receipt", "!!!!:????", "\x01\x02", toolong};
  tu_snapshot before, after;
  tu_snap(s, &before);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    CHECK_RC(mq_ack(s, "q", bad[i]), MQ_EINVAL);
    CHECK(mq_errmsg(s)[0] != 0);
    CHECK_RC(mq_nack(s, "q", bad[i], 0, NULL), MQ_EINVAL);
    CHECK_RC(mq_touch(s, "q", bad[i], 1000), MQ_EINVAL);
  }
  CHECK_RC(mq_ack(s, "q", NULL), MQ_EINVAL);

  /* A well-formed receipt that names no lease of ours is refused, whatever
  ** the code, and changes nothing. */
  if (m) {
    char forged[MQ_RECEIPT_MAX + 1];
    copy_receipt(forged, m);
    size_t len = strlen(forged);
    if (len) forged[len - 1] = forged[len - 1] == '0' ? '1' : '0';
    CHECK(mq_ack(s, "q", forged) != MQ_OK);
  }
  tu_snap(s, &after);
  CHECK(tu_snap_eq(&before, &after));
  if (m) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
  mq_msg_free(m);
  finish(s);
}

static void test_receipt_of_other_queue(void) {
  mq_store *s = fresh("crossq");
  CHECK_OK(mq_queue_create(s, "A", NULL));
  CHECK_OK(mq_queue_create(s, "B", NULL));
  tu_put(s, "A", "for A");
  tu_put(s, "B", "for B");
  mq_msg *ma = tu_get(s, "A"), *mb = tu_get(s, "B");
  CHECK(ma && mb);
  if (ma && mb) {
    tu_snapshot before, after;
    tu_snap(s, &before);
    CHECK(mq_ack(s, "B", mq_msg_receipt(ma)) != MQ_OK);
    CHECK(mq_nack(s, "B", mq_msg_receipt(ma), 0, NULL) != MQ_OK);
    CHECK(mq_touch(s, "B", mq_msg_receipt(ma), 1000) != MQ_OK);
    CHECK(mq_ack(s, "A", mq_msg_receipt(mb)) != MQ_OK);
    const char *rs[1] = {mq_msg_receipt(ma)};
    int res[1] = {MQ_OK};
    int rc = mq_ack_batch(s, "B", rs, 1, res);
    CHECK(rc != MQ_OK || res[0] != MQ_OK);
    tu_snap(s, &after);
    CHECK(tu_snap_eq(&before, &after));
    CHECK_STATS(s, "A", 0, 1, 0, 0, 1);
    CHECK_STATS(s, "B", 0, 1, 0, 0, 1);
    CHECK_OK(mq_ack(s, "A", mq_msg_receipt(ma)));
    CHECK_OK(mq_ack(s, "B", mq_msg_receipt(mb)));
  }
  mq_msg_free(ma);
  mq_msg_free(mb);
  finish(s);
}

static void test_two_handles_one_lease(void) {
  /* A lease taken through one handle hides the message from another handle
  ** on the same file, and a receipt works through either handle. */
  const char *p = test_path("twohandles");
  mq_store *s1 = test_open(p, MQ_SYNC_NORMAL);
  mq_store *s2 = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s1, "q", 1000, 0, NULL);
  tu_put(s1, "q", "shared");
  mq_msg *m = tu_get(s1, "q");
  CHECK(m != NULL);
  CHECK(tu_get(s2, "q") == NULL);
  if (m) CHECK_OK(mq_ack(s2, "q", mq_msg_receipt(m)));
  CHECK_STATS(s1, "q", 0, 0, 0, 0, 0);
  mq_msg_free(m);
  mq_store_close(s2);
  mq_store_close(s1);
  test_unlink_store(p);
}

int main(void) {
  TEST(test_lease_hides_and_expires);
  TEST(test_late_ack_before_redelivery);
  TEST(test_visibility_override);
  TEST(test_touch);
  TEST(test_nack);
  TEST(test_double_ack);
  TEST(test_ack_batch);
  TEST(test_malformed_receipts);
  TEST(test_receipt_of_other_queue);
  TEST(test_two_handles_one_lease);
  return test_done();
}
