/*
** zmtp_router.c -- the MQ1 request protocol served on a ROUTER endpoint:
** acknowledged, idempotent puts and leased consumption for libzmq DEALER
** and REQ peers (doc/protocol.md is the reference; this is its server).
**
** Every request is one ZMTP message of separate frames:
**     [""] "MQ1" VERB ARG...
** An empty first frame is the delimiter a REQ socket always sends (a DEALER
** may); it is echoed in front of every reply to that request, which is all
** a REQ socket needs to accept the reply.  Replies go back on the
** connection the request came on, so no routing id is ever needed.
**
** The durability promise lives in the order of operations: the PUTs read in
** one turn of the loop are stored with one mq_put_batch per queue (one
** commit, one fsync under MQ_SYNC_FULL), and their ACKs are queued only
** after that call returned MQ_OK.  A PUT is idempotent: its client_msg_id,
** prefixed by the producer (the ":producer" option, else the peer's ZMTP
** Identity), is the message's dedup key, so a client that did not see its
** ACK sends the same PUT again and gets the first message's id back.  That
** makes puts over the network at-least-once into the queue and, within the
** queue's dedup window, exactly-once.
**
** Consumption is leased like mq_get: GET returns one message (or EMPTY,
** after waiting up to wait_ms); CONSUME opens a window of `credit`
** messages that are pushed to the peer as they come and are counted until
** the peer ACKs or NACKs them or their lease ends (also after a STOP: the
** peer may still settle them).  What a connection holds when it goes away
** (CONSUME deliveries, all of them) is nacked in one commit per stream so
** it is delivered again at once; GET deliveries keep their lease, so a REQ
** client that reconnects can still ack them.
**
** Nothing is leased that cannot be sent at once: a delivery is leased only
** when its MSG fits the connection's output budget (mqi_get_batch_fit), so
** a consumer of large messages that reads slowly is served as it reads
** and never disconnected at the output limit, and no lease is taken that
** could not be sent.  The budget is half the output limit; the other half
** is for replies to the requests already read (reading stops at half).
**
** Times: lease ends and GET deadlines are on the server's clock
** (mqi_server_now, injectable for tests); looking again at an empty queue
** is on the real monotonic clock, because it is about the store, which
** other processes change, not about the peer.
**
** Protocol errors in a request are answered (ERR, or an ACK/DONE with a 4xx
** status), never with a ZMTP ERROR or a close: the ZMTP session is sound
** even when a request is not, and closing would only make libzmq resend.
**
** A request is read in two steps: mqi_router_parse checks every frame,
** length and number and touches nothing but its output, and only then do
** the handlers allocate and act.  Keeping the peer-facing parser pure is
** what lets fuzz/fuzz_zmtp_router.c drive it without a store or a socket.
*/
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zmtp_net.h"

#define RT_TAG "MQ1"
#define RT_ID_MAX MQI_RT_ID_MAX
#define RT_HEADERS_MAX MQI_RT_HEADERS_MAX
#define RT_BATCH_MSGS 4096 /* puts per turn before reading pauses */
#define RT_BATCH_BYTES ((size_t)32 << 20)
#define RT_SUBS_MAX 64    /* CONSUME streams per connection */
#define RT_GETS_MAX 64    /* waiting GETs per connection */
#define RT_DELIVER_MAX 64 /* leased per stream per turn */
#define RT_POLL_MS 20     /* look at an empty queue this often */

/* Verbs of settle requests. */
#define RT_ACK 0
#define RT_NACK 1
#define RT_TOUCH 2

typedef struct rt_put {
  mqi_srv_conn *sc;
  size_t ep; /* sc's endpoint, for its counters (sc may be gone by then) */
  int delim;
  char queue[MQ_NAME_MAX + 1];
  char cid[RT_ID_MAX + 1];
  char key[MQ_NAME_MAX + 1];
  char subject[MQ_SUBJECT_MAX + 1];
  void *data; /* owned (a frame body) */
  size_t len;
  mq_put_options po;
  mq_header *hdrs; /* owned, strings in hbuf */
  char *hbuf;
  int status;
  int64_t id;
  char text[120];
} rt_put;

typedef struct rt_settle {
  mqi_srv_conn *sc;
  size_t ep; /* sc's endpoint, for its counters (sc may be gone by then) */
  int delim;
  int verb;
  char queue[MQ_NAME_MAX + 1];
  char receipt[MQ_RECEIPT_MAX + 1];
  int64_t ms; /* NACK delay, TOUCH visibility */
  char *reason;
  int status;
} rt_settle;

typedef struct rt_get {
  int delim;
  char queue[MQ_NAME_MAX + 1];
  int64_t lease_ms;
  int64_t deadline; /* server clock */
  size_t need;      /* bytes of the MSG that did not fit the output; 0 */
} rt_get;

typedef struct rt_flight {
  char receipt[MQ_RECEIPT_MAX + 1];
  int64_t until; /* server clock: the lease's end as we count it */
} rt_flight;

/* A CONSUME stream.  window 0: stopped, kept until what it delivered is
** settled or its lease ends, so that a close still gives it back. */
typedef struct rt_sub {
  int delim;
  char queue[MQ_NAME_MAX + 1];
  size_t window;
  int64_t lease_ms;    /* 0: the queue's */
  int64_t empty_until; /* monotonic ms */
  size_t need;         /* bytes of the MSG that did not fit the output; 0 */
  rt_flight *fl;
  size_t nfl, flcap;
} rt_sub;

struct mqi_rt_conn {
  int known;                    /* producer has been derived */
  char producer[RT_ID_MAX + 2]; /* from the Identity: see rt_producer */
  rt_sub subs[RT_SUBS_MAX];
  size_t nsubs;
  rt_get gets[RT_GETS_MAX];
  size_t ngets;
  size_t next_sub; /* the stream served first next turn: each gets its turn
                      at the output budget */
};

struct mqi_rt_state {
  rt_put *puts;
  size_t nputs, putcap, put_bytes;
  rt_settle *settles;
  size_t nsettles, settlecap;
  int64_t poll_at; /* monotonic ms of the next look at waiting GETs */
};

/* Store polling runs on this clock; leases and waits on the server's. */
static int64_t rt_mono(void) { return mqi_os_monotonic_ms(); }

/* A time `at` on the server's clock (now there) as monotonic ms. */
static int64_t rt_mono_of(int64_t at, int64_t now, int64_t mono) {
  if (at <= now) return mono;
  if (now < 0 && at > INT64_MAX + now) return INT64_MAX;
  return mqi_time_add(mono, at - now);
}

int mqi_router_new(mq_server *s) {
  s->rt = calloc(1, sizeof *s->rt);
  return s->rt ? MQ_OK : MQ_ENOMEM;
}

static void rt_put_clear(rt_put *p) {
  free(p->data);
  free(p->hdrs);
  free(p->hbuf);
  p->data = NULL;
  p->hdrs = NULL;
  p->hbuf = NULL;
}

void mqi_router_free(mq_server *s) {
  mqi_rt_state *st = s->rt;
  if (!st) return;
  for (size_t i = 0; i < st->nputs; i++) rt_put_clear(&st->puts[i]);
  for (size_t i = 0; i < st->nsettles; i++) free(st->settles[i].reason);
  free(st->puts);
  free(st->settles);
  free(st);
  s->rt = NULL;
}

