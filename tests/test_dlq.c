/*
** test_dlq.c -- max_receives, dead-letter queues and redrive.
**
** A poison message must not circle forever: after max_receives deliveries
** without an ack it leaves the rotation.  With a dlq it moves there and
** carries what an operator needs to judge it (its receive count and the
** last nack reason); without one it stays in its queue as "dead", counted
** but never delivered.  A nack on the last allowed delivery dead-letters at
** once.  Redrive puts dead letters back into service with a fresh receive
** count: from a dlq to the queues they came from, or a queue's own dead in
** place.  A dlq that another queue points at cannot be dropped from under it.
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

static const char *reason_of(const mq_msg *m) {
  const char *r = m ? mq_msg_reason(m) : NULL;
  return r ? r : "(null)";
}

static void test_max_receives_to_dlq(void) {
  mq_store *s = fresh("todlq");
  tu_create(s, "dlq", 0, 0, NULL);
  tu_create(s, "src", 1000, 3, "dlq");
  int64_t poison = tu_put(s, "src", "poison");
  test_now_ms += 1;
  int64_t good = tu_put(s, "src", "good");

  /* Delivery 1: lease runs out.  2: nacked with a reason.  3: runs out. */
  mq_msg *m = tu_get(s, "src");
  CHECK(m && mq_msg_id(m) == poison && mq_msg_receives(m) == 1);
  mq_msg_free(m);
  test_now_ms += 1001;
  m = tu_get(s, "src");
  CHECK(m && mq_msg_id(m) == poison && mq_msg_receives(m) == 2);
  if (m) CHECK_OK(mq_nack(s, "src", mq_msg_receipt(m), 0, "bad input"));
  mq_msg_free(m);
  m = tu_get(s, "src");
  CHECK(m && mq_msg_id(m) == poison && mq_msg_receives(m) == 3);
  mq_msg_free(m);
  test_now_ms += 1001;

  /* The next get moves it to the dlq and serves the next message. */
  m = tu_get(s, "src");
  CHECK(m && mq_msg_id(m) == good && tu_msg_is(m, "good"));
  if (m) CHECK_OK(mq_ack(s, "src", mq_msg_receipt(m)));
  mq_msg_free(m);
  CHECK(tu_get(s, "src") == NULL);
  test_now_ms += 100000;
  CHECK(tu_get(s, "src") == NULL); /* never again from the source */
  CHECK_STATS(s, "src", 0, 0, 0, 0, 0);
  CHECK_STATS(s, "dlq", 1, 0, 0, 0, 1);

  /* In the dlq: same payload, its receive count and last reason. */
  mq_msg *pk[2];
  size_t n = 0;
  CHECK_OK(mq_peek(s, "dlq", 2, pk, &n));
  CHECK(n == 1);
  if (n == 1) {
    CHECK(tu_msg_is(pk[0], "poison"));
    CHECK(mq_msg_receives(pk[0]) == 3);
    CHECK(strcmp(reason_of(pk[0]), "bad input") == 0);
    mq_msg_free(pk[0]);
  }
  m = tu_get(s, "dlq");
  CHECK(tu_msg_is(m, "poison"));
  CHECK(m && strcmp(reason_of(m), "bad input") == 0);
  if (m) CHECK_OK(mq_ack(s, "dlq", mq_msg_receipt(m)));
  mq_msg_free(m);
  CHECK_STATS(s, "dlq", 0, 0, 0, 0, 0);
  finish(s);
}

static void test_nack_on_last_receive(void) {
  mq_store *s = fresh("nacklast");
  tu_create(s, "dlq", 0, 0, NULL);
  tu_create(s, "src", 1000, 2, "dlq");
  tu_put(s, "src", "twice");
  mq_msg *m = tu_get(s, "src");
  if (m) CHECK_OK(mq_nack(s, "src", mq_msg_receipt(m), 0, "first"));
  mq_msg_free(m);
  CHECK_STATS(s, "src", 1, 0, 0, 0, 1);
  m = tu_get(s, "src");
  CHECK(m && mq_msg_receives(m) == 2);
  /* Even a delayed nack: the message has no deliveries left, so it goes now. */
  if (m) CHECK_OK(mq_nack(s, "src", mq_msg_receipt(m), 5000, "final"));
  CHECK_STATS(s, "src", 0, 0, 0, 0, 0);
  CHECK_STATS(s, "dlq", 1, 0, 0, 0, 1);
  if (m) CHECK_RC(mq_ack(s, "src", mq_msg_receipt(m)), MQ_ESTALE);
  mq_msg_free(m);
  mq_msg *d = tu_get(s, "dlq");
  CHECK(tu_msg_is(d, "twice"));
  CHECK(d && strcmp(reason_of(d), "final") == 0);
  mq_msg_free(d);
  finish(s);
}

