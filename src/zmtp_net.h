/*
** zmtp_net.h -- the ZMTP network engine: sockets (zmtp_net.c), one
** connection's state machine (zmtp_conn.c) and the server that serves
** queues to ZeroMQ peers (zmtp_server.c, zmtp_router.c).
**
** Layering, bottom up: the pure codec (zmtp.h) knows bytes; a connection
** (mqi_zconn) owns one non-blocking TCP socket and drives the codec through
** the greeting, the NULL or PLAIN handshake and the traffic that follows,
** with its timers (handshake timeout, heartbeats); the server owns the
** listeners, the poll(2) loop and every connection, and turns complete
** messages into calls of the public queue API of mq.h on its store.  A
** connection never calls into the store and never decides what a message
** means; the server never touches a socket except through a connection.
**
** Time: connections never read a clock.  Every call that may fire a timer
** takes `now` (milliseconds on the server's clock: monotonic by default,
** injectable for tests through mqi_server_test_clock), so the handshake
** timeout and the heartbeats can be tested without sleeping.
**
** Nothing here is public; the amalgamation makes it all static.
*/
#ifndef MQI_ZMTP_NET_H
#define MQI_ZMTP_NET_H

#include <stdatomic.h>
#include <sys/socket.h>

#include "zmtp.h"

/* ---- zmtp_net.c: addresses, listeners, accept, the wake pipe -------------- */

#define MQI_NET_NAME_MAX 80 /* "tcp://[ffff:...]:65535" and a NUL */

/* Parse "tcp://HOST:PORT" where HOST is a dotted IPv4 address, an IPv6
** address in brackets, "*" (every IPv4 address) or "localhost"
** (127.0.0.1), and PORT is 0..65535 (0: the kernel picks one).  Returns
** MQ_OK or MQ_EINVAL with a reason in err. */
MQI_API int mqi_net_parse(const char *endpoint, struct sockaddr_storage *ss, socklen_t *len,
                          char *err, size_t errlen);
/* A non-blocking, close-on-exec listening socket bound to ss with
** SO_REUSEADDR (so a restarted server gets its port back while old
** connections sit in TIME_WAIT).  MQ_OK with *fd, or MQ_ENET with err. */
MQI_API int mqi_net_listen(const struct sockaddr_storage *ss, socklen_t len, int *fd, char *err,
                           size_t errlen);
/* "tcp://ADDR:PORT" of the socket's local end into buf. */
MQI_API int mqi_net_local_name(int fd, char *buf, size_t cap);
/* Accept one connection: a non-blocking, close-on-exec socket with
** TCP_NODELAY, and the peer's "ADDR:PORT" in peer.  Returns the socket or
** -1 with errno (EAGAIN when none is waiting). */
MQI_API int mqi_net_accept(int lfd, char *peer, size_t cap);
/* Start a non-blocking TCP connect (close-on-exec, TCP_NODELAY) to ss.
** Returns 0 when already connected, 1 when in progress (wait for POLLOUT,
** then ask mqi_net_connect_result), -1 with errno on failure; *fd is the
** socket in the first two cases, -1 otherwise. */
MQI_API int mqi_net_connect(const struct sockaddr_storage *ss, socklen_t len, int *fd);
/* How a connect in progress ended: 0 connected, else the errno value. */
MQI_API int mqi_net_connect_result(int fd);
/* A non-blocking pipe whose read end wakes poll(2): fds[0] read, fds[1]
** write.  MQ_OK or MQ_ENET. */
MQI_API int mqi_net_pipe(int fds[2]);
/* Write one byte to the pipe.  Async-signal-safe; keeps errno. */
MQI_API void mqi_net_pipe_poke(int wfd);
/* Read everything from the pipe's read end. */
MQI_API void mqi_net_pipe_drain(int rfd);

/* ---- zmtp_conn.c: one ZMTP connection ----------------------------------- */

