/*
** zmq_peer.c -- libzmq's own PUSH and PULL, in C, for bench_net's
** baseline: the transport's ceiling without Python in the way.
**
**   zmq_peer push ENDPOINT N SIZE  connect, send N messages of SIZE bytes,
**                                  and wait until all have left
**   zmq_peer pull N                bind a random port on 127.0.0.1, print
**                                  it, receive N messages and print the
**                                  seconds from the first to the last
**
** The same protocol as bench_net's pyzmq scripts.  Built only when libzmq
** (libzmq3-dev) is installed; bench_net falls back to pyzmq without it.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

static double peer_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Report, and close s without lingering: zmq_ctx_term would otherwise
** wait for it forever, and bench_net with it. */
static int peer_fail(void *s, const char *what) {
  fprintf(stderr, "zmq_peer: %s: %s\n", what, zmq_strerror(zmq_errno()));
  if (s) {
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(s);
  }
  return 1;
}

static int peer_push(void *ctx, const char *ep, long n, size_t size) {
  void *s = zmq_socket(ctx, ZMQ_PUSH);
  int hwm = 100000, linger = -1;
  char *p = malloc(size ? size : 1);
  if (!s || !p) {
    free(p);
    return peer_fail(s, "socket");
  }
  memset(p, 'x', size);
  zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
  zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
  int failed = zmq_connect(s, ep) != 0;
  for (long i = 0; i < n && !failed; i++) failed = zmq_send(s, p, size, 0) < 0;
  free(p);
  if (failed) return peer_fail(s, ep);
  zmq_close(s);
  return 0;
}

static int peer_pull(void *ctx, long n) {
  void *s = zmq_socket(ctx, ZMQ_PULL);
  char ep[128];
  size_t len = sizeof ep;
  if (!s || zmq_bind(s, "tcp://127.0.0.1:*") != 0) return peer_fail(s, "bind");
  if (zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, ep, &len) != 0) return peer_fail(s, "endpoint");
  const char *port = strrchr(ep, ':');
  printf("%s\n", port ? port + 1 : ep);
  fflush(stdout);
  zmq_msg_t m;
  zmq_msg_init(&m);
  double t0 = 0;
  for (long i = 0; i < n; i++) {
    if (zmq_msg_recv(&m, s, 0) < 0) {
      zmq_msg_close(&m);
      return peer_fail(s, "recv");
    }
    if (i == 0) t0 = peer_now(); /* from the first message on */
  }
  printf("%.6f\n", peer_now() - t0);
  zmq_msg_close(&m);
  zmq_close(s);
  return 0;
}

int main(int argc, char **argv) {
  void *ctx = zmq_ctx_new();
  int rc = 2;
  if (argc == 5 && strcmp(argv[1], "push") == 0)
    rc = peer_push(ctx, argv[2], atol(argv[3]), (size_t)atol(argv[4]));
  else if (argc == 3 && strcmp(argv[1], "pull") == 0)
    rc = peer_pull(ctx, atol(argv[2]));
  else
    fprintf(stderr, "usage: zmq_peer push ENDPOINT N SIZE | zmq_peer pull N\n");
  zmq_ctx_term(ctx);
  return rc;
}
