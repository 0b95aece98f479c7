/*
** test_wait.c -- long polling: a get that waits is woken by a put.
**
** A consumer that calls mq_get with wait_ms must get the message when a
** producer puts it -- through the same handle (so the waiting get must not
** hold the handle against the put), through another handle of the same
** process, or from another process with its own handle on the file.  The
** getter runs in a thread with a 20 s wait; the put comes after the getter
** has started waiting (a short real-time pause orders the two; it asserts
** nothing).  The only timing checked is that the get came back before its
** own 20 s ran out, which is what "woken" means.  Several waiters on one
** queue each get their own message, never the same one.  A wait with nothing to
** wake it ends with MQ_EMPTY; that one uses a 50 ms wait.  The child process
** is forked before this process opens any store, as mq.h requires.
*/
#include <pthread.h>

#include "testutil.h"

#define LONG_WAIT 20000

typedef struct waiter {
  mq_store *s;
  const char *queue;
  int batch;
  _Atomic int started;
  int rc;
  mq_msg *msgs[4];
  size_t count;
  int64_t elapsed_ms;
} waiter;

static void *wait_thread(void *arg) {
  waiter *w = (waiter *)arg;
  mq_get_options go;
  mq_get_options_init(&go);
  go.wait_ms = LONG_WAIT;
  atomic_store(&w->started, 1);
  int64_t t0 = tu_mono_ms();
  if (w->batch) {
    w->rc = mq_get_batch(w->s, w->queue, &go, 4, w->msgs, &w->count);
  } else {
    w->rc = mq_get(w->s, w->queue, &go, &w->msgs[0]);
    w->count = w->rc == MQ_OK;
  }
  w->elapsed_ms = tu_mono_ms() - t0;
  return NULL;
}

static void start_waiter(waiter *w, pthread_t *th) {
  CHECK(pthread_create(th, NULL, wait_thread, w) == 0);
  for (int i = 0; i < 5000 && !atomic_load(&w->started); i++) tu_sleep_ms(1);
  tu_sleep_ms(100); /* let it reach its wait; ordering only */
}

static void check_woken(waiter *w, const char *payload) {
  CHECK_RC(w->rc, MQ_OK);
  CHECK(w->count >= 1);
  if (w->rc == MQ_OK && w->count >= 1) CHECK(tu_msg_is(w->msgs[0], payload));
  CHECK(w->elapsed_ms < LONG_WAIT);
  for (size_t i = 0; i < w->count && i < 4; i++) {
    if (w->rc == MQ_OK) CHECK_OK(mq_ack(w->s, w->queue, mq_msg_receipt(w->msgs[i])));
    mq_msg_free(w->msgs[i]);
  }
}

static void test_woken_same_handle(void) {
  const char *p = test_path("waitsame");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  waiter w;
  memset(&w, 0, sizeof w);
  w.s = s;
  w.queue = "q";
  pthread_t th;
  start_waiter(&w, &th);
  tu_put(s, "q", "same handle");
  pthread_join(th, NULL);
  check_woken(&w, "same handle");
  mq_store_close(s);
  test_unlink_store(p);
}

static void test_woken_other_handle(void) {
  const char *p = test_path("waitother");
  mq_store *s1 = test_open(p, MQ_SYNC_NORMAL);
  mq_store *s2 = test_open(p, MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(s1, "q", NULL));
  CHECK_OK(mq_queue_create(s1, "other", NULL));
  waiter w;
  memset(&w, 0, sizeof w);
  w.s = s1;
  w.queue = "q";
  w.batch = 1;
  pthread_t th;
  start_waiter(&w, &th);
  /* A put to another queue does not satisfy the wait ... */
  tu_put(s2, "other", "not for q");
  tu_sleep_ms(50);
  /* ... this one does. */
  mq_entry e[2] = {{"other handle", 12, NULL}, {"second", 6, NULL}};
  CHECK_OK(mq_put_batch(s2, "q", e, 2, NULL));
  pthread_join(th, NULL);
  check_woken(&w, "other handle");
  CHECK_STATS(s2, "other", 1, 0, 0, 0, 1);
  mq_store_close(s2);
  mq_store_close(s1);
  test_unlink_store(p);
}