/* Connection states, in the order a connection goes through them. */
#define MQI_ZC_GREETING 0  /* exchanging the 64-byte greetings */
#define MQI_ZC_HANDSHAKE 1 /* mechanism commands (READY; HELLO/INITIATE) */
#define MQI_ZC_ACTIVE 2    /* both READYs done: messages may flow */
#define MQI_ZC_CLOSING 3   /* flushing a final ERROR, then closing */
#define MQI_ZC_DEAD 4      /* the socket is closed; free it */

/* Results of mqi_zconn_input. */
#define MQI_ZC_OK 0     /* read what the socket had (or the budget) */
#define MQI_ZC_PAUSED 1 /* the message handler asked to stop for now */
#define MQI_ZC_CLOSED 2 /* the connection is dead */

/* Check PLAIN credentials (raw bytes, any content); return 1 to accept. */
typedef int (*mqi_zconn_auth_fn)(void *ctx, const uint8_t *user, size_t user_len,
                                 const uint8_t *pass, size_t pass_len, const char *peer);

typedef struct mqi_zconn_config {
  int socket_type;             /* ours: MQI_ZMTP_SOCKET_PULL, _PUSH, _ROUTER */
  int mechanism;               /* MQI_ZMTP_MECH_NULL or _PLAIN (we serve) */
  mqi_zconn_auth_fn auth;      /* PLAIN: required */
  void *auth_ctx;
  int64_t heartbeat_ms;        /* PING when nothing came for this long; 0 off */
  int64_t heartbeat_timeout_ms; /* close when nothing comes this long after */
  int64_t handshake_timeout_ms; /* 0: none */
  mqi_zmtp_limits limits;      /* for traffic after the handshake */
  size_t out_limit;            /* most bytes queued for output; see send */
  int client;                  /* we connected: PLAIN client role */
  const char *plain_user;      /* client with PLAIN: credentials sent in */
  const char *plain_password;  /* HELLO (owned by the caller, outlive us) */
} mqi_zconn_config;

/* One frame of an outgoing message. */
typedef struct mqi_zpart {
  const void *data;
  size_t len;
} mqi_zpart;

typedef struct mqi_zconn mqi_zconn;

/* Called with each complete message: n >= 1 frames.  The callee may take a
** frame's body (and then must set parts[i].body to NULL and free it with
** free()); the rest are released after the call.  Return 0 to go on,
** nonzero to stop reading this connection for now (mqi_zconn_input then
** returns MQI_ZC_PAUSED and keeps the unread bytes). */
typedef int (*mqi_zconn_msg_fn)(void *ctx, mqi_zconn *c, mqi_zmtp_frame *parts, size_t n);

/* Take over socket fd (non-blocking) of a peer at address peer, and queue
** our greeting.  The config is copied.  MQ_OK or MQ_ENOMEM (fd is then
** still the caller's). */
MQI_API int mqi_zconn_new(int fd, const char *peer, const mqi_zconn_config *cfg, int64_t now,
                          mqi_zconn **out);
/* Close the socket (if still open) and free everything.  NULL-safe. */
MQI_API void mqi_zconn_free(mqi_zconn *c);
/* Close now, for reason why (kept for mqi_zconn_reason). */
MQI_API void mqi_zconn_close(mqi_zconn *c, const char *why);

MQI_API int mqi_zconn_fd(const mqi_zconn *c);
MQI_API int mqi_zconn_state(const mqi_zconn *c);
/* Why the connection closed ("" while it is open). */
MQI_API const char *mqi_zconn_reason(const mqi_zconn *c);
MQI_API const char *mqi_zconn_peer(const mqi_zconn *c);
/* The peer's Socket-Type (valid once ACTIVE). */
MQI_API int mqi_zconn_peer_type(const mqi_zconn *c);
/* The peer's Identity property (may be empty), valid once ACTIVE. */
MQI_API const uint8_t *mqi_zconn_identity(const mqi_zconn *c, size_t *len);
/* The PLAIN user name the peer authenticated as ("" for NULL). */
MQI_API const char *mqi_zconn_user(const mqi_zconn *c);
/* Nonzero when the connection ended because the peer sent ERROR (for a
** client: the server refused our credentials). */
MQI_API int mqi_zconn_peer_error(const mqi_zconn *c);

