/*
** worker.c -- a C worker draining a queue that ZeroMQ producers fill over
** the network.
**
** The pair to examples/zmq_producer.py.  Run the server, the producer and
** one or more of these workers, all on the same file:
**
**     mq jobs.db create jobs
**     mq jobs.db serve --router tcp://127.0.0.1:5555 &
**     python3 examples/zmq_producer.py tcp://127.0.0.1:5555 jobs 1000
**     ./worker jobs.db jobs            (as many as you like, in parallel)
**
** The server (a process of its own) stores what producers send; the
** workers open the same file directly -- mq is a library, several processes
** may share one queue file -- and run the ordinary consumer loop: lease a
** message with mq_get (waiting up to a second for one), do the work, ack it
** with the receipt.  A worker that dies between get and ack loses nothing:
** the lease runs out (after the queue's visibility timeout) and another
** worker gets the message, with a receive count of 2.  So the work must be
** idempotent: at-least-once means "maybe twice".
**
** A put in another process wakes a waiting mq_get within a few
** milliseconds, so the loop does not spin.  It stops on SIGINT/SIGTERM (the
** current message is finished first) or, with a third argument, after that
** many idle seconds.  Only the public API (mq.h) is used.
*/
#define _POSIX_C_SOURCE 200809L

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mq.h"

static volatile sig_atomic_t worker_stop;

static void worker_on_signal(int sig) {
  (void)sig;
  worker_stop = 1;
}

/* The work: here, print the message.  A real worker would do something
** that must happen once -- and should tolerate doing it twice. */
static int worker_handle(const mq_msg *m) {
  size_t n = mq_msg_size(m);
  const char *type = mq_msg_header(m, "content-type");
  printf("message %lld (delivery %d, %zu bytes%s%s): %.*s\n", (long long)mq_msg_id(m),
         mq_msg_receives(m), n, type ? ", " : "", type ? type : "", (int)(n > 60 ? 60 : n),
         (const char *)mq_msg_data(m));
  return 0;
}

int main(int argc, char **argv) {
  mq_store *st = NULL;
  long idle_exit = argc > 3 ? atol(argv[3]) : 0;
  long idle = 0, done = 0;
  if (argc < 3) {
    fprintf(stderr, "usage: worker FILE QUEUE [IDLE_SECONDS]\n");
    return 2;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = worker_on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);

  /* The default options: MQ_SYNC_FULL, so an ack that returned is durable. */
  int rc = mq_store_open(argv[1], NULL, &st);
  if (rc != MQ_OK) {
    fprintf(stderr, "worker: %s: %s\n", argv[1], mq_errmsg(NULL));
    return 1;
  }
  mq_get_options go;
  mq_get_options_init(&go);
  go.wait_ms = 1000; /* long poll: woken early by any put */
  while (!worker_stop) {
    mq_msg *m = NULL;
    rc = mq_get(st, argv[2], &go, &m);
    if (rc == MQ_EMPTY) {
      if (idle_exit && ++idle >= idle_exit) break;
      continue;
    }
    if (rc != MQ_OK) {
      fprintf(stderr, "worker: get: %s (%s)\n", mq_errstr(rc), mq_errmsg(st));
      break;
    }
    idle = 0;
    if (worker_handle(m) == 0) {
      /* Ack only after the work is done: a crash before this line means
      ** the message is delivered again, never lost. */
      rc = mq_ack(st, argv[2], mq_msg_receipt(m));
      if (rc == MQ_ESTALE)
        fprintf(stderr, "worker: message %lld took longer than its lease; it went to "
                        "another worker\n", (long long)mq_msg_id(m));
      else if (rc != MQ_OK)
        fprintf(stderr, "worker: ack: %s\n", mq_errmsg(st));
      else
        done++;
    } else {
      /* Give it back for someone else, a little later. */
      mq_nack(st, argv[2], mq_msg_receipt(m), 1000, "handler failed");
    }
    mq_msg_free(m);
  }
  fprintf(stderr, "worker: %ld messages done\n", done);
  mq_store_close(st);
  return 0;
}
