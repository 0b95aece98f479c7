/*
** test_basic.c -- the everyday verbs: put, get, ack, peek, list, purge, drop
** and stats.
**
** These are the promises a first-time user leans on without reading the
** fine print: payloads come back byte for byte (empty ones and ones full of
** NUL bytes included), ids grow, higher priorities go first and equal
** priorities go in order, a redelivery counts up, the enqueue time is the
** store's clock, headers survive, peeking leases nothing, and the counters
** in stats are exact for every state a message can be in.  Inputs are
** overwritten right after each call to prove the library copied them.  The
** clock is injected and moved by hand; nothing sleeps.
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

static void test_round_trip(void) {
  mq_store *s = fresh("roundtrip");
  CHECK_OK(mq_queue_create(s, "q", NULL));
  unsigned char bin[300];
  for (size_t i = 0; i < sizeof bin; i++) bin[i] = (unsigned char)(i % 3 ? i : 0);
  char text[16] = "hello";

  int64_t id[4] = {-1, -1, -1, -1};
  CHECK_OK(mq_put(s, "q", text, 5, NULL, &id[0]));
  memset(text, 'X', 5); /* the library must have copied it */
  CHECK_OK(mq_put(s, "q", NULL, 0, NULL, &id[1]));
  CHECK_OK(mq_put(s, "q", "ignored", 0, NULL, &id[2]));
  CHECK_OK(mq_put(s, "q", bin, sizeof bin, NULL, &id[3]));
  CHECK_OK(mq_put(s, "q", "no id wanted", 12, NULL, NULL));
  CHECK(id[0] > 0 && id[0] < id[1] && id[1] < id[2] && id[2] < id[3]);

  mq_msg *m = tu_get(s, "q");
  CHECK(m != NULL);
  if (m) {
    CHECK(mq_msg_id(m) == id[0]);
    CHECK(tu_msg_is(m, "hello"));
    CHECK(mq_msg_receipt(m) != NULL && mq_msg_receipt(m)[0] != 0);
    CHECK(strlen(mq_msg_receipt(m)) <= MQ_RECEIPT_MAX);
    CHECK(mq_msg_receives(m) == 1);
    CHECK(mq_msg_priority(m) == 0);
    CHECK(mq_msg_header_count(m) == 0);
    CHECK(mq_msg_reason(m) == NULL);
    CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
    mq_msg_free(m);
  }
  for (int k = 1; k <= 2; k++) {
    m = tu_get(s, "q");
    CHECK(m != NULL);
    if (!m) continue;
    CHECK(mq_msg_id(m) == id[k]);
    CHECK(mq_msg_size(m) == 0);
    CHECK(mq_msg_data(m) != NULL);
    CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
    mq_msg_free(m);
  }
  m = tu_get(s, "q");
  CHECK(m != NULL);
  if (m) {
    CHECK(mq_msg_id(m) == id[3]);
    CHECK(mq_msg_size(m) == sizeof bin);
    CHECK(mq_msg_size(m) == sizeof bin && memcmp(mq_msg_data(m), bin, sizeof bin) == 0);
    CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
    mq_msg_free(m);
  }
  m = tu_get(s, "q");
  CHECK(tu_msg_is(m, "no id wanted"));
  if (m) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
  mq_msg_free(m);

  m = (mq_msg *)&test_failures;
  CHECK_RC(mq_get(s, "q", NULL, &m), MQ_EMPTY);
  CHECK(m == NULL);
  CHECK_STATS(s, "q", 0, 0, 0, 0, 0);
  mq_queue_stats st = tu_stats(s, "q");
  CHECK(st.bytes == 0 && st.oldest_age_ms == 0);
  finish(s);
}

