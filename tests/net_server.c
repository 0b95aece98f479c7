/*
** net_server.c -- a small mq server process for the interop tests, driven
** by the scripts in tests/interop (not a test itself).
**
**   net_server DB [--pull Q=EP]... [--push Q=EP]... [--router EP]...
**                 [--pull-connect Q=EP]... [--push-connect Q=EP]...
**                 [--reconnect MS] [--reconnect-max MS]
**                 [--create Q]... [--plain USER:PASS] [--heartbeat MS]
**                 [--heartbeat-timeout MS] [--handshake-timeout MS]
**                 [--max-frame BYTES] [--visibility MS] [--sync full|normal|off]
**   net_server DB --drain Q      print and ack every ready message, exit
**
** Serving: queues named by --pull, --push (and their -connect forms) and
** --create are created if missing (max_payload 16 MiB); one line
** "ENDPOINT <i> <address>" per endpoint and then "READY" are printed and
** flushed, so the driving script
** knows where to connect; the server runs until SIGTERM or SIGINT, whose
** handler calls mq_server_stop (the async-signal-safe path a real program
** uses), and prints "STOPPED" after a clean close.  Library log lines go to
** stderr, which ctest shows when a test fails.
**
** Draining prints one line per message:
**   MSG <id> <receives> <payload hex or -> <name hex>=<value hex>...
** and acks it, so a script can check exactly what was stored.
*/
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mq.h"

static mq_server *ns_server;

static void ns_on_signal(int sig) {
  (void)sig;
  mq_server_stop(ns_server);
}

static void ns_log(void *ctx, int level, const char *msg) {
  (void)ctx;
  fprintf(stderr, "log[%d]: %s\n", level, msg);
}

static void ns_die(const char *what, mq_store *st, int rc) {
  fprintf(stderr, "net_server: %s: %s (%s)\n", what, mq_errstr(rc), mq_errmsg(st));
  exit(1);
}

static void ns_hex(const void *p, size_t n) {
  const unsigned char *b = p;
  if (n == 0) {
    fputc('-', stdout);
    return;
  }
  for (size_t i = 0; i < n; i++) printf("%02x", b[i]);
}

static void ns_ensure(mq_store *st, const char *q, int64_t visibility) {
  mq_queue_info info;
  if (mq_queue_info_get(st, q, &info) == MQ_OK) return;
  mq_queue_options o;
  mq_queue_options_init(&o);
  o.max_payload = (size_t)16 << 20;
  if (visibility > 0) o.visibility_ms = visibility;
  int rc = mq_queue_create(st, q, &o);
  if (rc != MQ_OK) ns_die("create", st, rc);
}

static int ns_drain(mq_store *st, const char *q) {
  for (long n = 0; n < 100000000L; n++) {
    mq_msg *m = NULL;
    int rc = mq_get(st, q, NULL, &m);
    if (rc == MQ_EMPTY) break;
    if (rc != MQ_OK) ns_die("get", st, rc);
    printf("MSG %lld %d ", (long long)mq_msg_id(m), mq_msg_receives(m));
    ns_hex(mq_msg_data(m), mq_msg_size(m));
    for (size_t i = 0; i < mq_msg_header_count(m); i++) {
      const char *hn = mq_msg_header_name(m, i), *hv = mq_msg_header_value(m, i);
      fputc(' ', stdout);
      ns_hex(hn, strlen(hn));
      fputc('=', stdout);
      ns_hex(hv, strlen(hv));
    }
    fputc('\n', stdout);
    rc = mq_ack(st, q, mq_msg_receipt(m));
    if (rc != MQ_OK) ns_die("ack", st, rc);
    mq_msg_free(m);
  }
  printf("END\n");
  return 0;
}

