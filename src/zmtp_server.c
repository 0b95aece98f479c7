/*
** zmtp_server.c -- mq_server: listeners, the poll(2) loop, PULL ingest and
** PUSH egress over the public queue API.
**
** One thread runs the loop (mq_server_run).  A turn of the loop is: poll;
** read every readable connection (bounded per connection); accept; hand
** the PULL messages read so far to the commit thread; do the ROUTER work of
** zmtp_router.c; lease for PUSH peers that can take more; fire timers;
** write; ack what the kernel took; reap dead connections.
** Besides the loop there is one commit thread, started on first use, which
** stores one PULL batch at a time with a single mq_put_batch (one
** transaction, one fsync under MQ_SYNC_FULL: group commit) and pokes the
** wake pipe when it is done; the batch is the thread's alone until then,
** and everything else it shares with the loop is under cmu.  mq_server_stop
** touches only an atomic flag and the wake pipe, so it is safe from any
** thread and from signal handlers.
**
** Backpressure is TCP's.  While a batch is being committed the loop reads
** the next one, up to PULL_BATCH_MSGS messages or PULL_BATCH_BYTES; then it
** stops reading that endpoint's connections (their unread bytes wait in the
** connection and in the kernel) until the commit is done.  While commits
** fail (disk full, file locked) the endpoint reads nothing and retries with
** a growing delay, so libzmq's PUSH blocks at its high-water mark -- we
** never answer with ERROR, which would stop a libzmq peer from ever
** reconnecting.
**
** PUSH egress leases only for connections that are ACTIVE and have written
** out everything queued so far (the socket is writable), round-robin, and
** acks a message once all its bytes were handed to the kernel.  That is
** at-most-once on the peer's side (a peer that dies with messages in its
** buffers loses them), and a crash of ours between write and ack delivers
** the message again after its lease.  Messages leased but not fully written
** when a connection dies are nacked (visible again at once).
**
** Multipart messages and PULL: the payload stored is the frames
** concatenated; when there were several frames, the header "zmtp-frames"
** lists their sizes ("5,0,12"), and PUSH egress uses it to send the message
** with the same frames again (doc/protocol.md).
**
** Connecting endpoints (mq_server_pull_connect, mq_server_push_connect)
** have no listening socket: the endpoint owns at most one connection, which
** it opens itself with a non-blocking connect watched by the same poll, and
** once the ZMTP handshake is done that connection is served exactly like
** an accepted one of the same kind.  When it ends, the next attempt is
** scheduled with exponential backoff and full jitter, on the server's
** clock so tests can step through the schedule; an ERROR from the peer
** (our PLAIN credentials refused) waits CONNECT_REFUSED_MS instead.
**
** Timers come in two kinds: protocol timers (handshake, heartbeats) run on
** the server's clock, which tests may replace (mqi_server_test_clock);
** queue polling (an empty queue is looked at again every EGRESS_POLL_MS,
** since puts of other processes do not wake poll(2)) runs on real
** monotonic time, because it is about the store, not the peer.
*/
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "zmtp_net.h"

#define PULL_BATCH_MSGS 8192
#define PULL_BATCH_BYTES ((size_t)32 << 20)
#define FRAMES_HEADER "zmtp-frames" /* a multipart message's frame sizes */
#define READ_BUDGET ((size_t)8 << 20) /* bytes read per connection per turn */
#define PUSH_PER_CONN 32              /* leased per PUSH connection per turn */
#define PUSH_LEASE_MAX 256            /* leased per PUSH endpoint per turn */
#define EGRESS_POLL_MS 20             /* look at an empty queue this often */
#define RETRY_MIN_MS 50
/* After this long without a PULL batch, the commit thread turns packs
** into message rows (pack.c), SETTLE_STEP messages per transaction, so that
** what a burst left is settled before a consumer needs it. */
#define SETTLE_IDLE_MS 200
#define SETTLE_STEP 4096
#define RETRY_MAX_MS 2000
#define ACCEPT_PER_TURN 64
#define ACCEPT_PAUSE_MS 200 /* after accept(2) failed, e.g. out of descriptors */
#define OUT_LIMIT_DEFAULT ((size_t)4 << 20)
#define MAX_FRAME_LIMIT ((size_t)1 << 31)
#define POLL_MAX_MS 1000
#define CONNECT_RESET_MS 10000         /* up this long: the backoff starts over */
#define CONNECT_REFUSED_MS (5 * 60000) /* after the peer refused our credentials */

static int64_t srv_mono(void) { return mqi_os_monotonic_ms(); }

int64_t mqi_server_now(mq_server *s) {
  return s->clock ? s->clock(s->clock_ctx) : mqi_os_monotonic_ms();
}

void mqi_server_test_clock(mq_server *s, int64_t (*fn)(void *), void *ctx) {
  if (!s) return;
  s->clock = fn;
  s->clock_ctx = ctx;
}

void mqi_server_test_out_limit(mq_server *s, size_t bytes) {
  if (s && bytes) s->out_limit = bytes;
}

/* ------------------------------------------------------------------------
** Options, new, free
*/
void mq_server_options_init(mq_server_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->heartbeat_ms = 5000;
  o->heartbeat_timeout_ms = 15000;
  o->handshake_timeout_ms = 10000;
  o->max_frame = (size_t)16 << 20;
  o->max_message = (size_t)16 << 20;
  o->max_connections = 1024;
  o->max_handshakes = 64;
  o->credit = 1000;
  o->reconnect_ms = 100;
  o->reconnect_max_ms = 30000;
  o->connect_timeout_ms = 10000;
}

static int srv_check_options(mq_store *st, const mq_server_options *o) {
  if (o->heartbeat_ms < 0 || o->heartbeat_timeout_ms < 0 || o->handshake_timeout_ms < 0)
    return mqi_err_set(st, MQ_EINVAL, "server: a negative time in mq_server_options");
  if (o->max_frame == 0 || o->max_message == 0 || o->max_frame > MAX_FRAME_LIMIT ||
      o->max_message > MAX_FRAME_LIMIT)
    return mqi_err_set(st, MQ_EINVAL, "server: max_frame and max_message must be 1..%zu",
                       MAX_FRAME_LIMIT);
  if (o->max_connections < 1 || o->max_handshakes < 1)
    return mqi_err_set(st, MQ_EINVAL,
                       "server: max_connections and max_handshakes must be at least 1");
  if (o->reconnect_ms < 1 || o->reconnect_max_ms < o->reconnect_ms || o->connect_timeout_ms < 0)
    return mqi_err_set(st, MQ_EINVAL,
                       "server: reconnect_ms must be at least 1, reconnect_max_ms at least "
                       "reconnect_ms, connect_timeout_ms not negative");
  if (o->credit == 0 || o->credit > 1000000)
    return mqi_err_set(st, MQ_EINVAL, "server: credit must be 1..1000000");
  if (!o->auth && (!o->plain_user != !o->plain_password))
    return mqi_err_set(st, MQ_EINVAL, "server: plain_user and plain_password go together");
  if (!o->auth && o->plain_user &&
      (strlen(o->plain_user) > MQI_ZMTP_PLAIN_FIELD_MAX ||
       strlen(o->plain_password) > MQI_ZMTP_PLAIN_FIELD_MAX))
    return mqi_err_set(st, MQ_EINVAL, "server: PLAIN user and password are at most %d bytes",
                       MQI_ZMTP_PLAIN_FIELD_MAX);
  return MQ_OK;
}

