/*
** test_delay_ttl.c -- time-shaped puts: delay, time-to-live, retention,
** deduplication windows, and batches.
**
** A delayed message must not exist for consumers until its time, yet must
** show in stats as "delayed".  A message past its TTL or the queue's
** retention is gone: never delivered, not counted.  A dedup key turns a
** retried put into a no-op that returns the first id -- this is what makes
** "retry after MQ_EUNKNOWN" safe -- for exactly the queue's window, and
** only within one queue.  A batch put is one transaction: one bad entry
** and nothing is stored.  Every deadline is crossed on the injected clock,
** one millisecond either side.
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

/* True when text contains n as a whole number (not a digit of another). */
static int names_number(const char *text, long n) {
  for (const char *p = text; *p; p++) {
    if (*p < '0' || *p > '9' || (p > text && p[-1] >= '0' && p[-1] <= '9')) continue;
    char *end;
    if (strtol(p, &end, 10) == n) return 1;
  }
  return 0;
}

static void test_delay(void) {
  mq_store *s = fresh("delay");
  CHECK_OK(mq_queue_create(s, "q", NULL));
  int64_t t0 = test_now_ms;
  mq_put_options po;
  mq_put_options_init(&po);
  po.delay_ms = 5000;
  int64_t late = tu_put_opts(s, "q", "later", &po);
  CHECK_STATS(s, "q", 0, 0, 1, 0, 1);
  CHECK(tu_get(s, "q") == NULL);
  mq_msg *pk[2];
  size_t n = 9;
  CHECK_OK(mq_peek(s, "q", 2, pk, &n));
  CHECK(n == 0);

  /* An undelayed message put after it is served first. */
  int64_t now = tu_put(s, "q", "now");
  mq_msg *m = tu_get(s, "q");
  CHECK(m && mq_msg_id(m) == now);
  if (m) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
  mq_msg_free(m);

  test_now_ms = t0 + 4999;
  CHECK(tu_get(s, "q") == NULL);
  CHECK_STATS(s, "q", 0, 0, 1, 0, 1);
  test_now_ms = t0 + 5001;
  CHECK_STATS(s, "q", 1, 0, 0, 0, 1);
  m = tu_get(s, "q");
  CHECK(m && mq_msg_id(m) == late && tu_msg_is(m, "later"));
  CHECK(m && mq_msg_receives(m) == 1);
  CHECK(m && mq_msg_enqueued_at(m) == t0);
  if (m) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
  mq_msg_free(m);
  finish(s);
}

static void test_ttl(void) {
  mq_store *s = fresh("ttl");
  CHECK_OK(mq_queue_create(s, "q", NULL));
  int64_t t0 = test_now_ms;
  mq_put_options po;
  mq_put_options_init(&po);
  po.ttl_ms = 1000;
  tu_put_opts(s, "q", "perishable", &po);
  tu_put_opts(s, "q", "perishable too", &po);
  int64_t keep = tu_put(s, "q", "keeper");

  test_now_ms = t0 + 999;
  CHECK_STATS(s, "q", 3, 0, 0, 0, 3);
  mq_msg *pk[4];
  size_t n = 0;
  CHECK_OK(mq_peek(s, "q", 4, pk, &n));
  CHECK(n == 3);
  for (size_t i = 0; i < n; i++) mq_msg_free(pk[i]);

  test_now_ms = t0 + 1001;
  CHECK_STATS(s, "q", 1, 0, 0, 0, 1);
  mq_queue_stats st = tu_stats(s, "q");
  CHECK(st.bytes == 6);
  n = 0;
  CHECK_OK(mq_peek(s, "q", 4, pk, &n));
  CHECK(n == 1);
  for (size_t i = 0; i < n; i++) mq_msg_free(pk[i]);
  mq_msg *m = tu_get(s, "q");
  CHECK(m && mq_msg_id(m) == keep);
  if (m) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
  mq_msg_free(m);
  CHECK(tu_get(s, "q") == NULL);
  CHECK_STATS(s, "q", 0, 0, 0, 0, 0);

  /* A delayed message whose TTL ends before its delay is never seen. */
  mq_put_options_init(&po);
  po.ttl_ms = 1000;
  po.delay_ms = 2000;
  tu_put_opts(s, "q", "too late", &po);
  test_now_ms += 2001;
  CHECK(tu_get(s, "q") == NULL);
  CHECK_STATS(s, "q", 0, 0, 0, 0, 0);
  finish(s);
}