/* ------------------------------------------------------------------------
** Frames in and out
*/
static int rt_is(const mqi_zmtp_frame *f, const char *s) {
  size_t n = strlen(s);
  return f->size == n && (n == 0 || memcmp(f->body, s, n) == 0);
}

/* Copy a frame into a C string of 1..max printable ASCII bytes (no space
** unless spaces is set).  0 on success. */
static int rt_str(const mqi_zmtp_frame *f, char *out, size_t max, int spaces) {
  if (f->size == 0 || f->size > max) return -1;
  for (size_t i = 0; i < f->size; i++) {
    uint8_t c = f->body[i];
    if (c < 0x20 || c > 0x7e || (c == ' ' && !spaces)) return -1;
  }
  memcpy(out, f->body, f->size);
  out[f->size] = '\0';
  return 0;
}

/* A decimal integer (optionally negative) filling the frame. */
static int rt_int(const mqi_zmtp_frame *f, int64_t min, int64_t max, int64_t *out) {
  int64_t v = 0;
  size_t i = 0;
  int neg = 0;
  if (f->size > 0 && f->body[0] == '-') {
    neg = 1;
    i = 1;
  }
  if (f->size == i || f->size - i > 18) return -1;
  for (; i < f->size; i++) {
    if (f->body[i] < '0' || f->body[i] > '9') return -1;
    v = v * 10 + (f->body[i] - '0');
  }
  if (neg) v = -v;
  if (v < min || v > max) return -1;
  *out = v;
  return 0;
}

/* Send [""] "MQ1" then n more frames. */
static void rt_reply(mq_server *s, mqi_srv_conn *sc, int delim, const mqi_zpart *more, size_t n) {
  mqi_zpart parts[8];
  size_t k = 0;
  if (!sc || mqi_zconn_state(sc->z) != MQI_ZC_ACTIVE) return;
  if (delim) parts[k++] = (mqi_zpart){"", 0};
  parts[k++] = (mqi_zpart){RT_TAG, 3};
  for (size_t i = 0; i < n && k < sizeof parts / sizeof parts[0]; i++) parts[k++] = more[i];
  mqi_server_send(s, sc, parts, k);
}

static mqi_zpart rt_p(const char *s) { return (mqi_zpart){s, strlen(s)}; }

static void rt_err(mq_server *s, mqi_srv_conn *sc, int delim, const char *code, const char *text) {
  mqi_zpart p[3] = {rt_p("ERR"), rt_p(code), rt_p(text)};
  rt_reply(s, sc, delim, p, 3);
}

/* The reply status for a library result code. */
static int rt_status(int rc) {
  switch (rc) {
    case MQ_OK:
      return 200;
    case MQ_EINVAL:
      return 400;
    case MQ_ENOTFOUND:
      return 404;
    case MQ_ESTALE:
      return 410;
    case MQ_ETOOBIG:
      return 413;
    case MQ_EFULL:
      return 507;
    case MQ_EBUSY:
    case MQ_EUNKNOWN:
    case MQ_EIO:
      return 503;
    default:
      return 500;
  }
}

/* The producer prefix of dedup keys: the Identity (or :producer) when it
** is short printable text, else a hash of it ("#" and 16 hex digits).  A
** key is producer "/" client_msg_id, and the client_msg_id may hold "/":
** a producer with a "/" is hashed too, so the first "/" of a key always
** ends the producer and two producers can never make the same key.  One
** starting with "#" is hashed so that it cannot pass for another's hash. */
static void rt_producer(const uint8_t *id, size_t len, char *out, size_t cap) {
  int printable = len > 0 && len <= RT_ID_MAX && id[0] != '#';
  for (size_t i = 0; printable && i < len; i++)
    printable = id[i] > 0x20 && id[i] < 0x7f && id[i] != '/';
  if (len == 0) {
    out[0] = '\0';
  } else if (printable) {
    memcpy(out, id, len);
    out[len] = '\0';
  } else {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) h = (h ^ id[i]) * 1099511628211ULL;
    snprintf(out, cap, "#%016" PRIx64, h);
  }
}

/* The router state of sc, made on first use; NULL (and sc closed) when out
** of memory.  The producer is derived here, not when the handshake ends,
** because the first request may come in the same read as the READY. */
static mqi_rt_conn *rt_conn(mqi_srv_conn *sc) {
  if (!sc->rt) sc->rt = calloc(1, sizeof *sc->rt);
  if (!sc->rt) {
    mqi_zconn_close(sc->z, "out of memory");
    return NULL;
  }
  if (!sc->rt->known) {
    size_t len = 0;
    const uint8_t *id = mqi_zconn_identity(sc->z, &len);
    rt_producer(id, len, sc->rt->producer, sizeof sc->rt->producer);
    sc->rt->known = 1;
  }
  return sc->rt;
}

/* ------------------------------------------------------------------------
** Parsing: a pure function of the frames, so fuzz/fuzz_zmtp_router.c can
** drive every branch without a store or a socket.  Empty frames may come
** with a NULL body, so nothing here hands a body to memcmp or memchr
** without a nonzero size.
*/
static int rt_refuse(mqi_router_req *r, int code, const char *why) {
  r->error = why;
  return code;
}

static int rt_has_nul(const mqi_zmtp_frame *f) {
  return f->size > 0 && memchr(f->body, 0, f->size) != NULL;
}

/* PUT queue client_msg_id payload *(name value) */
static int rt_parse_put(const mqi_zmtp_frame *a, size_t n, mqi_router_req *r) {
  if (n < 2 || rt_str(&a[1], r->cid, MQI_RT_ID_MAX, 0) != 0)
    return rt_refuse(r, MQI_RTP_ERR,
                     "PUT needs: queue client_msg_id (1..64 printable bytes) payload");
  if (n < 3) return rt_refuse(r, MQI_RTP_REFUSE, "PUT without a payload frame");
  if (rt_str(&a[0], r->queue, MQ_NAME_MAX, 0) != 0)
    return rt_refuse(r, MQI_RTP_REFUSE, "bad queue name");
  if ((n - 3) % 2 != 0)
    return rt_refuse(r, MQI_RTP_REFUSE, "header frames must come in name/value pairs");
  if ((n - 3) / 2 > MQI_RT_HEADERS_MAX) return rt_refuse(r, MQI_RTP_REFUSE, "too many headers");
  for (size_t i = 3; i + 1 < n; i += 2) {
    const mqi_zmtp_frame *nm = &a[i], *val = &a[i + 1];
    if (nm->size == 0 || nm->size > 255 || rt_has_nul(nm) || rt_has_nul(val))
      return rt_refuse(r, MQI_RTP_REFUSE,
                       "a header name is empty or long, or a name or value holds a NUL byte");
    if (nm->body[0] != ':') {
      r->header_bytes += nm->size + val->size + 2;
      r->n_headers++;
      continue;
    }
    int64_t v = 0;
    if (rt_is(nm, ":delay") || rt_is(nm, ":ttl")) {
      if (rt_int(val, 0, INT64_MAX / 4, &v) != 0)
        return rt_refuse(r, MQI_RTP_REFUSE, "bad :delay or :ttl");
      if (rt_is(nm, ":delay"))
        r->delay_ms = v;
      else
        r->ttl_ms = v;
    } else if (rt_is(nm, ":priority")) {
      if (rt_int(val, -1000000000, 1000000000, &v) != 0)
        return rt_refuse(r, MQI_RTP_REFUSE, "bad :priority");
      r->priority = (int)v;
    } else if (rt_is(nm, ":producer")) {
      if (rt_str(val, r->producer, MQI_RT_ID_MAX, 0) != 0)
        return rt_refuse(r, MQI_RTP_REFUSE, "bad :producer");
    } else if (rt_is(nm, ":subject")) {
      if (rt_str(val, r->subject, MQ_SUBJECT_MAX, 0) != 0)
        return rt_refuse(r, MQI_RTP_REFUSE, "bad :subject");
    } else {
      return rt_refuse(r, MQI_RTP_REFUSE, "unknown option (names starting with ':' are options)");
    }
  }
  return MQI_RTP_OK;
}