int main(int argc, char **argv) {
  mq_store_options so;
  mq_server_options o;
  mq_store *st = NULL;
  char user[300], *pass = NULL;
  int64_t visibility = 0;
  if (argc < 3) {
    fprintf(stderr, "usage: net_server DB [options] (see the source)\n");
    return 2;
  }
  mq_store_options_init(&so);
  mq_server_options_init(&o);
  so.log = ns_log;
  so.min_free_bytes = 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--sync") == 0)
      so.sync = strcmp(argv[i + 1], "off") == 0      ? MQ_SYNC_OFF
                : strcmp(argv[i + 1], "normal") == 0 ? MQ_SYNC_NORMAL
                                                     : MQ_SYNC_FULL;
    else if (strcmp(argv[i], "--visibility") == 0)
      visibility = atoll(argv[i + 1]);
  }
  int rc = mq_store_open(argv[1], &so, &st);
  if (rc != MQ_OK) ns_die("open", NULL, rc);
  if (strcmp(argv[2], "--drain") == 0 && argc == 4) {
    ns_drain(st, argv[3]);
    mq_store_close(st);
    return 0;
  }
  /* Options first, endpoints after the server exists. */
  for (int i = 2; i + 1 < argc; i += 2) {
    const char *k = argv[i], *v = argv[i + 1];
    if (strcmp(k, "--plain") == 0) {
      snprintf(user, sizeof user, "%s", v);
      pass = strchr(user, ':');
      if (!pass) return 2;
      *pass++ = '\0';
      o.plain_user = user;
      o.plain_password = pass;
    } else if (strcmp(k, "--heartbeat") == 0) {
      o.heartbeat_ms = atoll(v);
    } else if (strcmp(k, "--heartbeat-timeout") == 0) {
      o.heartbeat_timeout_ms = atoll(v);
    } else if (strcmp(k, "--handshake-timeout") == 0) {
      o.handshake_timeout_ms = atoll(v);
    } else if (strcmp(k, "--max-frame") == 0) {
      o.max_frame = (size_t)atoll(v);
    } else if (strcmp(k, "--reconnect") == 0) {
      o.reconnect_ms = atoll(v);
    } else if (strcmp(k, "--reconnect-max") == 0) {
      o.reconnect_max_ms = atoll(v);
    } else if (strcmp(k, "--create") == 0) {
      ns_ensure(st, v, visibility);
    }
  }
  rc = mq_server_new(st, &o, &ns_server);
  if (rc != MQ_OK) ns_die("server", st, rc);
  for (int i = 2; i + 1 < argc; i += 2) {
    const char *k = argv[i], *v = argv[i + 1];
    char q[256];
    const char *eq = strchr(v, '=');
    if (strcmp(k, "--pull") == 0 || strcmp(k, "--push") == 0 ||
        strcmp(k, "--pull-connect") == 0 || strcmp(k, "--push-connect") == 0) {
      if (!eq || (size_t)(eq - v) >= sizeof q) return 2;
      memcpy(q, v, (size_t)(eq - v));
      q[eq - v] = '\0';
      ns_ensure(st, q, visibility);
      if (strcmp(k, "--pull") == 0)
        rc = mq_server_pull(ns_server, q, eq + 1);
      else if (strcmp(k, "--push") == 0)
        rc = mq_server_push(ns_server, q, eq + 1);
      else if (strcmp(k, "--pull-connect") == 0)
        rc = mq_server_pull_connect(ns_server, q, eq + 1);
      else
        rc = mq_server_push_connect(ns_server, q, eq + 1);
      if (rc != MQ_OK) ns_die(k, st, rc);
    } else if (strcmp(k, "--router") == 0) {
      rc = mq_server_router(ns_server, v);
      if (rc != MQ_OK) ns_die(k, st, rc);
    }
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = ns_on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  char buf[128];
  for (size_t i = 0; mq_server_endpoint(ns_server, i, buf, sizeof buf) == MQ_OK; i++)
    printf("ENDPOINT %zu %s\n", i, buf);
  printf("READY\n");
  fflush(stdout);
  rc = mq_server_run(ns_server, -1);
  if (rc != MQ_OK) ns_die("run", st, rc);
  mq_server_free(ns_server);
  mq_store_close(st);
  printf("STOPPED\n");
  fflush(stdout);
  return 0;
}