/*
** Read from the socket (at most about budget bytes) and process what came:
** greeting, handshake commands, PING (answered with PONG), and messages,
** which go to fn.  Bytes left over when fn pauses are kept and processed
** first by the next call.  Returns MQI_ZC_OK, MQI_ZC_PAUSED or
** MQI_ZC_CLOSED (the reason is in mqi_zconn_reason).
*/
MQI_API int mqi_zconn_input(mqi_zconn *c, int64_t now, size_t budget, mqi_zconn_msg_fn fn,
                            void *ctx);
/* Bytes read from the socket but not processed yet (after a pause). */
MQI_API size_t mqi_zconn_buffered(const mqi_zconn *c);

/*
** Queue a message of n >= 1 frames for the peer.  Only while ACTIVE
** (MQI_ZMTP_EINVAL otherwise: nothing may precede the peer's READY).
** MQI_ZMTP_ESPACE when output is already pending and this message would
** take it past out_limit (a message alone may be larger: it is queued when
** nothing is pending).  MQI_ZMTP_ENOMEM.  Nothing is written yet: see
** mqi_zconn_flush.
*/
MQI_API int mqi_zconn_send(mqi_zconn *c, const mqi_zpart *parts, size_t n);
/* Write queued bytes until the socket would block.  MQI_ZC_OK or
** MQI_ZC_CLOSED. */
MQI_API int mqi_zconn_flush(mqi_zconn *c, int64_t now);
/* Bytes queued and not yet handed to the kernel. */
MQI_API size_t mqi_zconn_pending(const mqi_zconn *c);
/* Totals since the connection began: bytes queued, and bytes handed to the
** kernel.  A message queued when `queued` was Q and ending at Q' has left
** us once `written` >= Q'. */
MQI_API uint64_t mqi_zconn_queued(const mqi_zconn *c);
MQI_API uint64_t mqi_zconn_written(const mqi_zconn *c);

/* Fire due timers: handshake timeout, heartbeat PING, peer silent past
** the heartbeat timeout or its own TTL, the end of CLOSING.  Returns
** MQI_ZC_OK or MQI_ZC_CLOSED. */
MQI_API int mqi_zconn_tick(mqi_zconn *c, int64_t now);
/* When mqi_zconn_tick must run next (INT64_MAX: no timer). */
MQI_API int64_t mqi_zconn_deadline(const mqi_zconn *c);
/* Tell the connection whether its owner has stopped reading it (held) for
** reasons of its own, such as backpressure.  While held, the peer is not
** timed out for silence (its PONGs wait unread in the kernel), and we
** still PING it, which keeps a libzmq peer from timing us out (any traffic
** cancels its timeout).  When the hold ends, the peer's timers resume as
** if the time held had not passed.  A write that fails while held (the
** peer closed) does not close the connection: what it sent is read up to
** its close once the hold ends. */
MQI_API void mqi_zconn_hold(mqi_zconn *c, int held, int64_t now);

/* ---- zmtp_server.c: the server's insides, shared with zmtp_router.c ---- */

#define MQI_EP_PULL 0
#define MQI_EP_PUSH 1
#define MQI_EP_ROUTER 2

/* One message of a PULL endpoint's batch: payload (NULL when len is 0)
** and, for a multipart message, the frame sizes. */
typedef struct mqi_srv_item {
  void *data;
  size_t len;
  char *frames; /* "3,0,12": the zmtp-frames header (malloc'd), or NULL */
  uint32_t crc; /* of data, computed by the loop: the commit thread is the busier */
  int heap;     /* data is malloc'd, not in one of the batch's chunks */
} mqi_srv_item;

/* ---- zmtp_batch.c: a PULL endpoint's messages read and not yet committed */
typedef struct mqi_srv_chunk mqi_srv_chunk;
typedef struct mqi_srv_batch {
  mqi_srv_item *items;
  size_t n, cap;
  size_t bytes;          /* the items' payload bytes */
  mqi_srv_chunk *chunks; /* memory of the small payloads, freed with the batch */
} mqi_srv_batch;