/* ACK/NACK/TOUCH queue receipt [...] */
static int rt_parse_settle(const mqi_zmtp_frame *a, size_t n, mqi_router_req *r) {
  int verb = r->verb;
  if (n < 2 || rt_str(&a[1], r->receipt, MQ_RECEIPT_MAX, 0) != 0)
    return rt_refuse(r, MQI_RTP_ERR, "ACK, NACK and TOUCH need: queue receipt");
  if (rt_str(&a[0], r->queue, MQ_NAME_MAX, 0) != 0)
    return rt_refuse(r, MQI_RTP_REFUSE, "bad queue name");
  /* Refused here, alone: in the turn's mq_ack_batch it would fail every
  ** other ACK of the queue read with it. */
  int64_t id;
  uint64_t lease;
  if (mqi_receipt_parse(r->receipt, &id, &lease) != MQ_OK)
    return rt_refuse(r, MQI_RTP_REFUSE, "malformed receipt");
  if (verb == MQI_RT_ACK && n != 2)
    return rt_refuse(r, MQI_RTP_REFUSE, "ACK takes: queue receipt");
  if (verb == MQI_RT_TOUCH && (n != 3 || rt_int(&a[2], 0, INT64_MAX / 4, &r->ms) != 0))
    return rt_refuse(r, MQI_RTP_REFUSE, "TOUCH takes: queue receipt visibility_ms");
  if (verb == MQI_RT_NACK && (n > 4 || (n >= 3 && rt_int(&a[2], 0, INT64_MAX / 4, &r->ms) != 0)))
    return rt_refuse(r, MQI_RTP_REFUSE, "NACK takes: queue receipt [delay_ms [reason]]");
  if (verb == MQI_RT_NACK && n == 4) {
    if (a[3].size > MQI_RT_REASON_MAX || rt_has_nul(&a[3]))
      return rt_refuse(r, MQI_RTP_REFUSE, "a NACK reason is at most 1000 bytes without NUL");
    r->has_reason = 1;
  }
  return MQI_RTP_OK;
}

/* GET queue [lease_ms [wait_ms]] */
static int rt_parse_get(const mqi_zmtp_frame *a, size_t n, mqi_router_req *r) {
  if (n < 1 || n > 3 || rt_str(&a[0], r->queue, MQ_NAME_MAX, 0) != 0 ||
      (n >= 2 && rt_int(&a[1], 0, INT64_MAX / 4, &r->lease_ms) != 0) ||
      (n == 3 && rt_int(&a[2], 0, MQI_RT_WAIT_MAX_MS, &r->wait_ms) != 0))
    return rt_refuse(r, MQI_RTP_ERR, "GET takes: queue [lease_ms [wait_ms]]");
  return MQI_RTP_OK;
}

/* CONSUME queue credit [lease_ms]; STOP queue */
static int rt_parse_consume(const mqi_zmtp_frame *a, size_t n, mqi_router_req *r) {
  int stop = r->verb == MQI_RT_STOP;
  if (n < 1 || rt_str(&a[0], r->queue, MQ_NAME_MAX, 0) != 0 ||
      (stop ? n != 1
            : (n < 2 || n > 3 || rt_int(&a[1], 0, INT64_MAX / 4, &r->credit) != 0 ||
               (n == 3 && rt_int(&a[2], 0, INT64_MAX / 4, &r->lease_ms) != 0))))
    return rt_refuse(r, MQI_RTP_ERR,
                     stop ? "STOP takes: queue" : "CONSUME takes: queue credit [lease_ms]");
  return MQI_RTP_OK;
}

int mqi_router_parse(const mqi_zmtp_frame *parts, size_t n, mqi_router_req *r) {
  static const struct {
    const char *name;
    int verb;
  } verbs[] = {{"PUT", MQI_RT_PUT},   {"ACK", MQI_RT_ACK}, {"NACK", MQI_RT_NACK},
               {"TOUCH", MQI_RT_TOUCH}, {"GET", MQI_RT_GET}, {"CONSUME", MQI_RT_CONSUME},
               {"STOP", MQI_RT_STOP}};
  size_t i = 0;
  memset(r, 0, sizeof *r);
  if (n > 1 && parts[0].size == 0) {
    r->delim = 1;
    i = 1;
  }
  if (n - i < 2 || !rt_is(&parts[i], RT_TAG))
    return rt_refuse(r, MQI_RTP_ERR, "not an MQ1 request: expected [\"\"] \"MQ1\" VERB ARGS...");
  for (size_t k = 0; k < sizeof verbs / sizeof verbs[0] && !r->verb; k++)
    if (rt_is(&parts[i + 1], verbs[k].name)) r->verb = verbs[k].verb;
  r->arg = i + 2;
  const mqi_zmtp_frame *a = parts + r->arg;
  size_t na = n - r->arg;
  switch (r->verb) {
    case MQI_RT_PUT:
      return rt_parse_put(a, na, r);
    case MQI_RT_ACK:
    case MQI_RT_NACK:
    case MQI_RT_TOUCH:
      return rt_parse_settle(a, na, r);
    case MQI_RT_GET:
      return rt_parse_get(a, na, r);
    case MQI_RT_CONSUME:
    case MQI_RT_STOP:
      return rt_parse_consume(a, na, r);
    default:
      return rt_refuse(r, MQI_RTP_ERR, "unknown verb");
  }
}

/* ------------------------------------------------------------------------
** Requests: the parsed request is acted on, or queued for the turn's work
*/
/* The kind of queue (MQ_KIND_*), or -1 with *status and *why set: 404 only
** when there is no such queue.  A lock or an I/O error is a 503, which
** tells the client to retry, not to drop what it was sending. */
static int rt_queue_kind(mq_server *s, const char *queue, int *status, const char **why) {
  mq_queue_info info;
  int rc = mq_queue_info_get(s->store, queue, &info);
  if (rc == MQ_OK) return info.kind;
  *status = rt_status(rc);
  *why = rc == MQ_ENOTFOUND ? "no such queue" : mq_errstr(rc);
  return -1;
}