static void test_retention(void) {
  mq_store *s = fresh("retention");
  mq_queue_options qo;
  mq_queue_options_init(&qo);
  qo.retention_ms = 2000;
  CHECK_OK(mq_queue_create(s, "q", &qo));
  int64_t t0 = test_now_ms;
  tu_put(s, "q", "old");
  mq_put_options po;
  mq_put_options_init(&po);
  po.ttl_ms = 10000; /* a longer TTL does not beat the queue's retention */
  tu_put_opts(s, "q", "old, long ttl", &po);
  test_now_ms = t0 + 1500;
  int64_t young = tu_put(s, "q", "young");
  CHECK_STATS(s, "q", 3, 0, 0, 0, 3);

  test_now_ms = t0 + 2001;
  CHECK_STATS(s, "q", 1, 0, 0, 0, 1);
  mq_msg *pk[4];
  size_t n = 0;
  CHECK_OK(mq_peek(s, "q", 4, pk, &n));
  CHECK(n == 1);
  if (n == 1) CHECK(mq_msg_id(pk[0]) == young);
  for (size_t i = 0; i < n; i++) mq_msg_free(pk[i]);

  test_now_ms = t0 + 3501;
  CHECK(tu_get(s, "q") == NULL);
  CHECK_STATS(s, "q", 0, 0, 0, 0, 0);
  finish(s);
}

static void test_dedup(void) {
  mq_store *s = fresh("dedup");
  mq_queue_options qo;
  mq_queue_options_init(&qo);
  qo.dedup_window_ms = 10000;
  CHECK_OK(mq_queue_create(s, "q", &qo));
  CHECK_OK(mq_queue_create(s, "other", &qo));
  int64_t t0 = test_now_ms;
  mq_put_options po;
  mq_put_options_init(&po);
  po.dedup_key = "order-17";

  int64_t id1 = tu_put_opts(s, "q", "first", &po);
  test_now_ms = t0 + 100;
  int64_t again = -1;
  CHECK_OK(mq_put(s, "q", "second", 6, &po, &again));
  CHECK(again == id1);
  CHECK_STATS(s, "q", 1, 0, 0, 0, 1);
  mq_queue_stats st = tu_stats(s, "q");
  CHECK(st.bytes == 5);
  mq_msg *pk[4];
  size_t n = 0;
  CHECK_OK(mq_peek(s, "q", 4, pk, &n));
  CHECK(n == 1);
  if (n == 1) {
    CHECK(tu_msg_is(pk[0], "first"));
    mq_msg_free(pk[0]);
  }

  /* A different key is a different message. */
  mq_put_options po2 = po;
  po2.dedup_key = "order-18";
  int64_t id2 = tu_put_opts(s, "q", "eighteen", &po2);
  CHECK(id2 != id1);
  CHECK_STATS(s, "q", 2, 0, 0, 0, 2);

  /* The same key on another queue is independent. */
  tu_put_opts(s, "other", "elsewhere", &po);
  CHECK_STATS(s, "other", 1, 0, 0, 0, 1);
  mq_msg *m = tu_get(s, "other");
  CHECK(tu_msg_is(m, "elsewhere"));
  mq_msg_free(m);

  /* Acked or not, the key is remembered for the window after the put. */
  m = tu_get(s, "q");
  CHECK(m && mq_msg_id(m) == id1);
  if (m) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
  mq_msg_free(m);
  test_now_ms = t0 + 9999;
  again = -1;
  CHECK_OK(mq_put(s, "q", "retry", 5, &po, &again));
  CHECK(again == id1);
  CHECK_STATS(s, "q", 1, 0, 0, 0, 1);

  /* A batch entry with a remembered key stores nothing and reports the
  ** first id; the other entries are stored. */
  mq_entry e[2] = {{"dup", 3, &po}, {"fresh", 5, NULL}};
  int64_t ids[2] = {-1, -1};
  CHECK_OK(mq_put_batch(s, "q", e, 2, ids));
  CHECK(ids[0] == id1);
  CHECK(ids[1] > id2);
  CHECK_STATS(s, "q", 2, 0, 0, 0, 2);

  /* After the window the key is forgotten. */
  test_now_ms = t0 + 10001;
  int64_t id3 = tu_put_opts(s, "q", "new order-17", &po);
  CHECK(id3 != id1 && id3 > ids[1]);
  CHECK_STATS(s, "q", 3, 0, 0, 0, 3);
  /* ... and the new put opens a new window. */
  test_now_ms = t0 + 15000;
  again = -1;
  CHECK_OK(mq_put(s, "q", "x", 1, &po, &again));
  CHECK(again == id3);
  CHECK_STATS(s, "q", 3, 0, 0, 0, 3);
  finish(s);
}

