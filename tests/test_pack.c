/*
** test_pack.c -- packs (src/pack.c): messages a PULL endpoint stores many
** to a row must behave as if each had been put: same order, same content,
** same retention, same integrity checks, durable at the commit, and seen by
** every reader before any write has turned them into rows.
*/
#include <signal.h>
#include <zlib.h>

#include "harness.h"
#include "mqi.h" /* mqi_pack_put: what a PULL endpoint calls */
#include "testutil.h"

/* Pack n payloads (texts[i], or "<tag>-<i>" when texts is NULL) into q. */
static int pack_texts(mq_store *s, const char *q, const char *const *texts, size_t n,
                      const char *tag) {
  mqi_put_item it[64];
  char buf[64][32];
  if (n > 64) return MQ_EINVAL;
  memset(it, 0, sizeof it);
  for (size_t i = 0; i < n; i++) {
    const char *t = texts ? texts[i] : buf[i];
    if (!texts) snprintf(buf[i], sizeof buf[i], "%s-%zu", tag, i);
    it[i].data = t;
    it[i].len = strlen(t);
    it[i].crc = (uint32_t)crc32_z(0L, (const Bytef *)t, it[i].len);
  }
  return mqi_pack_put(s, q, it, n);
}

static mq_store *open_ro(const char *p) {
  mq_store *r = NULL;
  CHECK_OK(tu_open_ex(p, MQ_SYNC_NORMAL, MQ_OPEN_READONLY, test_clock, NULL, &r));
  return r;
}

static int64_t packs_in(const char *p) { return tu_sql_int(p, "SELECT count(*) FROM mq_pack"); }

/* Packed and put messages come out in the order of their commits, with
** their ids, headers, sizes and enqueue times as if each had been put. */
static void order_and_content(void) {
  const char *p = test_path("pack-order");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s, "q", 30000, 0, NULL);
  static const char hdr[] =
      "zmtp-frames\0"
      "2,3\0";
  mqi_put_item it[3];
  memset(it, 0, sizeof it);
  const char *texts[3] = {"abcde", "", "third"};
  for (int i = 0; i < 3; i++) {
    it[i].data = texts[i];
    it[i].len = strlen(texts[i]);
    it[i].crc = (uint32_t)crc32_z(0L, (const Bytef *)texts[i], it[i].len);
  }
  it[0].headers = (char *)hdr;
  it[0].headers_len = sizeof hdr - 1;
  int64_t t0 = test_now_ms;
  CHECK_OK(mqi_pack_put(s, "q", it, 3));
  CHECK(packs_in(p) == 1);
  test_now_ms += 500;
  int64_t put_id = tu_put(s, "q", "put"); /* a later id: no settle needed */
  CHECK(packs_in(p) == 1);
  const char *later[2] = {"later-0", "later-1"};
  CHECK_OK(pack_texts(s, "q", later, 2, NULL));
  const char *want[6] = {"abcde", "", "third", "put", "later-0", "later-1"};
  int64_t prev = 0;
  test_now_ms += 1000;
  for (int i = 0; i < 6; i++) {
    mq_msg *m = tu_get(s, "q");
    CHECK(tu_msg_is(m, want[i]));
    if (!m) continue;
    CHECK(mq_msg_id(m) > prev);
    if (i < 3) CHECK(mq_msg_id(m) == put_id - 3 + i && mq_msg_enqueued_at(m) == t0);
    if (i == 0) {
      const char *f = mq_msg_header(m, "zmtp-frames");
      CHECK(f && strcmp(f, "2,3") == 0 && mq_msg_header_count(m) == 1);
    }
    if (i == 1) CHECK(mq_msg_header_count(m) == 0 && mq_msg_size(m) == 0);
    prev = mq_msg_id(m);
    CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
    mq_msg_free(m);
  }
  CHECK(tu_get(s, "q") == NULL);
  CHECK_VERIFY_CLEAN(s);
  mq_store_close(s);
  test_unlink_store(p);
}