/* An id names one message forever: receipts, dedup answers and the
** (origin node, id) pairs that forwarding deduplicates on all rely on it.
** SQLite hands out max(rowid)+1 unless told otherwise, so the newest id
** would come back after the newest message is acked. */
static void test_ids_never_reused(void) {
  const char *p = test_path("idreuse");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  int64_t last = 0;
  for (int round = 0; round < 4; round++) {
    int64_t id = tu_put(s, "q", "x");
    CHECK(id > last);
    if (id <= last)
      fprintf(stderr, "  round %d: id %lld after %lld\n", round, (long long)id, (long long)last);
    last = id;
    if (round == 0) { /* ack it: the table is empty again */
      mq_msg *m = tu_get(s, "q");
      CHECK(m && mq_msg_id(m) == id);
      if (m) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
      mq_msg_free(m);
    } else if (round == 1) {
      CHECK_OK(mq_queue_purge(s, "q", NULL));
    } else if (round == 2) { /* drop and recreate, then reopen */
      CHECK_OK(mq_queue_drop(s, "q"));
      CHECK_OK(mq_queue_create(s, "q", NULL));
      CHECK_OK(mq_store_close(s));
      s = test_open(p, MQ_SYNC_NORMAL);
    }
  }
  mq_store_close(s);
  test_unlink_store(p);
}

static void test_priority_and_fifo(void) {
  mq_store *s = fresh("prio");
  CHECK_OK(mq_queue_create(s, "q", NULL));
  static const struct {
    const char *text;
    int prio;
  } in[] = {{"a0", 0}, {"b5", 5}, {"c0", 0},   {"d5", 5},
            {"e-3", -3}, {"f10", 10}, {"g0", 0}, {"h5", 5}};
  static const char *const want[] = {"f10", "b5", "d5", "h5", "a0", "c0", "g0", "e-3"};
  for (size_t i = 0; i < sizeof in / sizeof in[0]; i++) {
    mq_put_options po;
    mq_put_options_init(&po);
    po.priority = in[i].prio;
    tu_put_opts(s, "q", in[i].text, &po);
    if (i % 3 == 0) test_now_ms += 1; /* some share a millisecond, some not */
  }
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    mq_msg *m = tu_get(s, "q");
    CHECK(tu_msg_is(m, want[i]));
    if (m && !tu_msg_is(m, want[i]))
      fprintf(stderr, "  position %zu: got %.*s, expected %s\n", i,
              (int)mq_msg_size(m), (const char *)mq_msg_data(m), want[i]);
    if (m) CHECK(mq_msg_priority(m) == atoi(want[i] + 1));
    mq_msg_free(m);
  }
  CHECK(tu_get(s, "q") == NULL);

  /* FIFO holds over many messages of one priority, across clock ticks. */
  CHECK_OK(mq_queue_create(s, "fifo", NULL));
  int64_t ids[50];
  for (int i = 0; i < 50; i++) {
    char b[16];
    snprintf(b, sizeof b, "m%d", i);
    ids[i] = tu_put(s, "fifo", b);
    if (i % 7 == 0) test_now_ms += 3;
  }
  for (int i = 0; i < 50; i++) {
    char b[16];
    snprintf(b, sizeof b, "m%d", i);
    mq_msg *m = tu_get(s, "fifo");
    CHECK(m && mq_msg_id(m) == ids[i] && tu_msg_is(m, b));
    if (m) CHECK_OK(mq_ack(s, "fifo", mq_msg_receipt(m)));
    mq_msg_free(m);
  }
  finish(s);
}

static void test_receive_count_and_enqueued_at(void) {
  mq_store *s = fresh("recv");
  tu_create(s, "q", 1000, 0, NULL);
  int64_t t0 = test_now_ms;
  int64_t id = tu_put(s, "q", "x");
  test_now_ms += 17;

  mq_msg *m = tu_get(s, "q");
  CHECK(m && mq_msg_receives(m) == 1);
  CHECK(m && mq_msg_enqueued_at(m) == t0);
  char first[MQ_RECEIPT_MAX + 1] = "";
  if (m) {
    snprintf(first, sizeof first, "%s", mq_msg_receipt(m));
    CHECK_OK(mq_nack(s, "q", mq_msg_receipt(m), 0, NULL));
  }
  mq_msg_free(m);

  m = tu_get(s, "q");
  CHECK(m && mq_msg_id(m) == id && mq_msg_receives(m) == 2);
  CHECK(m && strcmp(mq_msg_receipt(m), first) != 0);
  CHECK(m && mq_msg_enqueued_at(m) == t0); /* a redelivery keeps its age */
  mq_msg_free(m);

  test_now_ms += 1001; /* the lease runs out */
  m = tu_get(s, "q");
  CHECK(m && mq_msg_id(m) == id && mq_msg_receives(m) == 3);
  if (m) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
  mq_msg_free(m);
  finish(s);
}

