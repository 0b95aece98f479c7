/*
** test_powerloss.c -- the durability contract under simulated power loss.
**
** mq.h promises that under MQ_SYNC_FULL a put or ack that returned MQ_OK
** survives a power cut, that a batch or a publish is stored whole or not at
** all, and that an I/O error during a commit is reported as MQ_EUNKNOWN,
** never as success and never as a definite failure.  This test checks each
** promise the way SQLite checks its own (src/test6.c): a child process runs
** a workload on a fresh store through crashvfs.h, which keeps track of what
** each fsync made durable; at the chosen crash point (the Nth xSync or the
** Nth xWrite) the VFS puts the files back to their last durable state,
** lets a random share of the unsynced writes reach the disk anyway, maybe
** tears one of them, and _exit()s.  The parent then opens the store with
** the ordinary VFS, as after a reboot, and checks what it finds against the
** child's event log.
**
** The log follows Jepsen's invoke/ok/fail/info model: the child writes a
** record to a pipe before each call (invoke) and after it returns (ok, a
** definite failure, or info = MQ_EUNKNOWN); a call interrupted by the crash
** has only its invoke and its outcome is unknown.  Records are smaller than
** PIPE_BUF, so a dying child leaves whole records only.  Invariants, per
** message (a queue with its dead-letter queue, or one subscription):
**   I1 every put acknowledged under FULL is still there, unless its ack
**      returned MQ_OK or was in flight;
**   I3 no message whose ack returned MQ_OK is there again (and none was
**      delivered again after its ack while the child ran);
**   I4 nothing invented: every message found was put, once, with exactly
**      the payload that was put;
**   I5 a put that returned a definite failure is not there;
**   I6 PRAGMA integrity_check says ok, mq_store_verify says MQ_OK, no
**      payload fails its checksum, and the store takes a put/get/ack;
**   and a batch or publish is there whole (in every subscription it
**   matched) or not at all.
** A checker that cannot fail proves nothing, so the same put workload runs
** under MQ_SYNC_NORMAL, which by design loses the last commits in a power
** cut: the checker must report lost acknowledged puts there.
**
** Plan: small workloads are swept exhaustively (crash at sync 1, 2, ...
** until the child reaches its end, where it crashes after its last call),
** with redo 0%, 50% and 100% of the unsynced writes, tearing on and off;
** larger workloads get random crash points.  fsync-failure mode makes one
** xSync fail (SQLITE_IOERR_FSYNC, nothing synced) and crashes at the next,
** with redo 0% and 100%.  Compound failures, as SQLite tests them: random
** points where the power goes again while the first open after the reboot
** recovers the WAL and checkpoints it (recovery_crash); the invariants
** must hold after both.  Stores live on /dev/shm (tmpfs): the VFS models
** durability, so real fsyncs would only cost time.  Everything is
** deterministic given the seed: MQ_TEST_SEED replays a run, MQ_FAULT_SCALE
** (default 1) multiplies the work for a longer manual run.
*/
#include <dirent.h>
#include <sys/mman.h>

#include "crashvfs.h"
#include "testutil.h"

/* ---- event log ------------------------------------------------------------ */

enum {
  EV_QCREATE_OK = 1, /* who = queue index */
  EV_PUT_INV,        /* who = family, seq = first seq, extra = count */
  EV_PUT_OK,         /* id = first id */
  EV_PUT_FAIL,       /* extra = rc */
  EV_PUT_INFO,       /* extra = rc */
  EV_PUB_INV,        /* who = mask of matching families, extra = count */
  EV_PUB_OK,
  EV_PUB_FAIL,
  EV_PUB_INFO,
  EV_GOT,     /* who = family, seq, id, extra = receives */
  EV_ACK_INV, /* who = family, seq, id */
  EV_ACK_OK,
  EV_ACK_STALE,
  EV_ACK_FAIL, /* extra = rc */
  EV_ACK_INFO,
  EV_GATE, /* id = inode, extra = device of the store file */
  EV_OPEN_FAIL, /* mq_store_open failed (after an injected fsync failure) */
  EV_END,       /* the workload finished; the crash comes after its last call */
  EV_ERR   /* something unexpected: seq = line, extra = rc */
};

#define MAX_FAM 3
#define BASE_NOW 1700000000000LL

static int g_fd = -1;      /* the child's end of the pipe */
static int64_t g_child_now; /* the child's injected clock */
static uint64_t g_seed;
static int g_scale = 1;
static char g_dir[256];

static void ev(int kind, int who, int64_t seq, int64_t id, int64_t extra) {
  tu_rec_write(g_fd, kind, who, id, seq, extra);
}
#define EV_UNEXPECTED(rc) ev(EV_ERR, 0, __LINE__, 0, (rc))
/* Log rc as unexpected unless it is one of two expected answers, or an I/O
** error after the injected fsync failure (fsync-failure mode). */
#define EXPECT2(rc, a, b)                                                        \
  do {                                                                          \
    int e_ = (rc);                                                              \
    if (e_ != (a) && e_ != (b) &&                                               \
        !(crashvfs.fsync_failed && (e_ == MQ_EIO || e_ == MQ_EUNKNOWN)))        \
      EV_UNEXPECTED(e_);                                                        \
  } while (0)

/* The checker's clock: long after every lease and delay of the child. */
static int64_t check_clock(void *ctx) {
  (void)ctx;
  return BASE_NOW + 400LL * 86400000LL;
}

static int64_t child_clock(void *ctx) {
  (void)ctx;
  return g_child_now;
}

/* ---- payloads: seq, length and bytes all follow from (seed, seq) ---------- */

static uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

#define PAYLOAD_MAX 24000

static size_t payload_len(int64_t seq) {
  uint64_t h = mix(g_seed ^ (uint64_t)seq * 7919u);
  unsigned c = (unsigned)(h % 100);
  size_t len = c < 70 ? 16 + h / 100 % 200 : c < 90 ? 1000 + h / 100 % 4000 : 9000 + h / 100 % 15000;
  return len;
}

static size_t make_payload(int64_t seq, unsigned char *buf) {
  size_t len = payload_len(seq);
  uint64_t st = mix(g_seed + (uint64_t)seq);
  int text = (st & 1) != 0; /* half compress well, half not at all */
  memcpy(buf, "mqPL", 4);
  memcpy(buf + 4, &seq, 8);
  for (size_t i = 12; i < len; i++)
    buf[i] = text ? (unsigned char)('a' + (seq + (int64_t)(i / 16)) % 26)
                  : (unsigned char)(tu_rand(&st) >> 24);
  return len;
}