/* Chunks freed by batches, for the next ones (a few MiB at most). */
typedef struct mqi_srv_pool {
  mqi_srv_chunk *free;
  size_t n;
} mqi_srv_pool;

/* Add the message of n frames (their bodies concatenated) with its CRC.
** May take parts' bodies (set to NULL); the caller releases the rest.
** Returns MQ_OK, or MQ_ENOMEM with no item added (and parts untouched;
** chunk space it used is freed with the batch). */
MQI_API int mqi_batch_add(mqi_srv_batch *b, mqi_srv_pool *pool, mqi_zmtp_frame *parts, size_t n);
/* Free the first k items (committed); their chunk memory stays with the
** batch until it is freed. */
MQI_API void mqi_batch_drop(mqi_srv_batch *b, size_t k);
/* Put front's items before b's, in one batch left in *b; front is left
** empty.  MQ_ENOMEM leaves both as they were. */
MQI_API int mqi_batch_prepend(mqi_srv_batch *b, mqi_srv_batch *front);
/* Free everything, keeping chunks in pool (NULL: none kept); the batch is
** empty again (all zero is empty). */
MQI_API void mqi_batch_free(mqi_srv_batch *b, mqi_srv_pool *pool);
MQI_API void mqi_batch_pool_free(mqi_srv_pool *pool);

/* What mq_server_endpoint_stats reports.  Only the loop thread writes
** them (the commit thread's results are counted when the loop collects
** them); any thread may read them while the server runs, hence atomics. */
typedef struct mqi_srv_counts {
  _Atomic int64_t in, bytes_in, dropped, out, bytes_out, acks;
  _Atomic int64_t conns, conns_total, refused, auth_failed;
} mqi_srv_counts;

/* Add v to one of the counters above. */
#define MQI_SRV_COUNT(counter, v) \
  atomic_fetch_add_explicit(&(counter), (int64_t)(v), memory_order_relaxed)

typedef struct mqi_srv_ep {
  int kind;                      /* MQI_EP_* */
  char queue[MQ_NAME_MAX + 1];   /* "" for ROUTER */
  int topic;                     /* PULL into a topic: publish */
  int fd;                        /* the listening socket */
  char name[MQI_NET_NAME_MAX];   /* where it listens */
  mqi_srv_batch batch;           /* PULL: messages read and not yet committed */
  int failing;                   /* the last commit failed: retry, read nothing */
  int64_t retry_at;              /* monotonic ms */
  int64_t backoff;
  /* PUSH: the next connection in turn, where the next look for ready
  ** connections starts, the mean size of a message sent (for how many
  ** fit a connection's output), and when to look at the queue. */
  size_t rr, scan;
  size_t avg_size;
  int64_t renew_retry;           /* monotonic ms: renewals failed, retry then; 0 */
  int renew_failing;             /* said so in the log */
  int64_t empty_until;           /* monotonic ms; 0: look now */
  /* Listening: 0, or accept(2) failed (out of descriptors) and the socket
  ** is not polled until then (server clock). */
  int64_t accept_after;
  /* Connecting endpoints (fd is then -1): we connect to addr and keep
  ** reconnecting.  Times are on the server's clock (mqi_server_now). */
  int connect;
  int cfd;                       /* the socket being connected, or -1 */
  int live;                      /* a connection of this endpoint exists */
  int failures;                  /* in a row: the backoff's exponent */
  struct sockaddr_storage addr;
  socklen_t addrlen;
  int64_t next_try;              /* when to connect again */
  int64_t connect_deadline;      /* when the connect in progress fails */
  int64_t up_since;              /* when the connection became ACTIVE; 0 */
  mqi_srv_counts count;
} mqi_srv_ep;

/* A PUSH egress message queued on a connection and not yet acked. */
typedef struct mqi_srv_pend {
  uint64_t end; /* mqi_zconn_queued() right after it */
  size_t size;  /* its payload bytes, for the endpoint's counters */
  int64_t visible_at; /* the end of its lease, store clock */
  int64_t lease_ms;   /* the lease's length: renewed for as long again */
  char receipt[MQ_RECEIPT_MAX + 1];
} mqi_srv_pend;