/* Packs are refused like a batch of puts: a topic, a payload above the
** queue's max_payload, an unknown queue; nothing is stored. */
static void refused_like_a_batch(void) {
  const char *p = test_path("pack-refuse");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  mq_queue_options o;
  mq_queue_options_init(&o);
  o.max_payload = 4;
  CHECK_OK(mq_queue_create(s, "small", &o));
  CHECK_OK(mq_topic_create(s, "t", NULL));
  const char *ok_then_big[2] = {"ok", "too big"};
  CHECK_RC(pack_texts(s, "small", ok_then_big, 2, NULL), MQ_ETOOBIG);
  CHECK_RC(pack_texts(s, "t", NULL, 1, "x"), MQ_EINVAL);
  CHECK_RC(pack_texts(s, "nosuch", NULL, 1, "x"), MQ_ENOTFOUND);
  CHECK(packs_in(p) == 0 && tu_stats(s, "small").total == 0);
  mq_store_close(s);
  test_unlink_store(p);
}

/* The texts of what peek shows, joined by spaces ("" on failure). */
static void peek_texts(mq_store *s, char *out, size_t cap) {
  mq_msg *m[16];
  size_t n = 0;
  out[0] = '\0';
  if (mq_peek(s, "q", 16, m, &n) != MQ_OK) return;
  for (size_t i = 0; i < n; i++) {
    size_t at = strlen(out);
    snprintf(out + at, cap - at, "%s%.*s", i ? " " : "", (int)mq_msg_size(m[i]),
             (const char *)mq_msg_data(m[i]));
    mq_msg_free(m[i]);
  }
}

typedef struct scan_acc {
  char text[256];
  int not_ready;
} scan_acc;

static int scan_text(void *ctx, const mq_msg *m, int state) {
  scan_acc *a = ctx;
  size_t at = strlen(a->text);
  snprintf(a->text + at, sizeof a->text - at, "%s%.*s", at ? " " : "", (int)mq_msg_size(m),
           (const char *)mq_msg_data(m));
  if (state != MQ_STATE_READY) a->not_ready++;
  return 0;
}

/* Reads do not settle (a read-only handle cannot, and a read-write one's
** reads never wait for writers), yet every read sees packed messages where
** they will be once settled: peek in the order gets deliver (priority,
** then id), scan in id order, stats count them, verify checks them. */
static void reads_see_packs(void) {
  const char *p = test_path("pack-reads");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s, "q", 30000, 0, NULL);
  mq_put_options po;
  mq_put_options_init(&po);
  tu_put(s, "q", "r1");
  CHECK_OK(pack_texts(s, "q", NULL, 2, "p"));
  po.priority = 5;
  tu_put_opts(s, "q", "hi", &po);
  CHECK_OK(pack_texts(s, "q", NULL, 2, "k"));
  po.priority = -1;
  tu_put_opts(s, "q", "lo", &po);
  CHECK_OK(pack_texts(s, "q", NULL, 3, "z"));
  CHECK(packs_in(p) == 3);
  test_now_ms += 2000;
  mq_store *r = open_ro(p);
  if (!r) return;
  const char *peeked = "hi r1 p-0 p-1 k-0 k-1 z-0 z-1 z-2 lo";
  const char *scanned = "r1 p-0 p-1 hi k-0 k-1 lo z-0 z-1 z-2";
  mq_store *h[2] = {r, s};
  for (int k = 0; k < 2; k++) {
    char text[256];
    peek_texts(h[k], text, sizeof text);
    CHECK(strcmp(text, peeked) == 0);
    if (strcmp(text, peeked) != 0) fprintf(stderr, "  peek: %s\n", text);
    scan_acc a = {{0}, 0};
    int64_t corrupt = -1;
    CHECK_OK(mq_queue_scan(h[k], "q", scan_text, &a, &corrupt));
    CHECK(strcmp(a.text, scanned) == 0 && a.not_ready == 0 && corrupt == 0);
    mq_queue_stats st = tu_stats(h[k], "q");
    CHECK(st.ready == 10 && st.total == 10 && st.oldest_age_ms == 2000);
    CHECK_VERIFY_CLEAN(h[k]);
  }
  /* A packed message, peeked, reads as its row will: id, times, size. */
  mq_msg *m[16];
  size_t n = 0;
  CHECK_OK(mq_peek(r, "q", 16, m, &n));
  int64_t z0 = n == 10 ? mq_msg_id(m[6]) : 0;
  int64_t z_at = n == 10 ? mq_msg_enqueued_at(m[6]) : 0;
  for (size_t i = 0; i < n; i++) mq_msg_free(m[i]);
  CHECK(packs_in(p) == 3); /* nothing read settled them */
  for (int i = 0; i < 10; i++) {
    mq_msg *g = tu_get(s, "q");
    if (!g) break;
    if (i == 6) CHECK(tu_msg_is(g, "z-0") && mq_msg_id(g) == z0 && mq_msg_enqueued_at(g) == z_at);
    CHECK_OK(mq_ack(s, "q", mq_msg_receipt(g)));
    mq_msg_free(g);
  }
  CHECK(packs_in(p) == 0 && tu_stats(r, "q").total == 0);
  mq_store_close(r);
  mq_store_close(s);
  test_unlink_store(p);
}