/* The seq of a payload, or -1 if it is not exactly what make_payload made. */
static int64_t payload_seq(const void *data, size_t n) {
  static unsigned char want[PAYLOAD_MAX];
  int64_t seq;
  if (n < 12 || memcmp(data, "mqPL", 4) != 0) return -1;
  memcpy(&seq, (const char *)data + 4, 8);
  if (seq < 0 || seq > 1000000) return -1;
  if (make_payload(seq, want) != n || memcmp(want, data, n) != 0) return -1;
  return seq;
}

/* ---- the child's side: calls wrapped with their log records ------------- */

typedef struct child {
  mq_store *s;
  int64_t seq; /* next seq */
  uint64_t rng;
  int sync;
} child;

static void c_put_result(int rc, int64_t seq, int64_t id) {
  if (rc == MQ_OK) ev(EV_PUT_OK, 0, seq, id, 0);
  else if (rc == MQ_EUNKNOWN) ev(EV_PUT_INFO, 0, seq, 0, rc);
  else ev(EV_PUT_FAIL, 0, seq, 0, rc);
}

static void c_put(child *c, const char *q) {
  static unsigned char buf[PAYLOAD_MAX];
  int64_t seq = c->seq++, id = 0;
  size_t len = make_payload(seq, buf);
  mq_put_options po;
  mq_put_options_init(&po);
  mq_header h = {"seq", "x"};
  po.priority = (int)(seq % 3 == 0);
  if (seq % 4 == 1) {
    po.headers = &h;
    po.n_headers = 1;
  }
  ev(EV_PUT_INV, 0, seq, 0, 1);
  c_put_result(mq_put(c->s, q, buf, len, &po, &id), seq, id);
}

static void c_put_batch(child *c, const char *q, int n) {
  static unsigned char buf[40][PAYLOAD_MAX];
  mq_entry e[40];
  int64_t ids[40] = {0};
  int64_t seq = c->seq;
  for (int i = 0; i < n; i++) {
    e[i].data = buf[i];
    e[i].len = make_payload(seq + i, buf[i]);
    e[i].opts = NULL;
  }
  c->seq += n;
  ev(EV_PUT_INV, 0, seq, 0, n);
  c_put_result(mq_put_batch(c->s, q, e, (size_t)n, ids), seq, ids[0]);
}

/* Get one message of family fam from q; NULL when empty. */
static mq_msg *c_get(child *c, int fam, const char *q, int64_t vis) {
  mq_get_options go;
  mq_get_options_init(&go);
  go.visibility_ms = vis;
  mq_msg *m = NULL;
  int rc = mq_get(c->s, q, &go, &m);
  if (rc == MQ_EMPTY) return NULL;
  if (rc != MQ_OK) {
    EXPECT2(rc, MQ_OK, MQ_EMPTY);
    return NULL;
  }
  int64_t seq = payload_seq(mq_msg_data(m), mq_msg_size(m));
  if (seq < 0) EV_UNEXPECTED(-1);
  ev(EV_GOT, fam, seq, mq_msg_id(m), mq_msg_receives(m));
  return m;
}

static int c_ack(int fam, mq_store *s, const char *q, const mq_msg *m) {
  int64_t seq = payload_seq(mq_msg_data(m), mq_msg_size(m));
  ev(EV_ACK_INV, fam, seq, mq_msg_id(m), 0);
  int rc = mq_ack(s, q, mq_msg_receipt(m));
  int kind = rc == MQ_OK       ? EV_ACK_OK
             : rc == MQ_ESTALE ? EV_ACK_STALE
             : rc == MQ_EUNKNOWN ? EV_ACK_INFO
                                 : EV_ACK_FAIL;
  ev(kind, fam, seq, mq_msg_id(m), rc);
  return rc;
}

/* Ack two messages in one commit. */
static void c_ack_batch(int fam, mq_store *s, const char *q, mq_msg *a, mq_msg *b) {
  const char *r[2] = {mq_msg_receipt(a), mq_msg_receipt(b)};
  int res[2] = {-1, -1};
  mq_msg *m[2] = {a, b};
  for (int i = 0; i < 2; i++)
    ev(EV_ACK_INV, fam, payload_seq(mq_msg_data(m[i]), mq_msg_size(m[i])), mq_msg_id(m[i]), 0);
  int rc = mq_ack_batch(s, q, r, 2, res);
  for (int i = 0; i < 2; i++) {
    int one = rc == MQ_OK ? res[i] : rc;
    int kind = one == MQ_OK       ? EV_ACK_OK
               : one == MQ_ESTALE ? EV_ACK_STALE
               : one == MQ_EUNKNOWN ? EV_ACK_INFO
                                    : EV_ACK_FAIL;
    ev(kind, fam, payload_seq(mq_msg_data(m[i]), mq_msg_size(m[i])), mq_msg_id(m[i]), one);
  }
}

static void c_open(child *c, const char *path) {
  crashvfs_note_create(path);
  int rc = tu_open_ex(path, c->sync, MQ_OPEN_CREATE, child_clock, NULL, &c->s);
  if (rc != MQ_OK) {
    /* Only an injected fsync failure may make opening fail; then the
    ** power goes, as it would at the next sync. */
    if (!crashvfs.fsync_failed) EV_UNEXPECTED(rc);
    ev(EV_OPEN_FAIL, 0, 0, 0, rc);
    crashvfs_crash_now();
  }
  struct stat st;
  if (stat(path, &st) == 0) ev(EV_GATE, 0, 0, (int64_t)st.st_ino, (int64_t)st.st_dev);
}

static void c_queue(child *c, int index, const char *name, int64_t vis, int max_receives,
                    const char *dlq) {
  mq_queue_options o;
  mq_queue_options_init(&o);
  if (vis) o.visibility_ms = vis;
  o.max_receives = max_receives;
  o.dlq = dlq;
  o.compress_above = 1500;
  int rc = mq_queue_create(c->s, name, &o);
  if (rc == MQ_OK) ev(EV_QCREATE_OK, index, 0, 0, 0);
  else EXPECT2(rc, MQ_OK, MQ_OK);
}

static void c_close(child *c) {
  int rc = mq_store_close(c->s);
  c->s = NULL;
  EXPECT2(rc, MQ_OK, MQ_EBUSY);
}

/* ---- workloads --------------------------------------------------------------
** Each names the queues of each family, so the checker knows where a
** message may legitimately be. */

typedef struct workload {
  const char *name;
  void (*run)(child *c, const char *path, int n);
  int nfam;
  const char *fam[MAX_FAM][2]; /* up to two queues per family */
  int nqueues;                 /* EV_QCREATE_OK indexes 0..nqueues-1 */
  const char *queues[4];
} workload;