static void rt_put_refuse(mq_server *s, mqi_srv_conn *sc, int delim, const char *cid,
                          const char *status, const char *why) {
  mqi_zpart r[5] = {rt_p("ACK"), rt_p(cid), rt_p(status), rt_p(""), rt_p(why)};
  rt_reply(s, sc, delim, r, 5);
}

/* A parsed PUT: copy its headers, take its payload frame, queue it. */
static void rt_req_put(mq_server *s, mqi_srv_conn *sc, const mqi_router_req *q,
                       mqi_zmtp_frame *parts) {
  mqi_rt_state *st = s->rt;
  mqi_zmtp_frame *a = parts + q->arg;
  rt_put p;
  memset(&p, 0, sizeof p);
  p.sc = sc;
  p.ep = sc->ep;
  p.delim = q->delim;
  memcpy(p.queue, q->queue, sizeof p.queue);
  memcpy(p.cid, q->cid, sizeof p.cid);
  memcpy(p.subject, q->subject, sizeof p.subject);
  mq_put_options_init(&p.po);
  p.po.delay_ms = q->delay_ms;
  p.po.ttl_ms = q->ttl_ms;
  p.po.priority = q->priority;
  if (q->n_headers) {
    p.hdrs = malloc(q->n_headers * sizeof *p.hdrs);
    p.hbuf = malloc(q->header_bytes);
    if (!p.hdrs || !p.hbuf) {
      rt_put_refuse(s, sc, q->delim, q->cid, "400", "out of memory");
      rt_put_clear(&p);
      return;
    }
    char *at = p.hbuf;
    size_t k = 0;
    for (size_t i = 3; k < q->n_headers; i += 2) { /* a[2] is the payload */
      if (a[i].body[0] == ':') continue;
      p.hdrs[k].name = at;
      memcpy(at, a[i].body, a[i].size);
      at += a[i].size;
      *at++ = '\0';
      p.hdrs[k].value = at;
      if (a[i + 1].size) memcpy(at, a[i + 1].body, a[i + 1].size);
      at += a[i + 1].size;
      *at++ = '\0';
      k++;
    }
    p.po.headers = p.hdrs;
    p.po.n_headers = q->n_headers;
  }
  char named[RT_ID_MAX + 2];
  const char *producer = sc->rt ? sc->rt->producer : "";
  if (q->producer[0]) {
    rt_producer((const uint8_t *)q->producer, strlen(q->producer), named, sizeof named);
    producer = named;
  }
  if (*producer)
    snprintf(p.key, sizeof p.key, "%s/%s", producer, p.cid);
  else
    snprintf(p.key, sizeof p.key, "%s", p.cid);
  p.po.dedup_key = NULL; /* set at commit: p moves in memory until then */
  p.data = a[2].body;
  p.len = a[2].size;
  a[2].body = NULL;
  if (st->nputs == st->putcap) {
    size_t cap = st->putcap ? st->putcap * 2 : 64;
    rt_put *grown = realloc(st->puts, cap * sizeof *grown);
    if (!grown) {
      rt_put_refuse(s, sc, q->delim, q->cid, "503", "out of memory");
      rt_put_clear(&p);
      return;
    }
    st->puts = grown;
    st->putcap = cap;
  }
  st->puts[st->nputs++] = p;
  st->put_bytes += p.len;
}

static void rt_settle_refuse(mq_server *s, mqi_srv_conn *sc, int delim, const char *receipt,
                             const char *why) {
  mqi_zpart r[4] = {rt_p("DONE"), rt_p(receipt), rt_p("400"), rt_p(why)};
  rt_reply(s, sc, delim, r, 4);
}

/* A parsed ACK, NACK or TOUCH: queued for the turn's commit. */
static void rt_req_settle(mq_server *s, mqi_srv_conn *sc, const mqi_router_req *q,
                          const mqi_zmtp_frame *parts) {
  mqi_rt_state *st = s->rt;
  rt_settle t;
  memset(&t, 0, sizeof t);
  t.sc = sc;
  t.ep = sc->ep;
  t.delim = q->delim;
  t.verb = q->verb == MQI_RT_ACK ? RT_ACK : q->verb == MQI_RT_NACK ? RT_NACK : RT_TOUCH;
  t.ms = q->ms;
  memcpy(t.queue, q->queue, sizeof t.queue);
  memcpy(t.receipt, q->receipt, sizeof t.receipt);
  if (q->has_reason) {
    const mqi_zmtp_frame *why = &parts[q->arg + 3];
    t.reason = malloc(why->size + 1);
    if (!t.reason) {
      rt_settle_refuse(s, sc, q->delim, q->receipt, "out of memory");
      return;
    }
    if (why->size) memcpy(t.reason, why->body, why->size);
    t.reason[why->size] = '\0';
  }
  if (st->nsettles == st->settlecap) {
    size_t cap = st->settlecap ? st->settlecap * 2 : 64;
    rt_settle *grown = realloc(st->settles, cap * sizeof *grown);
    if (!grown) {
      free(t.reason);
      rt_settle_refuse(s, sc, q->delim, q->receipt, "out of memory");
      return;
    }
    st->settles = grown;
    st->settlecap = cap;
  }
  st->settles[st->nsettles++] = t;
}

/* A parsed GET: waits in the connection's list until served. */
static void rt_req_get(mq_server *s, mqi_srv_conn *sc, const mqi_router_req *q) {
  mqi_rt_conn *rc = sc->rt;
  rt_get g;
  memset(&g, 0, sizeof g);
  g.delim = q->delim;
  g.lease_ms = q->lease_ms;
  memcpy(g.queue, q->queue, sizeof g.queue);
  if (!rc || rc->ngets == RT_GETS_MAX) {
    rt_err(s, sc, q->delim, "429", "too many waiting GETs on this connection");
    return;
  }
  g.deadline = mqi_time_add(mqi_server_now(s), q->wait_ms);
  rc->gets[rc->ngets++] = g;
  s->rt->poll_at = 0;
}

static rt_sub *rt_find_sub(mqi_rt_conn *rc, const char *queue) {
  for (size_t i = 0; i < rc->nsubs; i++)
    if (strcmp(rc->subs[i].queue, queue) == 0) return &rc->subs[i];
  return NULL;
}

static void rt_sub_drop(mqi_rt_conn *rc, rt_sub *sub) {
  free(sub->fl);
  *sub = rc->subs[--rc->nsubs];
}