int mq_server_new(mq_store *store, const mq_server_options *opts, mq_server **out) {
  mq_server_options o;
  if (out) *out = NULL;
  int rc = mqi_store_check(store, 0);
  if (rc != MQ_OK) return rc;
  if (!out) return mqi_err_set(store, MQ_EINVAL, "mq_server_new: out is NULL");
  mq_server_options_init(&o);
  if (opts) {
    if (opts->size < sizeof(size_t) || opts->size > sizeof o)
      return mqi_err_set(store, MQ_EINVAL,
                         "mq_server_options.size is %zu: call mq_server_options_init first",
                         opts->size);
    memcpy(&o, opts, opts->size);
    o.size = sizeof o;
  }
  if ((rc = srv_check_options(store, &o)) != MQ_OK) return rc;
  /* libzmq's rule: a heartbeat timeout left at 0 means the interval. */
  if (o.heartbeat_timeout_ms == 0) o.heartbeat_timeout_ms = o.heartbeat_ms;
  mq_server *s = calloc(1, sizeof *s);
  if (!s) return mqi_err_set(store, MQ_ENOMEM, "server: out of memory");
  s->store = store;
  s->opt = o;
  s->wake[0] = s->wake[1] = -1;
  s->out_limit = OUT_LIMIT_DEFAULT;
  atomic_init(&s->stop, 0);
  if (pthread_mutex_init(&s->cmu, NULL) != 0) {
    free(s);
    return mqi_err_set(store, MQ_ERROR, "server: cannot create a mutex");
  }
  pthread_condattr_t ca;
  int cerr = pthread_condattr_init(&ca);
  /* The idle wait of the commit thread is a duration: not moved by the
  ** wall clock. */
  if (cerr == 0) cerr = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  if (cerr == 0) cerr = pthread_cond_init(&s->ccv, &ca);
  pthread_condattr_destroy(&ca);
  if (cerr != 0) {
    pthread_mutex_destroy(&s->cmu);
    free(s);
    return mqi_err_set(store, MQ_ERROR, "server: cannot create a condition variable");
  }
  s->csync = 1;
  s->rng = mqi_os_seed() | 1;
  /* With a callback the pair is not used to check peers, but connecting
  ** endpoints still log in with it. */
  if (o.plain_user && o.plain_password) {
    s->plain_user = strdup(o.plain_user);
    s->plain_password = strdup(o.plain_password);
    s->plain_user_len = strlen(o.plain_user);
    s->plain_password_len = strlen(o.plain_password);
    if (!s->plain_user || !s->plain_password) {
      mq_server_free(s);
      return mqi_err_set(store, MQ_ENOMEM, "server: out of memory");
    }
  }
  /* The copies above are ours; the caller's strings need not outlive us. */
  s->opt.plain_user = s->plain_user;
  s->opt.plain_password = s->plain_password;
  if (mqi_net_pipe(s->wake) != MQ_OK) {
    int e = errno;
    mq_server_free(s);
    return mqi_err_set(store, MQ_ENET, "server: pipe: %s", strerror(e));
  }
  if ((rc = mqi_router_new(s)) != MQ_OK) {
    mq_server_free(s);
    return mqi_err_set(store, rc, "server: out of memory");
  }
  *out = s;
  return MQ_OK;
}

static void srv_wipe_free(char *p) {
  if (!p) return;
  volatile char *v = p;
  while (*v) *v++ = 0;
  free(p);
}

/* ------------------------------------------------------------------------
** Endpoints
*/
static int srv_listen(mq_server *s, int kind, const char *queue, const char *endpoint,
                      int connect) {
  struct sockaddr_storage ss;
  socklen_t len = 0;
  char err[256];
  int fd = -1, topic = 0;
  if (!s) return MQ_EINVAL;
  if (s->running)
    return mqi_err_set(s->store, MQ_EMISUSE, "server: endpoints cannot be added while it runs");
  if (kind != MQI_EP_ROUTER) {
    mq_queue_info info;
    int rc = mq_queue_info_get(s->store, queue, &info);
    if (rc != MQ_OK) return rc;
    if (kind == MQI_EP_PUSH && info.kind == MQ_KIND_TOPIC)
      return mqi_err_set(s->store, MQ_EINVAL,
                         "server: \"%s\" is a topic: serve one of its subscriptions "
                         "(\"topic/sub\") with PUSH",
                         queue);
    if (kind == MQI_EP_PULL && info.kind == MQ_KIND_SUBSCRIPTION)
      return mqi_err_set(s->store, MQ_EINVAL,
                         "server: \"%s\" is a subscription: PULL into its topic instead", queue);
    topic = info.kind == MQ_KIND_TOPIC;
  }
  if (mqi_net_parse(endpoint, &ss, &len, err, sizeof err) != MQ_OK)
    return mqi_err_set(s->store, MQ_EINVAL, "server: %s", err);
  if (connect && (strncmp(endpoint, "tcp://*:", 8) == 0 ||
                  (ss.ss_family == AF_INET && ((struct sockaddr_in *)&ss)->sin_port == 0) ||
                  (ss.ss_family == AF_INET6 && ((struct sockaddr_in6 *)&ss)->sin6_port == 0)))
    return mqi_err_set(s->store, MQ_EINVAL,
                       "server: cannot connect to \"%s\": name a host and a port", endpoint);
  if (s->neps == s->epcap) {
    size_t cap = s->epcap ? s->epcap * 2 : 4;
    mqi_srv_ep *p = realloc(s->eps, cap * sizeof *p);
    if (!p) return mqi_err_set(s->store, MQ_ENOMEM, "server: out of memory");
    s->eps = p;
    s->epcap = cap;
  }
  if (!connect && mqi_net_listen(&ss, len, &fd, err, sizeof err) != MQ_OK)
    return mqi_err_set(s->store, MQ_ENET, "server: %s: %s", endpoint, err);
  mqi_srv_ep *ep = &s->eps[s->neps];
  memset(ep, 0, sizeof *ep);
  ep->kind = kind;
  ep->fd = fd;
  ep->cfd = -1;
  ep->topic = topic;
  if (queue) snprintf(ep->queue, sizeof ep->queue, "%s", queue);
  if (connect) {
    ep->connect = 1;
    ep->addr = ss;
    ep->addrlen = len;
    snprintf(ep->name, sizeof ep->name, "%s", endpoint);
    s->neps++;
    mqi_log(s->store, MQ_LOG_INFO, "server: %s \"%s\" connecting to %s",
            kind == MQI_EP_PULL ? "PULL into" : "PUSH from", queue, ep->name);
    return MQ_OK;
  }
  if (mqi_net_local_name(fd, ep->name, sizeof ep->name) != MQ_OK)
    snprintf(ep->name, sizeof ep->name, "%s", endpoint);
  s->neps++;
  if (kind == MQI_EP_ROUTER)
    mqi_log(s->store, MQ_LOG_INFO, "server: ROUTER listening on %s", ep->name);
  else
    mqi_log(s->store, MQ_LOG_INFO, "server: %s \"%s\" listening on %s",
            kind == MQI_EP_PULL ? "PULL into" : "PUSH from", queue, ep->name);
  return MQ_OK;
}

int mq_server_pull(mq_server *s, const char *queue, const char *endpoint) {
  if (s && !queue) return mqi_err_set(s->store, MQ_EINVAL, "mq_server_pull: queue is NULL");
  return srv_listen(s, MQI_EP_PULL, queue, endpoint, 0);
}

int mq_server_push(mq_server *s, const char *queue, const char *endpoint) {
  if (s && !queue) return mqi_err_set(s->store, MQ_EINVAL, "mq_server_push: queue is NULL");
  return srv_listen(s, MQI_EP_PUSH, queue, endpoint, 0);
}

int mq_server_router(mq_server *s, const char *endpoint) {
  return srv_listen(s, MQI_EP_ROUTER, NULL, endpoint, 0);
}

int mq_server_pull_connect(mq_server *s, const char *queue, const char *endpoint) {
  if (s && (!queue || !endpoint))
    return mqi_err_set(s->store, MQ_EINVAL, "mq_server_pull_connect: queue or endpoint is NULL");
  return srv_listen(s, MQI_EP_PULL, queue, endpoint, 1);
}

int mq_server_push_connect(mq_server *s, const char *queue, const char *endpoint) {
  if (s && (!queue || !endpoint))
    return mqi_err_set(s->store, MQ_EINVAL, "mq_server_push_connect: queue or endpoint is NULL");
  return srv_listen(s, MQI_EP_PUSH, queue, endpoint, 1);
}

int mq_server_endpoint(mq_server *s, size_t i, char *buf, size_t cap) {
  if (buf && cap) buf[0] = '\0';
  if (!s || !buf) return MQ_EINVAL;
  if (i >= s->neps) return MQ_ENOTFOUND;
  size_t n = strlen(s->eps[i].name);
  if (n + 1 > cap) return MQ_EINVAL;
  memcpy(buf, s->eps[i].name, n + 1);
  return MQ_OK;
}

int mq_server_endpoint_stats(mq_server *s, size_t i, mq_endpoint_stats *out) {
  if (out) memset(out, 0, sizeof *out);
  if (!s) return MQ_EINVAL;
  if (!out) return mqi_err_set(s->store, MQ_EINVAL, "mq_server_endpoint_stats: out is NULL");
  if (i >= s->neps)
    return mqi_err_set(s->store, MQ_ENOTFOUND, "mq_server_endpoint_stats: no endpoint %zu (%zu)", i,
                       s->neps);
  mqi_srv_counts *c = &s->eps[i].count;
  out->messages_in = atomic_load_explicit(&c->in, memory_order_relaxed);
  out->bytes_in = atomic_load_explicit(&c->bytes_in, memory_order_relaxed);
  out->dropped = atomic_load_explicit(&c->dropped, memory_order_relaxed);
  out->messages_out = atomic_load_explicit(&c->out, memory_order_relaxed);
  out->bytes_out = atomic_load_explicit(&c->bytes_out, memory_order_relaxed);
  out->acks = atomic_load_explicit(&c->acks, memory_order_relaxed);
  out->connections = atomic_load_explicit(&c->conns, memory_order_relaxed);
  out->connections_total = atomic_load_explicit(&c->conns_total, memory_order_relaxed);
  out->refused = atomic_load_explicit(&c->refused, memory_order_relaxed);
  out->auth_failures = atomic_load_explicit(&c->auth_failed, memory_order_relaxed);
  return MQ_OK;
}

/* ------------------------------------------------------------------------
** Connections
*/

