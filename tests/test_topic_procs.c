/*
** test_topic_procs.c -- publishers and subscribers in separate processes,
** each with its own handle on one file.
**
** Topic "orders" has three subscriptions: "billing" and "audit" take every
** message, "red" only subjects matching "orders.*.red" (one publish in
** three).  Two publisher processes publish PER_PUB messages each, mixing
** single publishes and batches; two consumer processes read each
** subscription (six in all: a consumer group of two per subscription), one
** with mq_get, the other with mq_get_batch, both waiting in the call rather
** than polling.  Everybody starts together: the publishers wait until every
** process has opened the store.
**
** Every child reports each completed call to the parent through one pipe
** (records below PIPE_BUF, so concurrent writers never interleave): PUB
** once a publish returned, with its delivery count; GOT as soon as a get
** returned, before the ack; ACK after the ack returned.  The injected clock
** is frozen, so no lease ever runs out and any second delivery is a bug.
** The parent then checks what a user of a topic relies on: each message
** reached each matching subscription exactly once and no other; inside a
** subscription the two consumers shared the messages (both got some, none
** got the same one); each consumer saw each publisher's messages in publish
** order; subjects and payloads arrived intact; and once everything was
** acked no payload is left in the file (mq_body is empty), the topic's
** stats are zero and mq_store_verify finds nothing wrong.
**
** Bounded: children stop at a deadline, the parent kills them if they
** overrun it and fails, and alarm() catches anything else.
*/
#include "testutil.h"

#define PUBLISHERS 2
#define PER_PUB 5000
#define TOTAL (PUBLISHERS * PER_PUB)
#define NSUBS 3
#define PER_SUB 2
#define CONSUMERS (NSUBS * PER_SUB)
#define PUB_BATCH 10
#define GET_BATCH 8
#define DEADLINE_MS 60000

enum { R_PUB = 1, R_GOT, R_ACK, R_ERR };
#define ERR_BAD_DATA 1000

static const char *const g_subs[NSUBS] = {"billing", "audit", "red"};
static const char *const g_filters[NSUBS] = {NULL, "", "orders.*.red"};

typedef struct shared {
  _Atomic int ready;             /* processes that have opened the store */
  _Atomic int64_t acked[NSUBS];  /* acks per subscription, over its group */
} shared;

static const char *g_path;
static shared *g_shared;
static int64_t g_deadline;

static int is_red(int64_t seq) { return seq % 3 == 0; }

/* Does subscription k take seq?  The same rule as its filter, written out. */
static int sub_takes(int k, int64_t seq) { return k != 2 || is_red(seq); }

static int64_t expected_for_sub(int k) {
  int64_t n = 0;
  for (int64_t seq = 0; seq < TOTAL; seq++) n += sub_takes(k, seq);
  return n;
}

static void make_subject(int64_t seq, char *buf, size_t cap) {
  snprintf(buf, cap, "orders.p%lld.%s", (long long)(seq / PER_PUB), is_red(seq) ? "red" : "blue");
}

static int make_payload(int64_t seq, char *buf, size_t cap) {
  return snprintf(buf, cap, "order %lld for %lld units", (long long)seq, (long long)(seq * 31 % 97));
}

/* The seq a message carries, or -1 if its payload or subject is wrong. */
static int64_t check_msg(const mq_msg *m) {
  char b[64], want[64], subj[48];
  long long seq = -1;
  size_t n = mq_msg_size(m) < sizeof b - 1 ? mq_msg_size(m) : sizeof b - 1;
  memcpy(b, mq_msg_data(m), n);
  b[n] = 0;
  if (sscanf(b, "order %lld ", &seq) != 1 || seq < 0 || seq >= TOTAL) return -1;
  int len = make_payload(seq, want, sizeof want);
  if ((size_t)len != mq_msg_size(m) || memcmp(want, mq_msg_data(m), (size_t)len) != 0) return -1;
  make_subject(seq, subj, sizeof subj);
  if (!mq_msg_subject(m) || strcmp(mq_msg_subject(m), subj) != 0) return -1;
  return seq;
}

