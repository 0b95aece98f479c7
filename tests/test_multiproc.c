/*
** test_multiproc.c -- several processes, one file, each with its own handle.
**
** Four producer processes put 20000 messages in all while four consumer
** processes get and ack them.  Every child reports each completed call to
** the parent through one pipe (records below PIPE_BUF, so concurrent
** writers never interleave): PUT (id, seq) after a put returned, GOT (id,
** seq) as soon as a get returned -- before the ack -- and ACK after the ack
** returned.  The injected clock is frozen, so leases never run out and no
** redelivery is legitimate: a second GOT for an id means two live leases
** on one message.  The parent then checks that every message was put once,
** delivered once, acked once, that ids are unique and payloads match their
** ids, and that the queue is empty.  Everything is bounded: children stop
** at a deadline and the parent kills them and fails if they overrun.
*/
#include "testutil.h"

#define PRODUCERS 4
#define CONSUMERS 4
#define TOTAL 20000
#define PER_PRODUCER (TOTAL / PRODUCERS)
#define DEADLINE_MS 120000

enum { R_PUT = 1, R_GOT, R_ACK, R_ERR };

typedef struct shared {
  _Atomic int64_t acked;
} shared;

static const char *g_path;
static shared *g_shared;
static int64_t g_deadline;

static mq_store *child_open(void) {
  mq_store *s = NULL;
  int rc = tu_open_ex(g_path, MQ_SYNC_NORMAL, MQ_OPEN_CREATE, test_clock, NULL, &s);
  if (rc != MQ_OK) {
    fprintf(stderr, "  child open: %s: %s\n", mq_errstr(rc), mq_errmsg(NULL));
    _exit(5);
  }
  return s;
}

static void run_producer(int who, int fd) {
  mq_store *s = child_open();
  for (int i = 0; i < PER_PRODUCER && tu_mono_ms() < g_deadline; i++) {
    int64_t seq = (int64_t)who * PER_PRODUCER + i;
    char b[48];
    int len = snprintf(b, sizeof b, "seq=%lld", (long long)seq);
    int64_t id = 0;
    int rc = mq_put(s, "q", b, (size_t)len, NULL, &id);
    if (rc == MQ_OK) {
      tu_rec_write(fd, R_PUT, who, id, seq, 0);
    } else {
      tu_rec_write(fd, R_ERR, who, 0, seq, rc);
      i--; /* retry: the deadline bounds it */
      tu_sleep_ms(1);
    }
  }
  mq_store_close(s);
}

static void run_consumer(int who, int fd) {
  mq_store *s = child_open();
  mq_get_options go;
  mq_get_options_init(&go);
  go.wait_ms = 100;
  go.visibility_ms = 3600000;
  while (atomic_load(&g_shared->acked) < TOTAL && tu_mono_ms() < g_deadline) {
    mq_msg *m = NULL;
    int rc = mq_get(s, "q", &go, &m);
    if (rc == MQ_EMPTY) continue;
    if (rc != MQ_OK) {
      tu_rec_write(fd, R_ERR, who, 0, -1, rc);
      tu_sleep_ms(1);
      continue;
    }
    long long seq = -1;
    char b[48];
    size_t n = mq_msg_size(m) < sizeof b - 1 ? mq_msg_size(m) : sizeof b - 1;
    memcpy(b, mq_msg_data(m), n);
    b[n] = 0;
    if (sscanf(b, "seq=%lld", &seq) != 1) seq = -1;
    tu_rec_write(fd, R_GOT, who, mq_msg_id(m), seq, mq_msg_receives(m));
    rc = mq_ack(s, "q", mq_msg_receipt(m));
    if (rc == MQ_OK) {
      tu_rec_write(fd, R_ACK, who, mq_msg_id(m), seq, 0);
      atomic_fetch_add(&g_shared->acked, 1);
    } else {
      tu_rec_write(fd, R_ERR, who, mq_msg_id(m), seq, rc);
    }
    mq_msg_free(m);
  }
  mq_store_close(s);
}

typedef struct tally {
  int64_t id;   /* from PUT */
  int puts;
  int gots;
  int acks;
  int64_t got_id;
} tally;