/* Puts only: single puts, batches of three, and early on one batch of
** forty (its rows go in with multi-row INSERTs). */
static void wl_put(child *c, const char *path, int n) {
  c_open(c, path);
  c_queue(c, 0, "q", 0, 0, NULL);
  for (int i = 0; c->seq < n; i++) {
    if (i == 6) c_put_batch(c, "q", 40);
    else if (i % 5 == 4) c_put_batch(c, "q", 3);
    else c_put(c, "q");
  }
  c_close(c);
}

/* Put, get, ack (single and batched), nack; then drain.  With ckpt, an
** explicit checkpoint after every step, so the crash points fall into the
** copying of the WAL back into the database and the WAL's restart. */
static void wl_ack_common(child *c, const char *path, int n, int ckpt) {
  c_open(c, path);
  c_queue(c, 0, "q", 0, 0, NULL);
  mq_msg *held = NULL;
  for (int i = 0; c->seq < n; i++) {
    c_put(c, "q");
    if (i % 2 == 0) continue;
    mq_msg *m = c_get(c, 0, "q", 0);
    if (m && i % 10 == 5) {
      int rc = mq_nack(c->s, "q", mq_msg_receipt(m), 0, "later");
      EXPECT2(rc, MQ_OK, MQ_OK);
      mq_msg_free(m);
    } else if (m && !held && i % 7 == 3) {
      held = m; /* acked together with the next one */
    } else if (m && held) {
      c_ack_batch(0, c->s, "q", held, m);
      mq_msg_free(held);
      mq_msg_free(m);
      held = NULL;
    } else if (m) {
      c_ack(0, c->s, "q", m);
      mq_msg_free(m);
    }
    if (ckpt) {
      int rc = mq_store_checkpoint(c->s);
      EXPECT2(rc, MQ_OK, MQ_EBUSY);
    }
  }
  if (held) {
    c_ack(0, c->s, "q", held);
    mq_msg_free(held);
  }
  for (int i = 0; i < n; i++) { /* drain */
    mq_msg *m = c_get(c, 0, "q", 0);
    if (!m) break;
    c_ack(0, c->s, "q", m);
    mq_msg_free(m);
    if (ckpt && i % 3 == 0) mq_store_checkpoint(c->s);
  }
  c_close(c);
}

static void wl_ack(child *c, const char *path, int n) { wl_ack_common(c, path, n, 0); }
static void wl_ckpt(child *c, const char *path, int n) { wl_ack_common(c, path, n, 1); }

/* Leases that run out on the injected clock: redelivery, a stale ack that
** must change nothing, touch, dead-lettering after max_receives, the dlq
** consumed and redriven. */
static void wl_lease(child *c, const char *path, int n) {
  c_open(c, path);
  c_queue(c, 0, "dlq", 0, 0, NULL);
  c_queue(c, 1, "q", 1000, 2, "dlq");
  for (int i = 0; c->seq < n; i++) {
    c_put(c, "q");
    c_put(c, "q");
    mq_msg *a = c_get(c, 0, "q", 0);
    if (!a) continue;
    g_child_now += 1500; /* a's lease runs out */
    mq_msg *b = c_get(c, 0, "q", 0);
    if (b && mq_msg_id(b) == mq_msg_id(a)) {
      /* Delivered again: the first receipt is stale and changes nothing. */
      int rc = c_ack(0, c->s, "q", a);
      EXPECT2(rc, MQ_ESTALE, MQ_ESTALE);
    }
    if (b && i % 3 == 0) {
      int rc = mq_touch(c->s, "q", mq_msg_receipt(b), 5000);
      EXPECT2(rc, MQ_OK, MQ_OK);
      g_child_now += 2000; /* still inside the extended lease */
      c_ack(0, c->s, "q", b);
    } else if (b && i % 3 == 1) {
      c_ack(0, c->s, "q", b);
    } /* else: b's lease runs out later; after two deliveries it is dead */
    mq_msg_free(a);
    mq_msg_free(b);
    if (i % 4 == 3) {
      g_child_now += 1500;
      mq_msg *d = c_get(c, 0, "q", 0); /* sweeps overdue messages to the dlq */
      if (d) {
        c_ack(0, c->s, "q", d);
        mq_msg_free(d);
      }
      d = c_get(c, 0, "dlq", 0);
      if (d) {
        c_ack(0, c->s, "dlq", d);
        mq_msg_free(d);
      }
      int64_t moved = 0;
      int rc = mq_redrive(c->s, "dlq", 1, &moved);
      EXPECT2(rc, MQ_OK, MQ_OK);
    }
  }
  c_close(c);
}

/* Publish to a topic with three subscriptions, two of them filtered;
** single publishes and batches of two; consumers ack on two of them. */
static const char *const topic_filters[MAX_FAM] = {NULL, "x.*", "x.>"};
static const char *const topic_subjects[4] = {"x.1", "y.2", "x.a.b", NULL};

static void wl_topic(child *c, const char *path, int n) {
  static unsigned char buf[2][PAYLOAD_MAX];
  c_open(c, path);
  mq_queue_options o;
  mq_queue_options_init(&o);
  o.compress_above = 1500;
  int rc = mq_topic_create(c->s, "t", &o);
  if (rc == MQ_OK) ev(EV_QCREATE_OK, 0, 0, 0, 0);
  else EXPECT2(rc, MQ_OK, MQ_OK);
  const char *subs[MAX_FAM] = {"a", "b", "c"};
  for (int k = 0; k < MAX_FAM; k++) {
    rc = mq_subscription_create(c->s, "t", subs[k], topic_filters[k], NULL);
    if (rc == MQ_OK) ev(EV_QCREATE_OK, k + 1, 0, 0, 0);
    else EXPECT2(rc, MQ_OK, MQ_OK);
  }
  for (int i = 0; c->seq < n; i++) {
    const char *subject = topic_subjects[i % 4];
    int mask = 0;
    for (int k = 0; k < MAX_FAM; k++)
      if (mq_subject_matches(topic_filters[k], subject) == 1) mask |= 1 << k;
    int count = i % 4 == 2 ? 2 : 1;
    mq_pub_entry e[2];
    for (int j = 0; j < count; j++) {
      e[j].subject = subject;
      e[j].data = buf[j];
      e[j].len = make_payload(c->seq + j, buf[j]);
      e[j].opts = NULL;
    }
    int64_t seq = c->seq, ids[2] = {0, 0}, delivered = 0;
    c->seq += count;
    ev(EV_PUB_INV, mask, seq, 0, count);
    rc = mq_publish_batch(c->s, "t", e, (size_t)count, ids, &delivered);
    int kind = rc == MQ_OK ? EV_PUB_OK : rc == MQ_EUNKNOWN ? EV_PUB_INFO : EV_PUB_FAIL;
    ev(kind, mask, seq, ids[0], rc);
    int nmatch = 0;
    for (int k = 0; k < MAX_FAM; k++) nmatch += (mask >> k) & 1;
    if (rc == MQ_OK && delivered != (int64_t)nmatch * count) EV_UNEXPECTED(-2);
    for (int k = 0; k < 2 && i % 2; k++) {
      char q[8];
      snprintf(q, sizeof q, "t/%s", subs[k]);
      mq_msg *m = c_get(c, k, q, 0);
      if (m) {
        c_ack(k, c->s, q, m);
        mq_msg_free(m);
      }
    }
  }
  c_close(c);
}

