/*
** consumer.c -- the smallest real user of an installed mq, built three ways
** by tests/pkg/pkg_test.sh: with find_package(mq) (tests/pkg/CMakeLists.txt,
** against the shared and the static library), with
** `cc $(pkg-config --cflags --libs mq)`, and from the two files mq.c + mq.h
** alone.
**
** It opens a store, creates a queue, puts one message, gets it back, checks
** the payload, acks it and checks the queue is empty; then it checks that
** the library it runs with is the version of the header it was compiled
** with (mq_libversion() against MQ_VERSION: a stale libmq.so found at run
** time would differ).  It prints "ok" and exits 0 only if all of that held;
** otherwise it names the failed call on stderr and exits 1.  Only mq.h is
** included, with nothing of the source tree on the include path, so it
** proves the installed header and library are enough.
*/
#include <stdio.h>
#include <string.h>

#include "mq.h"

static int fail(mq_store *store, const char *what, int rc) {
  fprintf(stderr, "consumer: %s: %s: %s\n", what, mq_errstr(rc), mq_errmsg(store));
  mq_store_close(store);
  return 1;
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "consumer.db";
  mq_store *store = NULL;
  mq_msg *msg = NULL;
  mq_queue_stats stats;
  int rc;

  if (strcmp(mq_libversion(), MQ_VERSION) != 0) {
    fprintf(stderr, "consumer: compiled against mq.h %s, running with libmq %s\n", MQ_VERSION,
            mq_libversion());
    return 1;
  }
  if ((rc = mq_store_open(path, NULL, &store)) != MQ_OK) return fail(store, "mq_store_open", rc);
  if ((rc = mq_queue_create(store, "jobs", NULL)) != MQ_OK)
    return fail(store, "mq_queue_create", rc);
  if ((rc = mq_put(store, "jobs", "payload", 7, NULL, NULL)) != MQ_OK)
    return fail(store, "mq_put", rc);
  if ((rc = mq_get(store, "jobs", NULL, &msg)) != MQ_OK) return fail(store, "mq_get", rc);
  if (mq_msg_size(msg) != 7 || memcmp(mq_msg_data(msg), "payload", 7) != 0) {
    mq_msg_free(msg);
    return fail(store, "mq_get returned another payload", MQ_ERROR);
  }
  rc = mq_ack(store, "jobs", mq_msg_receipt(msg));
  mq_msg_free(msg);
  if (rc != MQ_OK) return fail(store, "mq_ack", rc);
  if ((rc = mq_queue_stats_get(store, "jobs", &stats)) != MQ_OK)
    return fail(store, "mq_queue_stats_get", rc);
  if (stats.total != 0) return fail(store, "the queue is not empty after the ack", MQ_ERROR);
  if ((rc = mq_store_close(store)) != MQ_OK) return fail(NULL, "mq_store_close", rc);
  printf("ok\n");
  return 0;
}