typedef struct mqi_rt_conn mqi_rt_conn;   /* zmtp_router.c */
typedef struct mqi_rt_state mqi_rt_state; /* zmtp_router.c */

typedef struct mqi_srv_conn {
  mq_server *srv;
  mqi_zconn *z;
  size_t ep;        /* index into the server's endpoints */
  uint64_t serial;  /* for logs */
  int was_active;
  /* PUSH egress: messages written to the connection, oldest first. */
  mqi_srv_pend *pend;
  size_t pend_head, pend_len, pend_cap;
  int64_t renew_at; /* store clock: the earliest of their lease renewals */
  mqi_rt_conn *rt;  /* ROUTER state, owned by zmtp_router.c */
} mqi_srv_conn;

struct mq_server {
  mq_store *store;
  mq_server_options opt;
  char *plain_user, *plain_password;
  size_t plain_user_len, plain_password_len;
  mqi_srv_ep *eps;
  size_t neps, epcap;
  mqi_srv_conn **conns;
  size_t nconns, conncap;
  void *pfds; /* struct pollfd[], reused across turns */
  size_t pfdcap;
  uint64_t serial;
  size_t turn;
  int wake[2];
  _Atomic int stop;
  int running;
  int64_t (*clock)(void *);
  void *clock_ctx;
  size_t out_limit;
  mqi_rt_state *rt;
  uint64_t rng;  /* xorshift state for the reconnect jitter */
  int freeing;   /* mq_server_free runs: no reconnects scheduled */
  /* The PULL commit thread and its one job (zmtp_server.c).  cjob: 0 idle,
  ** 1 handed over, 2 done, and the cjob_* fields: under cmu.  cbusy: the
  ** loop's own note that a job is out (read by the loop thread only). */
  pthread_t committer;
  int cstarted, csync, cquit, cjob, cjob_rc, cjob_topic, cbusy;
  char cjob_queue[MQ_NAME_MAX + 1];
  pthread_mutex_t cmu;
  pthread_cond_t ccv;
  size_t cjob_ep, cnext;
  size_t cjob_dropped, cjob_dropped_bytes; /* of the job's batch: refused by the queue */
  size_t cjob_done; /* of the job's batch: settled before a failure */
  mqi_srv_batch cjob_batch; /* the commit thread's alone while cjob is 1 */
  mqi_srv_pool pool;        /* the loop's: chunks for the next batches */
  mqi_put_item *pi;         /* the committer's: a batch as mqi_pack_put takes it */
  size_t picap;
  char cjob_err[256];
};

/* The server's protocol clock (monotonic unless a test replaced it). */
MQI_API int64_t mqi_server_now(mq_server *s);
/* Queue a message on a connection; a peer that lets its output grow past
** the limit (it does not read) is disconnected.  Returns MQI_ZMTP_OK or
** the send error (the message was not queued). */
MQI_API int mqi_server_send(mq_server *s, mqi_srv_conn *sc, const mqi_zpart *parts, size_t n);
/* A put reached queue: look at it again for egress at once. */
MQI_API void mqi_server_kick(mq_server *s, const char *queue);

/* ---- zmtp_router.c: the MQ1 request protocol of a ROUTER endpoint -------- */
MQI_API int mqi_router_new(mq_server *s);
MQI_API void mqi_router_free(mq_server *s);
/* A request arrived on sc (frames as the connection delivered them).
** Returns nonzero to pause reading sc (too much work queued this turn). */
MQI_API int mqi_router_message(mq_server *s, mqi_srv_conn *sc, mqi_zmtp_frame *parts, size_t n);
/* sc finished its handshake (identity handover). */
MQI_API void mqi_router_ready(mq_server *s, mqi_srv_conn *sc);
/* Do the turn's work: commit puts and send their ACKs, settle, serve GETs
** and CONSUME windows. */
MQI_API void mqi_router_work(mq_server *s);
/* sc is going away: give back what it holds. */
MQI_API void mqi_router_conn_gone(mq_server *s, mqi_srv_conn *sc);
/* When the router wants a turn even if no socket is ready (monotonic ms,
** INT64_MAX: never). */
MQI_API int64_t mqi_router_wake(mq_server *s);
/* A put reached queue: consumers waiting on it may look again. */
MQI_API void mqi_router_kick(mq_server *s, const char *queue);