static const workload WL_PUT = {"put", wl_put, 1, {{"q", NULL}}, 1, {"q"}};
static const workload WL_ACK = {"put/get/ack", wl_ack, 1, {{"q", NULL}}, 1, {"q"}};
static const workload WL_CKPT = {"checkpoint", wl_ckpt, 1, {{"q", NULL}}, 1, {"q"}};
static const workload WL_LEASE = {"lease", wl_lease, 1, {{"q", "dlq"}}, 2, {"dlq", "q"}};
static const workload WL_TOPIC = {
    "topic", wl_topic, 3, {{"t/a", NULL}, {"t/b", NULL}, {"t/c", NULL}}, 4,
    {"t", "t/a", "t/b", "t/c"}};

/* ---- one crash point -------------------------------------------------------- */

enum { AT_SYNC, AT_WRITE, AT_FSYNCFAIL };

typedef struct point {
  const workload *wl;
  int n;    /* workload size */
  int sync; /* MQ_SYNC_* */
  int mode; /* AT_* */
  int k;    /* crash (or failing sync) number */
  int redo, tear;
  int recover; /* then a second power cut in the first open after it */
} point;

/* What the parent knows about one message of one family. */
typedef struct msgstate {
  unsigned char put;     /* 0 none, else EV_PUT_INV/OK/FAIL/INFO (or PUB) */
  unsigned char got, ack_ok, ack_open, ack_info, present, dup, expected;
  int64_t id;  /* from EV_PUT_OK (queues only) */
  int64_t grp; /* first seq of its batch or publish */
  int cnt;     /* on the first member: how many seqs the call had */
} msgstate;

typedef struct totals {
  int points, sync_points, write_points, fsync_points, reached_end;
  int64_t acked_checked, lost, resurrected, after_ack, invented, corrupt, duplicate, partial,
      false_fail, integrity, unusable, queue_lost, child_bad, unexpected;
  int64_t ack_inflight_took, ack_inflight_undone, unknown_recovered, unknown_gone, torn;
  int64_t fsync_unknown, fsync_unknown_present;
  int64_t recoveries, recovery_crashed, recovery_bad;
} totals;

static totals T;       /* the FULL runs */
static totals T_ctl;   /* the NORMAL control */

typedef struct checkctx {
  msgstate *m[MAX_FAM];
  int64_t nseq;
  int fam;
  int64_t bad;
} checkctx;

static int scan_cb(void *ctx, const mq_msg *msg, int state) {
  checkctx *k = ctx;
  (void)state;
  int64_t seq = payload_seq(mq_msg_data(msg), mq_msg_size(msg));
  if (seq < 0 || seq >= k->nseq) {
    k->bad++;
    return 0;
  }
  msgstate *x = &k->m[k->fam][seq];
  if (x->present) x->dup = 1;
  x->present = 1;
  if (x->id && x->id != mq_msg_id(msg)) k->bad++; /* another message's payload */
  return 0;
}

/* Remove dir and what is in it, two levels deep (a run's directory holds
** one directory per crash point). */
static void rm_tree_depth(const char *dir, int depth) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  char p[600];
  while ((e = readdir(d)) != NULL) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    if (unlink(p) != 0 && depth > 0) rm_tree_depth(p, depth - 1);
  }
  closedir(d);
  rmdir(dir);
}

static void rm_tree(const char *dir) { rm_tree_depth(dir, 1); }

/* A run killed from outside (a timeout) leaves its directory behind;
** remove those of processes that are gone. */
static void rm_stale(const char *base, const char *prefix) {
  DIR *d = opendir(base);
  if (!d) return;
  struct dirent *e;
  size_t pl = strlen(prefix);
  char p[600];
  while ((e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, prefix, pl) != 0) continue;
    long pid = strtol(e->d_name + pl, NULL, 10);
    if (pid <= 0 || (kill((pid_t)pid, 0) != 0 && errno == ESRCH)) {
      snprintf(p, sizeof p, "%s/%s", base, e->d_name);
      rm_tree_depth(p, 2);
    }
  }
  closedir(d);
}

static int64_t g_vio_print = 0; /* violations printed so far (bounded) */

static void violation(const point *pt, const char *what, int fam, int64_t seq) {
  if (g_vio_print++ >= 20) return;
  fprintf(stderr,
          "  VIOLATION %s: workload %s sync %d %s %d redo %d%% tear %d%s: family %d seq %lld "
          "(replay with MQ_TEST_SEED=%llu)\n",
          what, pt->wl->name, pt->sync,
          pt->mode == AT_SYNC ? "sync" : pt->mode == AT_WRITE ? "write" : "fsync-fail", pt->k,
          pt->redo, pt->tear, pt->recover ? " + a crash in recovery" : "", fam, (long long)seq, (unsigned long long)g_seed);
}

static void verify_cb(void *ctx, const char *problem) {
  (void)ctx;
  if (g_vio_print < 20) fprintf(stderr, "    verify: %s\n", problem);
}

/* Run one crash point; returns 1 if the child reached the end of its
** workload (the sweep can stop), 0 if it crashed before, -1 on a test
** failure that makes further points pointless. */
/* A reboot: the shared-memory files are gone (SQLite's -shm, mq's gate). */
static void reboot(const char *path, uint64_t gdev, uint64_t gino) {
  char side[600];
  snprintf(side, sizeof side, "%s-shm", path);
  unlink(side);
  if (gino) {
    char gname[80];
    snprintf(gname, sizeof gname, "/mq-%llx-%llx", (unsigned long long)gdev,
             (unsigned long long)gino);
    shm_unlink(gname);
  }
}