/* PLAIN credentials: the user's callback, or the one pair, compared in
** time that does not depend on where the bytes differ. */
static int srv_auth_check(mq_server *s, const uint8_t *user, size_t ulen, const uint8_t *pass,
                          size_t plen, const char *peer) {
  if (s->opt.auth) {
    char u[MQI_ZMTP_PLAIN_FIELD_MAX + 1], p[MQI_ZMTP_PLAIN_FIELD_MAX + 1];
    /* A NUL inside would make the C strings say something else. */
    if (memchr(user, 0, ulen) || memchr(pass, 0, plen)) return 0;
    memcpy(u, user, ulen);
    u[ulen] = '\0';
    memcpy(p, pass, plen);
    p[plen] = '\0';
    int ok = s->opt.auth(s->opt.auth_ctx, u, p, peer) == 1;
    volatile char *v = p;
    for (size_t i = 0; i < sizeof p; i++) v[i] = 0;
    return ok;
  }
  if (!s->plain_user) return 0;
  unsigned diff = (ulen != s->plain_user_len) | (plen != s->plain_password_len);
  for (size_t i = 0; i < s->plain_user_len; i++)
    diff |= (unsigned)(i < ulen ? user[i] : 0) ^ (unsigned char)s->plain_user[i];
  for (size_t i = 0; i < s->plain_password_len; i++)
    diff |= (unsigned)(i < plen ? pass[i] : 0) ^ (unsigned char)s->plain_password[i];
  return diff == 0;
}

/* The connection's credential check (ctx is its mqi_srv_conn). */
static int srv_auth(void *ctx, const uint8_t *user, size_t ulen, const uint8_t *pass, size_t plen,
                    const char *peer) {
  mqi_srv_conn *sc = ctx;
  int ok = srv_auth_check(sc->srv, user, ulen, pass, plen, peer);
  if (!ok) MQI_SRV_COUNT(sc->srv->eps[sc->ep].count.auth_failed, 1);
  return ok;
}

static void srv_config(mq_server *s, int kind, mqi_zconn_config *c) {
  memset(c, 0, sizeof *c);
  c->socket_type = kind == MQI_EP_PULL   ? MQI_ZMTP_SOCKET_PULL
                   : kind == MQI_EP_PUSH ? MQI_ZMTP_SOCKET_PUSH
                                         : MQI_ZMTP_SOCKET_ROUTER;
  c->mechanism = (s->opt.auth || s->plain_user) ? MQI_ZMTP_MECH_PLAIN : MQI_ZMTP_MECH_NULL;
  c->auth = srv_auth;
  c->heartbeat_ms = s->opt.heartbeat_ms;
  c->heartbeat_timeout_ms = s->opt.heartbeat_timeout_ms;
  c->handshake_timeout_ms = s->opt.handshake_timeout_ms;
  mqi_zmtp_limits_init(&c->limits);
  c->limits.max_frame = s->opt.max_frame;
  c->limits.max_message = s->opt.max_message;
  c->out_limit = s->out_limit;
}

static size_t srv_handshaking(const mq_server *s) {
  size_t n = 0;
  for (size_t i = 0; i < s->nconns; i++)
    if (mqi_zconn_state(s->conns[i]->z) < MQI_ZC_ACTIVE) n++;
  return n;
}

/* Make a connection of endpoint e out of socket fd (accepted, or connected
** by us); NULL, with fd closed, when out of memory. */
static mqi_srv_conn *srv_conn_add(mq_server *s, size_t e, int fd, const char *peer, int64_t now) {
  mqi_srv_ep *ep = &s->eps[e];
  mqi_zconn_config cfg;
  srv_config(s, ep->kind, &cfg);
  if (ep->connect) {
    cfg.client = 1;
    cfg.mechanism = s->plain_user ? MQI_ZMTP_MECH_PLAIN : MQI_ZMTP_MECH_NULL;
    cfg.plain_user = s->plain_user;
    cfg.plain_password = s->plain_password;
  }
  mqi_srv_conn *sc = calloc(1, sizeof *sc);
  mqi_zconn *z = NULL;
  if (sc) {
    sc->srv = s;
    sc->ep = e;
    cfg.auth_ctx = sc; /* so that a refusal counts against its endpoint */
  }
  if (s->nconns == s->conncap) {
    size_t cap = s->conncap ? s->conncap * 2 : 16;
    mqi_srv_conn **p = realloc(s->conns, cap * sizeof *p);
    if (p) {
      s->conns = p;
      s->conncap = cap;
    }
  }
  if (!sc || s->nconns == s->conncap || mqi_zconn_new(fd, peer, &cfg, now, &z) != MQ_OK) {
    mqi_log(s->store, MQ_LOG_WARN, "server: %s: out of memory for %s", ep->name, peer);
    free(sc);
    close(fd);
    return NULL;
  }
  sc->z = z;
  sc->serial = ++s->serial;
  s->conns[s->nconns++] = sc;
  MQI_SRV_COUNT(ep->count.conns, 1);
  MQI_SRV_COUNT(ep->count.conns_total, 1);
  return sc;
}

static void srv_accept(mq_server *s, size_t e, int64_t now) {
  char peer[MQI_NET_NAME_MAX];
  mqi_srv_ep *ep = &s->eps[e];
  for (int k = 0; k < ACCEPT_PER_TURN; k++) {
    int fd = mqi_net_accept(ep->fd, peer, sizeof peer);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      /* Out of descriptors (or memory) the pending connection stays in the
      ** backlog and the socket stays readable: polling it again at once
      ** would spin.  Look again later, and say so once, not every time. */
      if (!ep->accept_after)
        mqi_log(s->store, MQ_LOG_WARN, "server: accept on %s: %s; trying again every %d ms",
                ep->name, strerror(errno), ACCEPT_PAUSE_MS);
      ep->accept_after = now + ACCEPT_PAUSE_MS;
      return;
    }
    if (ep->accept_after)
      mqi_log(s->store, MQ_LOG_INFO, "server: %s: accepting connections again", ep->name);
    ep->accept_after = 0;
    /* Over a cap: close at once.  A libzmq peer retries after its
    ** reconnect interval, which is what we want under load. */
    if (s->nconns >= (size_t)s->opt.max_connections ||
        srv_handshaking(s) >= (size_t)s->opt.max_handshakes) {
      mqi_log(s->store, MQ_LOG_WARN, "server: %s: refused %s: too many %s", ep->name, peer,
              s->nconns >= (size_t)s->opt.max_connections ? "connections"
                                                          : "unauthenticated connections");
      MQI_SRV_COUNT(ep->count.refused, 1);
      close(fd);
      continue;
    }
    mqi_srv_conn *sc = srv_conn_add(s, e, fd, peer, now);
    if (!sc) return;
    mqi_log(s->store, MQ_LOG_INFO, "server: %s: connection #%" PRIu64 " from %s", ep->name,
            sc->serial, peer);
  }
}

int mqi_server_send(mq_server *s, mqi_srv_conn *sc, const mqi_zpart *parts, size_t n) {
  int rc = mqi_zconn_send(sc->z, parts, n);
  if (rc == MQI_ZMTP_ESPACE || rc == MQI_ZMTP_ENOMEM) {
    mqi_log(s->store, MQ_LOG_WARN, "server: connection #%" PRIu64 " (%s): %s", sc->serial,
            mqi_zconn_peer(sc->z),
            rc == MQI_ZMTP_ESPACE ? "the peer does not read its replies" : "out of memory");
    mqi_zconn_close(sc->z, rc == MQI_ZMTP_ESPACE ? "output limit reached" : "out of memory");
  }
  return rc;
}

/* ------------------------------------------------------------------------
** Connecting endpoints: one connection each, made again after every loss.
** The schedule lives on the server's clock so tests can step through it.
*/
static uint64_t srv_rand(mq_server *s) {
  uint64_t x = s->rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  s->rng = x;
  return x;
}

/* The attempt after a failure: full jitter, a uniform delay in [0, cap]
** with cap = min(reconnect_max_ms, reconnect_ms * 2^failures), so that
** many nodes cut off by one outage do not all come back in step. */
static void srv_connect_later(mq_server *s, mqi_srv_ep *ep, int64_t now, const char *why) {
  int64_t cap = s->opt.reconnect_ms;
  for (int i = 0; i < ep->failures && cap < s->opt.reconnect_max_ms; i++) cap *= 2;
  if (cap > s->opt.reconnect_max_ms) cap = s->opt.reconnect_max_ms;
  int64_t delay = (int64_t)(srv_rand(s) % (uint64_t)(cap + 1));
  mqi_log(s->store, ep->failures == 0 ? MQ_LOG_WARN : MQ_LOG_INFO,
          "server: %s: %s; connecting again in %" PRId64 " ms", ep->name, why, delay);
  if (ep->failures < 62) ep->failures++;
  ep->next_try = now + delay;
}