static mq_store *child_open(void) {
  mq_store *s = NULL;
  int rc = tu_open_ex(g_path, MQ_SYNC_NORMAL, MQ_OPEN_CREATE, test_clock, NULL, &s);
  if (rc != MQ_OK) {
    fprintf(stderr, "  child open: %s: %s\n", mq_errstr(rc), mq_errmsg(NULL));
    _exit(5);
  }
  atomic_fetch_add(&g_shared->ready, 1);
  return s;
}

static void run_publisher(int who, int fd) {
  mq_store *s = child_open();
  while (atomic_load(&g_shared->ready) < PUBLISHERS + CONSUMERS && tu_mono_ms() < g_deadline)
    tu_sleep_ms(1);
  static char data[PUB_BATCH][64];
  char subj[PUB_BATCH][48];
  mq_pub_entry e[PUB_BATCH];
  int64_t ids[PUB_BATCH];
  int i = 0;
  for (int iter = 0; i < PER_PUB && iter < 10 * PER_PUB && tu_mono_ms() < g_deadline; iter++) {
    /* Every third call is a batch, the others single publishes. */
    int n = iter % 3 == 2 ? PUB_BATCH : 1;
    if (n > PER_PUB - i) n = PER_PUB - i;
    int64_t seq0 = (int64_t)who * PER_PUB + i;
    for (int k = 0; k < n; k++) {
      make_subject(seq0 + k, subj[k], sizeof subj[k]);
      e[k].subject = subj[k];
      e[k].data = data[k];
      e[k].len = (size_t)make_payload(seq0 + k, data[k], sizeof data[k]);
      e[k].opts = NULL;
    }
    int64_t delivered = -1;
    int rc = n == 1 ? mq_publish(s, "orders", e[0].subject, e[0].data, e[0].len, NULL, &ids[0],
                                 &delivered)
                    : mq_publish_batch(s, "orders", e, (size_t)n, ids, &delivered);
    if (rc != MQ_OK) {
      tu_rec_write(fd, R_ERR, who, 0, seq0, rc);
      tu_sleep_ms(1); /* retry the same seqs; the deadline bounds it */
      continue;
    }
    int64_t want = 0;
    for (int k = 0; k < n; k++) want += 2 + is_red(seq0 + k);
    for (int k = 0; k < n; k++) tu_rec_write(fd, R_PUB, who, ids[k], seq0 + k, delivered - want);
    i += n;
  }
  mq_store_close(s);
}

/* Report one received message and ack it. */
static void consume_one(mq_store *s, const char *q, int who, int fd, mq_msg *m) {
  int64_t seq = check_msg(m);
  tu_rec_write(fd, R_GOT, who, mq_msg_id(m), seq, mq_msg_receives(m));
  if (seq < 0) tu_rec_write(fd, R_ERR, who, mq_msg_id(m), seq, ERR_BAD_DATA);
  int rc = mq_ack(s, q, mq_msg_receipt(m));
  if (rc == MQ_OK) {
    tu_rec_write(fd, R_ACK, who, mq_msg_id(m), seq, 0);
    atomic_fetch_add(&g_shared->acked[who / PER_SUB], 1);
  } else {
    tu_rec_write(fd, R_ERR, who, mq_msg_id(m), seq, rc);
  }
}

static void run_consumer(int who, int fd) {
  int sub = who / PER_SUB;
  int64_t want = expected_for_sub(sub);
  char q[64];
  snprintf(q, sizeof q, "orders/%s", g_subs[sub]);
  mq_store *s = child_open();
  mq_get_options go;
  mq_get_options_init(&go);
  go.wait_ms = 100;
  go.visibility_ms = 3600000; /* and the clock is frozen: never redelivered */
  while (atomic_load(&g_shared->acked[sub]) < want && tu_mono_ms() < g_deadline) {
    mq_msg *m[GET_BATCH];
    size_t n = 0;
    int rc;
    if (who % PER_SUB == 0) {
      rc = mq_get(s, q, &go, &m[0]);
      n = rc == MQ_OK ? 1 : 0;
    } else {
      rc = mq_get_batch(s, q, &go, GET_BATCH, m, &n);
    }
    if (rc == MQ_EMPTY) continue;
    if (rc != MQ_OK) {
      tu_rec_write(fd, R_ERR, who, 0, -1, rc);
      tu_sleep_ms(1);
      continue;
    }
    for (size_t k = 0; k < n; k++) {
      consume_one(s, q, who, fd, m[k]);
      mq_msg_free(m[k]);
    }
  }
  mq_store_close(s);
}