/* SQLite's compound failure: the power goes again while the first open
** after the reboot recovers the WAL and folds it into the file.  A child
** opens the store on the store clock (which writes the clock of this boot),
** checkpoints and closes, through crashvfs with a crash at one of its
** first syncs or writes (or after its end).  Nothing in that may lose or
** bring back anything, so run_point's invariants hold unchanged after it. */
static void recovery_crash(const char *path, uint64_t seed, totals *t) {
  if (access(path, F_OK) != 0) return;
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    return;
  }
  if (pid == 0) {
    tu_child_setup();
    uint64_t r = mix(seed);
    crashvfs_install();
    crashvfs_reset();
    crashvfs.record = 1;
    /* Such an open makes 2 syncs and some 6 to 20 writes, a few more. */
    if (r & 1)
      crashvfs.crash_at_sync = 1 + (int)((r >> 1) % 3);
    else
      crashvfs.crash_at_write = 1 + (int)((r >> 1) % 24);
    crashvfs.redo_pct = (int)((r >> 8) % 3) * 50;
    crashvfs.tear = (int)((r >> 12) & 1);
    crashvfs.rng = mix(r) | 1;
    mq_store *s = NULL;
    int rc = tu_open_ex(path, MQ_SYNC_FULL, 0, NULL, NULL, &s);
    if (rc == MQ_OK) rc = mq_store_checkpoint(s);
    if (s && mq_store_close(s) != MQ_OK && rc == MQ_OK) rc = MQ_EBUSY;
    _exit(rc == MQ_OK ? 0 : 1); /* reached only when no crash came */
  }
  int status = tu_wait(pid);
  t->recoveries++;
  if (status == CRASHVFS_EXIT) t->recovery_crashed++;
  else if (status != 0) t->recovery_bad++;
}