static void srv_connect_done(mq_server *s, size_t e, int64_t now) {
  mqi_srv_ep *ep = &s->eps[e];
  int err = mqi_net_connect_result(ep->cfd);
  if (err != 0) {
    close(ep->cfd);
    ep->cfd = -1;
    srv_connect_later(s, ep, now, strerror(err));
    return;
  }
  int fd = ep->cfd;
  ep->cfd = -1;
  /* The greeting goes out at once; the ZMTP handshake timeout takes over. */
  mqi_srv_conn *sc = srv_conn_add(s, e, fd, ep->name + 6, now);
  if (!sc) {
    srv_connect_later(s, ep, now, "out of memory");
    return;
  }
  ep->live = 1;
  ep->up_since = 0;
  mqi_log(s->store, MQ_LOG_INFO, "server: %s: connection #%" PRIu64 " connected", ep->name,
          sc->serial);
}

static void srv_connect_start(mq_server *s, size_t e, int64_t now) {
  mqi_srv_ep *ep = &s->eps[e];
  int fd = -1;
  int r = mqi_net_connect(&ep->addr, ep->addrlen, &fd);
  if (r < 0) {
    srv_connect_later(s, ep, now, strerror(errno));
    return;
  }
  ep->cfd = fd;
  ep->connect_deadline =
      s->opt.connect_timeout_ms > 0 ? now + s->opt.connect_timeout_ms : INT64_MAX;
  if (r == 0) srv_connect_done(s, e, now);
}

/* Start due attempts and fail those past their timeout. */
static void srv_connect_work(mq_server *s, int64_t now) {
  for (size_t e = 0; e < s->neps; e++) {
    mqi_srv_ep *ep = &s->eps[e];
    if (!ep->connect || ep->live) continue;
    if (ep->cfd >= 0 && now >= ep->connect_deadline) {
      close(ep->cfd);
      ep->cfd = -1;
      srv_connect_later(s, ep, now, "connect timed out");
    }
    if (ep->cfd < 0 && now >= ep->next_try) srv_connect_start(s, e, now);
  }
}

/* A connection of a connecting endpoint ended: schedule the next one. */
static void srv_connect_lost(mq_server *s, mqi_srv_ep *ep, mqi_srv_conn *sc) {
  int64_t now = mqi_server_now(s);
  ep->live = 0;
  if (s->freeing) return;
  if (ep->up_since && now - ep->up_since >= CONNECT_RESET_MS) ep->failures = 0;
  ep->up_since = 0;
  if (mqi_zconn_peer_error(sc->z)) {
    /* An ERROR means the peer refused us (credentials): trying again at
    ** once would only be refused again, and would hammer its ZAP handler. */
    mqi_log(s->store, MQ_LOG_ERROR,
            "server: %s: the peer refused the connection (%s); connecting again in %d s",
            ep->name, mqi_zconn_reason(sc->z), CONNECT_REFUSED_MS / 1000);
    ep->next_try = now + CONNECT_REFUSED_MS;
    return;
  }
  srv_connect_later(s, ep, now, mqi_zconn_reason(sc->z)[0] ? mqi_zconn_reason(sc->z) : "closed");
}

/* ------------------------------------------------------------------------
** PULL ingest
*/
static int srv_batch_full(const mqi_srv_ep *ep) {
  return ep->batch.n >= PULL_BATCH_MSGS || ep->batch.bytes >= PULL_BATCH_BYTES;
}

/* Whether the endpoint reads nothing more for now: its batch is full, or
** commits fail (the batch waits for the retry). */
static int srv_pull_full(const mqi_srv_ep *ep) { return ep->failing || srv_batch_full(ep); }

/* The connection's message handler on a PULL endpoint: add the message to
** the endpoint's batch; pause the connection when the batch is full. */
static int srv_pull_msg(void *ctx, mqi_zconn *z, mqi_zmtp_frame *parts, size_t n) {
  mqi_srv_conn *sc = ctx;
  mqi_srv_ep *ep = &sc->srv->eps[sc->ep];
  if (mqi_batch_add(&ep->batch, &sc->srv->pool, parts, n) != MQ_OK) {
    mqi_zconn_close(z, "out of memory for a message");
    return 1;
  }
  return srv_batch_full(ep);
}

/* Options with the "zmtp-frames" header of a multipart message in *hd. */
static void srv_item_opts(const mqi_srv_item *it, mq_put_options *po, mq_header *hd) {
  mq_put_options_init(po);
  if (!it->frames) return;
  hd->name = FRAMES_HEADER;
  hd->value = it->frames;
  po->headers = hd;
  po->n_headers = 1;
}

/* A queue's batch as packs (pack.c), through the array the server keeps
** for it (a fresh one per batch cost page faults). */
static int srv_store_packs(mq_server *s, const char *queue, const mqi_srv_item *items, size_t n) {
  mq_store *st = s->store;
  if (n > s->picap) {
    mqi_put_item *p = realloc(s->pi, n * sizeof *p);
    if (!p) return mqi_err_set(st, MQ_ENOMEM, "out of memory for a batch of %zu", n);
    s->pi = p;
    s->picap = n;
  }
  mqi_put_item *pi = s->pi;
  int rc = MQ_OK;
  for (size_t i = 0; i < n; i++) {
    pi[i] = (mqi_put_item){.data = items[i].data, .len = items[i].len, .crc = items[i].crc};
    mq_header hd = {.name = FRAMES_HEADER, .value = items[i].frames};
    if (rc == MQ_OK && hd.value &&
        mqi_headers_encode(&hd, 1, &pi[i].headers, &pi[i].headers_len) != MQ_OK)
      rc = mqi_err_set(st, MQ_ENOMEM, "out of memory for a batch of %zu", n);
  }
  if (rc == MQ_OK) rc = mqi_pack_put(st, queue, pi, n);
  for (size_t i = 0; i < n; i++) free(pi[i].headers);
  return rc;
}

/* A topic's batch: one publish of n entries. */
static int srv_publish_items(mq_store *st, const char *topic, const mqi_srv_item *items,
                             size_t n) {
  mq_put_options *po = malloc(n * sizeof *po);
  mq_header *hd = malloc(n * sizeof *hd);
  mq_pub_entry *pe = malloc(n * sizeof *pe);
  int rc;
  if (!po || !hd || !pe) {
    rc = mqi_err_set(st, MQ_ENOMEM, "out of memory for a batch of %zu", n);
  } else {
    for (size_t i = 0; i < n; i++) {
      srv_item_opts(&items[i], &po[i], &hd[i]);
      pe[i].subject = NULL;
      pe[i].data = items[i].data;
      pe[i].len = items[i].len;
      pe[i].opts = &po[i];
    }
    rc = mq_publish_batch(st, topic, pe, n, NULL, NULL);
  }
  free(po);
  free(hd);
  free(pe);
  return rc;
}

/* Store n messages in queue (published, for a topic) with one batch, one
** commit; when one entry spoils the batch (too large for the queue), one
** put each, dropping the refused ones with a warning.  *done gets how many
** of the first items are settled (stored or dropped): n, unless a put one
** by one failed for a reason that may pass (lock, I/O, disk full), whose
** code is returned: the rest must be tried again, not dropped.  Runs on
** the commit thread; the error text is copied into err because mq_errmsg
** is per thread. */
static int srv_store_items(mq_server *s, const char *queue, int topic, const mqi_srv_item *items,
                           size_t n, size_t *done, size_t *dropped, size_t *dropped_bytes,
                           char *err, size_t errlen) {
  mq_store *st = s->store;
  err[0] = '\0';
  *done = *dropped = *dropped_bytes = 0;
  int rc = topic ? srv_publish_items(st, queue, items, n) : srv_store_packs(s, queue, items, n);
  if (rc == MQ_OK) *done = n;
  if (rc == MQ_ETOOBIG || rc == MQ_EINVAL) {
    rc = MQ_OK;
    for (; *done < n; (*done)++) {
      const mqi_srv_item *it = &items[*done];
      mq_put_options po;
      mq_header hd;
      srv_item_opts(it, &po, &hd);
      int r = topic ? mq_publish(st, queue, NULL, it->data, it->len, &po, NULL, NULL)
                    : mq_put(st, queue, it->data, it->len, &po, NULL);
      if (r == MQ_OK) continue;
      if (r != MQ_ETOOBIG && r != MQ_EINVAL) {
        rc = r;
        break;
      }
      mqi_log(st, MQ_LOG_WARN, "server: PULL into \"%s\": dropped a message of %zu bytes: %s",
              queue, it->len, mq_errmsg(st));
      (*dropped)++;
      *dropped_bytes += it->len;
    }
  }
  if (rc != MQ_OK) mqi_err_text(err, errlen, mq_errmsg(st));
  return rc;
}