/* What the parent learnt about one seq. */
typedef struct tally {
  int pubs;
  int64_t pub_id;
  int gots[NSUBS];
  int acks[NSUBS];
  int64_t got_id[NSUBS];
} tally;

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static void verify_problem(void *ctx, const char *problem) {
  int *n = ctx;
  if ((*n)++ < 5) fprintf(stderr, "  verify: %s\n", problem);
}

static void test_topic_processes(void) {
  g_path = test_path("topic-procs");
  mq_store *s = test_open(g_path, MQ_SYNC_NORMAL);
  CHECK_OK(mq_topic_create(s, "orders", NULL));
  for (int k = 0; k < NSUBS; k++)
    CHECK_OK(mq_subscription_create(s, "orders", g_subs[k], g_filters[k], NULL));
  CHECK_OK(mq_store_close(s));

  g_shared = mmap(NULL, sizeof *g_shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1,
                  0);
  CHECK(g_shared != MAP_FAILED);
  if (g_shared == MAP_FAILED) return;
  memset(g_shared, 0, sizeof *g_shared);
  g_deadline = tu_mono_ms() + DEADLINE_MS;

  int fds[2];
  CHECK(pipe(fds) == 0);
  enum { NPROC = PUBLISHERS + CONSUMERS };
  pid_t pids[NPROC];
  fflush(NULL);
  for (int i = 0; i < NPROC; i++) {
    pids[i] = fork();
    if (pids[i] == 0) {
      tu_child_setup();
      close(fds[0]);
      if (i < PUBLISHERS) run_publisher(i, fds[1]);
      else run_consumer(i - PUBLISHERS, fds[1]);
      _exit(0);
    }
    CHECK(pids[i] > 0);
  }
  close(fds[1]);

  static tally t[TOTAL];
  memset(t, 0, sizeof t);
  int64_t per_consumer[CONSUMERS] = {0};
  int64_t last_seen[CONSUMERS][PUBLISHERS]; /* FIFO per publisher, per consumer */
  for (int c = 0; c < CONSUMERS; c++)
    for (int p = 0; p < PUBLISHERS; p++) last_seen[c][p] = -1;
  int errors = 0, bad_data = 0, bad_delivered = 0, redelivered = 0, out_of_order = 0,
      ack_unknown = 0, killed = 0;
  tu_reader rd;
  tu_reader_init(&rd, fds[0]);
  for (int spins = 0; !rd.eof && spins < 10000000; spins++) {
    tu_reader_fill(&rd, 200);
    tu_rec r;
    while (tu_reader_next(&rd, &r)) {
      if (r.kind == R_ERR) {
        if (r.extra == ERR_BAD_DATA) bad_data++;
        else if (errors++ < 5)
          fprintf(stderr, "  child %d error at seq %lld: %s\n", r.who, (long long)r.seq,
                  mq_errstr((int)r.extra));
        continue;
      }
      if (r.seq < 0 || r.seq >= TOTAL) {
        bad_data++;
        continue;
      }
      tally *x = &t[r.seq];
      if (r.kind == R_PUB) {
        x->pubs++;
        x->pub_id = r.id;
        if (r.extra != 0) bad_delivered++; /* delivered != matching subscriptions */
        continue;
      }
      if (r.who < 0 || r.who >= CONSUMERS) {
        bad_data++;
        continue;
      }
      int sub = r.who / PER_SUB;
      if (r.kind == R_GOT) {
        x->gots[sub]++;
        x->got_id[sub] = r.id;
        per_consumer[r.who]++;
        if (r.extra != 1) redelivered++;
        int p = (int)(r.seq / PER_PUB);
        if (r.seq <= last_seen[r.who][p]) out_of_order++;
        last_seen[r.who][p] = r.seq;
      } else if (r.kind == R_ACK) {
        if (!x->gots[sub] || x->got_id[sub] != r.id) ack_unknown++;
        x->acks[sub]++;
      }
    }
    if (!killed && tu_mono_ms() > g_deadline + 10000) {
      for (int i = 0; i < NPROC; i++) kill(pids[i], SIGKILL);
      killed = 1;
      fprintf(stderr, "  children overran the deadline: killed\n");
    }
  }
  close(fds[0]);
  int bad_exit = 0;
  for (int i = 0; i < NPROC; i++) bad_exit += tu_wait(pids[i]) != 0;

  /* Exactly once in every matching subscription, never in another. */
  int not_published = 0, missing = 0, duplicated = 0, unmatched = 0, not_acked = 0, same_id = 0;
  for (int64_t seq = 0; seq < TOTAL; seq++) {
    tally *x = &t[seq];
    if (x->pubs != 1) not_published++;
    for (int k = 0; k < NSUBS; k++) {
      int want = sub_takes(k, seq);
      if (want && x->gots[k] == 0) missing++;
      if (x->gots[k] > 1) duplicated++;
      if (!want && x->gots[k]) unmatched++;
      if (x->gots[k] && x->acks[k] != 1) not_acked++;
    }
    /* One publish, one message per subscription: their ids are distinct. */
    if (x->gots[0] && x->gots[1] && x->got_id[0] == x->got_id[1]) same_id++;
  }
  /* Publish ids are unique across processes. */
  static int64_t pub_ids[TOTAL];
  for (int64_t seq = 0; seq < TOTAL; seq++) pub_ids[seq] = t[seq].pub_id;
  qsort(pub_ids, TOTAL, sizeof *pub_ids, cmp_i64);
  int dup_pub_id = pub_ids[0] <= 0;
  for (int64_t i = 1; i < TOTAL; i++) dup_pub_id += pub_ids[i] == pub_ids[i - 1];
  CHECK(dup_pub_id == 0);
  fprintf(stderr,
          "  consumers got %lld+%lld (billing), %lld+%lld (audit), %lld+%lld (red); "
          "errors %d, bad data %d, missing %d, duplicated %d, unmatched %d, redelivered %d, "
          "out of order %d, not acked %d\n",
          (long long)per_consumer[0], (long long)per_consumer[1], (long long)per_consumer[2],
          (long long)per_consumer[3], (long long)per_consumer[4], (long long)per_consumer[5],
          errors, bad_data, missing, duplicated, unmatched, redelivered, out_of_order, not_acked);
  CHECK(!killed);
  CHECK(bad_exit == 0);
  CHECK(errors == 0);
  CHECK(bad_data == 0);
  CHECK(bad_delivered == 0);
  CHECK(not_published == 0);
  CHECK(missing == 0);
  CHECK(duplicated == 0);
  CHECK(unmatched == 0);
  CHECK(redelivered == 0);
  CHECK(out_of_order == 0);
  CHECK(not_acked == 0);
  CHECK(ack_unknown == 0);
  CHECK(same_id == 0);
  /* A consumer group shares: both members of each group did some of it. */
  for (int c = 0; c < CONSUMERS; c++) CHECK(per_consumer[c] > 0);
  for (int k = 0; k < NSUBS; k++)
    CHECK(per_consumer[k * PER_SUB] + per_consumer[k * PER_SUB + 1] == expected_for_sub(k));

  /* Everything acked everywhere: no delivery and no payload is left. */
  s = test_open(g_path, MQ_SYNC_NORMAL);
  for (int k = 0; k < NSUBS; k++) {
    char q[64];
    snprintf(q, sizeof q, "orders/%s", g_subs[k]);
    CHECK_STATS(s, q, 0, 0, 0, 0, 0);
  }
  mq_topic_stats ts;
  CHECK_OK(mq_topic_stats_get(s, "orders", &ts));
  CHECK(ts.subscriptions == NSUBS && ts.messages == 0 && ts.payloads == 0 && ts.bytes == 0);
  int problems = 0;
  CHECK_OK(mq_store_verify(s, verify_problem, &problems, NULL));
  CHECK(problems == 0);
  CHECK_OK(mq_store_close(s));
  CHECK(tu_sql_int(g_path, "SELECT count(*) FROM mq_msg") == 0);
  CHECK(tu_sql_int(g_path, "SELECT count(*) FROM mq_body") == 0);
  munmap(g_shared, sizeof *g_shared);
  test_unlink_store(g_path);
}

int main(void) {
  alarm(150); /* a watchdog: a hang must fail, not stall CI */
  TEST(test_topic_processes);
  return test_done();
}