static int run_point(const point *pt, totals *t) {
  char dir[400], path[500];
  snprintf(dir, sizeof dir, "%s/p%d", g_dir, t->points);
  snprintf(path, sizeof path, "%s/q.db", dir);
  rm_tree(dir);
  if (mkdir(dir, 0700) != 0) {
    perror("mkdir");
    return -1;
  }
  uint64_t crash_seed = mix(g_seed ^ mix((uint64_t)t->points * 31 + (uint64_t)pt->k));
  int fds[2];
  if (pipe(fds) != 0) {
    perror("pipe");
    return -1;
  }
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    return -1;
  }
  if (pid == 0) {
    tu_child_setup();
    close(fds[0]);
    g_fd = fds[1];
    g_child_now = BASE_NOW;
    crashvfs_install();
    crashvfs_reset();
    crashvfs.record = 1;
    crashvfs.crash_at_sync = pt->mode == AT_SYNC ? pt->k : 0;
    crashvfs.crash_at_write = pt->mode == AT_WRITE ? pt->k : 0;
    crashvfs.fsync_fail_at = pt->mode == AT_FSYNCFAIL ? pt->k : 0;
    crashvfs.redo_pct = pt->redo;
    crashvfs.tear = pt->tear;
    crashvfs.rng = crash_seed | 1;
    child c;
    memset(&c, 0, sizeof c);
    c.sync = pt->sync;
    c.rng = crash_seed;
    pt->wl->run(&c, path, pt->n);
    ev(EV_END, 0, 0, 0, crashvfs.faults);
    crashvfs_crash_now();
  }
  close(fds[1]);

  /* Collect the log until the child is gone. */
  size_t cap = 1 << 16, have = 0;
  unsigned char *buf = malloc(cap);
  for (;;) {
    if (have == cap) {
      cap *= 2;
      unsigned char *nb = realloc(buf, cap);
      if (!nb) {
        perror("realloc");
        exit(2);
      }
      buf = nb;
    }
    ssize_t r = read(fds[0], buf + have, cap - have);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    have += (size_t)r;
  }
  close(fds[0]);
  int status = tu_wait(pid);
  size_t nrec = have / sizeof(tu_rec);
  tu_rec *recs = (tu_rec *)buf;
  t->points++;
  if (pt->mode == AT_SYNC) t->sync_points++;
  else if (pt->mode == AT_WRITE) t->write_points++;
  else t->fsync_points++;

  /* Replay the log. */
  int64_t nseq = 0;
  int ended = 0, created[4] = {0, 0, 0, 0};
  uint64_t gdev = 0, gino = 0;
  for (size_t i = 0; i < nrec; i++) {
    /* A batch's record names its first message and how many it holds. */
    int64_t count = recs[i].kind == EV_PUT_INV || recs[i].kind == EV_PUB_INV ? recs[i].extra : 1;
    if (recs[i].kind != EV_ERR && recs[i].seq >= 0 && recs[i].seq < 1000000 && count >= 0 &&
        count < 1000000 && recs[i].seq + count + 4 > nseq)
      nseq = recs[i].seq + count + 4;
  }
  msgstate *ms[MAX_FAM];
  for (int f = 0; f < MAX_FAM; f++) ms[f] = calloc((size_t)nseq + 1, sizeof(msgstate));
  int64_t unexpected = 0;
  for (size_t i = 0; i < nrec; i++) {
    const tu_rec *r = &recs[i];
    int fam = r->who >= 0 && r->who < MAX_FAM ? r->who : 0;
    msgstate *x = r->seq >= 0 && r->seq < nseq ? &ms[fam][r->seq] : NULL;
    switch (r->kind) {
      case EV_QCREATE_OK:
        if (r->who >= 0 && r->who < 4) created[r->who] = 1;
        break;
      case EV_PUT_INV:
      case EV_PUT_OK:
      case EV_PUT_FAIL:
      case EV_PUT_INFO:
      case EV_PUB_INV:
      case EV_PUB_OK:
      case EV_PUB_FAIL:
      case EV_PUB_INFO: {
        int pub = r->kind >= EV_PUB_INV;
        int kind = pub ? r->kind - EV_PUB_INV + EV_PUT_INV : r->kind;
        int mask = pub ? r->who : 1;
        int64_t count = r->kind == EV_PUT_INV || r->kind == EV_PUB_INV ? r->extra : 0;
        if (r->seq < 0 || r->seq >= nseq) break;
        if (kind == EV_PUT_INV) {
          for (int f = 0; f < MAX_FAM; f++)
            for (int64_t j = 0; j < count && r->seq + j < nseq; j++) {
              msgstate *y = &ms[f][r->seq + j];
              y->put = EV_PUT_INV;
              y->grp = r->seq;
              y->expected = (mask >> f) & 1;
            }
          ms[0][r->seq].cnt = (int)count;
          break;
        }
        if (kind != EV_PUT_OK) {
          unexpected += pt->mode != AT_FSYNCFAIL || r->extra != MQ_EUNKNOWN;
          if (kind == EV_PUT_INFO && pt->mode == AT_FSYNCFAIL) t->fsync_unknown++;
        }
        for (int f = 0; f < MAX_FAM; f++)
          for (int64_t j = 0; j < ms[0][r->seq].cnt && r->seq + j < nseq; j++) {
            msgstate *y = &ms[f][r->seq + j];
            y->put = (unsigned char)kind;
            if (kind == EV_PUT_OK && !pub && r->id) y->id = r->id + j;
          }
        break;
      }
      case EV_GOT:
        if (!x) break;
        if (x->ack_ok) {
          t->after_ack++;
          violation(pt, "delivered again after its ack", fam, r->seq);
        }
        x->got = 1;
        break;
      case EV_ACK_INV:
        if (x) x->ack_open = 1;
        break;
      case EV_ACK_OK:
        if (x) x->ack_ok = 1, x->ack_open = 0;
        break;
      case EV_ACK_STALE:
      case EV_ACK_FAIL:
        if (x) x->ack_open = 0;
        if (r->kind == EV_ACK_FAIL) unexpected++;
        break;
      case EV_ACK_INFO:
        if (x) x->ack_open = 0, x->ack_info = 1;
        unexpected += pt->mode != AT_FSYNCFAIL;
        break;
      case EV_GATE:
        gino = (uint64_t)r->id;
        gdev = (uint64_t)r->extra;
        break;
      case EV_END:
        ended = 1;
        break;
      case EV_ERR:
        unexpected++;
        if (g_vio_print++ < 20)
          fprintf(stderr, "  child: unexpected result %lld at test_powerloss.c:%lld\n",
                  (long long)r->extra, (long long)r->seq);
        break;
    }
  }
  free(buf);
  t->unexpected += unexpected;
  if (status != CRASHVFS_EXIT) {
    t->child_bad++;
    fprintf(stderr, "  child exited with status %d (workload %s, point %d)\n", status,
            pt->wl->name, pt->k);
  }
  if (unexpected) violation(pt, "unexpected result in the child", 0, -1);

  reboot(path, gdev, gino);
  if (pt->recover) {
    recovery_crash(path, crash_seed ^ 0x5eed5eedULL, t);
    reboot(path, gdev, gino);
  }

  /* I6: SQLite's own check, on a plain connection (this also recovers the
  ** WAL, as the first open after a reboot would). */
  int exists = access(path, F_OK) == 0;
  int any_durable = created[0];
  for (int64_t q = 0; q < nseq; q++)
    if (ms[0][q].put == EV_PUT_OK) any_durable = 1;
  if (!exists) {
    if (any_durable && pt->sync == MQ_SYNC_FULL) {
      t->queue_lost++;
      violation(pt, "the store file vanished", 0, -1);
    }
  } else {
    char ic[200];
    tu_sql_text(path, "PRAGMA integrity_check", ic, sizeof ic);
    if (strcmp(ic, "ok") != 0) {
      t->integrity++;
      violation(pt, "integrity_check failed", 0, -1);
      fprintf(stderr, "    integrity_check: %s\n", ic);
    }
  }

  mq_store *s = NULL;
  int orc = exists ? tu_open_ex(path, MQ_SYNC_FULL, 0, check_clock, NULL, &s) : MQ_ENOTFOUND;
  if (exists && orc != MQ_OK) {
    t->integrity++;
    violation(pt, "the store does not open", 0, orc);
    fprintf(stderr, "    open: %s: %s\n", mq_errstr(orc), mq_errmsg(NULL));
  }
  checkctx k;
  memset(&k, 0, sizeof k);
  for (int f = 0; f < MAX_FAM; f++) k.m[f] = ms[f];
  k.nseq = nseq;
  if (s) {
    int64_t problems = 0;
    int vrc = mq_store_verify(s, verify_cb, NULL, &problems);
    if (vrc != MQ_OK) {
      t->integrity++;
      violation(pt, "mq_store_verify failed", 0, vrc);
    }
    for (int qi = 0; qi < pt->wl->nqueues; qi++) {
      mq_queue_info info;
      if (created[qi] && mq_queue_info_get(s, pt->wl->queues[qi], &info) != MQ_OK &&
          pt->sync == MQ_SYNC_FULL) {
        t->queue_lost++;
        violation(pt, "a created queue is gone", qi, -1);
      }
    }
    for (int f = 0; f < pt->wl->nfam; f++) {
      for (int j = 0; j < 2 && pt->wl->fam[f][j]; j++) {
        int64_t corrupt = 0;
        k.fam = f;
        int src = mq_queue_scan(s, pt->wl->fam[f][j], scan_cb, &k, &corrupt);
        if (src != MQ_OK && src != MQ_ENOTFOUND) {
          t->integrity++;
          violation(pt, "scan failed", f, src);
        }
        if (corrupt) {
          t->corrupt += corrupt;
          violation(pt, "payload fails its checksum", f, -1);
        }
      }
    }
  }
  if (k.bad) {
    t->invented += k.bad;
    violation(pt, "a message nobody put (or with the wrong payload)", 0, -1);
  }

  /* The invariants, message by message. */
  for (int f = 0; f < pt->wl->nfam; f++) {
    for (int64_t q = 0; q < nseq; q++) {
      msgstate *x = &ms[f][q];
      int gone = !x->present && !x->ack_ok && !x->ack_open && !x->ack_info;
      if (x->present && (!x->put || !x->expected)) {
        t->invented++;
        violation(pt, "invented message (never put here)", f, q);
      }
      if (x->dup) {
        t->duplicate++;
        violation(pt, "stored twice", f, q);
      }
      if (x->present && x->put == EV_PUT_FAIL) {
        t->false_fail++;
        violation(pt, "a put that failed definitely is there (I5)", f, q);
      }
      if (x->put == EV_PUT_OK && x->expected) {
        t->acked_checked++;
        if (gone) {
          t->lost++;
          if (pt->sync == MQ_SYNC_FULL) violation(pt, "acknowledged put lost (I1)", f, q);
        }
      }
      if (x->ack_ok && x->present) {
        t->resurrected++;
        if (pt->sync == MQ_SYNC_FULL) violation(pt, "acked message is back (I3)", f, q);
      }
      if (x->ack_open || x->ack_info) {
        if (x->present) t->ack_inflight_undone++;
        else t->ack_inflight_took++;
      }
      if ((x->put == EV_PUT_INV || x->put == EV_PUT_INFO) && x->expected && x->grp == q) {
        if (x->present) t->unknown_recovered++;
        else t->unknown_gone++;
        if (pt->mode == AT_FSYNCFAIL && x->put == EV_PUT_INFO && x->present)
          t->fsync_unknown_present++;
      }
      /* All or none: a batch or publish is there in every family it
      ** reached, or nowhere. */
      if (x->present && x->put) {
        for (int g = 0; g < pt->wl->nfam; g++)
          for (int64_t j = x->grp; j < x->grp + ms[0][x->grp].cnt && j < nseq; j++) {
            msgstate *y = &ms[g][j];
            if (y->expected && !y->present && !y->ack_ok && !y->ack_open && !y->ack_info &&
                !y->got) {
              t->partial++;
              violation(pt, "batch or publish stored in part", g, j);
            }
          }
      }
    }
  }

  /* I6, last part: the store still works. */
  if (s) {
    const char *probe_q = pt->wl == &WL_TOPIC ? NULL : "q";
    mq_queue_info info;
    if (probe_q && mq_queue_info_get(s, probe_q, &info) == MQ_OK) {
      mq_msg *m = NULL;
      int64_t id = 0;
      int rc = mq_put(s, probe_q, "probe", 5, NULL, &id);
      mq_get_options go;
      mq_get_options_init(&go);
      while (rc == MQ_OK && (rc = mq_get(s, probe_q, &go, &m)) == MQ_OK) {
        int mine = mq_msg_id(m) == id;
        rc = mq_ack(s, probe_q, mq_msg_receipt(m));
        mq_msg_free(m);
        m = NULL;
        if (mine) break;
      }
      if (rc != MQ_OK) {
        t->unusable++;
        violation(pt, "the store does not take a put/get/ack after the crash", 0, rc);
      }
    }
    if (mq_store_close(s) != MQ_OK) t->unusable++;
  }
  t->torn += pt->tear && pt->redo;
  t->reached_end += ended;
  for (int f = 0; f < MAX_FAM; f++) free(ms[f]);
  rm_tree(dir);
  return ended ? 1 : 0;
}