static void test_headers(void) {
  mq_store *s = fresh("headers");
  CHECK_OK(mq_queue_create(s, "q", NULL));
  char name0[256], value0[64];
  memset(name0, 'n', 255); /* the longest allowed header name */
  name0[255] = 0;
  snprintf(value0, sizeof value0, "text/plain; charset=utf-8");
  mq_header h[3] = {{name0, value0}, {"empty", ""}, {"x-n", "42"}};
  mq_put_options po;
  mq_put_options_init(&po);
  po.headers = h;
  po.n_headers = 3;
  int64_t id = tu_put_opts(s, "q", "body", &po);
  memset(value0, 'Z', 10); /* copied, not kept by reference */
  h[2].value = "changed";

  for (int pass = 0; pass < 2; pass++) {
    mq_msg *m = NULL;
    if (pass == 0) {
      size_t n = 0;
      CHECK_OK(mq_peek(s, "q", 1, &m, &n));
      CHECK(n == 1);
      if (n != 1) m = NULL;
    } else {
      m = tu_get(s, "q");
    }
    CHECK(m != NULL);
    if (!m) continue;
    CHECK(mq_msg_id(m) == id);
    CHECK(mq_msg_header_count(m) == 3);
    const char *v = mq_msg_header(m, name0);
    CHECK(v && strcmp(v, "text/plain; charset=utf-8") == 0);
    v = mq_msg_header(m, "empty");
    CHECK(v && strcmp(v, "") == 0);
    v = mq_msg_header(m, "x-n");
    CHECK(v && strcmp(v, "42") == 0);
    CHECK(mq_msg_header(m, "missing") == NULL);
    int seen = 0;
    for (size_t i = 0; i < mq_msg_header_count(m); i++) {
      const char *hn = mq_msg_header_name(m, i), *hv = mq_msg_header_value(m, i);
      CHECK(hn && hv);
      if (!hn || !hv) continue;
      if (!strcmp(hn, name0) && !strcmp(hv, "text/plain; charset=utf-8")) seen |= 1;
      if (!strcmp(hn, "empty") && !strcmp(hv, "")) seen |= 2;
      if (!strcmp(hn, "x-n") && !strcmp(hv, "42")) seen |= 4;
    }
    CHECK(seen == 7);
    CHECK(mq_msg_header_name(m, 3) == NULL);
    CHECK(mq_msg_header_value(m, 3) == NULL);
    CHECK(mq_msg_header_name(m, (size_t)-1) == NULL);
    if (pass == 1) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
    mq_msg_free(m);
  }
  finish(s);
}

static void test_peek(void) {
  mq_store *s = fresh("peek");
  CHECK_OK(mq_queue_create(s, "q", NULL));
  mq_msg *pk[8];
  size_t n = 99;
  CHECK_OK(mq_peek(s, "q", 8, pk, &n)); /* empty is not an error for peek */
  CHECK(n == 0);

  int64_t a = tu_put(s, "q", "a");
  int64_t b = tu_put(s, "q", "b");
  int64_t c = tu_put(s, "q", "c");
  n = 0;
  CHECK_OK(mq_peek(s, "q", 8, pk, &n));
  CHECK(n == 3);
  for (size_t i = 0; i < n && n == 3; i++) {
    int64_t want = i == 0 ? a : i == 1 ? b : c;
    CHECK(mq_msg_id(pk[i]) == want);
    CHECK(mq_msg_receipt(pk[i]) != NULL && mq_msg_receipt(pk[i])[0] == 0);
    CHECK(mq_msg_receives(pk[i]) == 0);
    mq_msg_free(pk[i]);
  }
  CHECK_STATS(s, "q", 3, 0, 0, 0, 3);

  /* The peeked head is still the next delivery, and peeking did not count. */
  mq_msg *m = tu_get(s, "q");
  CHECK(m && mq_msg_id(m) == a && mq_msg_receives(m) == 1);

  /* A leased message is not ready, so peek no longer shows it. */
  n = 0;
  CHECK_OK(mq_peek(s, "q", 8, pk, &n));
  CHECK(n == 2);
  for (size_t i = 0; i < n; i++) {
    CHECK(mq_msg_id(pk[i]) != a);
    mq_msg_free(pk[i]);
  }
  n = 0;
  CHECK_OK(mq_peek(s, "q", 1, pk, &n));
  CHECK(n == 1);
  if (n == 1) {
    CHECK(mq_msg_id(pk[0]) == b);
    mq_msg_free(pk[0]);
  }
  CHECK_STATS(s, "q", 2, 1, 0, 0, 3);
  if (m) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
  mq_msg_free(m);
  finish(s);
}