/* The commit thread: takes one batch at a time from the loop, stores it,
** and pokes the wake pipe when done.  The loop meanwhile reads the next
** batch, so network and disk work overlap; it stops reading when that
** batch is full while the commit is still running (backpressure). */
/* The commit thread's wait for the next batch, under cmu: 1 when one is
** queued, 0 to quit, -1 when SETTLE_IDLE_MS passed without one while
** packs may be waiting to be settled. */
static int srv_committer_wait(mq_server *s, int packs) {
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += SETTLE_IDLE_MS / 1000;
  until.tv_nsec += (long)(SETTLE_IDLE_MS % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  while (!s->cquit && s->cjob != 1) {
    if (!packs)
      pthread_cond_wait(&s->ccv, &s->cmu);
    else if (pthread_cond_timedwait(&s->ccv, &s->cmu, &until) == ETIMEDOUT)
      return s->cquit || s->cjob == 1 ? s->cjob == 1 : -1;
  }
  return s->cjob == 1;
}

static void *srv_committer_main(void *arg) {
  mq_server *s = arg;
  mqi_os_thread_name("mq-commit");
  int packs = 1; /* a store may hold packs from an earlier run */
  pthread_mutex_lock(&s->cmu);
  for (;;) {
    int w = srv_committer_wait(s, packs);
    if (w < 0) {
      pthread_mutex_unlock(&s->cmu);
      int left = 0;
      /* A failure (the store is locked by another program, say) is tried
      ** again after the next idle wait; the next get settles anyway. */
      if (mqi_pack_settle_some(s->store, SETTLE_STEP, &left) == MQ_OK) packs = left;
      pthread_mutex_lock(&s->cmu);
      continue;
    }
    if (w == 0) break; /* quit, and nothing queued */
    char queue[MQ_NAME_MAX + 1];
    memcpy(queue, s->cjob_queue, sizeof queue);
    int topic = s->cjob_topic;
    mqi_srv_item *items = s->cjob_batch.items;
    size_t n = s->cjob_batch.n;
    pthread_mutex_unlock(&s->cmu);
    char err[sizeof s->cjob_err];
    size_t done, dropped, dropped_bytes;
    int rc = srv_store_items(s, queue, topic, items, n, &done, &dropped, &dropped_bytes,
                             err, sizeof err);
    pthread_mutex_lock(&s->cmu);
    s->cjob_rc = rc;
    s->cjob_done = done;
    s->cjob_dropped = dropped;
    s->cjob_dropped_bytes = dropped_bytes;
    memcpy(s->cjob_err, err, sizeof err);
    s->cjob = 2;
    if (!topic) packs = 1;
    mqi_net_pipe_poke(s->wake[1]);
  }
  pthread_mutex_unlock(&s->cmu);
  return NULL;
}

/* Count a batch that leaves the endpoint: stored but for `dropped` of its
** messages (dropped_bytes of payload), or, when !stored, lost whole. */
static void srv_count_batch(mqi_srv_ep *ep, const mqi_srv_item *items, size_t n, int stored,
                            size_t dropped, size_t dropped_bytes) {
  size_t bytes = 0;
  for (size_t i = 0; i < n; i++) bytes += items[i].len;
  if (!stored) {
    dropped = n;
    dropped_bytes = bytes;
  }
  MQI_SRV_COUNT(ep->count.in, n - dropped);
  MQI_SRV_COUNT(ep->count.bytes_in, bytes - dropped_bytes);
  MQI_SRV_COUNT(ep->count.dropped, dropped);
}

/* The first done items of b were settled by a commit (stored, or dropped
** as refused by the queue): count them and take them out. */
static void srv_items_settle(mq_server *s, mqi_srv_ep *ep, mqi_srv_batch *b, size_t done,
                             size_t dropped, size_t dropped_bytes) {
  if (done == 0) return;
  srv_count_batch(ep, b->items, done, 1, dropped, dropped_bytes);
  if (dropped < done) mqi_server_kick(s, ep->queue);
  mqi_batch_drop(b, done);
}

/* n items the store will not take (their queue is gone, or the last try
** failed): say so and count them. */
static void srv_items_lost(mq_server *s, mqi_srv_ep *ep, const mqi_srv_item *items, size_t n,
                           const char *err) {
  if (n == 0) return;
  mqi_log(s->store, MQ_LOG_ERROR, "server: PULL into \"%s\": %zu messages lost: %s", ep->queue, n,
          err);
  srv_count_batch(ep, items, n, 0, 0, 0);
}

/* Take the result of a finished commit, if any.  A failed batch goes back
** in front of what was read since, and the endpoint reads nothing more
** until it is stored: the peers' PUSH sockets block at their high-water
** mark meanwhile. */
static void srv_pull_collect(mq_server *s) {
  pthread_mutex_lock(&s->cmu);
  if (s->cjob != 2) {
    pthread_mutex_unlock(&s->cmu);
    return;
  }
  mqi_srv_ep *ep = &s->eps[s->cjob_ep];
  mqi_srv_batch b = s->cjob_batch;
  int rc = s->cjob_rc;
  size_t done = s->cjob_done, dropped = s->cjob_dropped, dropped_bytes = s->cjob_dropped_bytes;
  char err[sizeof s->cjob_err];
  memcpy(err, s->cjob_err, sizeof err);
  s->cjob = 0;
  memset(&s->cjob_batch, 0, sizeof s->cjob_batch);
  pthread_mutex_unlock(&s->cmu);
  s->cbusy = 0;
  srv_items_settle(s, ep, &b, done, dropped, dropped_bytes);
  if (rc == MQ_OK || rc == MQ_ENOTFOUND) {
    srv_items_lost(s, ep, b.items, b.n, err);
    if (ep->failing)
      mqi_log(s->store, MQ_LOG_INFO, "server: PULL into \"%s\": commits work again", ep->queue);
    mqi_batch_free(&b, &s->pool);
    ep->failing = 0;
    ep->backoff = 0;
    return;
  }
  if (!ep->failing)
    mqi_log(s->store, MQ_LOG_WARN, "server: PULL into \"%s\": commit failed (%s): %s; retrying",
            ep->queue, mq_errstr(rc), err);
  ep->failing = 1;
  ep->backoff = ep->backoff ? ep->backoff * 2 : RETRY_MIN_MS;
  if (ep->backoff > RETRY_MAX_MS) ep->backoff = RETRY_MAX_MS;
  ep->retry_at = srv_mono() + ep->backoff;
  /* Order matters: the failed batch was read first. */
  if (mqi_batch_prepend(&ep->batch, &b) != MQ_OK) {
    mqi_log(s->store, MQ_LOG_ERROR, "server: PULL into \"%s\": out of memory; %zu messages lost",
            ep->queue, b.n);
    srv_count_batch(ep, b.items, b.n, 0, 0, 0);
    mqi_batch_free(&b, &s->pool);
  }
}

/* Hand a batch to the commit thread if it is idle (started on first use;
** without it, the commit runs here). */
static void srv_pull_submit(mq_server *s) {
  int64_t mono = srv_mono();
  if (s->cbusy) return;
  for (size_t k = 0; k < s->neps; k++) {
    size_t e = (s->cnext + k) % s->neps;
    mqi_srv_ep *ep = &s->eps[e];
    if (ep->kind != MQI_EP_PULL || ep->batch.n == 0) continue;
    if (ep->failing && mono < ep->retry_at) continue;
    s->cnext = e + 1;
    if (!s->cstarted) {
      if (pthread_create(&s->committer, NULL, srv_committer_main, s) == 0) {
        s->cstarted = 1;
      } else {
        /* No thread: commit in the loop, which then just reads less. */
        char err[sizeof s->cjob_err];
        size_t done, dropped, dropped_bytes;
        int rc = srv_store_items(s, ep->queue, ep->topic, ep->batch.items, ep->batch.n,
                                 &done, &dropped, &dropped_bytes, err, sizeof err);
        pthread_mutex_lock(&s->cmu);
        s->cjob_done = done;
        s->cjob_dropped = dropped;
        s->cjob_dropped_bytes = dropped_bytes;
        s->cjob_ep = e;
        s->cbusy = 1;
        s->cjob_batch = ep->batch;
        s->cjob_rc = rc;
        memcpy(s->cjob_err, err, sizeof err);
        s->cjob = 2;
        pthread_mutex_unlock(&s->cmu);
        memset(&ep->batch, 0, sizeof ep->batch);
        srv_pull_collect(s);
        return;
      }
    }
    pthread_mutex_lock(&s->cmu);
    s->cjob_ep = e;
    memcpy(s->cjob_queue, ep->queue, sizeof s->cjob_queue);
    s->cjob_topic = ep->topic;
    s->cjob_batch = ep->batch;
    s->cjob = 1;
    pthread_cond_signal(&s->ccv);
    pthread_mutex_unlock(&s->cmu);
    s->cbusy = 1;
    memset(&ep->batch, 0, sizeof ep->batch);
    return;
  }
}

/* Stop the commit thread after its current batch, and collect that. */
static void srv_committer_stop(mq_server *s) {
  if (!s->cstarted) return;
  pthread_mutex_lock(&s->cmu);
  s->cquit = 1;
  pthread_cond_signal(&s->ccv);
  pthread_mutex_unlock(&s->cmu);
  pthread_join(s->committer, NULL);
  s->cstarted = 0;
  s->cquit = 0; /* a later mq_server_run starts a new one */
  srv_pull_collect(s);
}

/* Wait for the commit in progress, then store what was read and not yet
** stored, in this thread: the peers' PUSH sockets consider those messages
** delivered (as they do what is still in the kernel's buffers, which a
** stop leaves there, unread).  When the store refuses them, they are kept
** for the next mq_server_run unless this is the last try (final: the
** server is freed). */
static void srv_pull_flush(mq_server *s, int final) {
  srv_committer_stop(s);
  for (size_t e = 0; e < s->neps; e++) {
    mqi_srv_ep *ep = &s->eps[e];
    if (ep->kind != MQI_EP_PULL || !ep->batch.n) continue;
    char err[sizeof s->cjob_err];
    size_t done, dropped, dropped_bytes;
    int rc = srv_store_items(s, ep->queue, ep->topic, ep->batch.items, ep->batch.n, &done,
                             &dropped, &dropped_bytes, err, sizeof err);
    srv_items_settle(s, ep, &ep->batch, done, dropped, dropped_bytes);
    if (rc != MQ_OK && rc != MQ_ENOTFOUND && !final) continue; /* kept for the next run */
    srv_items_lost(s, ep, ep->batch.items, ep->batch.n, err);
    mqi_batch_free(&ep->batch, &s->pool);
    ep->failing = 0;
  }
}

/* Stop or free: store also the whole messages that wait in the PULL
** connections' input buffers (read from the kernel, not yet parsed because
** the batch was full), batch after batch, without reading the sockets
** again.  Stops early where the store refuses a batch (final: never). */
static void srv_pull_drain(mq_server *s, int final) {
  int64_t now = mqi_server_now(s);
  for (int progress = 1; progress;) {
    progress = 0;
    for (size_t i = 0; i < s->nconns; i++) {
      mqi_srv_conn *sc = s->conns[i];
      mqi_srv_ep *ep = &s->eps[sc->ep];
      size_t had = mqi_zconn_buffered(sc->z);
      if (ep->kind != MQI_EP_PULL || mqi_zconn_state(sc->z) != MQI_ZC_ACTIVE || had == 0 ||
          srv_batch_full(ep))
        continue;
      mqi_zconn_input(sc->z, now, 0, srv_pull_msg, sc);
      if (mqi_zconn_buffered(sc->z) < had) progress = 1;
    }
    size_t before = 0, after = 0;
    for (size_t e = 0; e < s->neps; e++) before += s->eps[e].batch.n;
    srv_pull_flush(s, final);
    for (size_t e = 0; e < s->neps; e++) after += s->eps[e].batch.n;
    if (after > 0) return; /* refused: kept for the next run */
    if (after < before) progress = 1;
  }
}

/* ------------------------------------------------------------------------
** PUSH egress
*/
void mqi_server_kick(mq_server *s, const char *queue) {
  for (size_t i = 0; i < s->neps; i++)
    if (s->eps[i].kind == MQI_EP_PUSH && strcmp(s->eps[i].queue, queue) == 0)
      s->eps[i].empty_until = 0;
  mqi_router_kick(s, queue);
}

/* The frames of a stored message: its zmtp-frames header, if it is well
** formed and matches the payload, else the payload as one frame.  Returns
** the number of parts written to parts (at most cap). */
static size_t srv_msg_parts(const mq_msg *m, mqi_zpart *parts, size_t cap) {
  const char *data = mq_msg_data(m);
  size_t size = mq_msg_size(m), n = 0, at = 0;
  const char *h = mq_msg_header(m, FRAMES_HEADER);
  if (h && *h) {
    const char *p = h;
    while (n < cap) {
      if (*p < '0' || *p > '9') break;
      size_t v = 0;
      while (*p >= '0' && *p <= '9' && v <= size) v = v * 10 + (size_t)(*p++ - '0');
      if (v > size - at) break;
      parts[n].data = data + at;
      parts[n].len = v;
      n++;
      at += v;
      if (*p == ',') {
        p++;
        continue;
      }
      if (*p == '\0' && at == size) return n;
      break;
    }
  }
  parts[0].data = data;
  parts[0].len = size;
  return 1;
}

static int srv_pend_push(mqi_srv_conn *sc, uint64_t end, const mq_msg *m, int64_t now) {
  if (sc->pend_head > 0 && sc->pend_head == sc->pend_len) sc->pend_head = sc->pend_len = 0;
  if (sc->pend_len == sc->pend_cap) {
    if (sc->pend_head > 0) {
      memmove(sc->pend, sc->pend + sc->pend_head,
              (sc->pend_len - sc->pend_head) * sizeof *sc->pend);
      sc->pend_len -= sc->pend_head;
      sc->pend_head = 0;
    } else {
      size_t cap = sc->pend_cap ? sc->pend_cap * 2 : 32;
      mqi_srv_pend *p = realloc(sc->pend, cap * sizeof *p);
      if (!p) return -1;
      sc->pend = p;
      sc->pend_cap = cap;
    }
  }
  mqi_srv_pend *e = &sc->pend[sc->pend_len++];
  e->end = end;
  e->size = mq_msg_size(m);
  e->visible_at = mq_msg_visible_at(m);
  e->lease_ms = e->visible_at > now ? e->visible_at - now : 1;
  if (e->visible_at - e->lease_ms / 2 < sc->renew_at) sc->renew_at = e->visible_at - e->lease_ms / 2;
  snprintf(e->receipt, sizeof e->receipt, "%s", mq_msg_receipt(m));
  return 0;
}

/* Messages wait in a connection's output while its peer reads slowly (a
** libzmq PULL at its high-water mark): keep their leases alive, or they
** would be leased again and sent to a second peer as well.  A connection
** is looked at when its earliest renewal is due (renew_at, store clock),
** and then every entry of it: a renewal that failed half-way must not
** leave due entries behind a renewed one.  After a failure (lock, I/O)
** the endpoint waits before trying again, rather than spin. */
static void srv_push_renew(mq_server *s, size_t e) {
  mqi_srv_ep *ep = &s->eps[e];
  int64_t now = mqi_store_now(s->store);
  if (ep->renew_retry && srv_mono() < ep->renew_retry) return;
  ep->renew_retry = 0;
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_srv_conn *sc = s->conns[i];
    if (sc->ep != e || sc->pend_head == sc->pend_len || sc->renew_at > now) continue;
    int64_t next = INT64_MAX;
    for (size_t k = sc->pend_head; k < sc->pend_len; k++) {
      mqi_srv_pend *p = &sc->pend[k];
      if (p->visible_at == INT64_MAX) continue; /* lost already */
      if (p->visible_at - now <= p->lease_ms / 2 && !ep->renew_retry) {
        int rc = mq_touch(s->store, ep->queue, p->receipt, p->lease_ms);
        if (rc == MQ_OK) {
          p->visible_at = mqi_time_add(now, p->lease_ms);
          ep->renew_failing = 0;
        } else if (rc == MQ_ESTALE) {
          mqi_log(s->store, MQ_LOG_WARN,
                  "server: PUSH from \"%s\": connection #%" PRIu64 " (%s): a message waiting to "
                  "be written lost its lease (it ran out or the message expired); it may go out "
                  "twice",
                  ep->queue, sc->serial, mqi_zconn_peer(sc->z));
          p->visible_at = INT64_MAX;
          continue;
        } else {
          if (!ep->renew_failing)
            mqi_log(s->store, MQ_LOG_WARN, "server: PUSH from \"%s\": renewing leases: %s",
                    ep->queue, mq_errmsg(s->store));
          ep->renew_failing = 1;
          ep->renew_retry = srv_mono() + RETRY_MIN_MS;
        }
      }
      int64_t due = p->visible_at - p->lease_ms / 2;
      if (due < next) next = due;
    }
    sc->renew_at = next;
  }
}

