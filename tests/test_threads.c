/*
** test_threads.c -- one handle shared by many threads.
**
** mq.h promises that a handle may be shared by any number of threads and
** that concurrent puts share commits.  Eight producer threads each put
** 2000 messages under MQ_SYNC_FULL while four consumer threads get and ack
** on the same handle.  Each payload names its producer and sequence number,
** so the test can account for every message: delivered exactly once, acked
** exactly once, every id distinct, the queue empty at the end.  The clock is
** frozen (leases never run out), so any second delivery is a bug, not a
** redelivery.  Consumers wait in mq_get (wait_ms) rather than spinning; the
** loop is bounded by a deadline only so that a lost message fails the test
** instead of hanging it.  A second case does the same with batches: puts
** and gets in batches on two queues, acks in one mq_ack_batch, and a nack
** for every fifth message on its first delivery, which must then come back
** exactly once more.  A third case mixes, in shared commits, puts that
** fail half-way (a batch whose 36th entry is too large, after 32 rows are
** written) with good ones: commit.c then runs the batch again with a
** savepoint per op, and only the good puts may be stored.
*/
#include <pthread.h>

#include "mqi.h" /* mq_store.reruns */
#include "testutil.h"

#define PRODUCERS 8
#define PER_PRODUCER 2000
#define CONSUMERS 4
#define TOTAL (PRODUCERS * PER_PRODUCER)

static mq_store *g_store;
static int64_t g_deadline;
static int64_t g_put_id[TOTAL];
static _Atomic int g_delivered[TOTAL];
static _Atomic int g_acked[TOTAL];
static _Atomic int64_t g_acked_total;
static _Atomic int g_put_fail, g_get_fail, g_ack_fail, g_bad_payload;

static void *producer(void *arg) {
  int k = (int)(intptr_t)arg;
  for (int i = 0; i < PER_PRODUCER; i++) {
    char b[64];
    int len = snprintf(b, sizeof b, "p%d:%d:%s", k, i, "payload");
    int64_t id = 0;
    int rc = mq_put(g_store, "q", b, (size_t)len, NULL, &id);
    if (rc != MQ_OK) {
      if (atomic_fetch_add(&g_put_fail, 1) < 5)
        fprintf(stderr, "  put p%d:%d: %s: %s\n", k, i, mq_errstr(rc), mq_errmsg(g_store));
      continue;
    }
    g_put_id[k * PER_PRODUCER + i] = id;
  }
  return NULL;
}

/* The index a payload names, or -1. */
static int payload_index(const mq_msg *m) {
  char b[64];
  size_t n = mq_msg_size(m);
  if (n >= sizeof b) return -1;
  memcpy(b, mq_msg_data(m), n);
  b[n] = 0;
  int k = -1, i = -1;
  if (sscanf(b, "p%d:%d:", &k, &i) != 2) return -1;
  if (k < 0 || k >= PRODUCERS || i < 0 || i >= PER_PRODUCER) return -1;
  return k * PER_PRODUCER + i;
}