/* A parsed CONSUME or STOP: open, resize or close the stream. */
static void rt_req_consume(mq_server *s, mqi_srv_conn *sc, const mqi_router_req *q) {
  mqi_rt_conn *rc = sc->rt;
  int delim = q->delim;
  int64_t credit = q->credit;
  const char *queue = q->queue;
  if (!rc) return;
  rt_sub *sub = rt_find_sub(rc, queue);
  if (q->verb == MQI_RT_STOP || credit == 0) {
    /* Deliveries in flight stay leased to the peer: it may still settle
    ** them, and a close gives back what it did not.  So the stream stays,
    ** stopped, as long as it has any. */
    if (sub) {
      sub->window = 0;
      sub->need = 0;
      if (sub->nfl == 0) rt_sub_drop(rc, sub);
    }
    mqi_zpart r[2] = {rt_p("STOPPED"), rt_p(queue)};
    rt_reply(s, sc, delim, r, 2);
    return;
  }
  int status = 0;
  const char *why = "";
  int kind = rt_queue_kind(s, queue, &status, &why);
  if (kind < 0 || kind == MQ_KIND_TOPIC) {
    char code[8];
    snprintf(code, sizeof code, "%d", kind < 0 ? status : 400);
    rt_err(s, sc, delim, code, kind < 0 ? why : "a topic: consume one of its subscriptions");
    return;
  }
  if (!sub) {
    if (rc->nsubs == RT_SUBS_MAX) {
      rt_err(s, sc, delim, "429", "too many CONSUME streams on this connection");
      return;
    }
    sub = &rc->subs[rc->nsubs++];
    memset(sub, 0, sizeof *sub);
    snprintf(sub->queue, sizeof sub->queue, "%s", queue);
  }
  if ((uint64_t)credit > s->opt.credit) credit = (int64_t)s->opt.credit;
  sub->delim = delim;
  sub->window = (size_t)credit;
  sub->lease_ms = q->lease_ms;
  sub->empty_until = 0;
  sub->need = 0;
  char cbuf[24];
  snprintf(cbuf, sizeof cbuf, "%" PRId64, credit);
  mqi_zpart r[3] = {rt_p("CONSUMING"), rt_p(queue), rt_p(cbuf)};
  rt_reply(s, sc, delim, r, 3);
}

int mqi_router_message(mq_server *s, mqi_srv_conn *sc, mqi_zmtp_frame *parts, size_t n) {
  mqi_rt_state *st = s->rt;
  mqi_router_req q;
  if (!rt_conn(sc)) return 1;
  int pr = mqi_router_parse(parts, n, &q);
  if (pr == MQI_RTP_ERR) {
    rt_err(s, sc, q.delim, "400", q.error);
  } else if (pr == MQI_RTP_REFUSE) {
    if (q.verb == MQI_RT_PUT)
      rt_put_refuse(s, sc, q.delim, q.cid, "400", q.error);
    else
      rt_settle_refuse(s, sc, q.delim, q.receipt, q.error);
  } else if (q.verb == MQI_RT_PUT) {
    rt_req_put(s, sc, &q, parts);
  } else if (q.verb == MQI_RT_GET) {
    rt_req_get(s, sc, &q);
  } else if (q.verb == MQI_RT_CONSUME || q.verb == MQI_RT_STOP) {
    rt_req_consume(s, sc, &q);
  } else {
    rt_req_settle(s, sc, &q, parts);
  }
  return st->nputs >= RT_BATCH_MSGS || st->put_bytes >= RT_BATCH_BYTES ||
         st->nsettles >= RT_BATCH_MSGS;
}

/* ------------------------------------------------------------------------
** Connections
*/

void mqi_router_ready(mq_server *s, mqi_srv_conn *sc) {
  size_t len = 0;
  const uint8_t *id = mqi_zconn_identity(sc->z, &len);
  if (!rt_conn(sc) || len == 0) return;
  /* Handover: the newest connection with an Identity wins, so a peer that
  ** reconnects is not shadowed by its own half-dead old connection. */
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_srv_conn *o = s->conns[i];
    size_t olen = 0;
    if (o == sc || s->eps[o->ep].kind != MQI_EP_ROUTER || !o->was_active ||
        mqi_zconn_state(o->z) != MQI_ZC_ACTIVE)
      continue;
    const uint8_t *oid = mqi_zconn_identity(o->z, &olen);
    if (olen == len && memcmp(oid, id, len) == 0)
      mqi_zconn_close(o->z, "replaced by a newer connection with the same Identity");
  }
}

/* Nack every delivery of a stream whose connection is gone, so it is
** delivered again at once rather than when its lease ends: one commit for
** them all (a consumer may hold a million), one each only when out of
** memory.  A delivery whose lease is over is skipped by the store. */
static void rt_give_back(mq_server *s, rt_sub *sub) {
  const char **rcpts = malloc(sub->nfl * sizeof *rcpts);
  int rc = MQ_OK;
  if (rcpts) {
    for (size_t k = 0; k < sub->nfl; k++) rcpts[k] = sub->fl[k].receipt;
    rc = mqi_nack_batch(s->store, sub->queue, rcpts, sub->nfl);
    free(rcpts);
  } else {
    for (size_t k = 0; k < sub->nfl; k++) {
      int r = mq_nack(s->store, sub->queue, sub->fl[k].receipt, 0, NULL);
      if (r != MQ_OK && r != MQ_ESTALE) rc = r;
    }
  }
  if (rc != MQ_OK)
    mqi_log(s->store, MQ_LOG_WARN,
            "server: ROUTER: %zu deliveries of \"%s\" not given back (%s): they come back "
            "when their lease ends",
            sub->nfl, sub->queue, mq_errmsg(s->store));
}

void mqi_router_conn_gone(mq_server *s, mqi_srv_conn *sc) {
  mqi_rt_state *st = s->rt;
  mqi_rt_conn *rc = sc->rt;
  for (size_t i = 0; st && i < st->nputs; i++)
    if (st->puts[i].sc == sc) st->puts[i].sc = NULL;
  for (size_t i = 0; st && i < st->nsettles; i++)
    if (st->settles[i].sc == sc) st->settles[i].sc = NULL;
  if (!rc) return;
  for (size_t i = 0; i < rc->nsubs; i++) {
    rt_sub *sub = &rc->subs[i];
    if (sub->nfl > 0) rt_give_back(s, sub);
    free(sub->fl);
  }
  free(rc);
  sc->rt = NULL;
}

/* ------------------------------------------------------------------------
** The turn's work
*/
static void rt_ack_put(mq_server *s, rt_put *p) {
  char status[8], id[24];
  snprintf(status, sizeof status, "%d", p->status);
  if (p->status == 200)
    snprintf(id, sizeof id, "%" PRId64, p->id);
  else
    id[0] = '\0';
  mqi_zpart r[5] = {rt_p("ACK"), rt_p(p->cid), rt_p(status), rt_p(id), rt_p(p->text)};
  rt_reply(s, p->sc, p->delim, r, p->status == 200 ? 4 : 5);
}

