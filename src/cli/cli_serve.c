/*
** cli_serve.c -- `mq FILE serve`: serve the file's queues to ZeroMQ peers
** over TCP (PULL ingest, PUSH egress, the MQ1 ROUTER protocol) until
** SIGINT or SIGTERM.
**
**   mq FILE serve [--pull QUEUE=tcp://HOST:PORT]... [--push QUEUE=tcp://...]...
**                 [--router tcp://HOST:PORT]... [--pull-connect QUEUE=tcp://...]...
**                 [--push-connect QUEUE=tcp://...]... [--plain USER:PASS]
**                 [--heartbeat MS] [--max-frame BYTES] [--create] [--verbose]
**
** Like every command it checks the whole command line before it touches the
** file.  It then binds every endpoint before serving any, so a port that is
** taken is reported at once and nothing is served half-way; prints where each
** endpoint listens (one line each, or one JSON object each with --json) and
** flushes, so a script can start `mq serve` and read the ports it got (PORT 0
** picks a free one); and serves until a signal.  The -connect forms connect
** out to a libzmq socket that binds, and keep reconnecting (with backoff)
** for as long as the server runs, so a peer that is down at start is fine;
** with --plain they log in as that user.  The signal handler only
** calls mq_server_stop, which is async-signal-safe; the loop then returns
** (having stored what PULL endpoints had read), a line per endpoint on
** stderr says what it did, connections are closed and the store is closed
** by main, so a stop never interrupts a commit.
**
** The password of --plain is visible to other users in the process list;
** --plain USER (without ":PASS") takes it from the MQ_SERVE_PASSWORD
** environment variable instead.  PLAIN sends it in clear text anyway: use it
** on trusted networks or inside a VPN/TLS tunnel.
*/
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

enum { SERVE_PULL, SERVE_PUSH, SERVE_ROUTER, SERVE_PULL_CONNECT, SERVE_PUSH_CONNECT,
       SERVE_PLAIN, SERVE_HEARTBEAT, SERVE_MAX_FRAME, SERVE_CREATE, SERVE_VERBOSE, SERVE_NOPTS };

/* The endpoint options, indexed by their SERVE_* value. */
static const char *const cli_serve_kind[] = {"pull", "push", "router", "pull-connect",
                                             "push-connect"};
static const char *const cli_serve_opt[] = {"--pull", "--push", "--router", "--pull-connect",
                                            "--push-connect"};

/* The one server of this process, for the signal handler. */
static mq_server *volatile cli_serve_server;

static void cli_serve_on_signal(int sig) {
  (void)sig;
  mq_server *s = cli_serve_server;
  if (s) mq_server_stop(s);
}

/* Set from --verbose: connections coming and going are logged too. */
static int cli_serve_verbose;

/* Warnings and errors always (a commit that fails, a peer refused);
** INFO lines only with --verbose. */
static void cli_serve_log(void *arg, int level, const char *msg) {
  (void)arg;
  if (level == MQ_LOG_INFO && !cli_serve_verbose) return;
  fprintf(stderr, "mq: %s%s\n",
          level == MQ_LOG_ERROR ? "error: " : level == MQ_LOG_WARN ? "warning: " : "", msg);
}

/* Open the store as cli_open does (the store clock, or the test hook's
** wall clock plus offset), plus the logger: the server reports through the
** store's log callback, which cli_open does not set. */
static int64_t cli_serve_clock(void *arg) {
  const cli_ctx *ctx = arg;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + ctx->clock_offset;
}

static int cli_serve_open(cli_ctx *ctx, int create) {
  mq_store_options o;
  mq_store_options_init(&o);
  o.sync = ctx->sync;
  if (ctx->busy_timeout_ms >= 0) o.busy_timeout_ms = ctx->busy_timeout_ms;
  o.page_size = ctx->page_size;
  if (ctx->clock_hook) {
    o.clock = cli_serve_clock;
    o.clock_ctx = ctx;
  }
  o.flags = create ? MQ_OPEN_CREATE : 0;
  o.log = cli_serve_log;
  int rc = mq_store_open(ctx->path, &o, &ctx->store);
  if (rc != MQ_OK) {
    ctx->store = NULL;
    return cli_fail(ctx, rc);
  }
  return CLI_EXIT_OK;
}

/* Split "QUEUE=ENDPOINT"; *queue is malloc'd. */
static int cli_serve_split(cli_ctx *ctx, const char *opt, const char *v, char **queue,
                           const char **endpoint) {
  const char *eq = strchr(v, '=');
  if (!eq || eq == v || !eq[1])
    return cli_usage(ctx, "%s wants QUEUE=tcp://HOST:PORT, not \"%s\"", opt, v);
  size_t n = (size_t)(eq - v);
  if (n > MQ_NAME_MAX) return cli_usage(ctx, "%s: queue name too long", opt);
  *queue = malloc(n + 1);
  if (!*queue) return cli_error(CLI_EXIT_OTHER, "out of memory");
  memcpy(*queue, v, n);
  (*queue)[n] = '\0';
  *endpoint = eq + 1;
  return CLI_EXIT_OK;
}