static void test_dead_without_dlq(void) {
  mq_store *s = fresh("nodlq");
  tu_create(s, "q", 1000, 1, NULL);
  tu_put(s, "q", "d1");
  tu_put(s, "q", "d2");
  int64_t live = -1;
  mq_msg *m = tu_get(s, "q");
  CHECK(tu_msg_is(m, "d1"));
  if (m) CHECK_OK(mq_nack(s, "q", mq_msg_receipt(m), 0, "nope")); /* dead now */
  mq_msg_free(m);
  CHECK_STATS(s, "q", 1, 0, 0, 1, 2);
  m = tu_get(s, "q");
  CHECK(tu_msg_is(m, "d2"));
  mq_msg_free(m);
  test_now_ms += 1001; /* d2's only lease runs out: dead at the next get */
  live = tu_put(s, "q", "alive");
  m = tu_get(s, "q");
  CHECK(m && mq_msg_id(m) == live);
  if (m) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
  mq_msg_free(m);
  CHECK(tu_get(s, "q") == NULL);
  CHECK_STATS(s, "q", 0, 0, 0, 2, 2);
  mq_queue_stats st = tu_stats(s, "q");
  CHECK(st.bytes == 4);
  mq_msg *pk[4];
  size_t n = 9;
  CHECK_OK(mq_peek(s, "q", 4, pk, &n)); /* dead messages are not ready */
  CHECK(n == 0);
  test_now_ms += 1000000;
  CHECK(tu_get(s, "q") == NULL);

  /* Redrive in place: dead become ready with a fresh count. */
  int64_t moved = -1;
  CHECK_OK(mq_redrive(s, "q", 1, &moved));
  CHECK(moved == 1);
  CHECK_STATS(s, "q", 1, 0, 0, 1, 2);
  moved = -1;
  CHECK_OK(mq_redrive(s, "q", 0, &moved));
  CHECK(moved == 1);
  CHECK_STATS(s, "q", 2, 0, 0, 0, 2);
  for (int k = 0; k < 2; k++) {
    m = tu_get(s, "q");
    CHECK(m && mq_msg_receives(m) == 1);
    CHECK(tu_msg_is(m, "d1") || tu_msg_is(m, "d2"));
    if (m) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
    mq_msg_free(m);
  }
  moved = -1;
  CHECK_OK(mq_redrive(s, "q", 0, &moved));
  CHECK(moved == 0);

  /* purge reaches dead messages too. */
  tu_put(s, "q", "x");
  m = tu_get(s, "q");
  if (m) CHECK_OK(mq_nack(s, "q", mq_msg_receipt(m), 0, NULL));
  mq_msg_free(m);
  CHECK_STATS(s, "q", 0, 0, 0, 1, 1);
  int64_t deleted = -1;
  CHECK_OK(mq_queue_purge(s, "q", &deleted));
  CHECK(deleted == 1);
  CHECK_STATS(s, "q", 0, 0, 0, 0, 0);
  finish(s);
}

/* Deliver the head of q once and nack it, which dead-letters it when
** max_receives is 1. */
static void kill_one(mq_store *s, const char *q, const char *why) {
  mq_msg *m = tu_get(s, q);
  CHECK(m != NULL);
  if (m) CHECK_OK(mq_nack(s, q, mq_msg_receipt(m), 0, why));
  mq_msg_free(m);
}