/* Store the puts of one queue: one batch (one commit), or, when one entry
** spoils the batch, one put each so every PUT gets its own answer. */
static void rt_commit_queue(mq_server *s, rt_put **ps, size_t n) {
  const char *queue = ps[0]->queue;
  int status = 0;
  const char *why = "";
  int kind = rt_queue_kind(s, queue, &status, &why);
  int rc;
  if (kind < 0 || kind == MQ_KIND_SUBSCRIPTION) {
    for (size_t i = 0; i < n; i++) {
      ps[i]->status = kind < 0 ? status : 400;
      snprintf(ps[i]->text, sizeof ps[i]->text, "%s",
               kind < 0 ? why : "a subscription: put to its topic");
    }
    return;
  }
  int topic = kind == MQ_KIND_TOPIC;
  int64_t *ids = malloc(n * sizeof *ids);
  void *en = malloc(n * (topic ? sizeof(mq_pub_entry) : sizeof(mq_entry)));
  if (!ids || !en) {
    rc = MQ_ENOMEM;
  } else {
    for (size_t i = 0; i < n; i++) {
      ps[i]->po.dedup_key = ps[i]->key;
      if (topic) {
        mq_pub_entry *e = (mq_pub_entry *)en + i;
        e->subject = ps[i]->subject[0] ? ps[i]->subject : NULL;
        e->data = ps[i]->data;
        e->len = ps[i]->len;
        e->opts = &ps[i]->po;
      } else {
        mq_entry *e = (mq_entry *)en + i;
        e->data = ps[i]->data;
        e->len = ps[i]->len;
        e->opts = &ps[i]->po;
      }
    }
    rc = topic ? mq_publish_batch(s->store, queue, en, n, ids, NULL)
               : mq_put_batch(s->store, queue, en, n, ids);
  }
  if (rc == MQ_OK) {
    for (size_t i = 0; i < n; i++) {
      ps[i]->status = 200;
      ps[i]->id = ids[i];
    }
  } else if (rc == MQ_ETOOBIG || rc == MQ_EINVAL) {
    for (size_t i = 0; i < n; i++) {
      int64_t id = 0;
      int r = topic ? mq_publish(s->store, queue, ps[i]->subject[0] ? ps[i]->subject : NULL,
                                 ps[i]->data, ps[i]->len, &ps[i]->po, &id, NULL)
                    : mq_put(s->store, queue, ps[i]->data, ps[i]->len, &ps[i]->po, &id);
      ps[i]->status = rt_status(r);
      ps[i]->id = id;
      if (r != MQ_OK) mqi_err_text(ps[i]->text, sizeof ps[i]->text, mq_errmsg(s->store));
    }
  } else {
    /* The batch failed as a whole (locked, disk full, I/O, outcome
    ** unknown): nothing is acknowledged; the client retries with the same
    ** ids and the dedup keys make that safe. */
    for (size_t i = 0; i < n; i++) {
      ps[i]->status = rt_status(rc);
      mqi_err_text(ps[i]->text, sizeof ps[i]->text, mq_errmsg(s->store));
    }
    mqi_log(s->store, MQ_LOG_WARN, "server: ROUTER: %zu puts into \"%s\" failed: %s", n, queue,
            mq_errmsg(s->store));
  }
  free(ids);
  free(en);
  int any = 0;
  for (size_t i = 0; i < n; i++)
    if (ps[i]->status == 200) {
      mqi_srv_counts *c = &s->eps[ps[i]->ep].count;
      MQI_SRV_COUNT(c->in, 1);
      MQI_SRV_COUNT(c->bytes_in, ps[i]->len);
      any = 1;
    }
  if (any) mqi_server_kick(s, queue);
}

static void rt_commit_puts(mq_server *s) {
  mqi_rt_state *st = s->rt;
  size_t n = st->nputs;
  if (n == 0) return;
  rt_put **group = malloc(n * sizeof *group);
  char *done = calloc(n, 1);
  if (!group || !done) {
    for (size_t i = 0; i < n; i++) {
      st->puts[i].status = 503;
      snprintf(st->puts[i].text, sizeof st->puts[i].text, "out of memory");
    }
  } else {
    for (size_t i = 0; i < n; i++) {
      if (done[i]) continue;
      size_t g = 0;
      for (size_t k = i; k < n; k++)
        if (!done[k] && strcmp(st->puts[k].queue, st->puts[i].queue) == 0) {
          group[g++] = &st->puts[k];
          done[k] = 1;
        }
      rt_commit_queue(s, group, g);
    }
  }
  /* Only now, after the commits, do the ACKs go out, in request order. */
  for (size_t i = 0; i < n; i++) {
    rt_ack_put(s, &st->puts[i]);
    rt_put_clear(&st->puts[i]);
  }
  free(group);
  free(done);
  st->nputs = 0;
  st->put_bytes = 0;
}

/* Whether an ACK or NACK answered with status ended the delivery: done
** (200) or no longer the peer's (410).  After any other answer (a lock, an
** I/O error) the message is still leased to the peer and still counts
** against its credit. */
static int rt_settled(int status) { return status == 200 || status == 410; }

/* The delivery of receipt in sc's CONSUME stream on queue, or NULL. */
static rt_flight *rt_flight_of(mqi_srv_conn *sc, const char *queue, const char *receipt,
                               rt_sub **sub) {
  *sub = sc && sc->rt ? rt_find_sub(sc->rt, queue) : NULL;
  for (size_t k = 0; *sub && k < (*sub)->nfl; k++)
    if (strcmp((*sub)->fl[k].receipt, receipt) == 0) return &(*sub)->fl[k];
  return NULL;
}

/* Forget a delivery the peer settled; a stopped stream goes with its
** last one. */
static void rt_forget(mqi_srv_conn *sc, const char *queue, const char *receipt) {
  rt_sub *sub;
  rt_flight *f = rt_flight_of(sc, queue, receipt, &sub);
  if (!f) return;
  *f = sub->fl[--sub->nfl];
  if (sub->window == 0 && sub->nfl == 0) rt_sub_drop(sc->rt, sub);
}

/* A delivery the peer touched: our count of its lease follows, so it is
** neither counted out of the credit early nor left out of the nack on
** close. */
static void rt_touched(mq_server *s, mqi_srv_conn *sc, const char *queue, const char *receipt,
                       int64_t ms) {
  rt_sub *sub;
  rt_flight *f = rt_flight_of(sc, queue, receipt, &sub);
  if (f) f->until = mqi_time_add(mqi_server_now(s), ms);
}

static void rt_done(mq_server *s, rt_settle *t, const char *text) {
  char status[8];
  snprintf(status, sizeof status, "%d", t->status);
  mqi_zpart r[4] = {rt_p("DONE"), rt_p(t->receipt), rt_p(status), rt_p(text)};
  rt_reply(s, t->sc, t->delim, r, t->status == 200 ? 3 : 4);
}

static void rt_commit_settles(mq_server *s) {
  mqi_rt_state *st = s->rt;
  size_t n = st->nsettles;
  if (n == 0) return;
  const char **rcpts = malloc(n * sizeof *rcpts);
  int *res = malloc(n * sizeof *res);
  rt_settle **grp = malloc(n * sizeof *grp);
  char *done = calloc(n, 1);
  for (size_t i = 0; i < n; i++) {
    rt_settle *t = &st->settles[i];
    if (done && done[i]) continue;
    int rc;
    if (t->verb == RT_ACK && rcpts && res && grp && done) {
      /* Every ACK of this turn on this queue: one commit (their receipts
      ** are well-formed: mqi_router_parse). */
      size_t g = 0;
      for (size_t k = i; k < n; k++)
        if (!done[k] && st->settles[k].verb == RT_ACK &&
            strcmp(st->settles[k].queue, t->queue) == 0) {
          grp[g] = &st->settles[k];
          rcpts[g++] = st->settles[k].receipt;
          done[k] = 1;
        }
      rc = mq_ack_batch(s->store, t->queue, rcpts, g, res);
      for (size_t k = 0; k < g; k++) {
        grp[k]->status = rt_status(rc == MQ_OK ? res[k] : rc);
        if (grp[k]->status == 200) MQI_SRV_COUNT(s->eps[grp[k]->ep].count.acks, 1);
        if (rt_settled(grp[k]->status)) rt_forget(grp[k]->sc, grp[k]->queue, grp[k]->receipt);
        rt_done(s, grp[k], grp[k]->status == 200 ? "" : mq_errstr(rc == MQ_OK ? res[k] : rc));
      }
      continue;
    }
    if (t->verb == RT_ACK)
      rc = mq_ack(s->store, t->queue, t->receipt);
    else if (t->verb == RT_NACK)
      rc = mq_nack(s->store, t->queue, t->receipt, t->ms, t->reason);
    else
      rc = mq_touch(s->store, t->queue, t->receipt, t->ms);
    t->status = rt_status(rc);
    if (t->verb == RT_ACK && rc == MQ_OK) MQI_SRV_COUNT(s->eps[t->ep].count.acks, 1);
    if (t->verb != RT_TOUCH && rt_settled(t->status)) rt_forget(t->sc, t->queue, t->receipt);
    if (t->verb == RT_TOUCH && rc == MQ_OK) rt_touched(s, t->sc, t->queue, t->receipt, t->ms);
    rt_done(s, t, rc == MQ_OK ? "" : mq_errstr(rc));
  }
  for (size_t i = 0; i < n; i++) free(st->settles[i].reason);
  free(rcpts);
  free(res);
  free(grp);
  free(done);
  st->nsettles = 0;
}