/* How many more messages connection sc can take this turn: its credit, and
** what fits its output limit at the endpoint's mean message size. */
static size_t srv_push_room(const mq_server *s, const mqi_srv_ep *ep, const mqi_srv_conn *sc) {
  size_t room = s->opt.credit - (sc->pend_len - sc->pend_head);
  size_t fit = ep->avg_size ? s->out_limit / ep->avg_size : PUSH_PER_CONN;
  if (fit < 1) fit = 1;
  if (room > fit) room = fit;
  return room > PUSH_PER_CONN ? PUSH_PER_CONN : room;
}

static void srv_push_work(mq_server *s, size_t e) {
  mqi_srv_ep *ep = &s->eps[e];
  mqi_srv_conn *ready[PUSH_LEASE_MAX];
  mq_msg *msgs[PUSH_LEASE_MAX];
  const char *back[PUSH_LEASE_MAX];
  size_t nready = 0, count = 0, nback = 0, want = 0;
  int64_t mono = srv_mono();
  srv_push_renew(s, e);
  if (ep->empty_until && mono < ep->empty_until) return;
  /* From a rotating start: with more peers than one turn serves, each
  ** gets its turn. */
  size_t start = ep->scan;
  for (size_t k = 0; k < s->nconns && nready < PUSH_LEASE_MAX; k++) {
    size_t i = (start + k) % s->nconns;
    mqi_srv_conn *sc = s->conns[i];
    if (sc->ep != e || mqi_zconn_state(sc->z) != MQI_ZC_ACTIVE) continue;
    if (mqi_zconn_pending(sc->z) > 0 || sc->pend_len - sc->pend_head >= s->opt.credit) continue;
    ready[nready++] = sc;
    want += srv_push_room(s, ep, sc);
    ep->scan = i + 1;
  }
  if (nready == 0) return;
  if (want > PUSH_LEASE_MAX) want = PUSH_LEASE_MAX;
  int rc = mq_get_batch(s->store, ep->queue, NULL, want, msgs, &count);
  if (rc == MQ_EMPTY) {
    ep->empty_until = mono + EGRESS_POLL_MS;
    return;
  }
  if (rc != MQ_OK) {
    mqi_log(s->store, MQ_LOG_WARN, "server: PUSH from \"%s\": %s", ep->queue, mq_errmsg(s->store));
    ep->empty_until = mono + RETRY_MAX_MS;
    return;
  }
  int64_t now = mqi_store_now(s->store);
  for (size_t i = 0; i < count; i++) {
    mqi_zpart parts[1024];
    size_t np = srv_msg_parts(msgs[i], parts, sizeof parts / sizeof parts[0]);
    size_t size = mq_msg_size(msgs[i]);
    int sent = 0;
    for (size_t tries = 0; tries < nready && !sent; tries++) {
      mqi_srv_conn *sc = ready[ep->rr++ % nready];
      if (mqi_zconn_state(sc->z) != MQI_ZC_ACTIVE || sc->pend_len - sc->pend_head >= s->opt.credit)
        continue;
      /* Over the output limit: skip this peer for now (not a failure). */
      if (mqi_zconn_send(sc->z, parts, np) != MQI_ZMTP_OK) continue;
      if (srv_pend_push(sc, mqi_zconn_queued(sc->z), msgs[i], now) != 0) {
        mqi_zconn_close(sc->z, "out of memory");
        continue;
      }
      sent = 1;
    }
    ep->avg_size = ep->avg_size ? ep->avg_size - ep->avg_size / 8 + size / 8 + 1 : size + 1;
    if (!sent) back[nback++] = mq_msg_receipt(msgs[i]);
  }
  /* Leased but sent to nobody (they did not fit): back at once, and not
  ** counted as a delivery, or a large message would reach its dlq unsent. */
  if (nback && mqi_settle_release(s->store, ep->queue, back, nback) != MQ_OK)
    mqi_log(s->store, MQ_LOG_WARN, "server: PUSH from \"%s\": %zu messages not sent: %s (they "
            "come back when their lease ends)", ep->queue, nback, mq_errmsg(s->store));
  for (size_t i = 0; i < count; i++) mq_msg_free(msgs[i]);
}