static void test_redrive_from_dlq(void) {
  mq_store *s = fresh("redrive");
  tu_create(s, "dlq", 0, 0, NULL);
  tu_create(s, "src1", 1000, 1, "dlq");
  tu_create(s, "src2", 1000, 1, "dlq");
  tu_put(s, "src1", "a from 1");
  tu_put(s, "src2", "b from 2");
  tu_put(s, "src1", "c from 1");
  kill_one(s, "src1", "ra");
  kill_one(s, "src2", "rb");
  kill_one(s, "src1", "rc");
  CHECK_STATS(s, "dlq", 3, 0, 0, 0, 3);
  CHECK_STATS(s, "src1", 0, 0, 0, 0, 0);
  CHECK_STATS(s, "src2", 0, 0, 0, 0, 0);

  /* Partial redrive: at most max. */
  int64_t moved = -1;
  CHECK_OK(mq_redrive(s, "dlq", 1, &moved));
  CHECK(moved == 1);
  CHECK_STATS(s, "dlq", 2, 0, 0, 0, 2);
  moved = -1;
  CHECK_OK(mq_redrive(s, "dlq", 0, &moved));
  CHECK(moved == 2);
  CHECK_STATS(s, "dlq", 0, 0, 0, 0, 0);

  /* Each went home to the queue it came from, with a fresh count. */
  CHECK_STATS(s, "src1", 2, 0, 0, 0, 2);
  CHECK_STATS(s, "src2", 1, 0, 0, 0, 1);
  int seen = 0;
  for (int k = 0; k < 2; k++) {
    mq_msg *m = tu_get(s, "src1");
    CHECK(m && mq_msg_receives(m) == 1);
    if (m && tu_msg_is(m, "a from 1")) seen |= 1;
    if (m && tu_msg_is(m, "c from 1")) seen |= 2;
    if (m) CHECK_OK(mq_ack(s, "src1", mq_msg_receipt(m)));
    mq_msg_free(m);
  }
  CHECK(seen == 3);
  mq_msg *m = tu_get(s, "src2");
  CHECK(m && tu_msg_is(m, "b from 2") && mq_msg_receives(m) == 1);
  mq_msg_free(m); /* lease kept: with max_receives 1 it dies again later */

  /* A redriven message has its full allowance again: it dies only after
  ** max_receives more deliveries. */
  test_now_ms += 1001;
  CHECK(tu_get(s, "src2") == NULL);
  CHECK_STATS(s, "dlq", 1, 0, 0, 0, 1);
  finish(s);
}

static void test_drop_dlq_in_use(void) {
  mq_store *s = fresh("dropdlq");
  tu_create(s, "dlq", 0, 0, NULL);
  tu_create(s, "src", 1000, 1, "dlq");
  tu_put(s, "src", "p");
  kill_one(s, "src", "why");
  tu_put(s, "dlq", "direct");
  tu_snapshot before, after;
  tu_snap(s, &before);
  CHECK_RC(mq_queue_drop(s, "dlq"), MQ_EINVAL);
  CHECK(mq_errmsg(s)[0] != 0);
  tu_snap(s, &after);
  CHECK(tu_snap_eq(&before, &after));
  CHECK_STATS(s, "dlq", 2, 0, 0, 0, 2);

  /* Once nothing points at it, it can go. */
  CHECK_OK(mq_queue_drop(s, "src"));
  CHECK_OK(mq_queue_drop(s, "dlq"));
  char **names = NULL;
  size_t n = 99;
  CHECK_OK(mq_queue_list(s, &names, &n));
  CHECK(n == 0);
  mq_list_free(names, n);
  finish(s);
}

/* A dead letter whose queue was dropped has nowhere to go back to: it must
** neither land in a queue created since (SQLite would give that one the
** dropped queue's id) nor vanish into a queue that no longer exists. */
static void test_redrive_after_origin_dropped(void) {
  mq_store *s = fresh("redrivedrop");
  tu_create(s, "dlq", 1000, 2, NULL);
  tu_create(s, "orders", 1000, 1, "dlq");
  tu_create(s, "audit", 1000, 1, "dlq");
  tu_put(s, "orders", "order #1");
  tu_put(s, "audit", "audit #1");
  kill_one(s, "orders", "bad order");
  kill_one(s, "audit", "bad audit");
  /* Both die again inside the dlq, which has no dlq itself: two leases
  ** each run out, and the next get finds them dead. */
  for (int round = 0; round < 2; round++) {
    for (int k = 0; k < 2; k++) mq_msg_free(tu_get(s, "dlq"));
    test_now_ms += 1001;
  }
  CHECK(tu_get(s, "dlq") == NULL);
  CHECK_STATS(s, "dlq", 0, 0, 0, 2, 2);

  CHECK_OK(mq_queue_drop(s, "audit"));
  CHECK_OK(mq_queue_drop(s, "orders"));
  tu_create(s, "emails", 1000, 5, NULL);
  tu_create(s, "reports", 1000, 5, NULL);

  int64_t moved = -1;
  CHECK_OK(mq_redrive(s, "dlq", 0, &moved));
  CHECK(moved == 2);
  CHECK_STATS(s, "emails", 0, 0, 0, 0, 0);
  CHECK_STATS(s, "reports", 0, 0, 0, 0, 0);
  CHECK_STATS(s, "dlq", 2, 0, 0, 0, 2);
  int seen = 0;
  for (int k = 0; k < 2; k++) {
    mq_msg *m = tu_get(s, "dlq");
    if (m && tu_msg_is(m, "order #1")) seen |= 1;
    if (m && tu_msg_is(m, "audit #1")) seen |= 2;
    mq_msg_free(m);
  }
  CHECK(seen == 3);
  CHECK_VERIFY_CLEAN(s);
  finish(s);
}