/* Retention counts from the pack's commit; expired packs are not settled. */
static void retention_applies(void) {
  const char *p = test_path("pack-ret");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  mq_queue_options o;
  mq_queue_options_init(&o);
  o.retention_ms = 1000;
  CHECK_OK(mq_queue_create(s, "q", &o));
  CHECK_OK(pack_texts(s, "q", NULL, 3, "old"));
  test_now_ms += 600;
  CHECK_OK(pack_texts(s, "q", NULL, 2, "young"));
  test_now_ms += 600; /* the first pack is 1200 ms old, the second 600 */
  mq_store *r = open_ro(p);
  if (r) {
    char text[64];
    CHECK(tu_stats(r, "q").ready == 2);
    peek_texts(r, text, sizeof text);
    CHECK(strcmp(text, "young-0 young-1") == 0);
  }
  mq_store_close(r);
  mq_msg *m = tu_get(s, "q");
  CHECK(tu_msg_is(m, "young-0"));
  if (m) CHECK(mq_msg_expires_at(m) == test_now_ms - 600 + 1000);
  mq_msg_free(m);
  CHECK(packs_in(p) == 0 && tu_stats(s, "q").total == 2);
  mq_store_close(s);
  test_unlink_store(p);
}

/* A payload damaged in its pack is dead-lettered by the get that meets it,
** as a damaged row is; damaged framing makes the rest of the pack one
** corrupt message: nothing else is lost, and the queue is not stuck. */
static void damage_is_dead_lettered(void) {
  const char *p = test_path("pack-damage");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s, "dlq", 30000, 0, NULL);
  tu_create(s, "q", 30000, 5, "dlq");
  CHECK_OK(pack_texts(s, "q", NULL, 3, "a")); /* a-0 a-1 a-2 */
  CHECK_OK(pack_texts(s, "q", NULL, 3, "b")); /* b-0 b-1 b-2 */
  int64_t a = tu_sql_int(p, "SELECT min(id) FROM mq_pack");
  int64_t b = tu_sql_int(p, "SELECT max(id) FROM mq_pack");
  mq_store_close(s); /* the edits below are another program's */
  char sql[256];
  /* a-1's payload: its entry is 1 + 4 + 1 + 3 bytes, its data last. */
  snprintf(sql, sizeof sql,
           "UPDATE mq_pack SET data = substr(data, 1, 16) || x'21' || substr(data, 18)"
           " WHERE id = %lld",
           (long long)a);
  CHECK(tu_sql_exec(p, sql) == SQLITE_OK);
  snprintf(sql, sizeof sql, "UPDATE mq_pack SET data = substr(data, 1, 12) WHERE id = %lld",
           (long long)b); /* b-0 whole, b-1 cut short */
  CHECK(tu_sql_exec(p, sql) == SQLITE_OK);
  mq_store *r = open_ro(p);
  int64_t problems = 0;
  if (r) CHECK_RC(mq_store_verify(r, NULL, NULL, &problems), MQ_ECORRUPT);
  CHECK(problems == 2);
  mq_store_close(r);
  s = test_open(p, MQ_SYNC_NORMAL);
  const char *good[3] = {"a-0", "a-2", "b-0"};
  for (int i = 0; i < 3; i++) {
    mq_msg *m = tu_get(s, "q");
    CHECK(tu_msg_is(m, good[i]));
    if (m) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
    mq_msg_free(m);
  }
  CHECK(tu_get(s, "q") == NULL);
  CHECK(tu_stats(s, "dlq").total == 2); /* a-1, and the rest of pack b */
  CHECK(packs_in(p) == 0);
  mq_store_close(s);
  test_unlink_store(p);
}