/* Ack the PUSH messages whose last byte the kernel has taken: one
** mq_ack_batch (one commit) per endpoint and turn, for all its peers. */
static void srv_push_acks(mq_server *s) {
  const char **rcpts = NULL;
  size_t cap = 0;
  for (size_t e = 0; e < s->neps; e++) {
    if (s->eps[e].kind != MQI_EP_PUSH) continue;
    size_t n = 0, bytes = 0;
    for (size_t i = 0; i < s->nconns; i++) {
      mqi_srv_conn *sc = s->conns[i];
      if (sc->ep != e) continue;
      uint64_t written = mqi_zconn_written(sc->z);
      while (sc->pend_head < sc->pend_len && sc->pend[sc->pend_head].end <= written) {
        if (n == cap) {
          size_t nc = cap ? cap * 2 : 256;
          const char **p = realloc(rcpts, nc * sizeof *p);
          if (!p) break; /* acked next turn */
          rcpts = p;
          cap = nc;
        }
        bytes += sc->pend[sc->pend_head].size;
        rcpts[n++] = sc->pend[sc->pend_head++].receipt;
      }
    }
    if (n == 0) continue;
    /* Sent whatever the ack below does: the kernel has the bytes. */
    MQI_SRV_COUNT(s->eps[e].count.out, n);
    MQI_SRV_COUNT(s->eps[e].count.bytes_out, bytes);
    int rc = mq_ack_batch(s->store, s->eps[e].queue, rcpts, n, NULL);
    if (rc != MQ_OK)
      mqi_log(s->store, MQ_LOG_WARN,
              "server: PUSH from \"%s\": ack of %zu delivered messages failed: %s "
              "(they will be delivered again)",
              s->eps[e].queue, n, mq_errmsg(s->store));
  }
  free(rcpts);
}

/* ------------------------------------------------------------------------
** The loop
*/

static int srv_router_msg(void *ctx, mqi_zconn *z, mqi_zmtp_frame *parts, size_t n) {
  mqi_srv_conn *sc = ctx;
  (void)z;
  return mqi_router_message(sc->srv, sc, parts, n);
}

/* Read one connection, dispatching its messages by endpoint kind. */
static void srv_read(mq_server *s, mqi_srv_conn *sc, int64_t now) {
  mqi_srv_ep *ep = &s->eps[sc->ep];
  int st = mqi_zconn_state(sc->z);
  if (st == MQI_ZC_DEAD) return;
  if (ep->kind == MQI_EP_PULL) {
    if (srv_pull_full(ep) && st == MQI_ZC_ACTIVE) return;
    mqi_zconn_input(sc->z, now, READ_BUDGET, srv_pull_msg, sc);
  } else if (ep->kind == MQI_EP_ROUTER) {
    mqi_zconn_input(sc->z, now, READ_BUDGET, srv_router_msg, sc);
  } else {
    /* PUSH peers send nothing but commands; a message from one is dropped. */
    mqi_zconn_input(sc->z, now, READ_BUDGET, NULL, NULL);
  }
}

/* Whether the loop should read sc now (it may have buffered bytes, or the
** socket may be readable). */
static int srv_wants_read(const mq_server *s, const mqi_srv_conn *sc) {
  const mqi_srv_ep *ep = &s->eps[sc->ep];
  int st = mqi_zconn_state(sc->z);
  if (st == MQI_ZC_DEAD) return 0;
  if (st != MQI_ZC_ACTIVE) return 1;
  if (ep->kind == MQI_EP_PULL) return !srv_pull_full(ep);
  /* A ROUTER peer that does not read its replies gets no more read. */
  if (ep->kind == MQI_EP_ROUTER) return mqi_zconn_pending(sc->z) < s->out_limit / 2;
  return 1;
}

/* Give back what a closing connection holds and free it. */
static void srv_conn_free(mq_server *s, mqi_srv_conn *sc) {
  mqi_srv_ep *ep = &s->eps[sc->ep];
  if (ep->kind == MQI_EP_PUSH && sc->pend_len > sc->pend_head) {
    /* Not all their bytes left us: the peer cannot have them. */
    size_t n = sc->pend_len - sc->pend_head;
    const char **back = malloc(n * sizeof *back);
    for (size_t i = 0; back && i < n; i++) back[i] = sc->pend[sc->pend_head + i].receipt;
    if (!back || mqi_settle_release(s->store, ep->queue, back, n) != MQ_OK)
      mqi_log(s->store, MQ_LOG_WARN,
              "server: PUSH from \"%s\": %zu messages queued for a closed connection come back "
              "when their lease ends: %s", ep->queue, n, back ? mq_errmsg(s->store) : "out of memory");
    free(back);
  }
  if (ep->kind == MQI_EP_ROUTER) mqi_router_conn_gone(s, sc);
  mqi_log(s->store, MQ_LOG_INFO, "server: %s: connection #%" PRIu64 " (%s) closed: %s", ep->name,
          sc->serial, mqi_zconn_peer(sc->z),
          mqi_zconn_reason(sc->z)[0] ? mqi_zconn_reason(sc->z) : "server stopped");
  if (ep->connect) srv_connect_lost(s, ep, sc);
  MQI_SRV_COUNT(ep->count.conns, -1);
  mqi_zconn_free(sc->z);
  free(sc->pend);
  free(sc);
}

static void srv_reap(mq_server *s) {
  size_t j = 0;
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_srv_conn *sc = s->conns[i];
    if (mqi_zconn_state(sc->z) == MQI_ZC_DEAD)
      srv_conn_free(s, sc);
    else
      s->conns[j++] = sc;
  }
  s->nconns = j;
}

/* Everything a turn does after reading: commits, egress, timers, writes. */
static void srv_work(mq_server *s, int64_t now) {
  srv_connect_work(s, now);
  srv_pull_collect(s);
  srv_pull_submit(s);
  mqi_router_work(s);
  for (size_t e = 0; e < s->neps; e++)
    if (s->eps[e].kind == MQI_EP_PUSH) srv_push_work(s, e);
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_srv_conn *sc = s->conns[i];
    int st = mqi_zconn_state(sc->z);
    if (!sc->was_active && st == MQI_ZC_ACTIVE) {
      sc->was_active = 1;
      if (s->eps[sc->ep].connect) s->eps[sc->ep].up_since = now;
      if (s->eps[sc->ep].kind == MQI_EP_ROUTER) mqi_router_ready(s, sc);
    }
    /* A PULL connection we stopped reading must not be timed out for the
    ** silence that causes. */
    mqi_zconn_hold(sc->z, s->eps[sc->ep].kind == MQI_EP_PULL && srv_pull_full(&s->eps[sc->ep]),
                   now);
    mqi_zconn_tick(sc->z, now);
    if (mqi_zconn_pending(sc->z) > 0) mqi_zconn_flush(sc->z, now);
  }
  srv_push_acks(s);
}