/* Make sure a served queue exists: --create makes missing ones with the
** defaults; without it a missing queue is an error (a typo should not
** silently create a queue nobody reads). */
static int cli_serve_queue(cli_ctx *ctx, const char *queue, int create) {
  mq_queue_info info;
  int rc = mq_queue_info_get(ctx->store, queue, &info);
  if (rc == MQ_ENOTFOUND && create) {
    rc = mq_queue_create(ctx->store, queue, NULL);
    if (rc == MQ_EEXIST) rc = MQ_OK; /* created meanwhile by someone else */
  }
  if (rc == MQ_ENOTFOUND)
    return cli_error(CLI_EXIT_NOTFOUND, "no queue \"%s\" in %s (create it, or use --create)",
                     queue, ctx->path);
  return rc == MQ_OK ? CLI_EXIT_OK : cli_fail(ctx, rc);
}

static void cli_serve_print(cli_ctx *ctx, const char *kind, const char *queue,
                            const char *where) {
  if (ctx->json) {
    cli_jobj o;
    cli_jobj_begin(&o, stdout);
    cli_jobj_str(&o, "kind", kind, strlen(kind));
    if (queue) cli_jobj_str(&o, "queue", queue, strlen(queue));
    cli_jobj_str(&o, "endpoint", where, strlen(where));
    cli_jobj_end(&o);
  } else {
    printf("%s %s%s%s\n", kind, queue ? queue : "", queue ? " " : "", where);
  }
}

/* What each endpoint did, one line each on stderr, once the server has
** stopped: in the order they were printed at start. */
static void cli_serve_summary(cli_ctx *ctx, mq_server *srv, const cli_args *a) {
  size_t i = 0;
  for (int k = SERVE_PULL; k <= SERVE_PUSH_CONNECT; k++)
    for (size_t j = 0; j < a->nmulti[k]; j++, i++) {
      char *q = NULL, where[128];
      const char *ep = a->multi[k][j];
      mq_endpoint_stats st;
      if (k != SERVE_ROUTER && cli_serve_split(ctx, cli_serve_opt[k], ep, &q, &ep)) return;
      if (mq_server_endpoint(srv, i, where, sizeof where) == MQ_OK &&
          mq_server_endpoint_stats(srv, i, &st) == MQ_OK)
        fprintf(stderr,
                "mq serve: %s %s%s%s: in %lld (%lld bytes), out %lld (%lld bytes), acks %lld, "
                "dropped %lld; connections %lld, open %lld, refused %lld, failed logins %lld\n",
                cli_serve_kind[k], q ? q : "", q ? " " : "", where, (long long)st.messages_in,
                (long long)st.bytes_in, (long long)st.messages_out, (long long)st.bytes_out,
                (long long)st.acks, (long long)st.dropped, (long long)st.connections_total,
                (long long)st.connections, (long long)st.refused, (long long)st.auth_failures);
      free(q);
    }
}