static void check_list(mq_store *s, const char *const *want, size_t nwant) {
  char **names = NULL;
  size_t n = 999;
  CHECK_OK(mq_queue_list(s, &names, &n));
  CHECK(n == nwant);
  for (size_t i = 0; i < n && n == nwant; i++) CHECK(strcmp(names[i], want[i]) == 0);
  mq_list_free(names, n);
}

static void test_list_purge_drop(void) {
  mq_store *s = fresh("lpd");
  char **names = NULL;
  size_t n = 99;
  CHECK_OK(mq_queue_list(s, &names, &n)); /* no queues yet */
  CHECK(n == 0);
  mq_list_free(names, n);

  tu_create(s, "charlie", 10000, 0, NULL);
  tu_create(s, "alpha", 10000, 0, NULL);
  tu_create(s, "bravo", 10000, 0, NULL);
  tu_create(s, "Zulu", 10000, 0, NULL); /* sorted bytewise: upper case first */
  static const char *const all[] = {"Zulu", "alpha", "bravo", "charlie"};
  check_list(s, all, 4);

  /* purge reaches every state: ready, in flight, delayed. */
  tu_put(s, "alpha", "r1");
  tu_put(s, "alpha", "r2");
  tu_put(s, "alpha", "r3");
  mq_put_options po;
  mq_put_options_init(&po);
  po.delay_ms = 60000;
  tu_put_opts(s, "alpha", "delayed", &po);
  mq_msg *m = tu_get(s, "alpha");
  CHECK(m != NULL);
  tu_put(s, "bravo", "other queue");
  CHECK_STATS(s, "alpha", 2, 1, 1, 0, 4);
  int64_t deleted = -1;
  CHECK_OK(mq_queue_purge(s, "alpha", &deleted));
  CHECK(deleted == 4);
  CHECK_STATS(s, "alpha", 0, 0, 0, 0, 0);
  CHECK_STATS(s, "bravo", 1, 0, 0, 0, 1);
  if (m) CHECK_RC(mq_ack(s, "alpha", mq_msg_receipt(m)), MQ_ESTALE);
  mq_msg_free(m);
  test_now_ms += 60001; /* the purged delayed message does not come back */
  CHECK(tu_get(s, "alpha") == NULL);
  check_list(s, all, 4); /* purge keeps the queue */
  tu_put(s, "alpha", "again");
  CHECK_OK(mq_queue_purge(s, "alpha", NULL));
  CHECK_STATS(s, "alpha", 0, 0, 0, 0, 0);
  deleted = -1;
  CHECK_OK(mq_queue_purge(s, "alpha", &deleted));
  CHECK(deleted == 0);

  /* drop deletes the queue and its messages; a new queue of the same name
  ** starts empty. */
  tu_put(s, "bravo", "second");
  CHECK_OK(mq_queue_drop(s, "bravo"));
  static const char *const left[] = {"Zulu", "alpha", "charlie"};
  check_list(s, left, 3);
  mq_queue_stats st;
  CHECK_RC(mq_queue_stats_get(s, "bravo", &st), MQ_ENOTFOUND);
  CHECK_RC(mq_queue_drop(s, "bravo"), MQ_ENOTFOUND);
  CHECK_RC(mq_put(s, "bravo", "x", 1, NULL, NULL), MQ_ENOTFOUND);
  CHECK_OK(mq_queue_create(s, "bravo", NULL));
  CHECK_STATS(s, "bravo", 0, 0, 0, 0, 0);
  CHECK(tu_get(s, "bravo") == NULL);
  check_list(s, all, 4);
  finish(s);
}