/* ------------------------------------------------------------------------
** Deliveries: MSG [""] "MQ1" "MSG" queue msg_id receipt receives payload
** *(name value), every header of the message (mq_put takes any number).
*/
#define RT_MSG_HEAD 8 /* frames before the headers, at most */
#define RT_MSG_STACK (RT_MSG_HEAD + 2 * RT_HEADERS_MAX)

/* Where a MSG goes, for rt_msg_cost (it may run on the thread that leads
** the store's commit: nothing here changes). */
typedef struct rt_dest {
  const char *queue;
  int delim;
} rt_dest;

/* The frames of a MSG before its headers; id and recv hold the numbers. */
static size_t rt_msg_head(const rt_dest *d, const mq_msg *m, char id[24], char recv[16],
                          mqi_zpart *p) {
  size_t k = 0;
  snprintf(id, 24, "%" PRId64, mq_msg_id(m));
  snprintf(recv, 16, "%d", mq_msg_receives(m));
  if (d->delim) p[k++] = (mqi_zpart){"", 0};
  p[k++] = (mqi_zpart){RT_TAG, 3};
  p[k++] = rt_p("MSG");
  p[k++] = rt_p(d->queue);
  p[k++] = rt_p(id);
  p[k++] = rt_p(mq_msg_receipt(m));
  p[k++] = rt_p(recv);
  p[k++] = (mqi_zpart){mq_msg_data(m), mq_msg_size(m)};
  return k;
}

/* A frame's bytes on the wire, as mqi_zconn_send counts them. */
static size_t rt_wire(size_t len) { return (len <= 255 ? 2 : 9) + len; }

/* What the MSG of m adds to the connection's output, to the byte. */
static size_t rt_msg_cost(const mq_msg *m, const void *ctx) {
  mqi_zpart p[RT_MSG_HEAD];
  char id[24], recv[16];
  size_t n = rt_msg_head(ctx, m, id, recv, p), bytes = 0;
  for (size_t i = 0; i < n; i++) bytes += rt_wire(p[i].len);
  for (size_t i = 0; i < mq_msg_header_count(m); i++)
    bytes += rt_wire(strlen(mq_msg_header_name(m, i))) + rt_wire(strlen(mq_msg_header_value(m, i)));
  return bytes;
}

static int rt_send_msg(mq_server *s, mqi_srv_conn *sc, int delim, const char *queue,
                       const mq_msg *m) {
  mqi_zpart stack[RT_MSG_STACK], *p = stack;
  char id[24], recv[16];
  rt_dest d = {queue, delim};
  size_t nh = mq_msg_header_count(m);
  if (mqi_zconn_state(sc->z) != MQI_ZC_ACTIVE) return -1;
  if (nh > RT_HEADERS_MAX) {
    p = malloc((RT_MSG_HEAD + 2 * nh) * sizeof *p);
    if (!p) {
      mqi_zconn_close(sc->z, "out of memory");
      return -1;
    }
  }
  size_t k = rt_msg_head(&d, m, id, recv, p);
  for (size_t i = 0; i < nh; i++) {
    p[k++] = rt_p(mq_msg_header_name(m, i));
    p[k++] = rt_p(mq_msg_header_value(m, i));
  }
  int rc = mqi_server_send(s, sc, p, k);
  if (p != stack) free(p);
  if (rc != MQI_ZMTP_OK) return -1;
  MQI_SRV_COUNT(s->eps[sc->ep].count.out, 1);
  MQI_SRV_COUNT(s->eps[sc->ep].count.bytes_out, mq_msg_size(m));
  return 0;
}

/* Whether a delivery whose MSG needs `need` bytes (0: not known) may be
** tried on sc now (see rt_lease).  When not, output is pending, and the
** connection's POLLOUT brings the turn in which it may. */
static int rt_fits(const mq_server *s, mqi_srv_conn *sc, size_t need) {
  size_t pending = mqi_zconn_pending(sc->z), half = s->out_limit / 2;
  return pending == 0 || (pending < half && need <= s->out_limit - pending);
}

/* Whether some delivery of sc waits for more room than there is.  It then
** holds back the others of the connection, which would otherwise take that
** room as it frees, turn after turn, and starve a large message behind
** small ones. */
static int rt_held(const mq_server *s, mqi_srv_conn *sc) {
  const mqi_rt_conn *rc = sc->rt;
  for (size_t k = 0; k < rc->ngets; k++)
    if (rc->gets[k].need > 0 && !rt_fits(s, sc, rc->gets[k].need)) return 1;
  for (size_t k = 0; k < rc->nsubs; k++)
    if (rc->subs[k].need > 0 && !rt_fits(s, sc, rc->subs[k].need)) return 1;
  return 0;
}

/* Whether a delivery that needs `need` bytes (0: not known) may be tried
** on sc now. */
static int rt_may(const mq_server *s, mqi_srv_conn *sc, size_t need) {
  return rt_fits(s, sc, need) && (need > 0 || !rt_held(s, sc));
}

/* Lease up to max messages of queue whose MSGs fit sc's output budget:
** output up to half the limit, except that one message larger than that
** may go on its own -- when it fits under the whole limit, or whatever
** its size when nothing is pending (mqi_zconn_send takes it then).  The
** half kept back is needed only by replies queued earlier in the turn:
** nothing else is sent, and nothing read, until output is below half. */
static int rt_lease(mq_server *s, mqi_srv_conn *sc, const rt_dest *d, int64_t lease_ms, size_t max,
                    mq_msg **msgs, size_t *count, size_t *need) {
  size_t pending = mqi_zconn_pending(sc->z), half = s->out_limit / 2;
  size_t budget = pending < half ? half - pending : 0;
  size_t first = pending == 0 ? SIZE_MAX : pending < half ? s->out_limit - pending : 0;
  return mqi_get_batch_fit(s->store, d->queue, lease_ms, max, rt_msg_cost, d, budget, first, msgs,
                           count, need);
}