static void test_many_processes(void) {
  g_path = test_path("multiproc");
  mq_store *s = test_open(g_path, MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  CHECK_OK(mq_store_close(s));

  g_shared = mmap(NULL, sizeof *g_shared, PROT_READ | PROT_WRITE,
                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  CHECK(g_shared != MAP_FAILED);
  if (g_shared == MAP_FAILED) return;
  atomic_store(&g_shared->acked, 0);
  g_deadline = tu_mono_ms() + DEADLINE_MS;

  int fds[2];
  CHECK(pipe(fds) == 0);
  pid_t pids[PRODUCERS + CONSUMERS];
  fflush(NULL);
  for (int i = 0; i < PRODUCERS + CONSUMERS; i++) {
    pids[i] = fork();
    if (pids[i] == 0) {
      tu_child_setup();
      close(fds[0]);
      if (i < PRODUCERS) run_producer(i, fds[1]);
      else run_consumer(i - PRODUCERS, fds[1]);
      _exit(0);
    }
    CHECK(pids[i] > 0);
  }
  close(fds[1]);

  static tally t[TOTAL];
  memset(t, 0, sizeof t);
  int errors = 0, bad_seq = 0, mismatch = 0, double_lease = 0, ack_unknown = 0;
  tu_reader rd;
  tu_reader_init(&rd, fds[0]);
  int killed = 0;
  while (!rd.eof) {
    tu_reader_fill(&rd, 200);
    tu_rec r;
    while (tu_reader_next(&rd, &r)) {
      if (r.kind == R_ERR) {
        if (errors++ < 5)
          fprintf(stderr, "  child error: who %d seq %lld: %s\n", r.who, (long long)r.seq,
                  mq_errstr((int)r.extra));
        continue;
      }
      if (r.seq < 0 || r.seq >= TOTAL) {
        bad_seq++;
        continue;
      }
      tally *x = &t[r.seq];
      if (r.kind == R_PUT) {
        x->puts++;
        x->id = r.id;
      } else if (r.kind == R_GOT) {
        if (x->gots && !x->acks) double_lease++; /* frozen clock: lease live */
        if (x->gots) mismatch++;
        x->gots++;
        if (r.extra != 1) mismatch++; /* first and only delivery */
        x->got_id = r.id;
      } else if (r.kind == R_ACK) {
        if (!x->gots || x->got_id != r.id) ack_unknown++;
        x->acks++;
      }
    }
    if (!killed && tu_mono_ms() > g_deadline + 10000) {
      for (int i = 0; i < PRODUCERS + CONSUMERS; i++) kill(pids[i], SIGKILL);
      killed = 1;
      fprintf(stderr, "  children overran the deadline: killed\n");
    }
  }
  close(fds[0]);
  int bad_exit = 0;
  for (int i = 0; i < PRODUCERS + CONSUMERS; i++) bad_exit += tu_wait(pids[i]) != 0;
  CHECK(!killed);
  CHECK(bad_exit == 0);
  CHECK(errors == 0);
  CHECK(bad_seq == 0);
  CHECK(double_lease == 0);
  CHECK(mismatch == 0);
  CHECK(ack_unknown == 0);

  int not_put = 0, not_got = 0, not_acked = 0, wrong_id = 0;
  for (int i = 0; i < TOTAL; i++) {
    if (t[i].puts != 1) not_put++;
    if (t[i].gots != 1) not_got++;
    if (t[i].acks != 1) not_acked++;
    if (t[i].gots && t[i].puts && t[i].got_id != t[i].id) wrong_id++;
  }
  CHECK(not_put == 0);
  CHECK(not_got == 0);
  CHECK(not_acked == 0);
  CHECK(wrong_id == 0);
  fprintf(stderr,
          "  errors %d, double leases %d, not put once %d, not delivered once %d, "
          "not acked once %d, wrong id %d\n",
          errors, double_lease, not_put, not_got, not_acked, wrong_id);

  s = test_open(g_path, MQ_SYNC_NORMAL);
  CHECK_STATS(s, "q", 0, 0, 0, 0, 0);
  CHECK_OK(mq_store_close(s));
  CHECK(tu_sql_int(g_path, "SELECT count(*) FROM mq_msg") == 0);
  munmap(g_shared, sizeof *g_shared);
  test_unlink_store(g_path);
}

int main(void) {
  tu_watchdog(200); /* a hang must fail, not stall CI */
  TEST(test_many_processes);
  return test_done();
}