static void test_batch_put_all_or_nothing(void) {
  mq_store *s = fresh("batchput");
  mq_queue_options qo;
  mq_queue_options_init(&qo);
  qo.max_payload = 1000;
  CHECK_OK(mq_queue_create(s, "q", &qo));
  static char big[1001];
  memset(big, 'b', sizeof big);
  mq_entry e[4] = {{"one", 3, NULL}, {"two", 3, NULL}, {big, 1001, NULL}, {"four", 4, NULL}};
  int64_t ids[5] = {-1, -1, -1, -1, -1};
  CHECK_RC(mq_put_batch(s, "q", e, 4, ids), MQ_ETOOBIG);
  const char *msg = mq_errmsg(s);
  CHECK(names_number(msg, 2)); /* names entry 2 */
  if (!names_number(msg, 2)) fprintf(stderr, "  errmsg: \"%s\"\n", msg);
  CHECK_STATS(s, "q", 0, 0, 0, 0, 0);
  CHECK(tu_get(s, "q") == NULL);

  mq_entry e2[3] = {{"one", 3, NULL}, {NULL, 5, NULL}, {"three", 5, NULL}};
  CHECK_RC(mq_put_batch(s, "q", e2, 3, NULL), MQ_EINVAL);
  CHECK_STATS(s, "q", 0, 0, 0, 0, 0);

  mq_put_options bad;
  mq_put_options_init(&bad);
  bad.delay_ms = -1;
  mq_entry e3[2] = {{"one", 3, NULL}, {"two", 3, &bad}};
  CHECK_RC(mq_put_batch(s, "q", e3, 2, NULL), MQ_EINVAL);
  CHECK_STATS(s, "q", 0, 0, 0, 0, 0);

  /* A good batch: stored at once, ids in order, options per entry. */
  mq_put_options hi, later;
  mq_put_options_init(&hi);
  hi.priority = 9;
  mq_put_options_init(&later);
  later.delay_ms = 1000;
  mq_entry ok[5] = {{"m0", 2, NULL}, {"m1", 2, NULL}, {"m2", 2, &hi},
                    {"m3", 2, &later}, {big, 1000, NULL}};
  CHECK_OK(mq_put_batch(s, "q", ok, 5, ids));
  CHECK(ids[0] > 0 && ids[0] < ids[1] && ids[1] < ids[2] && ids[2] < ids[3]);
  CHECK_STATS(s, "q", 4, 0, 1, 0, 5);
  mq_msg *m = tu_get(s, "q");
  CHECK(tu_msg_is(m, "m2"));
  mq_msg_free(m);
  finish(s);
}

static void test_batch_get_in_order(void) {
  mq_store *s = fresh("batchget");
  CHECK_OK(mq_queue_create(s, "q", NULL));
  int64_t ids[5];
  for (int i = 0; i < 5; i++) {
    char b[16];
    snprintf(b, sizeof b, "m%d", i);
    ids[i] = tu_put(s, "q", b);
  }
  mq_msg *got[16]; /* room for max pointers after every offset used */
  size_t n = 0;
  CHECK_OK(mq_get_batch(s, "q", NULL, 3, got, &n));
  CHECK(n == 3);
  for (size_t i = 0; i < n && n == 3; i++) {
    CHECK(mq_msg_id(got[i]) == ids[i]);
    CHECK(mq_msg_receives(got[i]) == 1);
    CHECK(mq_msg_receipt(got[i])[0] != 0);
    if (i) CHECK(strcmp(mq_msg_receipt(got[i]), mq_msg_receipt(got[i - 1])) != 0);
  }
  CHECK_STATS(s, "q", 2, 3, 0, 0, 5);
  size_t n2 = 0;
  CHECK_OK(mq_get_batch(s, "q", NULL, 10, got + 3, &n2));
  CHECK(n2 == 2);
  for (size_t i = 0; i < n2 && n2 == 2; i++) CHECK(mq_msg_id(got[3 + i]) == ids[3 + i]);
  size_t n3 = 99;
  CHECK_RC(mq_get_batch(s, "q", NULL, 10, got + 5, &n3), MQ_EMPTY);
  CHECK(n3 == 0);

  const char *rs[5];
  int res[5];
  size_t all = n + n2;
  for (size_t i = 0; i < all; i++) rs[i] = mq_msg_receipt(got[i]);
  CHECK_OK(mq_ack_batch(s, "q", rs, all, res));
  for (size_t i = 0; i < all; i++) CHECK(res[i] == MQ_OK);
  CHECK_STATS(s, "q", 0, 0, 0, 0, 0);
  for (size_t i = 0; i < all; i++) mq_msg_free(got[i]);
  finish(s);
}