static void test_woken_by_other_process(void) {
  const char *p = test_path("waitproc");
  int go[2];
  CHECK(pipe(go) == 0);
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    tu_child_setup();
    close(go[1]);
    char c;
    ssize_t n;
    do {
      n = read(go[0], &c, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1) _exit(4);
    mq_store *cs = NULL;
    if (tu_open_ex(p, MQ_SYNC_NORMAL, MQ_OPEN_CREATE, test_clock, NULL, &cs) != MQ_OK)
      _exit(5);
    int rc = mq_put(cs, "q", "from a child", 12, NULL, NULL);
    mq_store_close(cs);
    _exit(rc == MQ_OK ? 0 : 6);
  }
  CHECK(pid > 0);
  close(go[0]);
  if (pid < 0) return;

  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  waiter w;
  memset(&w, 0, sizeof w);
  w.s = s;
  w.queue = "q";
  pthread_t th;
  start_waiter(&w, &th);
  CHECK(write(go[1], "g", 1) == 1);
  close(go[1]);
  pthread_join(th, NULL);
  CHECK(tu_wait(pid) == 0);
  check_woken(&w, "from a child");
  CHECK_STATS(s, "q", 0, 0, 0, 0, 0);
  mq_store_close(s);
  test_unlink_store(p);
}

/* Several consumers wait on one queue; as many puts arrive, one by one.
** Every waiter must wake with its own message: none left sleeping while a
** message sits ready, and no message handed to two of them. */
static void test_many_waiters(void) {
  const char *p = test_path("waitmany");
  mq_store *s1 = test_open(p, MQ_SYNC_NORMAL);
  mq_store *s2 = test_open(p, MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(s1, "q", NULL));
  enum { N = 4 };
  waiter w[N];
  pthread_t th[N];
  for (int i = 0; i < N; i++) {
    memset(&w[i], 0, sizeof w[i]);
    w[i].s = i % 2 ? s2 : s1; /* waiters on both handles */
    w[i].queue = "q";
    CHECK(pthread_create(&th[i], NULL, wait_thread, &w[i]) == 0);
  }
  for (int i = 0; i < N; i++)
    for (int k = 0; k < 5000 && !atomic_load(&w[i].started); k++) tu_sleep_ms(1);
  tu_sleep_ms(100); /* let them all reach their wait; ordering only */
  for (int i = 0; i < N; i++) {
    char b[16];
    snprintf(b, sizeof b, "m%d", i);
    tu_put(i % 2 ? s1 : s2, "q", b);
  }
  for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
  int64_t ids[N];
  for (int i = 0; i < N; i++) {
    CHECK_RC(w[i].rc, MQ_OK);
    CHECK(w[i].elapsed_ms < LONG_WAIT);
    ids[i] = w[i].rc == MQ_OK ? mq_msg_id(w[i].msgs[0]) : -1 - i;
    for (int j = 0; j < i; j++) CHECK(ids[i] != ids[j]);
    if (w[i].rc == MQ_OK) CHECK_OK(mq_ack(w[i].s, "q", mq_msg_receipt(w[i].msgs[0])));
    mq_msg_free(w[i].msgs[0]);
  }
  CHECK_STATS(s1, "q", 0, 0, 0, 0, 0);
  mq_store_close(s2);
  mq_store_close(s1);
  test_unlink_store(p);
}

static void test_wait_times_out_empty(void) {
  const char *p = test_path("waitempty");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  mq_put_options po;
  mq_put_options_init(&po);
  po.delay_ms = 1000; /* on the injected clock: never due during the wait */
  tu_put_opts(s, "q", "not yet", &po);
  mq_get_options go;
  mq_get_options_init(&go);
  go.wait_ms = 50;
  mq_msg *m = (mq_msg *)(void *)&test_checks;
  CHECK_RC(mq_get(s, "q", &go, &m), MQ_EMPTY);
  CHECK(m == NULL);
  mq_msg *ms[2];
  size_t n = 77;
  CHECK_RC(mq_get_batch(s, "q", &go, 2, ms, &n), MQ_EMPTY);
  CHECK(n == 0);
  mq_store_close(s);
  test_unlink_store(p);
}

int main(void) {
  TEST(test_woken_by_other_process); /* first: fork before any thread */
  TEST(test_woken_same_handle);
  TEST(test_woken_other_handle);
  TEST(test_many_waiters);
  TEST(test_wait_times_out_empty);
  return test_done();
}