/* Purge and drop reach packed messages too. */
static void purge_and_drop(void) {
  const char *p = test_path("pack-purge");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s, "q", 30000, 0, NULL);
  tu_put(s, "q", "row");
  CHECK_OK(pack_texts(s, "q", NULL, 4, "x"));
  int64_t deleted = 0;
  CHECK_OK(mq_queue_purge(s, "q", &deleted));
  CHECK(deleted == 5 && packs_in(p) == 0 && tu_stats(s, "q").total == 0);
  CHECK_OK(pack_texts(s, "q", NULL, 2, "y"));
  CHECK_OK(mq_queue_drop(s, "q"));
  CHECK(packs_in(p) == 0);
  CHECK(tu_sql_int(p, "SELECT count(*) FROM mq_msg") == 0);
  mq_store_close(s);
  test_unlink_store(p);
}

/* A get waiting on an empty queue is woken by a pack, as by a put. */
typedef struct waiter {
  mq_store *s;
  int rc;
  char text[32];
} waiter;

static void *wait_get(void *arg) {
  waiter *w = arg;
  mq_get_options go;
  mq_get_options_init(&go);
  go.wait_ms = 20000;
  mq_msg *m = NULL;
  w->rc = mq_get(w->s, "q", &go, &m);
  if (m)
    snprintf(w->text, sizeof w->text, "%.*s", (int)mq_msg_size(m), (const char *)mq_msg_data(m));
  mq_msg_free(m);
  return NULL;
}

static void wakes_a_waiting_get(void) {
  const char *p = test_path("pack-wake");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s, "q", 30000, 0, NULL);
  waiter w = {s, -1, ""};
  pthread_t t;
  CHECK(pthread_create(&t, NULL, wait_get, &w) == 0);
  tu_sleep_ms(50); /* only lets the get start waiting; not what is tested */
  CHECK_OK(pack_texts(s, "q", NULL, 1, "wake"));
  pthread_join(t, NULL);
  CHECK_RC(w.rc, MQ_OK);
  CHECK(strcmp(w.text, "wake-0") == 0);
  mq_store_close(s);
  test_unlink_store(p);
}

/* A pack is durable at its commit: a producer killed right after is
** still read whole after a reopen (FULL sync, real process). */
static void durable_at_commit(void) {
  const char *p = test_path("pack-kill");
  mq_store *s = test_open(p, MQ_SYNC_FULL);
  tu_create(s, "q", 30000, 0, NULL);
  mq_store_close(s);
  int fds[2];
  CHECK(pipe(fds) == 0);
  pid_t pid = fork();
  if (pid == 0) {
    tu_child_setup();
    close(fds[0]);
    mq_store *c = test_open(p, MQ_SYNC_FULL);
    for (int k = 0; c && k < 10; k++) {
      char tag[8];
      snprintf(tag, sizeof tag, "k%d", k);
      if (pack_texts(c, "q", NULL, 50, tag) != MQ_OK) _exit(2);
      tu_rec_write(fds[1], 1, 0, k, 0, 0); /* acknowledged */
    }
    for (;;) pause(); /* killed here, the store never closed */
  }
  close(fds[1]);
  tu_reader rd;
  tu_reader_init(&rd, fds[0]);
  int acked = 0;
  tu_rec rec;
  int64_t deadline = tu_mono_ms() + 60000;
  while (acked < 10 && !rd.eof && tu_mono_ms() < deadline) {
    tu_reader_fill(&rd, 100);
    while (tu_reader_next(&rd, &rec)) acked++;
  }
  CHECK(acked == 10);
  kill(pid, SIGKILL);
  CHECK(tu_wait(pid) == 128 + SIGKILL);
  close(fds[0]);
  s = test_open(p, MQ_SYNC_FULL);
  CHECK(tu_stats(s, "q").ready == 500);
  mq_msg *first = tu_get(s, "q");
  CHECK(tu_msg_is(first, "k0-0"));
  mq_msg_free(first);
  CHECK_VERIFY_CLEAN(s);
  mq_store_close(s);
  test_unlink_store(p);
}