/* Once its TTL has passed a message is gone for the queue, even while
** nothing has swept it yet: settling it must fail as for a gone message,
** never let a consumer believe it acked or extended it. */
static void test_settle_after_expiry(void) {
  mq_store *s = fresh("settlettl");
  CHECK_OK(mq_queue_create(s, "q", NULL));
  int64_t t0 = test_now_ms;
  mq_put_options po;
  mq_put_options_init(&po);
  po.ttl_ms = 1000;
  for (int i = 0; i < 4; i++) tu_put_opts(s, "q", "perishable", &po);
  char r[4][MQ_RECEIPT_MAX + 1];
  for (int i = 0; i < 4; i++) {
    mq_msg *m = tu_get_vis(s, "q", 5000); /* the lease outlives the TTL */
    CHECK(m != NULL);
    snprintf(r[i], sizeof r[i], "%s", m ? mq_msg_receipt(m) : "");
    mq_msg_free(m);
  }
  test_now_ms = t0 + 999;
  CHECK_OK(mq_touch(s, "q", r[0], 5000)); /* alive: the lease still works */

  test_now_ms = t0 + 1000;
  CHECK_RC(mq_ack(s, "q", r[0]), MQ_ESTALE);
  CHECK_RC(mq_nack(s, "q", r[1], 0, "late"), MQ_ESTALE);
  CHECK_RC(mq_touch(s, "q", r[2], 5000), MQ_ESTALE);
  const char *batch[2] = {r[3], r[0]};
  int results[2] = {-1, -1};
  CHECK_OK(mq_ack_batch(s, "q", batch, 2, results));
  CHECK(results[0] == MQ_ESTALE && results[1] == MQ_ESTALE);
  CHECK_STATS(s, "q", 0, 0, 0, 0, 0);
  CHECK(tu_get(s, "q") == NULL);
  CHECK_VERIFY_CLEAN(s);
  finish(s);
}

/* A dedup key says "this producer's message was accepted"; a purge deletes
** the message, not that fact, so a retried put within the window still
** stores nothing.  Dropping the queue forgets its keys. */
static void test_purge_keeps_dedup(void) {
  mq_store *s = fresh("purgededup");
  CHECK_OK(mq_queue_create(s, "q", NULL));
  mq_put_options po;
  mq_put_options_init(&po);
  po.dedup_key = "order-17";
  int64_t id1 = tu_put_opts(s, "q", "first", &po);
  int64_t deleted = -1, again = -1;
  CHECK_OK(mq_queue_purge(s, "q", &deleted));
  CHECK(deleted == 1);
  CHECK_OK(mq_put(s, "q", "retry", 5, &po, &again));
  CHECK(again == id1);
  CHECK_STATS(s, "q", 0, 0, 0, 0, 0);
  CHECK_OK(mq_queue_drop(s, "q"));
  CHECK_OK(mq_queue_create(s, "q", NULL));
  again = -1;
  CHECK_OK(mq_put(s, "q", "new", 3, &po, &again));
  CHECK(again > id1);
  CHECK_STATS(s, "q", 1, 0, 0, 0, 1);
  finish(s);
}

int main(void) {
  TEST(test_delay);
  TEST(test_ttl);
  TEST(test_retention);
  TEST(test_dedup);
  TEST(test_batch_put_all_or_nothing);
  TEST(test_batch_get_in_order);
  TEST(test_settle_after_expiry);
  TEST(test_purge_keeps_dedup);
  return test_done();
}
