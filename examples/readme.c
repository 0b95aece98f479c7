/*
** readme.c -- the C example of README.md, kept compiling and running.
**
** The code below the marker line is the README's example, byte for byte;
** the build checks that the two agree (the ctest readme_in_sync) and runs
** this program on a scratch file (the ctest example_readme), so the first
** code a newcomer copies is known to work.  It opens (creating) a store,
** creates a queue, puts one message, leases it, acks it and closes.
** Running it twice on one file is fine: the queue exists with the same
** options, and the first run's message was acked.
*/
/* ---- README example ---- */
#include <stdio.h>
#include "mq.h"

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "readme.db";
  mq_store *store = NULL;
  mq_msg *msg = NULL;
  int rc = mq_store_open(path, NULL, &store);        /* creates the file */
  if (rc == MQ_OK) rc = mq_queue_create(store, "jobs", NULL);
  if (rc == MQ_OK) rc = mq_put(store, "jobs", "hello", 5, NULL, NULL);
  if (rc == MQ_OK) rc = mq_get(store, "jobs", NULL, &msg); /* 30 s lease */
  if (rc == MQ_OK) {
    printf("got \"%.*s\" (delivery %d)\n", (int)mq_msg_size(msg),
           (const char *)mq_msg_data(msg), mq_msg_receives(msg));
    rc = mq_ack(store, "jobs", mq_msg_receipt(msg));  /* done: delete it */
    mq_msg_free(msg);
  }
  if (rc != MQ_OK)
    fprintf(stderr, "mq: %s: %s\n", mq_errstr(rc), mq_errmsg(store));
  mq_store_close(store);
  return rc == MQ_OK ? 0 : 1;
}