/* Sweep crash points first, first + stride, ... until the child reaches
** its end (bounded by limit). */
static int sweep(const workload *wl, int n, int sync, int mode, int redo, int tear, totals *t,
                 int limit, int first, int stride) {
  point pt = {wl, n, sync, mode, 0, redo, tear, 0};
  int k;
  for (k = first; k <= limit; k += stride) {
    pt.k = k;
    int r = run_point(&pt, t);
    if (r != 0) break;
  }
  return k;
}

/* Random crash points: count points with k uniform in 1..max. */
static void random_points(const workload *wl, int n, int sync, int mode, int max, int count,
                          uint64_t *rng, totals *t, int recover) {
  static const int redo[3] = {0, 50, 100};
  for (int i = 0; i < count; i++) {
    point pt = {wl, n, sync, mode, 1 + (int)(tu_rand(rng) % (uint64_t)max),
                redo[tu_rand(rng) % 3], (int)(tu_rand(rng) % 2), recover};
    if (run_point(&pt, t) < 0) return;
  }
}

/* How many syncs and writes a full run of the workload makes (a sweep
** with a crash point past the end). */
static void measure(const workload *wl, int n, int sync, int *syncs, int *writes) {
  /* The END record carries the fault count, not the counters; count by
  ** sweeping would be slow, so run the child once and read its counters
  ** through a shared page. */
  int *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared == MAP_FAILED) {
    *syncs = *writes = 100;
    return;
  }
  char dir[400], path[500];
  snprintf(dir, sizeof dir, "%s/measure", g_dir);
  snprintf(path, sizeof path, "%s/q.db", dir);
  rm_tree(dir);
  mkdir(dir, 0700);
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    tu_child_setup();
    g_fd = open("/dev/null", O_WRONLY);
    g_child_now = BASE_NOW;
    crashvfs_install();
    crashvfs_reset();
    crashvfs.record = 1;
    child c;
    memset(&c, 0, sizeof c);
    c.sync = sync;
    wl->run(&c, path, n);
    shared[0] = crashvfs.syncs;
    shared[1] = crashvfs.writes;
    _exit(0);
  }
  tu_wait(pid);
  *syncs = shared[0] > 0 ? shared[0] : 1;
  *writes = shared[1] > 0 ? shared[1] : 1;
  munmap(shared, 4096);
  rm_tree(dir);
}

static void report(const char *phase, const totals *before, const totals *t) {
  fprintf(stderr,
          "  %-34s points %5d (sync %d / write %d / fsync-fail %d) acked %lld lost %lld "
          "resurrected %lld\n",
          phase, t->points - before->points, t->sync_points - before->sync_points,
          t->write_points - before->write_points, t->fsync_points - before->fsync_points,
          (long long)(t->acked_checked - before->acked_checked),
          (long long)(t->lost - before->lost), (long long)(t->resurrected - before->resurrected));
}

/* ---- the plan ------------------------------------------------------------- */

static const workload *const ALL[] = {&WL_PUT, &WL_ACK, &WL_LEASE, &WL_CKPT, &WL_TOPIC};
#define NWL (sizeof ALL / sizeof ALL[0])

/* Sizes: CI runs about half a minute on an idle 2-core machine;
** MQ_FAULT_SCALE multiplies the workload sizes and the number of random
** points.  Under AddressSanitizer every fork costs some 15 times more (the
** shadow memory), so a sanitized build samples: fewer redo variants, every
** third write point, a fifth of the random points. */
#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif
#define SMALL_N 12
#define LARGE_N 60

static void test_exhaustive_small(void) {
  static const int sync_variants[5][2] = {{0, 0}, {100, 1}, {50, 0}, {50, 1}, {100, 0}};
  static const int write_variants[3][2] = {{50, 1}, {0, 0}, {100, 1}};
  int n = SMALL_N * g_scale;
  int nsv = SANITIZED ? 2 : 5, nwv = SANITIZED ? 1 : 3, stride = SANITIZED ? 3 : 1;
  for (size_t w = 0; w < NWL; w++) {
    totals before = T;
    int syncs = 0, writes = 0;
    measure(ALL[w], n, MQ_SYNC_FULL, &syncs, &writes);
    for (int v = 0; v < nsv; v++)
      sweep(ALL[w], n, MQ_SYNC_FULL, AT_SYNC, sync_variants[v][0], sync_variants[v][1], &T,
            syncs + 5, 1, 1);
    for (int v = 0; v < nwv; v++)
      sweep(ALL[w], n, MQ_SYNC_FULL, AT_WRITE, write_variants[v][0], write_variants[v][1], &T,
            writes + 5, 1 + (int)(w % (size_t)stride), stride);
    char name[80];
    snprintf(name, sizeof name, "%s n=%d exhaustive", ALL[w]->name, n);
    report(name, &before, &T);
  }
}

static void test_random_large(void) {
  int n = LARGE_N * g_scale;
  uint64_t rng = mix(g_seed ^ 0x1234);
  for (size_t w = 0; w < NWL; w++) {
    totals before = T;
    int syncs = 0, writes = 0;
    measure(ALL[w], n, MQ_SYNC_FULL, &syncs, &writes);
    int div = SANITIZED ? 5 : 1;
    random_points(ALL[w], n, MQ_SYNC_FULL, AT_SYNC, syncs + 1, 150 * g_scale / div, &rng, &T, 0);
    random_points(ALL[w], n, MQ_SYNC_FULL, AT_WRITE, writes + 1, 250 * g_scale / div, &rng, &T, 0);
    char name[80];
    snprintf(name, sizeof name, "%s n=%d random", ALL[w]->name, n);
    report(name, &before, &T);
  }
}

