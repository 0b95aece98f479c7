/*
** test_posix_names.c -- mq.h and POSIX <mqueue.h> live in one program.
**
** Our public names all start with mq_, which is also the prefix of the POSIX
** message-queue API (mq_open, mq_close, mq_send, mq_receive, mq_unlink, ...).
** A user must be able to include both headers and link with -lrt.  This
** program is that user: it compiles only if no declaration in mq.h clashes
** with <mqueue.h>, and it links -lrt after our static library, so if the
** library defined a POSIX name, the linker would bind the POSIX call to our
** definition and the round trip through the kernel queue below would fail.
** Both APIs are then used for real: a kernel message queue under a unique
** name (removed again), and a store file with one put/get/ack.
*/
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"

/* The POSIX side: send one message through a fresh kernel queue and read it
** back.  The queue is unlinked before the function returns, whatever
** happened. */
static void test_posix_queue_round_trip(void) {
  char name[64];
  struct mq_attr attr;
  char buf[128];
  unsigned prio = 0;
  mqd_t q;

  snprintf(name, sizeof name, "/mq-test-posix-%ld", (long)getpid());
  mq_unlink(name); /* a leftover from a crashed run of the same pid */
  memset(&attr, 0, sizeof attr);
  attr.mq_maxmsg = 4;
  attr.mq_msgsize = sizeof buf;
  q = mq_open(name, O_CREAT | O_EXCL | O_RDWR, 0600, &attr);
  if (q == (mqd_t)-1) {
    fprintf(stderr, "mq_open(%s): %s\n", name, strerror(errno));
    CHECK(q != (mqd_t)-1);
    return;
  }
  CHECK(mq_send(q, "posix", 5, 3) == 0);
  memset(&attr, 0, sizeof attr);
  CHECK(mq_getattr(q, &attr) == 0);
  CHECK(attr.mq_curmsgs == 1);
  ssize_t n = mq_receive(q, buf, sizeof buf, &prio);
  CHECK(n == 5);
  CHECK(n == 5 && memcmp(buf, "posix", 5) == 0);
  CHECK(prio == 3);
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(name) == 0);
  /* Unlinked means gone: opening without O_CREAT must now fail. */
  q = mq_open(name, O_RDONLY);
  CHECK(q == (mqd_t)-1 && errno == ENOENT);
  if (q != (mqd_t)-1) {
    mq_close(q);
    mq_unlink(name);
  }
}

/* Our side, in the same program: a store on a temporary file. */
static void test_store_round_trip(void) {
  const char *path = test_path("posix-names");
  mq_store *s = NULL;
  mq_msg *m = NULL;

  CHECK_OK(mq_store_open(path, NULL, &s));
  if (!s) return;
  CHECK_OK(mq_queue_create(s, "jobs", NULL));
  CHECK_OK(mq_put(s, "jobs", "ours", 4, NULL, NULL));
  CHECK_OK(mq_get(s, "jobs", NULL, &m));
  if (m) {
    CHECK(mq_msg_size(m) == 4 && memcmp(mq_msg_data(m), "ours", 4) == 0);
    CHECK_OK(mq_ack(s, "jobs", mq_msg_receipt(m)));
    mq_msg_free(m);
  }
  CHECK_RC(mq_get(s, "jobs", NULL, &m), MQ_EMPTY);
  CHECK_OK(mq_store_close(s));
  test_unlink_store(path);
}

int main(void) {
  TEST(test_posix_queue_round_trip);
  TEST(test_store_round_trip);
  return test_done();
}