static void test_create_idempotent(void) {
  mq_store *s = fresh("create");
  mq_queue_options o;
  mq_queue_options_init(&o);
  o.visibility_ms = 1000;
  CHECK_OK(mq_queue_create(s, "q", &o));
  CHECK_OK(mq_queue_create(s, "q", &o));
  o.visibility_ms = 2000;
  CHECK_RC(mq_queue_create(s, "q", &o), MQ_EEXIST);
  CHECK(mq_errmsg(s)[0] != 0);

  /* The refused create changed nothing: the lease is still 1000 ms. */
  tu_put(s, "q", "x");
  mq_msg *m = tu_get(s, "q");
  CHECK(m != NULL);
  mq_msg_free(m);
  test_now_ms += 1001;
  m = tu_get(s, "q");
  CHECK(m && mq_msg_receives(m) == 2);
  mq_msg_free(m);

  /* A name exactly MQ_NAME_MAX long is valid. */
  char longest[MQ_NAME_MAX + 1];
  memset(longest, 'q', MQ_NAME_MAX);
  longest[MQ_NAME_MAX] = 0;
  CHECK_OK(mq_queue_create(s, longest, NULL));
  tu_put(s, longest, "y");
  CHECK_STATS(s, longest, 1, 0, 0, 0, 1);
  finish(s);
}

static void test_stats_exact(void) {
  mq_store *s = fresh("stats");
  tu_create(s, "q", 10000, 2, NULL);
  CHECK_STATS(s, "q", 0, 0, 0, 0, 0);
  mq_queue_stats st = tu_stats(s, "q");
  CHECK(st.oldest_age_ms == 0 && st.bytes == 0);

  int64_t t1 = test_now_ms;
  char b[64];
  memset(b, 'p', sizeof b);
  int64_t e = -1;
  CHECK_OK(mq_put(s, "q", b, 50, NULL, &e)); /* E: will die */
  for (int k = 1; k <= 2; k++) {
    mq_msg *m = tu_get(s, "q");
    CHECK(m && mq_msg_id(m) == e && mq_msg_receives(m) == k);
    if (m) CHECK_OK(mq_nack(s, "q", mq_msg_receipt(m), 0, "no"));
    mq_msg_free(m);
  }
  CHECK_OK(mq_put(s, "q", b, 10, NULL, NULL)); /* A: will be in flight */
  CHECK_OK(mq_put(s, "q", b, 20, NULL, NULL)); /* B: ready */
  CHECK_OK(mq_put(s, "q", b, 30, NULL, NULL)); /* C: ready */
  mq_put_options po;
  mq_put_options_init(&po);
  po.delay_ms = 5000;
  CHECK_OK(mq_put(s, "q", b, 40, &po, NULL)); /* D: delayed */
  mq_msg *a = tu_get(s, "q");
  CHECK(a && mq_msg_size(a) == 10);

  test_now_ms = t1 + 100;
  CHECK_STATS(s, "q", 2, 1, 1, 1, 5);
  st = tu_stats(s, "q");
  CHECK(st.oldest_age_ms == 100);
  CHECK(st.bytes == 150);

  test_now_ms = t1 + 5001; /* D is due; A still leased */
  CHECK_STATS(s, "q", 3, 1, 0, 1, 5);
  test_now_ms = t1 + 10001; /* A's lease is over: ready again, as of now */
  CHECK_STATS(s, "q", 4, 0, 0, 1, 5);
  st = tu_stats(s, "q");
  CHECK(st.oldest_age_ms == 10001);
  CHECK(st.bytes == 150);

  /* Acking shrinks every counter that held the message. */
  mq_msg *m = tu_get(s, "q");
  CHECK(m != NULL);
  if (m) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
  int64_t gone = m ? (int64_t)mq_msg_size(m) : 0;
  mq_msg_free(m);
  CHECK_STATS(s, "q", 3, 0, 0, 1, 4);
  st = tu_stats(s, "q");
  CHECK(st.bytes == 150 - gone);
  mq_msg_free(a);
  finish(s);
}

