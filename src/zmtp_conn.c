/*
** zmtp_conn.c -- one ZMTP 3.x connection over a non-blocking TCP socket:
** greeting, NULL or PLAIN handshake, traffic, heartbeats.  A connection we
** accepted is the PLAIN server; one we opened (cfg.client) is the PLAIN
** client: HELLO after the greeting, then INITIATE after the WELCOME, and
** the connection is ACTIVE at the server's READY.  Under NULL the two
** roles are the same, since NULL is symmetric.
**
** A connection moves GREETING -> HANDSHAKE -> ACTIVE, and ends DEAD
** (directly, or through CLOSING when a final ERROR must reach the peer).
** The rules that make it interoperate with libzmq 4.3.4 (see the research
** notes, section 0) are enforced here and nowhere else:
**   - Our whole 64-byte greeting is queued the moment the connection exists;
**     the peer's greeting is judged byte by byte, so a libzmq peer that sends
**     10 bytes and waits for our byte 11 never deadlocks with us.
**   - No message frame ever precedes the peer's READY (or, with PLAIN, its
**     INITIATE): mqi_zconn_send refuses until the state is ACTIVE.  libzmq
**     fails the handshake for good when a message overtakes its own READY.
**   - ERROR is sent only when PLAIN authentication fails.  Every other
**     problem (bad greeting, wrong socket type, malformed command, frame over
**     the limit, silence) is a plain close, because a protocol error makes a
**     connecting libzmq socket stop reconnecting forever.
**   - Before the handshake is over the decoder's limits are the command
**     limit, whatever the frame says it is, so an unauthenticated peer can
**     make us allocate at most 64 KiB; limits are applied before allocation
**     by the codec.
**   - PINGs are answered at any time, also between the frames of a
**     multipart message (libzmq sends them there); the message's frames are
**     collected across them untouched.
** A connection never reads a clock and never calls the store: its caller
** passes `now` and receives complete messages through a callback, which can
** pause reading (TCP backpressure) by returning nonzero.
*/
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "zmtp_net.h"

#define ZCONN_IBUF (64 * 1024)    /* one recv(2) at most */
#define ZCONN_CLOSE_GRACE_MS 1000 /* how long a final ERROR may take to leave */
#define ZCONN_CMD_MAX 600         /* our largest command frame (ERROR) */

struct mqi_zconn {
  int fd;
  int state;
  mqi_zconn_config cfg;
  char peer[MQI_NET_NAME_MAX];
  char why[200];
  /* Timers, on the caller's clock. */
  int64_t created;
  int64_t last_recv;
  int64_t last_ping;     /* when we last sent a PING */
  int64_t ping_deadline; /* 0, or when silence after our PING kills us */
  int64_t ttl_deadline;  /* 0, or when silence after the peer's PING does */
  int64_t close_deadline;
  int held;           /* the caller does not read us now (mqi_zconn_hold) */
  int64_t held_since; /* when the hold began */
  int wdead;          /* a write failed while held: only reading goes on */
  /* Handshake. */
  mqi_zmtp_greeting greet;
  int hs_step; /* PLAIN server: 0 = HELLO expected, 1 = INITIATE expected;
                  client: 0 = WELCOME expected, 1 = READY expected */
  int peer_error; /* the peer sent ERROR */
  int peer_type;
  uint8_t identity[MQI_ZMTP_IDENTITY_MAX];
  size_t identity_len;
  char user[MQI_ZMTP_PLAIN_FIELD_MAX + 1];
  /* Input: bytes read but not processed, and the message being collected. */
  mqi_zmtp_decoder dec;
  uint8_t *ibuf;
  size_t ipos, ilen;
  mqi_zmtp_frame *parts;
  size_t nparts, partcap;
  /* Output: obuf[ohead..olen) is pending. */
  uint8_t *obuf;
  size_t ohead, olen, ocap;
  uint64_t queued, written;
  int shut_wr;
};

/* ------------------------------------------------------------------------
** Life cycle
*/
static void zconn_drop_parts(mqi_zconn *c) {
  for (size_t i = 0; i < c->nparts; i++) mqi_zmtp_frame_release(&c->dec, &c->parts[i]);
  c->nparts = 0;
}