/* A producer process packs while a consumer process gets and acks: every
** message is delivered once, in order (the consumer's acks in id order
** carry the producer's sequence), with settling racing the packing. */
enum { PRODUCE_PACKS = 40, PER_PACK = 50 };

static void producer(const char *p) {
  mq_store *c = test_open(p, MQ_SYNC_NORMAL);
  for (int k = 0; c && k < PRODUCE_PACKS; k++) {
    char tag[8];
    snprintf(tag, sizeof tag, "%03d", k);
    if (pack_texts(c, "q", NULL, PER_PACK, tag) != MQ_OK) _exit(2);
  }
  mq_store_close(c);
  _exit(0);
}

static void consumer(const char *p, int fd) {
  mq_store *c = test_open(p, MQ_SYNC_NORMAL);
  mq_get_options go;
  mq_get_options_init(&go);
  go.wait_ms = 200;
  for (int got = 0, idle = 0; c && got < PRODUCE_PACKS * PER_PACK && idle < 300;) {
    mq_msg *m = NULL;
    int rc = mq_get(c, "q", &go, &m);
    if (rc == MQ_EMPTY) {
      idle++;
      continue;
    }
    if (rc != MQ_OK) _exit(2);
    int k = 0, i = 0;
    if (sscanf((const char *)mq_msg_data(m), "%d-%d", &k, &i) != 2) _exit(3);
    if (mq_ack(c, "q", mq_msg_receipt(m)) != MQ_OK) _exit(4);
    tu_rec_write(fd, 1, 0, mq_msg_id(m), (int64_t)k * PER_PACK + i, 0);
    mq_msg_free(m);
    got++;
  }
  mq_store_close(c);
  _exit(0);
}

static void concurrent_processes(void) {
  const char *p = test_path("pack-procs");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s, "q", 30000, 0, NULL);
  mq_store_close(s);
  int fds[2];
  CHECK(pipe(fds) == 0);
  pid_t cons = fork();
  if (cons == 0) {
    tu_child_setup();
    close(fds[0]);
    consumer(p, fds[1]);
  }
  pid_t prod = fork();
  if (prod == 0) {
    tu_child_setup();
    close(fds[0]);
    close(fds[1]);
    producer(p);
  }
  close(fds[1]);
  tu_reader rd;
  tu_reader_init(&rd, fds[0]);
  int64_t seen = 0, last_id = 0, bad = 0;
  tu_rec rec;
  int64_t deadline = tu_mono_ms() + 120000;
  while (!rd.eof && tu_mono_ms() < deadline) {
    tu_reader_fill(&rd, 100);
    while (tu_reader_next(&rd, &rec)) {
      if (rec.seq != seen || rec.id <= last_id) bad++;
      last_id = rec.id;
      seen++;
    }
  }
  CHECK(tu_wait(prod) == 0);
  CHECK(tu_wait(cons) == 0);
  close(fds[0]);
  CHECK(seen == PRODUCE_PACKS * PER_PACK && bad == 0);
  if (bad || seen != PRODUCE_PACKS * PER_PACK)
    fprintf(stderr, "  %lld delivered, %lld out of order or twice\n", (long long)seen,
            (long long)bad);
  s = test_open(p, MQ_SYNC_NORMAL);
  CHECK(tu_stats(s, "q").total == 0 && packs_in(p) == 0);
  mq_store_close(s);
  test_unlink_store(p);
}

int main(void) {
  tu_watchdog(240);
  TEST(order_and_content);
  TEST(refused_like_a_batch);
  TEST(reads_see_packs);
  TEST(retention_applies);
  TEST(damage_is_dead_lettered);
  TEST(purge_and_drop);
  TEST(wakes_a_waiting_get);
  TEST(durable_at_commit);
  TEST(concurrent_processes);
  return test_done();
}