static void test_dlq_option_checks(void) {
  mq_store *s = fresh("dlqopts");
  tu_create(s, "dlq", 0, 0, NULL);
  mq_queue_options o;
  mq_queue_options_init(&o);
  o.max_receives = 2;
  o.dlq = "self";
  CHECK_RC(mq_queue_create(s, "self", &o), MQ_EINVAL);
  o.dlq = "nowhere";
  int rc = mq_queue_create(s, "src", &o);
  CHECK(rc == MQ_EINVAL || rc == MQ_ENOTFOUND);
  char **names = NULL;
  size_t n = 0;
  CHECK_OK(mq_queue_list(s, &names, &n));
  CHECK(n == 1);
  mq_list_free(names, n);
  finish(s);
}

/* The state mq_queue_scan reported for the message with id want. */
typedef struct scan_find {
  int64_t want;
  int state; /* -1: not seen */
} scan_find;

static int scan_find_cb(void *ctx, const mq_msg *m, int state) {
  scan_find *f = ctx;
  if (mq_msg_id(m) == f->want) f->state = state;
  return 0;
}

static int scan_state(mq_store *s, const char *q, int64_t id) {
  scan_find f = {id, -1};
  CHECK_OK(mq_queue_scan(s, q, scan_find_cb, &f, NULL));
  return f.state;
}

/* A message whose last allowed lease ran out is not ready: the next get
** dead-letters it instead of delivering it.  Stats, peek and scan must say
** so before that get runs, and say the same after it. */
static void test_exhausted_is_not_ready(void) {
  mq_store *s = fresh("exhausted");
  tu_create(s, "q", 1000, 2, NULL);
  int64_t id = tu_put(s, "q", "poison");
  for (int k = 0; k < 2; k++) {
    mq_msg_free(tu_get(s, "q"));
    test_now_ms += 1001;
  }
  CHECK_STATS(s, "q", 0, 0, 0, 1, 1);
  mq_msg *pk[2];
  size_t n = 9;
  CHECK_OK(mq_peek(s, "q", 2, pk, &n));
  CHECK(n == 0);
  for (size_t i = 0; i < n; i++) mq_msg_free(pk[i]);
  CHECK(scan_state(s, "q", id) == MQ_STATE_DEAD);
  CHECK(tu_get(s, "q") == NULL);
  CHECK_STATS(s, "q", 0, 0, 0, 1, 1);
  CHECK(scan_state(s, "q", id) == MQ_STATE_DEAD);

  /* With a dlq it is on its way there: not ready here, not yet there. */
  tu_create(s, "dlq", 0, 0, NULL);
  tu_create(s, "src", 1000, 1, "dlq");
  id = tu_put(s, "src", "poison too");
  mq_msg_free(tu_get(s, "src"));
  test_now_ms += 1001;
  CHECK_STATS(s, "src", 0, 0, 0, 1, 1);
  n = 9;
  CHECK_OK(mq_peek(s, "src", 2, pk, &n));
  CHECK(n == 0);
  for (size_t i = 0; i < n; i++) mq_msg_free(pk[i]);
  CHECK(scan_state(s, "src", id) == MQ_STATE_DEAD);
  CHECK(tu_get(s, "src") == NULL);
  CHECK_STATS(s, "src", 0, 0, 0, 0, 0);
  CHECK_STATS(s, "dlq", 1, 0, 0, 0, 1);
  finish(s);
}