/* A batch goes in by rows of MQI_PUT_ROWS at a time, with the tail and
** entries with a dedup key one by one: whatever path an entry took, it
** comes back with its own payload, priority, headers and id, in order, and
** one bad entry anywhere refuses the whole batch, naming that entry. */
#define BATCH_N 75
static void test_batch_every_entry_its_own(void) {
  mq_store *s = fresh("batchrows");
  mq_queue_options qo;
  mq_queue_options_init(&qo);
  qo.compress_above = 200;
  qo.max_payload = 1000;
  CHECK_OK(mq_queue_create(s, "q", &qo));
  static char data[BATCH_N][600];
  static char hval[BATCH_N][16];
  mq_entry e[BATCH_N];
  mq_put_options po[BATCH_N];
  mq_header h[BATCH_N];
  int64_t ids[BATCH_N];
  for (int i = 0; i < BATCH_N; i++) {
    /* Every tenth payload is long and compressible: stored with zlib. */
    size_t len = i % 10 == 3 ? 500 : (size_t)snprintf(data[i], sizeof data[i], "entry %d", i);
    if (i % 10 == 3) memset(data[i], 'a' + i % 26, len);
    mq_put_options_init(&po[i]);
    po[i].priority = i % 7 == 2 ? 1 : 0;
    if (i % 4 == 1) {
      snprintf(hval[i], sizeof hval[i], "%d", i);
      h[i].name = "n";
      h[i].value = hval[i];
      po[i].headers = &h[i];
      po[i].n_headers = 1;
    }
    if (i == 40) po[i].dedup_key = "forty";
    e[i].data = data[i];
    e[i].len = len;
    e[i].opts = &po[i];
  }
  CHECK_OK(mq_put_batch(s, "q", e, BATCH_N, ids));
  for (int i = 1; i < BATCH_N; i++) CHECK(ids[i] > ids[i - 1]);
  /* Priority 1 first, then 0; ids in order within each. */
  int64_t last[2] = {0, 0};
  int seen = 0, low_started = 0;
  for (mq_msg *m; (m = tu_get(s, "q")) != NULL; mq_msg_free(m), seen++) {
    int k = -1;
    for (int i = 0; i < BATCH_N; i++)
      if (ids[i] == mq_msg_id(m)) k = i;
    CHECK(k >= 0);
    if (k < 0) break;
    int prio = mq_msg_priority(m);
    CHECK(prio == po[k].priority);
    if (prio == 0) low_started = 1;
    CHECK(!(prio == 1 && low_started));
    CHECK(mq_msg_id(m) > last[prio]);
    last[prio] = mq_msg_id(m);
    CHECK(mq_msg_size(m) == e[k].len && memcmp(mq_msg_data(m), data[k], e[k].len) == 0);
    const char *hv = mq_msg_header(m, "n");
    CHECK(k % 4 == 1 ? hv && strcmp(hv, hval[k]) == 0 : hv == NULL);
    CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
  }
  CHECK(seen == BATCH_N);
  /* One payload over max_payload, inside a row of 32 or in the tail. */
  static const int bad[] = {5, 35, 70};
  static char big[1001];
  for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
    mq_entry e2[BATCH_N];
    memcpy(e2, e, sizeof e2);
    for (int i = 0; i < BATCH_N; i++) e2[i].opts = NULL;
    e2[bad[b]].data = big;
    e2[bad[b]].len = sizeof big;
    CHECK_RC(mq_put_batch(s, "q", e2, BATCH_N, ids), MQ_ETOOBIG);
    char want[32];
    snprintf(want, sizeof want, "entry %d:", bad[b]);
    CHECK(strstr(mq_errmsg(s), want) != NULL);
    CHECK(ids[0] == 0 && ids[BATCH_N - 1] == 0);
    CHECK_STATS(s, "q", 0, 0, 0, 0, 0);
  }
  finish(s);
}

int main(void) {
  TEST(test_round_trip);
  TEST(test_batch_every_entry_its_own);
  TEST(test_ids_never_reused);
  TEST(test_priority_and_fifo);
  TEST(test_receive_count_and_enqueued_at);
  TEST(test_headers);
  TEST(test_peek);
  TEST(test_list_purge_drop);
  TEST(test_create_idempotent);
  TEST(test_stats_exact);
  return test_done();
}