/* How long poll may sleep, in ms. */
static int srv_poll_wait(mq_server *s, int64_t now, int64_t end) {
  int64_t mono = srv_mono();
  int64_t wait = POLL_MAX_MS;
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_srv_conn *sc = s->conns[i];
    if (mqi_zconn_buffered(sc->z) > 0 && srv_wants_read(s, sc)) return 0;
    int64_t d = mqi_zconn_deadline(sc->z);
    if (d != INT64_MAX && d - now < wait) wait = d - now;
  }
  for (size_t e = 0; e < s->neps; e++) {
    mqi_srv_ep *ep = &s->eps[e];
    if (ep->connect && !ep->live) {
      int64_t d = (ep->cfd >= 0 ? ep->connect_deadline : ep->next_try);
      if (d != INT64_MAX && d - now < wait) wait = d - now;
    }
    if (!ep->connect && ep->accept_after > now && ep->accept_after - now < wait)
      wait = ep->accept_after - now;
    /* A batch waits for the commit thread: it pokes the pipe when free. */
    if (ep->kind == MQI_EP_PULL && ep->batch.n > 0 && !s->cbusy) {
      int64_t d = ep->failing ? ep->retry_at - mono : 0;
      if (d < wait) wait = d;
    }
    if (ep->kind == MQI_EP_PUSH) {
      /* Only worth waking for when some peer could take a message. */
      for (size_t i = 0; i < s->nconns; i++) {
        mqi_srv_conn *sc = s->conns[i];
        if (sc->ep == e && mqi_zconn_state(sc->z) == MQI_ZC_ACTIVE &&
            mqi_zconn_pending(sc->z) == 0 && sc->pend_len - sc->pend_head < s->opt.credit) {
          int64_t d = ep->empty_until - mono;
          if (d < wait) wait = d;
          break;
        }
      }
    }
  }
  /* The next PUSH lease to renew (store clock: only its distance counts),
  ** or the retry after a failed renewal. */
  int64_t store_now = mqi_store_now(s->store);
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_srv_conn *sc = s->conns[i];
    if (sc->pend_head == sc->pend_len || s->eps[sc->ep].kind != MQI_EP_PUSH) continue;
    int64_t retry = s->eps[sc->ep].renew_retry;
    int64_t d = retry ? retry - mono : sc->renew_at == INT64_MAX ? INT64_MAX : sc->renew_at - store_now;
    if (d < wait) wait = d;
  }
  int64_t r = mqi_router_wake(s);
  if (r != INT64_MAX && r - mono < wait) wait = r - mono;
  if (end != INT64_MAX && end - mono < wait) wait = end - mono;
  return wait < 0 ? 0 : (int)wait;
}

int mq_server_run(mq_server *s, int64_t timeout_ms) {
  if (!s) return MQ_EINVAL;
  if (s->running) return mqi_err_set(s->store, MQ_EMISUSE, "mq_server_run: already running");
  int rc = mqi_store_check(s->store, 0);
  if (rc != MQ_OK) return rc;
  int64_t end = timeout_ms < 0 ? INT64_MAX : srv_mono() + timeout_ms;
  int stopped = 0;
  s->running = 1;
  for (;;) {
    if (atomic_exchange(&s->stop, 0)) {
      stopped = 1;
      break;
    }
    int64_t now = mqi_server_now(s);
    size_t need = 1 + s->neps + s->nconns;
    if (need > s->pfdcap) {
      void *p = realloc(s->pfds, need * sizeof(struct pollfd));
      if (!p) {
        rc = mqi_err_set(s->store, MQ_ENOMEM, "server: out of memory");
        break;
      }
      s->pfds = p;
      s->pfdcap = need;
    }
    struct pollfd *pf = s->pfds;
    size_t np = 0;
    pf[np].fd = s->wake[0];
    pf[np++].events = POLLIN;
    for (size_t e = 0; e < s->neps; e++) {
      /* A connecting endpoint waits for its connect to finish (or for
      ** nothing: -1 is skipped by poll). */
      pf[np].fd = s->eps[e].connect                ? s->eps[e].cfd
                  : now < s->eps[e].accept_after ? -1
                                                 : s->eps[e].fd;
      pf[np++].events = s->eps[e].connect ? POLLOUT : POLLIN;
    }
    for (size_t i = 0; i < s->nconns; i++) {
      mqi_srv_conn *sc = s->conns[i];
      short ev = (short)((srv_wants_read(s, sc) ? POLLIN : 0) |
                         (mqi_zconn_pending(sc->z) > 0 ? POLLOUT : 0));
      /* A negative fd is skipped by poll: a paused connection whose peer
      ** hung up must not make poll return at once, again and again. */
      pf[np].fd = ev ? mqi_zconn_fd(sc->z) : -1;
      pf[np].events = ev;
      np++;
    }
    for (size_t k = 0; k < np; k++) pf[k].revents = 0;
    int wait = srv_poll_wait(s, now, end);
    int n = poll(pf, (nfds_t)np, wait);
    if (n < 0 && errno != EINTR) {
      rc = mqi_err_set(s->store, MQ_ENET, "server: poll: %s", strerror(errno));
      break;
    }
    now = mqi_server_now(s);
    if (n > 0 && (pf[0].revents & POLLIN)) mqi_net_pipe_drain(s->wake[0]);
    /* A finished commit frees its endpoint's next batch for the thread
    ** before reading, so paused connections are read again at once. */
    srv_pull_collect(s);
    srv_pull_submit(s);
    /* Connections first (accepting appends to the array), from a rotating
    ** start so that one busy peer cannot always fill the batch first. */
    size_t nc = s->nconns;
    s->turn++;
    for (size_t k = 0; k < nc; k++) {
      size_t i = (k + s->turn) % nc;
      mqi_srv_conn *sc = s->conns[i];
      short rev = n > 0 ? pf[1 + s->neps + i].revents : 0;
      int want = srv_wants_read(s, sc);
      if ((want && ((rev & POLLIN) || mqi_zconn_buffered(sc->z) > 0)) ||
          (rev & (POLLHUP | POLLERR)))
        srv_read(s, sc, now);
    }
    for (size_t e = 0; e < s->neps && n > 0; e++) {
      if (s->eps[e].connect) {
        if (s->eps[e].cfd >= 0 && (pf[1 + e].revents & (POLLOUT | POLLERR | POLLHUP)))
          srv_connect_done(s, e, now);
      } else if (pf[1 + e].revents & POLLIN) {
        srv_accept(s, e, now);
      }
    }
    srv_work(s, now);
    srv_reap(s);
    if (srv_mono() >= end) break;
  }
  /* Stopped, or unable to go on: what PULL read is stored before we return
  ** (keeping the error that ends the run, not the store's last word). */
  if (stopped) srv_pull_drain(s, 0);
  if (rc != MQ_OK) {
    char why[MQI_ERRMSG_MAX];
    mqi_err_text(why, sizeof why, mq_errmsg(s->store));
    srv_pull_drain(s, 0);
    mqi_err_set(s->store, rc, "%s", why);
  }
  s->running = 0;
  return rc;
}

void mq_server_stop(mq_server *s) {
  if (!s) return;
  atomic_store(&s->stop, 1);
  if (s->wake[1] >= 0) mqi_net_pipe_poke(s->wake[1]);
}

void mq_server_free(mq_server *s) {
  if (!s) return;
  s->freeing = 1;
  srv_pull_drain(s, 1);
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_zconn_close(s->conns[i]->z, "server closed");
    srv_conn_free(s, s->conns[i]);
  }
  srv_pull_flush(s, 1);
  for (size_t e = 0; e < s->neps; e++) {
    mqi_srv_ep *ep = &s->eps[e];
    if (ep->fd >= 0) close(ep->fd);
    if (ep->connect && ep->cfd >= 0) close(ep->cfd);
    mqi_batch_free(&ep->batch, NULL); /* empty after the final flush */
  }
  mqi_batch_pool_free(&s->pool);
  free(s->pi);
  mqi_router_free(s);
  free(s->eps);
  free(s->conns);
  free(s->pfds);
  if (s->wake[0] >= 0) close(s->wake[0]);
  if (s->wake[1] >= 0) close(s->wake[1]);
  if (s->csync) {
    pthread_mutex_destroy(&s->cmu);
    pthread_cond_destroy(&s->ccv);
  }
  srv_wipe_free(s->plain_user);
  srv_wipe_free(s->plain_password);
  free(s);
}