void mqi_zconn_close(mqi_zconn *c, const char *why) {
  if (!c || c->state == MQI_ZC_DEAD) return;
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  c->state = MQI_ZC_DEAD;
  snprintf(c->why, sizeof c->why, "%s", why ? why : "closed");
  zconn_drop_parts(c);
  mqi_zmtp_decoder_reset(&c->dec);
  c->ipos = c->ilen = 0;
  c->ohead = c->olen = 0;
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int
zconn_fail(mqi_zconn *c, const char *fmt, ...) {
  char buf[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  mqi_zconn_close(c, buf);
  return MQI_ZC_CLOSED;
}

/* Make room for n more output bytes; returns where they go, or NULL. */
static uint8_t *zconn_reserve(mqi_zconn *c, size_t n) {
  if (c->ohead > 0 && c->ohead == c->olen) c->ohead = c->olen = 0;
  if (c->ocap - c->olen < n && c->ohead > 0) {
    memmove(c->obuf, c->obuf + c->ohead, c->olen - c->ohead);
    c->olen -= c->ohead;
    c->ohead = 0;
  }
  if (c->ocap - c->olen < n) {
    if (n > SIZE_MAX / 2 - c->olen) return NULL;
    size_t cap = c->ocap ? c->ocap : 4096;
    while (cap - c->olen < n) cap *= 2;
    uint8_t *p = realloc(c->obuf, cap);
    if (!p) return NULL;
    c->obuf = p;
    c->ocap = cap;
  }
  return c->obuf + c->olen;
}

/* Queue bytes that must go out (greeting, commands).  A failure to find
** memory for a few hundred bytes ends the connection. */
static int zconn_queue(mqi_zconn *c, const void *data, size_t n) {
  if (c->wdead) return MQI_ZC_OK; /* nobody to say it to */
  uint8_t *at = zconn_reserve(c, n);
  if (!at) return zconn_fail(c, "out of memory for output");
  memcpy(at, data, n);
  c->olen += n;
  c->queued += n;
  return MQI_ZC_OK;
}

int mqi_zconn_new(int fd, const char *peer, const mqi_zconn_config *cfg, int64_t now,
                  mqi_zconn **out) {
  uint8_t greeting[MQI_ZMTP_GREETING_SIZE];
  mqi_zmtp_limits hs;
  *out = NULL;
  mqi_zconn *c = calloc(1, sizeof *c);
  if (!c) return MQ_ENOMEM;
  c->ibuf = malloc(ZCONN_IBUF);
  if (!c->ibuf) {
    free(c);
    return MQ_ENOMEM;
  }
  c->fd = fd;
  c->state = MQI_ZC_GREETING;
  c->cfg = *cfg;
  snprintf(c->peer, sizeof c->peer, "%s", peer ? peer : "?");
  c->created = c->last_recv = c->last_ping = now;
  c->peer_type = MQI_ZMTP_SOCKET_NONE;
  mqi_zmtp_greeting_init(&c->greet, cfg->mechanism);
  /* Until the peer is known, every frame is held to the command limit. */
  hs = cfg->limits;
  hs.max_frame = hs.max_command;
  hs.max_message = hs.max_command;
  hs.max_frames = 1;
  mqi_zmtp_decoder_init(&c->dec, &hs, NULL, NULL);
  mqi_zmtp_greeting_encode(greeting, cfg->mechanism,
                           !cfg->client && cfg->mechanism != MQI_ZMTP_MECH_NULL);
  if (zconn_queue(c, greeting, sizeof greeting) != MQI_ZC_OK) {
    c->fd = -1; /* still the caller's */
    mqi_zconn_free(c);
    return MQ_ENOMEM;
  }
  *out = c;
  return MQ_OK;
}

void mqi_zconn_free(mqi_zconn *c) {
  if (!c) return;
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  zconn_drop_parts(c);
  mqi_zmtp_decoder_reset(&c->dec);
  free(c->parts);
  free(c->ibuf);
  free(c->obuf);
  free(c);
}

int mqi_zconn_fd(const mqi_zconn *c) { return c->fd; }
int mqi_zconn_state(const mqi_zconn *c) { return c->state; }
const char *mqi_zconn_reason(const mqi_zconn *c) { return c->why; }
const char *mqi_zconn_peer(const mqi_zconn *c) { return c->peer; }
int mqi_zconn_peer_type(const mqi_zconn *c) { return c->peer_type; }
const char *mqi_zconn_user(const mqi_zconn *c) { return c->user; }
int mqi_zconn_peer_error(const mqi_zconn *c) { return c->peer_error; }
size_t mqi_zconn_buffered(const mqi_zconn *c) { return c->ilen - c->ipos; }
size_t mqi_zconn_pending(const mqi_zconn *c) { return c->olen - c->ohead; }
uint64_t mqi_zconn_queued(const mqi_zconn *c) { return c->queued; }
uint64_t mqi_zconn_written(const mqi_zconn *c) { return c->written; }

const uint8_t *mqi_zconn_identity(const mqi_zconn *c, size_t *len) {
  *len = c->identity_len;
  return c->identity;
}

/* ------------------------------------------------------------------------
** Handshake
*/
static int zconn_send_ready(mqi_zconn *c) {
  uint8_t buf[ZCONN_CMD_MAX];
  size_t n = 0;
  int rc = mqi_zmtp_ready_encode(buf, sizeof buf, MQI_ZMTP_CMD_READY, c->cfg.socket_type, NULL, 0,
                                 NULL, 0, &n);
  if (rc != MQI_ZMTP_OK) return zconn_fail(c, "cannot encode READY: %s", mqi_zmtp_rcstr(rc));
  return zconn_queue(c, buf, n);
}

/* The peer's metadata (READY or INITIATE): check its socket type against
** ours, keep its Identity, and open the connection for messages. */
static int zconn_accept_meta(mqi_zconn *c, const mqi_zmtp_cmd *cmd) {
  mqi_zmtp_meta meta;
  int rc = mqi_zmtp_ready_parse(cmd, &meta);
  if (rc != MQI_ZMTP_OK) return zconn_fail(c, "bad metadata: %s", mqi_zmtp_rcstr(rc));
  if (mqi_zmtp_socket_check(c->cfg.socket_type, meta.socket_type) != MQI_ZMTP_OK) {
    const char *theirs = mqi_zmtp_socket_name(meta.socket_type);
    return zconn_fail(c, "peer socket type %s cannot talk to our %s", theirs ? theirs : "(none)",
                      mqi_zmtp_socket_name(c->cfg.socket_type));
  }
  c->peer_type = meta.socket_type;
  c->identity_len = meta.identity_len;
  if (meta.identity_len) memcpy(c->identity, meta.identity, meta.identity_len);
  c->state = MQI_ZC_ACTIVE;
  mqi_zmtp_decoder_set_limits(&c->dec, &c->cfg.limits);
  return MQI_ZC_OK;
}

/* PLAIN HELLO: check the credentials; WELCOME, or ERROR and close. */
static int zconn_plain_hello(mqi_zconn *c, int64_t now, const mqi_zmtp_cmd *cmd) {
  const uint8_t *user, *pass;
  size_t ulen, plen, n = 0;
  uint8_t buf[ZCONN_CMD_MAX];
  int rc = mqi_zmtp_hello_parse(cmd, &user, &ulen, &pass, &plen);
  if (rc != MQI_ZMTP_OK) return zconn_fail(c, "malformed PLAIN HELLO");
  for (size_t i = 0; i < ulen; i++) c->user[i] = user[i] ? (char)user[i] : '?';
  c->user[ulen] = '\0';
  if (!c->cfg.auth || !c->cfg.auth(c->cfg.auth_ctx, user, ulen, pass, plen, c->peer)) {
    /* libzmq's own spelling of ERROR: a libzmq PLAIN client recognises
    ** only that one and then reports AUTH 400 to its application; either
    ** spelling stops it from reconnecting with the same credentials. */
    rc = mqi_zmtp_error_encode(buf, sizeof buf, "400", 3, 1, &n);
    if (rc != MQI_ZMTP_OK || zconn_queue(c, buf, n) != MQI_ZC_OK)
      return zconn_fail(c, "authentication failed");
    snprintf(c->why, sizeof c->why, "PLAIN authentication failed for user \"%.64s\"", c->user);
    c->state = MQI_ZC_CLOSING;
    c->close_deadline = now + ZCONN_CLOSE_GRACE_MS;
    return MQI_ZC_OK;
  }
  rc = mqi_zmtp_welcome_encode(buf, sizeof buf, &n);
  if (rc != MQI_ZMTP_OK) return zconn_fail(c, "cannot encode WELCOME");
  c->hs_step = 1;
  return zconn_queue(c, buf, n);
}

/* PLAIN client: our HELLO, sent as soon as the greetings are done. */
static int zconn_plain_send_hello(mqi_zconn *c) {
  uint8_t buf[ZCONN_CMD_MAX];
  size_t n = 0;
  const char *u = c->cfg.plain_user ? c->cfg.plain_user : "";
  const char *p = c->cfg.plain_password ? c->cfg.plain_password : "";
  int rc = mqi_zmtp_hello_encode(buf, sizeof buf, u, strlen(u), p, strlen(p), &n);
  if (rc != MQI_ZMTP_OK) return zconn_fail(c, "cannot encode HELLO");
  int r = zconn_queue(c, buf, n); /* closes the connection when it fails */
  memset(buf, 0, sizeof buf);     /* the password */
  return r;
}

/* PLAIN client: WELCOME, then INITIATE with our metadata; then READY. */
static int zconn_plain_client(mqi_zconn *c, const mqi_zmtp_cmd *cmd) {
  if (c->hs_step == 0) {
    uint8_t buf[ZCONN_CMD_MAX];
    size_t n = 0;
    if (cmd->kind != MQI_ZMTP_CMD_WELCOME || mqi_zmtp_welcome_parse(cmd) != MQI_ZMTP_OK)
      return zconn_fail(c, "expected PLAIN WELCOME, got \"%.*s\"", (int)cmd->name_len,
                        (const char *)cmd->name);
    int rc = mqi_zmtp_ready_encode(buf, sizeof buf, MQI_ZMTP_CMD_INITIATE, c->cfg.socket_type,
                                   NULL, 0, NULL, 0, &n);
    if (rc != MQI_ZMTP_OK) return zconn_fail(c, "cannot encode INITIATE");
    c->hs_step = 1;
    return zconn_queue(c, buf, n);
  }
  if (cmd->kind != MQI_ZMTP_CMD_READY)
    return zconn_fail(c, "expected READY, got \"%.*s\"", (int)cmd->name_len,
                      (const char *)cmd->name);
  return zconn_accept_meta(c, cmd);
}

/* One frame during the handshake.  Like libzmq we do not insist on the
** COMMAND flag here: a data frame carrying a READY body is a READY. */
static int zconn_handshake(mqi_zconn *c, int64_t now, const mqi_zmtp_frame *f) {
  mqi_zmtp_cmd cmd;
  if (mqi_zmtp_cmd_parse(f->body, f->size, &cmd) != MQI_ZMTP_OK)
    return zconn_fail(c, "malformed command during the handshake");
  if (cmd.kind == MQI_ZMTP_CMD_ERROR) {
    const uint8_t *r = NULL;
    size_t rl = 0;
    mqi_zmtp_error_parse(&cmd, &r, &rl);
    c->peer_error = 1;
    return zconn_fail(c, "peer sent ERROR \"%.*s\"", (int)(rl > 64 ? 64 : rl),
                      r ? (const char *)r : "");
  }
  if (c->cfg.mechanism == MQI_ZMTP_MECH_NULL) {
    if (cmd.kind != MQI_ZMTP_CMD_READY)
      return zconn_fail(c, "expected READY, got \"%.*s\"", (int)cmd.name_len,
                        (const char *)cmd.name);
    return zconn_accept_meta(c, &cmd);
  }
  if (c->cfg.client) return zconn_plain_client(c, &cmd);
  if (c->hs_step == 0) {
    if (cmd.kind != MQI_ZMTP_CMD_HELLO)
      return zconn_fail(c, "expected PLAIN HELLO, got \"%.*s\"", (int)cmd.name_len,
                        (const char *)cmd.name);
    return zconn_plain_hello(c, now, &cmd);
  }
  if (cmd.kind != MQI_ZMTP_CMD_INITIATE)
    return zconn_fail(c, "expected PLAIN INITIATE, got \"%.*s\"", (int)cmd.name_len,
                      (const char *)cmd.name);
  int r = zconn_accept_meta(c, &cmd);
  /* PLAIN: the server's READY is the last word; the client has sent all of
  ** its handshake already, so messages may follow it at once. */
  return r == MQI_ZC_OK ? zconn_send_ready(c) : r;
}

/* ------------------------------------------------------------------------
** Traffic
*/
static int zconn_command(mqi_zconn *c, int64_t now, const mqi_zmtp_frame *f) {
  mqi_zmtp_cmd cmd;
  /* After the handshake libzmq ignores what it does not understand, even
  ** malformed commands; being stricter would only break peers. */
  if (mqi_zmtp_cmd_parse(f->body, f->size, &cmd) != MQI_ZMTP_OK) return MQI_ZC_OK;
  if (cmd.kind == MQI_ZMTP_CMD_PING) {
    unsigned ttl = 0;
    const uint8_t *ctx = NULL;
    size_t ctx_len = 0, n = 0;
    uint8_t buf[ZCONN_CMD_MAX];
    if (mqi_zmtp_ping_parse(&cmd, &ttl, &ctx, &ctx_len) != MQI_ZMTP_OK) return MQI_ZC_OK;
    if (ttl > 0) c->ttl_deadline = now + (int64_t)ttl * 100;
    if (mqi_zmtp_pong_encode(buf, sizeof buf, ctx, ctx_len, &n) != MQI_ZMTP_OK) return MQI_ZC_OK;
    return zconn_queue(c, buf, n);
  }
  if (cmd.kind == MQI_ZMTP_CMD_ERROR) {
    const uint8_t *r = NULL;
    size_t rl = 0;
    mqi_zmtp_error_parse(&cmd, &r, &rl);
    c->peer_error = 1;
    return zconn_fail(c, "peer sent ERROR \"%.*s\"", (int)(rl > 64 ? 64 : rl),
                      r ? (const char *)r : "");
  }
  return MQI_ZC_OK; /* PONG, a second READY, SUBSCRIBE, unknown: ignored */
}

/* A frame the decoder produced; *f is ours to release. */
static int zconn_frame(mqi_zconn *c, int64_t now, mqi_zmtp_frame *f, mqi_zconn_msg_fn fn,
                       void *ctx) {
  int r;
  if (c->state == MQI_ZC_HANDSHAKE) {
    r = zconn_handshake(c, now, f);
    /* The HELLO body holds a password: do not leave it in freed memory. */
    if (f->body) memset(f->body, 0, f->size);
    mqi_zmtp_frame_release(&c->dec, f);
    return r;
  }
  if (c->state != MQI_ZC_ACTIVE) {
    mqi_zmtp_frame_release(&c->dec, f);
    return MQI_ZC_OK;
  }
  if (f->flags & MQI_ZMTP_F_COMMAND) {
    r = zconn_command(c, now, f);
    mqi_zmtp_frame_release(&c->dec, f);
    return r;
  }
  if (c->nparts == c->partcap) {
    size_t cap = c->partcap ? c->partcap * 2 : 4;
    mqi_zmtp_frame *p = realloc(c->parts, cap * sizeof *p);
    if (!p) {
      mqi_zmtp_frame_release(&c->dec, f);
      return zconn_fail(c, "out of memory for a message of %zu frames", c->nparts + 1);
    }
    c->parts = p;
    c->partcap = cap;
  }
  c->parts[c->nparts++] = *f;
  if (f->flags & MQI_ZMTP_F_MORE) return MQI_ZC_OK;
  size_t n = c->nparts;
  int pause = fn ? fn(ctx, c, c->parts, n) : 0;
  if (c->state == MQI_ZC_DEAD) return MQI_ZC_CLOSED; /* the handler closed us */
  zconn_drop_parts(c);
  return pause ? MQI_ZC_PAUSED : MQI_ZC_OK;
}

/* Process buffered input until it is used up, the handler pauses, or the
** connection dies. */
static int zconn_process(mqi_zconn *c, int64_t now, mqi_zconn_msg_fn fn, void *ctx) {
  while (c->ipos < c->ilen) {
    const uint8_t *p = c->ibuf + c->ipos;
    size_t n = c->ilen - c->ipos, used = 0;
    if (c->state == MQI_ZC_GREETING) {
      int rc = mqi_zmtp_greeting_feed(&c->greet, p, n, &used);
      c->ipos += used;
      if (rc == MQI_ZMTP_AGAIN) continue;
      if (rc == MQI_ZMTP_EMECH)
        return zconn_fail(c, "security mechanism mismatch (the peer does not use %s)",
                          c->cfg.mechanism == MQI_ZMTP_MECH_NULL ? "NULL" : "PLAIN");
      if (rc != MQI_ZMTP_OK) return zconn_fail(c, "greeting: %s", mqi_zmtp_rcstr(rc));
      c->state = MQI_ZC_HANDSHAKE;
      /* NULL is symmetric and libzmq sends READY at once; so do we.  With
      ** PLAIN the client speaks first (HELLO), the server only after it. */
      if (c->cfg.mechanism == MQI_ZMTP_MECH_NULL && zconn_send_ready(c) != MQI_ZC_OK)
        return MQI_ZC_CLOSED;
      if (c->cfg.mechanism == MQI_ZMTP_MECH_PLAIN && c->cfg.client &&
          zconn_plain_send_hello(c) != MQI_ZC_OK)
        return MQI_ZC_CLOSED;
      continue;
    }
    if (c->state != MQI_ZC_HANDSHAKE && c->state != MQI_ZC_ACTIVE) {
      c->ipos = c->ilen; /* CLOSING: whatever else the peer says is moot */
      break;
    }
    mqi_zmtp_frame f;
    int rc = mqi_zmtp_decoder_feed(&c->dec, p, n, &used, &f);
    c->ipos += used;
    if (rc == MQI_ZMTP_AGAIN) continue;
    if (rc != MQI_ZMTP_FRAME) return zconn_fail(c, "frame: %s", mqi_zmtp_rcstr(rc));
    int r = zconn_frame(c, now, &f, fn, ctx);
    if (r != MQI_ZC_OK) return r;
  }
  if (c->ipos == c->ilen) c->ipos = c->ilen = 0;
  return c->state == MQI_ZC_DEAD ? MQI_ZC_CLOSED : MQI_ZC_OK;
}

/* CLOSING: read and discard until the peer closes, so that our ERROR is
** not overtaken by a reset caused by unread input. */
static int zconn_drain(mqi_zconn *c) {
  for (int i = 0; i < 16; i++) {
    ssize_t n = recv(c->fd, c->ibuf, ZCONN_IBUF, 0);
    if (n > 0) continue;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return MQI_ZC_OK;
    char why[sizeof c->why];
    memcpy(why, c->why, sizeof why);
    mqi_zconn_close(c, why);
    return MQI_ZC_CLOSED;
  }
  return MQI_ZC_OK;
}

int mqi_zconn_input(mqi_zconn *c, int64_t now, size_t budget, mqi_zconn_msg_fn fn, void *ctx) {
  if (c->state == MQI_ZC_DEAD) return MQI_ZC_CLOSED;
  if (c->state == MQI_ZC_CLOSING) return zconn_drain(c);
  int r = zconn_process(c, now, fn, ctx);
  if (r != MQI_ZC_OK) return r;
  size_t got = 0;
  while (got < budget) {
    ssize_t n = recv(c->fd, c->ibuf, ZCONN_IBUF, 0);
    if (n > 0) {
      got += (size_t)n;
      c->ipos = 0;
      c->ilen = (size_t)n;
      /* Any traffic proves the peer alive (a PING in it re-arms its TTL). */
      c->last_recv = now;
      c->ping_deadline = 0;
      c->ttl_deadline = 0;
      r = zconn_process(c, now, fn, ctx);
      if (r != MQI_ZC_OK) return r;
      if (c->state == MQI_ZC_CLOSING) return MQI_ZC_OK;
      continue;
    }
    if (n == 0) {
      int mid = mqi_zmtp_decoder_finish(&c->dec) != MQI_ZMTP_OK || c->nparts > 0;
      return zconn_fail(c, mid ? "peer closed the connection inside a message"
                           : c->state == MQI_ZC_ACTIVE ? "peer closed the connection"
                                                       : "peer closed during the handshake");
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return MQI_ZC_OK;
    return zconn_fail(c, "recv: %s", strerror(errno));
  }
  return MQI_ZC_OK;
}

int mqi_zconn_send(mqi_zconn *c, const mqi_zpart *parts, size_t n) {
  uint8_t hdr[MQI_ZMTP_HEADER_MAX];
  size_t hl = 0, total = 0;
  if (c->state != MQI_ZC_ACTIVE || c->wdead || n == 0) return MQI_ZMTP_EINVAL;
  for (size_t i = 0; i < n; i++) {
    size_t one = (parts[i].len <= 255 ? 2 : 9) + parts[i].len;
    if (parts[i].len > SIZE_MAX / 4 || total > SIZE_MAX / 4 - one) return MQI_ZMTP_EINVAL;
    total += one;
  }
  size_t pending = mqi_zconn_pending(c);
  if (pending > 0 && pending + total > c->cfg.out_limit) return MQI_ZMTP_ESPACE;
  uint8_t *at = zconn_reserve(c, total);
  if (!at) return MQI_ZMTP_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    unsigned flags = i + 1 < n ? MQI_ZMTP_F_MORE : 0;
    mqi_zmtp_frame_header_encode(hdr, flags, parts[i].len, &hl);
    memcpy(at, hdr, hl);
    at += hl;
    if (parts[i].len) memcpy(at, parts[i].data, parts[i].len);
    at += parts[i].len;
  }
  c->olen += total;
  c->queued += total;
  return MQI_ZMTP_OK;
}

int mqi_zconn_flush(mqi_zconn *c, int64_t now) {
  (void)now;
  if (c->state == MQI_ZC_DEAD) return MQI_ZC_CLOSED;
  while (c->ohead < c->olen) {
    ssize_t n = send(c->fd, c->obuf + c->ohead, c->olen - c->ohead, MSG_NOSIGNAL);
    if (n > 0) {
      c->ohead += (size_t)n;
      c->written += (uint64_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return MQI_ZC_OK;
    /* Held, the peer may have closed after sending what we have not read
    ** yet: keep that, to be read up to the peer's close once the hold ends,
    ** and write nothing more. */
    if (c->held) {
      c->wdead = 1;
      c->ohead = c->olen = 0;
      return MQI_ZC_OK;
    }
    return zconn_fail(c, "send: %s", n < 0 ? strerror(errno) : "no progress");
  }
  c->ohead = c->olen = 0;
  if (c->state == MQI_ZC_CLOSING && !c->shut_wr) {
    /* The ERROR is out: tell the peer we are done and wait for its close. */
    shutdown(c->fd, SHUT_WR);
    c->shut_wr = 1;
  }
  return MQI_ZC_OK;
}

/* ------------------------------------------------------------------------
** Timers
*/
static int64_t zconn_next_ping(const mqi_zconn *c) {
  if (c->cfg.heartbeat_ms <= 0 || (c->ping_deadline && !c->held)) return INT64_MAX;
  int64_t base = c->last_recv > c->last_ping ? c->last_recv : c->last_ping;
  return base + c->cfg.heartbeat_ms;
}

int64_t mqi_zconn_deadline(const mqi_zconn *c) {
  int64_t d = INT64_MAX;
  switch (c->state) {
    case MQI_ZC_GREETING:
    case MQI_ZC_HANDSHAKE:
      if (c->cfg.handshake_timeout_ms > 0) d = c->created + c->cfg.handshake_timeout_ms;
      break;
    case MQI_ZC_CLOSING:
      d = c->close_deadline;
      break;
    case MQI_ZC_ACTIVE:
      d = zconn_next_ping(c);
      if (c->held) break;
      if (c->ping_deadline && c->ping_deadline < d) d = c->ping_deadline;
      if (c->ttl_deadline && c->ttl_deadline < d) d = c->ttl_deadline;
      break;
    default:
      break;
  }
  return d;
}

int mqi_zconn_tick(mqi_zconn *c, int64_t now) {
  switch (c->state) {
    case MQI_ZC_DEAD:
      return MQI_ZC_CLOSED;
    case MQI_ZC_GREETING:
    case MQI_ZC_HANDSHAKE:
      if (c->cfg.handshake_timeout_ms > 0 && now - c->created >= c->cfg.handshake_timeout_ms)
        return zconn_fail(c, "handshake not finished within %lld ms",
                          (long long)c->cfg.handshake_timeout_ms);
      return MQI_ZC_OK;
    case MQI_ZC_CLOSING:
      if (now >= c->close_deadline) {
        char why[sizeof c->why];
        memcpy(why, c->why, sizeof why);
        mqi_zconn_close(c, why);
        return MQI_ZC_CLOSED;
      }
      return MQI_ZC_OK;
    default:
      break;
  }
  /* Held, we cannot tell a silent peer from one whose PONGs wait unread in
  ** the kernel: we only keep it from timing us out. */
  if (!c->held && c->ttl_deadline && now >= c->ttl_deadline)
    return zconn_fail(c, "peer silent past the TTL of its own PING");
  if (!c->held && c->ping_deadline && now >= c->ping_deadline)
    return zconn_fail(c, "peer silent for %lld ms after our PING",
                      (long long)c->cfg.heartbeat_timeout_ms);
  if (now >= zconn_next_ping(c)) {
    uint8_t buf[ZCONN_CMD_MAX];
    size_t n = 0;
    /* The TTL tells the peer how long to wait for us: our own timeout,
    ** in deciseconds, capped at 655 by the codec for libzmq's sake. */
    int64_t ds = (c->cfg.heartbeat_timeout_ms + 99) / 100;
    if (ds < 1) ds = 1;
    if (ds > MQI_ZMTP_PING_TTL_MAX) ds = MQI_ZMTP_PING_TTL_MAX;
    if (mqi_zmtp_ping_encode(buf, sizeof buf, (unsigned)ds, NULL, 0, &n) == MQI_ZMTP_OK &&
        zconn_queue(c, buf, n) != MQI_ZC_OK)
      return MQI_ZC_CLOSED;
    c->last_ping = now;
    if (!c->held) c->ping_deadline = now + c->cfg.heartbeat_timeout_ms;
  }
  return MQI_ZC_OK;
}

void mqi_zconn_hold(mqi_zconn *c, int held, int64_t now) {
  held = held != 0;
  if (held == c->held) return;
  c->held = held;
  if (held) {
    c->held_since = now;
    return;
  }
  /* The time held does not count as the peer's silence; the silence before
  ** and after it adds up, so a hold that comes and goes cannot keep a dead
  ** peer forever. */
  int64_t d = now - c->held_since;
  c->last_recv = mqi_time_add(c->last_recv, d);
  if (c->ping_deadline) c->ping_deadline = mqi_time_add(c->ping_deadline, d);
  if (c->ttl_deadline) c->ttl_deadline = mqi_time_add(c->ttl_deadline, d);
  /* A peer read during the hold (the turn it ends reads before releasing)
  ** was heard from then, not d later; and the PINGs sent while held must
  ** not put off the first one after it, which arms the silence check, or
  ** holds a little less than a heartbeat apart would keep a dead peer. */
  if (c->last_recv > now) c->last_recv = now;
  if (c->last_ping > c->last_recv) c->last_ping = c->last_recv;
}