/* Random crash points, each followed by a second crash while the store
** recovers (recovery_crash). */
static void test_crash_during_recovery(void) {
  int n = SMALL_N * 2 * g_scale;
  uint64_t rng = mix(g_seed ^ 0x9abc);
  for (size_t w = 0; w < NWL; w++) {
    totals before = T;
    int syncs = 0, writes = 0;
    measure(ALL[w], n, MQ_SYNC_FULL, &syncs, &writes);
    int count = (SANITIZED ? 4 : 20) * g_scale;
    random_points(ALL[w], n, MQ_SYNC_FULL, AT_SYNC, syncs + 1, count, &rng, &T, 1);
    random_points(ALL[w], n, MQ_SYNC_FULL, AT_WRITE, writes + 1, count, &rng, &T, 1);
    char name[80];
    snprintf(name, sizeof name, "%s n=%d crash in recovery", ALL[w]->name, n);
    report(name, &before, &T);
  }
  /* The second crashes did happen, and never in an unexpected way. */
  CHECK(T.recovery_crashed > 0);
  CHECK(T.recovery_bad == 0);
}

static void test_fsync_failure(void) {
  int n = SMALL_N * g_scale;
  for (size_t w = 0; w < NWL; w++) {
    totals before = T;
    int syncs = 0, writes = 0;
    measure(ALL[w], n, MQ_SYNC_FULL, &syncs, &writes);
    sweep(ALL[w], n, MQ_SYNC_FULL, AT_FSYNCFAIL, 0, 0, &T, syncs + 5, 1, 1);
    sweep(ALL[w], n, MQ_SYNC_FULL, AT_FSYNCFAIL, 100, 0, &T, syncs + 5, 1, 1);
    char name[80];
    snprintf(name, sizeof name, "%s n=%d fsync failure", ALL[w]->name, n);
    report(name, &before, &T);
  }
  CHECK(T.fsync_unknown > 0); /* the mode did make commits fail */
}

/* The known-bad control: NORMAL loses the last commits in a power cut, and
** the checker must say so.  Two workloads: puts into a new store (never
** synced: everything may go) and the checkpointing one (only what came
** after the last checkpoint may go), crash points in the second half. */
static void test_normal_control_is_caught(void) {
  const workload *wls[2] = {&WL_PUT, &WL_CKPT};
  int n = 30 * g_scale;
  uint64_t rng = mix(g_seed ^ 0x5678);
  for (int w = 0; w < 2; w++) {
    int syncs = 0, writes = 0;
    totals before = T_ctl;
    measure(wls[w], n, MQ_SYNC_NORMAL, &syncs, &writes);
    for (int i = 0; i < 12 * g_scale; i++) {
      point pt = {wls[w], n, MQ_SYNC_NORMAL, AT_WRITE,
                  writes / 2 + 1 + (int)(tu_rand(&rng) % (uint64_t)(writes / 2 + 1)), 0, 0, 0};
      if (run_point(&pt, &T_ctl) < 0) break;
    }
    char name[80];
    snprintf(name, sizeof name, "%s n=%d NORMAL control", wls[w]->name, n);
    report(name, &before, &T_ctl);
    /* Each control must show the damage NORMAL allows: a lost acknowledged
    ** put, or an acked message back from the dead (a lost ack) -- either
    ** proves the checker sees what FULL prevents.  Which one a handful of
    ** random points hits depends on the seed. */
    CHECK(T_ctl.lost + T_ctl.resurrected > before.lost + before.resurrected);
  }
  CHECK(T_ctl.lost > 0); /* and over both, acknowledged puts were lost */
  CHECK(T_ctl.integrity == 0); /* NORMAL loses commits, never consistency */
  CHECK(T_ctl.invented == 0 && T_ctl.partial == 0 && T_ctl.corrupt == 0);
}

int main(void) {
  const char *env = getenv("MQ_TEST_SEED");
  g_seed = env && *env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
  env = getenv("MQ_FAULT_SCALE");
  if (env && atoi(env) > 0) g_scale = atoi(env);
  fprintf(stderr, "test_powerloss: seed %llu (MQ_TEST_SEED=%llu replays), scale %d%s\n",
          (unsigned long long)g_seed, (unsigned long long)g_seed, g_scale,
          SANITIZED ? ", sanitized build: crash points sampled" : "");
  const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("MQ_TEST_TMPDIR");
  if (!base || !*base) base = "/tmp";
  rm_stale(base, "mq-powerloss-");
  snprintf(g_dir, sizeof g_dir, "%s/mq-powerloss-%ld", base, (long)getpid());
  mkdir(g_dir, 0700);
  tu_watchdog(1500u * (unsigned)g_scale);

  TEST(test_exhaustive_small);
  TEST(test_random_large);
  TEST(test_fsync_failure);
  TEST(test_crash_during_recovery);
  TEST(test_normal_control_is_caught);

  CHECK(T.child_bad == 0);
  CHECK(T.unexpected == 0);
  CHECK(T.lost == 0);
  CHECK(T.resurrected == 0);
  CHECK(T.after_ack == 0);
  CHECK(T.invented == 0);
  CHECK(T.corrupt == 0);
  CHECK(T.duplicate == 0);
  CHECK(T.partial == 0);
  CHECK(T.false_fail == 0);
  CHECK(T.integrity == 0);
  CHECK(T.unusable == 0);
  CHECK(T.queue_lost == 0);
  CHECK(T.acked_checked > 0);
  rm_tree(g_dir);

  fprintf(stderr,
          "  in-flight acks: took effect %lld, undone %lld; unknown puts recovered %lld, gone "
          "%lld; torn-write points %lld; fsync failures reported MQ_EUNKNOWN %lld (present "
          "after the crash %lld); second crashes in recovery %lld of %lld opens\n",
          (long long)T.ack_inflight_took, (long long)T.ack_inflight_undone,
          (long long)T.unknown_recovered, (long long)T.unknown_gone, (long long)T.torn,
          (long long)T.fsync_unknown, (long long)T.fsync_unknown_present,
          (long long)T.recovery_crashed, (long long)T.recoveries);
  fprintf(stderr,
          "crash points %d (sync %d / write %d / fsync-fail %d) · acknowledged puts checked %lld "
          "· lost %lld · resurrected %lld · integrity failures %lld · NORMAL control lost %lld "
          "%s 0\n",
          T.points, T.sync_points, T.write_points, T.fsync_points, (long long)T.acked_checked,
          (long long)T.lost, (long long)T.resurrected, (long long)T.integrity,
          (long long)T_ctl.lost, T_ctl.lost > 0 ? ">" : "NOT >");
  return test_done();
}