static void *consumer(void *arg) {
  (void)arg;
  mq_get_options go;
  mq_get_options_init(&go);
  go.wait_ms = 100;
  while (atomic_load(&g_acked_total) < TOTAL && tu_mono_ms() < g_deadline) {
    mq_msg *m = NULL;
    int rc = mq_get(g_store, "q", &go, &m);
    if (rc == MQ_EMPTY) continue;
    if (rc != MQ_OK) {
      if (atomic_fetch_add(&g_get_fail, 1) < 5)
        fprintf(stderr, "  get: %s: %s\n", mq_errstr(rc), mq_errmsg(g_store));
      continue;
    }
    int idx = payload_index(m);
    if (idx < 0) {
      atomic_fetch_add(&g_bad_payload, 1);
      mq_msg_free(m);
      continue;
    }
    atomic_fetch_add(&g_delivered[idx], 1);
    rc = mq_ack(g_store, "q", mq_msg_receipt(m));
    if (rc == MQ_OK) {
      atomic_fetch_add(&g_acked[idx], 1);
      atomic_fetch_add(&g_acked_total, 1);
    } else if (atomic_fetch_add(&g_ack_fail, 1) < 5) {
      fprintf(stderr, "  ack: %s: %s\n", mq_errstr(rc), mq_errmsg(g_store));
    }
    mq_msg_free(m);
  }
  return NULL;
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static void test_shared_handle(void) {
  const char *p = test_path("threads");
  g_store = test_open(p, MQ_SYNC_FULL);
  CHECK_OK(mq_queue_create(g_store, "q", NULL));
  g_deadline = tu_mono_ms() + 120000;
  int64_t t0 = tu_mono_ms();

  pthread_t prod[PRODUCERS], cons[CONSUMERS];
  for (int i = 0; i < CONSUMERS; i++)
    CHECK(pthread_create(&cons[i], NULL, consumer, NULL) == 0);
  for (int i = 0; i < PRODUCERS; i++)
    CHECK(pthread_create(&prod[i], NULL, producer, (void *)(intptr_t)i) == 0);
  for (int i = 0; i < PRODUCERS; i++) pthread_join(prod[i], NULL);
  for (int i = 0; i < CONSUMERS; i++) pthread_join(cons[i], NULL);
  fprintf(stderr, "  %d puts and acks in %lld ms\n", TOTAL, (long long)(tu_mono_ms() - t0));

  CHECK(atomic_load(&g_put_fail) == 0);
  CHECK(atomic_load(&g_get_fail) == 0);
  CHECK(atomic_load(&g_ack_fail) == 0);
  CHECK(atomic_load(&g_bad_payload) == 0);
  CHECK(atomic_load(&g_acked_total) == TOTAL);
  int lost = 0, dup = 0, unacked = 0;
  for (int i = 0; i < TOTAL; i++) {
    int d = atomic_load(&g_delivered[i]), a = atomic_load(&g_acked[i]);
    if (d == 0) lost++;
    if (d > 1) dup++;
    if (a != 1) unacked++;
  }
  CHECK(lost == 0);
  CHECK(dup == 0);
  CHECK(unacked == 0);
  if (lost || dup || unacked)
    fprintf(stderr, "  lost %d, delivered twice %d, not acked once %d\n", lost, dup, unacked);

  static int64_t ids[TOTAL];
  memcpy(ids, g_put_id, sizeof ids);
  qsort(ids, TOTAL, sizeof ids[0], cmp_i64);
  int same = 0;
  for (int i = 1; i < TOTAL; i++) same += ids[i] == ids[i - 1];
  CHECK(same == 0);
  CHECK(ids[0] > 0);

  /* Each producer's ids grow in the order it put them. */
  int disorder = 0;
  for (int k = 0; k < PRODUCERS; k++)
    for (int i = 1; i < PER_PRODUCER; i++)
      disorder += g_put_id[k * PER_PRODUCER + i] <= g_put_id[k * PER_PRODUCER + i - 1];
  CHECK(disorder == 0);

  CHECK_STATS(g_store, "q", 0, 0, 0, 0, 0);
  CHECK_OK(mq_store_close(g_store));
  test_unlink_store(p);
}

/* ---- Batches, two queues and nacks, all on one handle at once. ---- */

#define B_PRODUCERS 4
#define B_BATCHES 25
#define B_BATCH 20
#define B_PER (B_BATCHES * B_BATCH)
#define B_TOTAL (B_PRODUCERS * B_PER)
#define B_CONSUMERS 3

static _Atomic int b_delivered[B_TOTAL];
static _Atomic int b_acked[B_TOTAL];
static _Atomic int64_t b_acked_total;
static _Atomic int b_fail;

static void *batch_producer(void *arg) {
  int k = (int)(intptr_t)arg;
  char text[B_BATCH][32];
  mq_entry e[B_BATCH];
  for (int b = 0; b < B_BATCHES; b++) {
    for (int j = 0; j < B_BATCH; j++) {
      int i = b * B_BATCH + j;
      int len = snprintf(text[j], sizeof text[j], "b%d:%d", k, i);
      e[j].data = text[j];
      e[j].len = (size_t)len;
      e[j].opts = NULL;
    }
    if (mq_put_batch(g_store, b % 2 ? "b" : "a", e, B_BATCH, NULL) != MQ_OK)
      atomic_fetch_add(&b_fail, 1);
  }
  return NULL;
}

static int batch_index(const mq_msg *m) {
  char b[32];
  size_t n = mq_msg_size(m);
  if (n >= sizeof b) return -1;
  memcpy(b, mq_msg_data(m), n);
  b[n] = 0;
  int k = -1, i = -1;
  if (sscanf(b, "b%d:%d", &k, &i) != 2 || k < 0 || k >= B_PRODUCERS || i < 0 || i >= B_PER)
    return -1;
  return k * B_PER + i;
}

/* Gets in batches from both queues; every fifth message is nacked on its
** first delivery (the clock is frozen, so it comes straight back), the rest
** are acked together with one mq_ack_batch. */
static void *batch_consumer(void *arg) {
  (void)arg;
  mq_get_options go;
  mq_get_options_init(&go);
  go.wait_ms = 20;
  for (int turn = 0; atomic_load(&b_acked_total) < B_TOTAL && tu_mono_ms() < g_deadline; turn++) {
    const char *q = turn % 2 ? "b" : "a";
    mq_msg *ms[8];
    size_t n = 0;
    int rc = mq_get_batch(g_store, q, &go, 8, ms, &n);
    if (rc == MQ_EMPTY) continue;
    if (rc != MQ_OK) {
      atomic_fetch_add(&b_fail, 1);
      continue;
    }
    const char *rs[8];
    int idx[8], res[8];
    size_t na = 0;
    for (size_t j = 0; j < n; j++) {
      int i = batch_index(ms[j]);
      if (i < 0) {
        atomic_fetch_add(&b_fail, 1);
        continue;
      }
      atomic_fetch_add(&b_delivered[i], 1);
      if (i % 5 == 0 && mq_msg_receives(ms[j]) == 1) {
        if (mq_nack(g_store, q, mq_msg_receipt(ms[j]), 0, "again") != MQ_OK)
          atomic_fetch_add(&b_fail, 1);
        continue;
      }
      rs[na] = mq_msg_receipt(ms[j]);
      idx[na++] = i;
    }
    if (na) {
      if (mq_ack_batch(g_store, q, rs, na, res) != MQ_OK) {
        atomic_fetch_add(&b_fail, 1);
      } else {
        for (size_t j = 0; j < na; j++) {
          if (res[j] != MQ_OK) {
            atomic_fetch_add(&b_fail, 1);
            continue;
          }
          atomic_fetch_add(&b_acked[idx[j]], 1);
          atomic_fetch_add(&b_acked_total, 1);
        }
      }
    }
    for (size_t j = 0; j < n; j++) mq_msg_free(ms[j]);
  }
  return NULL;
}

static void test_batches_and_nacks(void) {
  const char *p = test_path("threadbatch");
  g_store = test_open(p, MQ_SYNC_FULL);
  CHECK_OK(mq_queue_create(g_store, "a", NULL));
  CHECK_OK(mq_queue_create(g_store, "b", NULL));
  g_deadline = tu_mono_ms() + 60000;
  pthread_t prod[B_PRODUCERS], cons[B_CONSUMERS];
  for (int i = 0; i < B_CONSUMERS; i++)
    CHECK(pthread_create(&cons[i], NULL, batch_consumer, NULL) == 0);
  for (int i = 0; i < B_PRODUCERS; i++)
    CHECK(pthread_create(&prod[i], NULL, batch_producer, (void *)(intptr_t)i) == 0);
  for (int i = 0; i < B_PRODUCERS; i++) pthread_join(prod[i], NULL);
  for (int i = 0; i < B_CONSUMERS; i++) pthread_join(cons[i], NULL);

  CHECK(atomic_load(&b_fail) == 0);
  CHECK(atomic_load(&b_acked_total) == B_TOTAL);
  int wrong_deliveries = 0, not_acked_once = 0;
  for (int i = 0; i < B_TOTAL; i++) {
    int want = i % 5 == 0 ? 2 : 1; /* nacked ones come back exactly once */
    wrong_deliveries += atomic_load(&b_delivered[i]) != want;
    not_acked_once += atomic_load(&b_acked[i]) != 1;
  }
  CHECK(wrong_deliveries == 0);
  CHECK(not_acked_once == 0);
  if (wrong_deliveries || not_acked_once)
    fprintf(stderr, "  wrong delivery counts %d, not acked once %d\n", wrong_deliveries,
            not_acked_once);
  CHECK_STATS(g_store, "a", 0, 0, 0, 0, 0);
  CHECK_STATS(g_store, "b", 0, 0, 0, 0, 0);
  CHECK_OK(mq_store_close(g_store));
  test_unlink_store(p);
}

/* Puts of several threads share commits without a savepoint per op; a put
** that fails after writing makes the leader roll the batch back and run it
** again with savepoints.  Good puts must all be there, failed ones not at
** all -- whatever commit they shared. */
#define F_THREADS 4
#define F_ROUNDS 60
static _Atomic int64_t f_good;
static _Atomic int f_wrong;

static void *fail_producer(void *arg) {
  int k = (int)(intptr_t)arg;
  static const char big[300] = {0};
  mq_entry e[40];
  char p[40][32];
  for (int r = 0; r < F_ROUNDS && tu_mono_ms() < g_deadline; r++) {
    for (int i = 0; i < 40; i++) {
      e[i].len = (size_t)snprintf(p[i], sizeof p[i], "bad %d:%d:%d", k, r, i);
      e[i].data = p[i];
      e[i].opts = NULL;
    }
    e[35].data = big;
    e[35].len = sizeof big;
    if (mq_put_batch(g_store, "q", e, 40, NULL) != MQ_ETOOBIG) atomic_fetch_add(&f_wrong, 1);
    if (mq_put(g_store, "nosuch", "x", 1, NULL, NULL) != MQ_ENOTFOUND)
      atomic_fetch_add(&f_wrong, 1);
    char g[32];
    int len = snprintf(g, sizeof g, "good %d:%d", k, r);
    if (mq_put(g_store, "q", g, (size_t)len, NULL, NULL) == MQ_OK)
      atomic_fetch_add(&f_good, 1);
    else
      atomic_fetch_add(&f_wrong, 1);
  }
  return NULL;
}

static void test_failing_puts_in_shared_commits(void) {
  const char *p = test_path("threadfail");
  g_store = test_open(p, MQ_SYNC_FULL);
  mq_queue_options qo;
  mq_queue_options_init(&qo);
  qo.max_payload = 200;
  CHECK_OK(mq_queue_create(g_store, "q", &qo));
  g_deadline = tu_mono_ms() + 60000;
  /* Whether ops meet in one commit is up to the scheduler: go on until
  ** the leader has had to run a batch again (bounded). */
  for (int round = 0; round < 20 && g_store->reruns == 0; round++) {
    pthread_t th[F_THREADS];
    for (int i = 0; i < F_THREADS; i++)
      CHECK(pthread_create(&th[i], NULL, fail_producer, (void *)(intptr_t)(round * 100 + i)) == 0);
    for (int i = 0; i < F_THREADS; i++) pthread_join(th[i], NULL);
  }
  CHECK(g_store->reruns > 0);
  CHECK(atomic_load(&f_wrong) == 0);
  int64_t seen = 0, bad = 0;
  for (mq_msg *m; (m = tu_get(g_store, "q")) != NULL; mq_msg_free(m)) {
    seen++;
    bad += mq_msg_size(m) < 5 || memcmp(mq_msg_data(m), "good ", 5) != 0;
    CHECK_OK(mq_ack(g_store, "q", mq_msg_receipt(m)));
  }
  CHECK(bad == 0);
  CHECK(seen == atomic_load(&f_good));
  CHECK_OK(mq_store_close(g_store));
  test_unlink_store(p);
}

int main(void) {
  TEST(test_shared_handle);
  TEST(test_batches_and_nacks);
  TEST(test_failing_puts_in_shared_commits);
  return test_done();
}