/* ---- zmtp_router.c: MQ1 request parsing, a pure function (fuzzed) -------- */
#define MQI_RT_ID_MAX 64      /* client_msg_id and :producer, in bytes */
#define MQI_RT_HEADERS_MAX 64 /* user headers of one PUT */
#define MQI_RT_WAIT_MAX_MS 3600000
#define MQI_RT_REASON_MAX 1000

/* Verbs (mqi_router_req.verb). */
enum {
  MQI_RT_PUT = 1,
  MQI_RT_ACK,
  MQI_RT_NACK,
  MQI_RT_TOUCH,
  MQI_RT_GET,
  MQI_RT_CONSUME,
  MQI_RT_STOP
};

/* What mqi_router_parse returns: the request is sound (OK); it is refused
** with "ERR 400 error" (ERR: no verb, no id to answer under); or it is
** refused in the verb's own reply form, "ACK cid 400" or "DONE receipt
** 400", because the id (cid or receipt) was read before the fault. */
enum { MQI_RTP_OK = 0, MQI_RTP_ERR = 1, MQI_RTP_REFUSE = 2 };

/* One parsed request.  Strings are NUL-terminated copies; payload, headers
** and the NACK reason stay in the frames and are named by index, so the
** struct is valid only as long as the frames it was parsed from. */
typedef struct mqi_router_req {
  int delim;  /* a leading empty frame is to be echoed in replies */
  int verb;   /* MQI_RT_*; 0 when the verb was not understood */
  size_t arg; /* index of the first argument frame (the queue) */
  char queue[MQ_NAME_MAX + 1];
  char cid[MQI_RT_ID_MAX + 1];         /* PUT */
  char receipt[MQ_RECEIPT_MAX + 1];    /* ACK, NACK, TOUCH */
  int64_t lease_ms, wait_ms;           /* GET, CONSUME (lease only) */
  int64_t credit;                      /* CONSUME */
  int64_t ms;                          /* NACK delay, TOUCH visibility */
  int has_reason;                      /* NACK: frame arg + 3 is the reason */
  int64_t delay_ms, ttl_ms;            /* PUT options */
  int priority;                        /* PUT option */
  char producer[MQI_RT_ID_MAX + 1];    /* PUT option; "" when not given */
  char subject[MQ_SUBJECT_MAX + 1];    /* PUT option; "" when not given */
  size_t n_headers, header_bytes;      /* PUT user headers: count, NUL-ended size */
  const char *error;                   /* static text when refused */
} mqi_router_req;

/* Parse one MQ1 request of n frames into *out.  Touches nothing but *out:
** no allocation, no store, no connection, so a fuzzer can drive it.  Every
** length and number is checked here; the handler only allocates and acts.
** The PUT payload is frame out->arg + 2, its headers follow in name/value
** pairs (names starting with ':' are the options already parsed). */
MQI_API int mqi_router_parse(const mqi_zmtp_frame *parts, size_t n, mqi_router_req *out);

/* ---- test hooks ------------------------------------------------------------ */

/* Replace the server's clock (protocol timers: handshake, heartbeats,
** reconnects; ROUTER lease counts and GET waits) with fn; NULL restores
** the monotonic clock.  For tests. */
MQI_API void mqi_server_test_clock(mq_server *s, int64_t (*fn)(void *), void *ctx);
/* Set the per-connection output limit (default 4 MiB).  For tests. */
MQI_API void mqi_server_test_out_limit(mq_server *s, size_t bytes);

#endif /* MQI_ZMTP_NET_H */