/* Serve sc's waiting GETs: all of them when poll is set, else only those
** that were waiting for output space (they go as soon as it is there). */
static void rt_serve_gets(mq_server *s, mqi_srv_conn *sc, int64_t now, int poll) {
  mqi_rt_conn *rc = sc->rt;
  for (size_t i = 0; i < rc->ngets;) {
    rt_get *g = &rc->gets[i];
    mq_msg *m = NULL;
    size_t n = 0;
    rt_dest d = {g->queue, g->delim};
    if (!(poll || g->need > 0) || !rt_may(s, sc, g->need)) {
      i++;
      continue;
    }
    int r = rt_lease(s, sc, &d, g->lease_ms, 1, &m, &n, &g->need);
    /* A message that does not fit yet is not "nothing": the GET waits for
    ** output space past its deadline. */
    if (r == MQ_EMPTY && (g->need > 0 || now < g->deadline)) {
      i++;
      continue;
    }
    if (r == MQ_OK) {
      if (rt_send_msg(s, sc, g->delim, g->queue, m) != 0)
        mq_nack(s->store, g->queue, mq_msg_receipt(m), 0, NULL);
      mq_msg_free(m);
    } else if (r == MQ_EMPTY) {
      mqi_zpart p[2] = {rt_p("EMPTY"), rt_p(g->queue)};
      rt_reply(s, sc, g->delim, p, 2);
    } else {
      char code[8];
      snprintf(code, sizeof code, "%d", rt_status(r));
      rt_err(s, sc, g->delim, code, mq_errmsg(s->store));
    }
    rc->gets[i] = rc->gets[--rc->ngets];
  }
}

static void rt_serve_subs(mq_server *s, mqi_srv_conn *sc, int64_t now, int64_t mono) {
  mqi_rt_conn *rc = sc->rt;
  /* Leases that ended make room; a stopped stream goes with its last. */
  for (size_t i = 0; i < rc->nsubs;) {
    rt_sub *sub = &rc->subs[i];
    for (size_t k = 0; k < sub->nfl;)
      if (sub->fl[k].until <= now)
        sub->fl[k] = sub->fl[--sub->nfl];
      else
        k++;
    if (sub->window == 0 && sub->nfl == 0)
      rt_sub_drop(rc, sub);
    else
      i++;
  }
  size_t first = rc->nsubs ? rc->next_sub++ % rc->nsubs : 0;
  for (size_t j = 0; j < rc->nsubs; j++) {
    rt_sub *sub = &rc->subs[(first + j) % rc->nsubs];
    if (sub->nfl >= sub->window || mono < sub->empty_until) continue;
    if (!rt_may(s, sc, sub->need)) continue;
    size_t want = sub->window - sub->nfl;
    if (want > RT_DELIVER_MAX) want = RT_DELIVER_MAX;
    if (sub->flcap < sub->window) {
      size_t cap = sub->window < 16 ? 16 : sub->window;
      rt_flight *f = realloc(sub->fl, cap * sizeof *f);
      if (!f) continue;
      sub->fl = f;
      sub->flcap = cap;
    }
    mq_msg *msgs[RT_DELIVER_MAX];
    size_t count = 0;
    rt_dest d = {sub->queue, sub->delim};
    int r = rt_lease(s, sc, &d, sub->lease_ms, want, msgs, &count, &sub->need);
    if (r == MQ_EMPTY) {
      if (sub->need == 0) sub->empty_until = mono + RT_POLL_MS;
      continue;
    }
    if (r != MQ_OK) {
      char code[8];
      snprintf(code, sizeof code, "%d", rt_status(r));
      rt_err(s, sc, sub->delim, code, mq_errmsg(s->store));
      sub->empty_until = mono + 1000;
      continue;
    }
    for (size_t k = 0; k < count; k++) {
      if (rt_send_msg(s, sc, sub->delim, sub->queue, msgs[k]) == 0 && sub->nfl < sub->flcap) {
        rt_flight *f = &sub->fl[sub->nfl++];
        snprintf(f->receipt, sizeof f->receipt, "%s", mq_msg_receipt(msgs[k]));
        /* Our count of the lease: the message's own visible_at is on the
        ** store clock, which need not be ours. */
        int64_t lease = mq_msg_visible_at(msgs[k]) - mq_store_now(s->store);
        f->until = mqi_time_add(now, lease > 0 ? lease : 0);
      } else {
        mq_nack(s->store, sub->queue, mq_msg_receipt(msgs[k]), 0, NULL);
      }
      mq_msg_free(msgs[k]);
    }
  }
}

void mqi_router_work(mq_server *s) {
  mqi_rt_state *st = s->rt;
  rt_commit_puts(s);
  rt_commit_settles(s);
  int64_t mono = rt_mono(), now = mqi_server_now(s);
  int poll_gets = mono >= st->poll_at;
  int waiting = 0;
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_srv_conn *sc = s->conns[i];
    if (!sc->rt || mqi_zconn_state(sc->z) != MQI_ZC_ACTIVE) continue;
    if (sc->rt->ngets) rt_serve_gets(s, sc, now, poll_gets);
    if (sc->rt->ngets) waiting = 1;
    if (sc->rt->nsubs) rt_serve_subs(s, sc, now, mono);
  }
  if (poll_gets) st->poll_at = waiting ? mono + RT_POLL_MS : INT64_MAX;
}

int64_t mqi_router_wake(mq_server *s) {
  mqi_rt_state *st = s->rt;
  int64_t w = INT64_MAX, mono = rt_mono(), now = mqi_server_now(s);
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_srv_conn *sc = s->conns[i];
    if (!sc->rt || mqi_zconn_state(sc->z) != MQI_ZC_ACTIVE) continue;
    mqi_rt_conn *rc = sc->rt;
    /* What waits for output space is woken by the connection's POLLOUT. */
    int held = rt_held(s, sc);
    for (size_t k = 0; k < rc->ngets; k++) {
      if (!rt_fits(s, sc, rc->gets[k].need) || (held && rc->gets[k].need == 0)) continue;
      if (rc->gets[k].need > 0) return mono; /* there is room for it now */
      int64_t d = rt_mono_of(rc->gets[k].deadline, now, mono);
      if (st->poll_at < d) d = st->poll_at;
      if (d < w) w = d;
    }
    for (size_t k = 0; k < rc->nsubs; k++) {
      rt_sub *sub = &rc->subs[k];
      if (sub->nfl < sub->window) {
        int may = rt_fits(s, sc, sub->need) && (sub->need > 0 || !held);
        if (may && sub->empty_until < w) w = sub->empty_until;
      } else {
        /* Full (or stopped): room comes when a lease ends. */
        for (size_t f = 0; f < sub->nfl; f++) {
          int64_t d = rt_mono_of(sub->fl[f].until, now, mono);
          if (d < w) w = d;
        }
      }
    }
  }
  return w;
}

void mqi_router_kick(mq_server *s, const char *queue) {
  if (!s->rt) return;
  s->rt->poll_at = 0;
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_rt_conn *rc = s->conns[i]->rt;
    if (!rc) continue;
    rt_sub *sub = rt_find_sub(rc, queue);
    if (sub) sub->empty_until = 0;
  }
}