/* A dead letter is kept by the rules of the queue that keeps it -- the dlq,
** or its own queue without one -- counted from when it died: the source's
** retention and the message's TTL were about delivering it, which is over. */
static void test_dead_letter_expiry(void) {
  mq_store *s = fresh("deadexpiry");
  mq_queue_options o;
  mq_queue_options_init(&o);
  o.retention_ms = 5000;
  CHECK_OK(mq_queue_create(s, "dlq", &o));
  o.visibility_ms = 1000;
  o.retention_ms = 3000;
  o.max_receives = 1;
  o.dlq = "dlq";
  CHECK_OK(mq_queue_create(s, "src", &o));
  o.dlq = NULL;
  CHECK_OK(mq_queue_create(s, "nodlq", &o));
  tu_create(s, "keep", 0, 0, NULL);
  o.retention_ms = 0;
  o.dlq = "keep";
  CHECK_OK(mq_queue_create(s, "ttl", &o));
  int64_t t0 = test_now_ms;
  mq_put_options po;
  mq_put_options_init(&po);
  po.ttl_ms = 1500;
  tu_put(s, "src", "p");
  tu_put(s, "nodlq", "q");
  tu_put_opts(s, "ttl", "r", &po);
  test_now_ms = t0 + 1000;
  kill_one(s, "src", "x");
  kill_one(s, "nodlq", "y");
  kill_one(s, "ttl", "z");

  /* Past the source's retention and the TTL: all still there. */
  test_now_ms = t0 + 3001;
  mq_msg *pk[2];
  size_t n = 0;
  CHECK_OK(mq_peek(s, "dlq", 2, pk, &n));
  CHECK(n == 1 && mq_msg_expires_at(pk[0]) == t0 + 6000);
  for (size_t i = 0; i < n; i++) mq_msg_free(pk[i]);
  n = 0;
  CHECK_OK(mq_peek(s, "keep", 2, pk, &n));
  CHECK(n == 1 && mq_msg_expires_at(pk[0]) == 0);
  for (size_t i = 0; i < n; i++) mq_msg_free(pk[i]);
  CHECK(tu_get(s, "nodlq") == NULL);
  CHECK_STATS(s, "nodlq", 0, 0, 0, 1, 1);
  CHECK(tu_get(s, "ttl") == NULL);
  CHECK_STATS(s, "keep", 1, 0, 0, 0, 1);

  /* Redrive: back home, kept by the home queue's rules from now on. */
  test_now_ms = t0 + 3500;
  int64_t moved = -1;
  CHECK_OK(mq_redrive(s, "dlq", 0, &moved));
  CHECK(moved == 1);
  n = 0;
  CHECK_OK(mq_peek(s, "src", 2, pk, &n));
  CHECK(n == 1 && mq_msg_expires_at(pk[0]) == t0 + 6500);
  for (size_t i = 0; i < n; i++) mq_msg_free(pk[i]);
  CHECK_OK(mq_redrive(s, "keep", 0, &moved));
  CHECK(moved == 1);
  n = 0;
  CHECK_OK(mq_peek(s, "ttl", 2, pk, &n));
  CHECK(n == 1 && mq_msg_expires_at(pk[0]) == 0);
  for (size_t i = 0; i < n; i++) mq_msg_free(pk[i]);

  /* The dlq's retention ends the dead letter kept in place ... */
  test_now_ms = t0 + 4001;
  CHECK(tu_get(s, "nodlq") == NULL);
  CHECK_STATS(s, "nodlq", 0, 0, 0, 0, 0);
  /* ... and an expired dead letter is gone: redrive does not revive it. */
  tu_put(s, "src", "late");
  mq_msg_free(tu_get(s, "src")); /* "p", redriven */
  mq_msg *m = tu_get(s, "src");
  CHECK(tu_msg_is(m, "late"));
  if (m) CHECK_OK(mq_nack(s, "src", mq_msg_receipt(m), 0, "late"));
  mq_msg_free(m);
  CHECK_STATS(s, "dlq", 1, 0, 0, 0, 1);
  test_now_ms = t0 + 9002;
  CHECK_OK(mq_redrive(s, "dlq", 0, &moved));
  CHECK(moved == 0);
  CHECK_STATS(s, "dlq", 0, 0, 0, 0, 0);
  CHECK_VERIFY_CLEAN(s);
  finish(s);
}

int main(void) {
  TEST(test_max_receives_to_dlq);
  TEST(test_nack_on_last_receive);
  TEST(test_dead_without_dlq);
  TEST(test_redrive_from_dlq);
  TEST(test_drop_dlq_in_use);
  TEST(test_redrive_after_origin_dropped);
  TEST(test_dlq_option_checks);
  TEST(test_exhausted_is_not_ready);
  TEST(test_dead_letter_expiry);
  return test_done();
}