int cli_cmd_serve(cli_ctx *ctx, int argc, char **argv) {
  static const cli_optspec spec[SERVE_NOPTS] = {
      {"pull", CLI_MULTI},      {"push", CLI_MULTI},       {"router", CLI_MULTI},
      {"pull-connect", CLI_MULTI}, {"push-connect", CLI_MULTI},
      {"plain", CLI_VALUE},     {"heartbeat", CLI_VALUE},  {"max-frame", CLI_VALUE},
      {"create", CLI_FLAG},     {"verbose", CLI_FLAG}};
  cli_args a;
  mq_server_options so;
  char user[256] = "";
  const char *pass = NULL;
  mq_server *srv = NULL;
  int st = cli_args_parse(ctx, argc, argv, spec, SERVE_NOPTS, &a);
  if (st) return st;
  mq_server_options_init(&so);
  if (a.npos) st = cli_usage(ctx, "unexpected argument \"%s\"", a.pos[0]);
  if (!st && a.nmulti[SERVE_PULL] + a.nmulti[SERVE_PUSH] + a.nmulti[SERVE_ROUTER] +
                     a.nmulti[SERVE_PULL_CONNECT] + a.nmulti[SERVE_PUSH_CONNECT] ==
                 0)
    st = cli_usage(ctx, "nothing to serve: give --pull, --push, --router, --pull-connect "
                        "or --push-connect");
  if (!st && a.val[SERVE_HEARTBEAT])
    st = cli_parse_ms(ctx, "--heartbeat", a.val[SERVE_HEARTBEAT], &so.heartbeat_ms);
  /* A peer is dropped after three intervals of silence. */
  if (!st && a.val[SERVE_HEARTBEAT] && so.heartbeat_ms > 0)
    so.heartbeat_timeout_ms = so.heartbeat_ms * 3;
  if (!st && a.val[SERVE_MAX_FRAME]) {
    int64_t v = 0;
    st = cli_parse_size(ctx, "--max-frame", a.val[SERVE_MAX_FRAME], &v);
    if (!st && (v < 1 || v > ((int64_t)1 << 31)))
      st = cli_usage(ctx, "--max-frame must be 1 byte to 2G");
    if (!st) so.max_frame = so.max_message = (size_t)v;
  }
  if (!st && a.val[SERVE_PLAIN]) {
    const char *v = a.val[SERVE_PLAIN], *colon = strchr(v, ':');
    size_t ul = colon ? (size_t)(colon - v) : strlen(v);
    pass = colon ? colon + 1 : getenv("MQ_SERVE_PASSWORD");
    if (ul == 0 || ul >= 256 || !pass || strlen(pass) > 255)
      st = cli_usage(ctx, "--plain wants USER:PASS (or USER with MQ_SERVE_PASSWORD set), "
                          "each at most 255 bytes");
    if (!st) {
      memcpy(user, v, ul);
      user[ul] = '\0';
      so.plain_user = user;
      so.plain_password = pass;
    }
  }
  /* Every QUEUE=ENDPOINT is checked before the file is opened. */
  for (int k = SERVE_PULL; !st && k <= SERVE_PUSH_CONNECT; k++)
    for (size_t i = 0; !st && k != SERVE_ROUTER && i < a.nmulti[k]; i++) {
      char *q = NULL;
      const char *ep = NULL;
      st = cli_serve_split(ctx, cli_serve_opt[k], a.multi[k][i], &q, &ep);
      free(q);
    }
  cli_serve_verbose = a.val[SERVE_VERBOSE] != NULL;
  if (!st) st = cli_serve_open(ctx, a.val[SERVE_CREATE] != NULL);
  if (!st) {
    int rc = mq_server_new(ctx->store, &so, &srv);
    if (rc != MQ_OK) st = cli_fail(ctx, rc);
  }
  /* The handlers go in before anything is printed: whoever reads where we
  ** listen may signal us at once, and must find us ready to stop cleanly.
  ** A stop requested before mq_server_run makes it return at once. */
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = cli_serve_on_signal;
  sigemptyset(&sa.sa_mask);
  cli_serve_server = srv;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  /* Bind everything, then say where: endpoint i of the server is the i-th
  ** added here, in the order pull, push, router, pull-connect, push-connect
  ** (a connecting endpoint prints where it connects to). */
  size_t bound = 0;
  for (int k = SERVE_PULL; !st && k <= SERVE_PUSH_CONNECT; k++)
    for (size_t i = 0; !st && i < a.nmulti[k]; i++) {
      char *q = NULL, where[128];
      const char *ep = a.multi[k][i];
      if (k != SERVE_ROUTER) {
        st = cli_serve_split(ctx, cli_serve_opt[k], ep, &q, &ep);
        if (!st) st = cli_serve_queue(ctx, q, a.val[SERVE_CREATE] != NULL);
      }
      if (!st) {
        int rc = k == SERVE_PULL           ? mq_server_pull(srv, q, ep)
                 : k == SERVE_PUSH         ? mq_server_push(srv, q, ep)
                 : k == SERVE_ROUTER       ? mq_server_router(srv, ep)
                 : k == SERVE_PULL_CONNECT ? mq_server_pull_connect(srv, q, ep)
                                           : mq_server_push_connect(srv, q, ep);
        if (rc != MQ_OK) st = cli_fail(ctx, rc); /* the message names ep */
      }
      if (!st && mq_server_endpoint(srv, bound++, where, sizeof where) == MQ_OK)
        cli_serve_print(ctx, cli_serve_kind[k], q, where);
      free(q);
    }
  if (!st && fflush(stdout) != 0)
    st = cli_error(CLI_EXIT_OTHER, "writing to standard output failed");
  if (!st) {
    int rc = mq_server_run(srv, -1);
    if (rc != MQ_OK) st = cli_fail(ctx, rc);
    cli_serve_summary(ctx, srv, &a);
  }
  /* The handlers stay (they do nothing once cli_serve_server is NULL): a
  ** second signal may follow the first -- `timeout` sends one to the child
  ** and then one to its process group -- and with the default action
  ** restored it would kill us half-way through closing the store. */
  cli_serve_server = NULL;
  mq_server_free(srv);
  cli_args_free(&a);
  return st;
}
