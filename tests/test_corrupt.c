/*
** test_corrupt.c -- a corpus of damaged stores, generated per run from a
** known state: what the library does with each.
**
** A builder process makes the known state and dies without closing, so its
** files are what a crash leaves: messages put to a plain queue, a queue that
** compresses and a topic with two subscriptions; some leased, some acked;
** one checkpointed part in the main file and a later part still in the WAL.
** Every payload carries its own sequence number and bytes derived from it,
** so a reader can tell any returned payload from the one that was put.
**
** Each mutation copies those files and damages the copy in one way (the
** classes are listed in mut_class_names): WAL truncated at random offsets
** and at frame boundaries; one bit flipped in a WAL frame, the WAL header,
** a salt or a checksum; the WAL missing, or taken from another store
** (mispaired); a stale -shm; the database header zeroed or garbage; bits
** flipped in b-tree page headers and cell pointers or anywhere in a page;
** payload bytes damaged through SQL and in the file itself; a zero-length
** file; a directory in place of the file; a read-only file and directory;
** a newer format version.  A forked child then opens the copy, verifies it,
** scans, peeks and gets everything with the clock past every lease, and
** reports what it saw; the parent judges it:
**   - never a crash, and never a sanitizer report (the child runs under the
**     test's own sanitizers; a child that does not finish is a crash);
**   - never a payload that is not one that was put: the CRC must stop it;
**   - payload damage is detected: the message is not returned, a scan
**     counts it and mq_store_verify names it -- and so does `mq check`
**     (the CLI, when it was built: MQ_CLI_PATH);
**   - header damage gives MQ_ENOTMQ, a newer user_version MQ_EVERSION, a
**     directory MQ_ECANTOPEN;
**   - structural damage to the main file is detected (MQ_ECORRUPT or
**     MQ_ENOTMQ from open, verify or a later call) or has no visible effect;
**   - damage to the WAL that SQLite answers by silently dropping the frames
**     from the damaged one on (reliability note F3) is counted and reported
**     as the known silent-loss window, not failed: lost puts and acked
**     messages that come back are the expected signature of that window.
**     A WAL from another store is applied by SQLite as if it were ours
**     (sqlite.org/howtocorrupt.html); what that returns is counted too.
** The corpus is seeded (MQ_CORRUPT_SEED, printed) and MQ_FAULT_SCALE
** multiplies its size.  A summary line gives the figures by class.
*/
#include "testutil.h"

#include <fcntl.h>
#include <grp.h>

/* ---- The known state ----------------------------------------------------- */

#define NQ 4
static const char *const q_names[NQ] = {"q", "z", "t/a", "t/b"};
#define SEQ_SPAN 1000 /* seqs of queue q are 0.., z 1000.., topic t 2000.. */
#define MAX_SEQ 3000
#define LEASE_MS 60000

enum { T_NONE = 0, T_LIVE, T_ACKED };

typedef struct truth {
  unsigned char state[NQ][MAX_SEQ]; /* T_* per queue (t/a and t/b apart) */
  int64_t id[MAX_SEQ];              /* message id of q and z puts */
  unsigned char phase[MAX_SEQ];     /* 1 checkpointed, 2 in the WAL */
  int built;
} truth;

static truth *g_truth;       /* shared with the builder child */
static truth *g_other_truth; /* the store whose WAL is used for mispairing */
static char g_dir[256];      /* work directory */
static char g_golden[320], g_other[320], g_stale_shm[320];
static char g_closed[320]; /* the golden store after a clean close: no WAL */
static uint64_t g_seed;

/* Payload of seq, tagged with the store it belongs to: "seq=N;" then bytes
** derived from (tag, seq).  Queue z gets compressible text.  Sizes vary
** from a few bytes to more than a page, so payloads use overflow pages. */
static size_t make_payload(int tag, int64_t seq, unsigned char *buf, size_t cap) {
  int n = snprintf((char *)buf, cap, "seq=%lld;", (long long)seq);
  size_t len = (size_t)n + (size_t)((seq * 7919 + tag * 31) % 6000);
  if (seq % 10 == 3) len = (size_t)n + 5000 + (size_t)(seq % 7) * 300; /* overflow pages */
  if (len > cap) len = cap;
  uint64_t x = (uint64_t)seq * 0x9e3779b97f4a7c15ULL + (uint64_t)tag * 0x632be59bd9b4e019ULL + 1;
  for (size_t i = (size_t)n; i < len; i++) {
    if (seq >= SEQ_SPAN && seq < 2 * SEQ_SPAN) {
      buf[i] = (unsigned char)("the quick brown fox jumps "[(i + (size_t)seq + (size_t)tag) % 26]);
    } else {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      buf[i] = (unsigned char)x;
    }
  }
  return len;
}

/* The seq a payload carries when it is exactly make_payload(tag, seq);
** -1 otherwise. */
static int64_t payload_seq(int tag, const void *data, size_t n) {
  static unsigned char want[8192];
  char head[32];
  size_t hn = n < sizeof head - 1 ? n : sizeof head - 1;
  long long seq = -1;
  memcpy(head, data, hn);
  head[hn] = 0;
  if (sscanf(head, "seq=%lld;", &seq) != 1 || seq < 0 || seq >= MAX_SEQ) return -1;
  size_t wl = make_payload(tag, seq, want, sizeof want);
  return wl == n && memcmp(want, data, n) == 0 ? seq : -1;
}

static int queue_of_seq(int64_t seq) { return seq < SEQ_SPAN ? 0 : seq < 2 * SEQ_SPAN ? 1 : 2; }

static void build_die(const char *what, mq_store *s, int rc) {
  fprintf(stderr, "builder: %s: %s: %s\n", what, mq_errstr(rc), mq_errmsg(s));
  _exit(3);
}

static void build_put(mq_store *s, truth *t, int tag, int64_t seq, int phase) {
  unsigned char buf[8192];
  size_t len = make_payload(tag, seq, buf, sizeof buf);
  int q = queue_of_seq(seq);
  int64_t id = 0, delivered = 0;
  int rc = q == 2 ? mq_publish(s, "t", "s.x", buf, len, NULL, &id, &delivered)
                  : mq_put(s, q_names[q], buf, len, NULL, &id);
  if (rc != MQ_OK) build_die("put", s, rc);
  t->phase[seq] = (unsigned char)phase;
  if (q == 2) {
    t->state[2][seq] = t->state[3][seq] = T_LIVE;
  } else {
    t->state[q][seq] = T_LIVE;
    t->id[seq] = id;
  }
}

/* Lease n messages of queue qi; ack every ack_every-th of them. */
static void build_lease(mq_store *s, truth *t, int tag, int qi, int n, int ack_every) {
  mq_get_options go;
  mq_get_options_init(&go);
  go.visibility_ms = LEASE_MS;
  for (int i = 0; i < n; i++) {
    mq_msg *m = NULL;
    int rc = mq_get(s, q_names[qi], &go, &m);
    if (rc != MQ_OK) build_die("get", s, rc);
    int64_t seq = payload_seq(tag, mq_msg_data(m), mq_msg_size(m));
    if (seq < 0) build_die("get returned a bad payload", s, MQ_ERROR);
    if (ack_every && i % ack_every == 0) {
      if ((rc = mq_ack(s, q_names[qi], mq_msg_receipt(m))) != MQ_OK) build_die("ack", s, rc);
      t->state[qi][seq] = T_ACKED;
    }
    mq_msg_free(m);
  }
}

static int copy_file(const char *from, const char *to) {
  int in = open(from, O_RDONLY), out = -1, ok = 0;
  if (in >= 0) out = open(to, O_CREAT | O_WRONLY | O_TRUNC, 0600);
  if (in >= 0 && out >= 0) {
    char buf[65536];
    ssize_t n;
    ok = 1;
    while ((n = read(in, buf, sizeof buf)) > 0)
      if (write(out, buf, (size_t)n) != n) ok = 0;
    if (n < 0) ok = 0;
  }
  if (in >= 0) close(in);
  if (out >= 0) close(out);
  return ok;
}

/* Remove the writer-gate shared memory a store at path leaves behind when
** its process dies without closing (named after the file's device and
** inode, see gate.c). */
static void unlink_gate_shm(const char *path) {
  struct stat st;
  char name[64];
  if (stat(path, &st) != 0) return;
  snprintf(name, sizeof name, "/mq-%llx-%llx", (unsigned long long)st.st_dev,
           (unsigned long long)st.st_ino);
  shm_unlink(name);
}

/* The builder: runs in a child that exits without closing, so the WAL and
** the -shm stay as a crash leaves them. */
static void build_store(const char *path, truth *t, int tag, const char *stale_shm) {
  mq_store_options o;
  mq_store *s = NULL;
  mq_store_options_init(&o);
  o.sync = MQ_SYNC_FULL;
  o.clock = test_clock;
  o.min_free_bytes = 0;
  int rc = mq_store_open(path, &o, &s);
  if (rc != MQ_OK) build_die("open", NULL, rc);
  mq_queue_options qo;
  mq_queue_options_init(&qo);
  qo.visibility_ms = LEASE_MS;
  if ((rc = mq_queue_create(s, "q", &qo)) != MQ_OK) build_die("create q", s, rc);
  qo.compress_above = 64;
  if ((rc = mq_queue_create(s, "z", &qo)) != MQ_OK) build_die("create z", s, rc);
  if ((rc = mq_topic_create(s, "t", NULL)) != MQ_OK) build_die("create t", s, rc);
  mq_queue_options_init(&qo);
  qo.visibility_ms = LEASE_MS;
  if ((rc = mq_subscription_create(s, "t", "a", NULL, &qo)) != MQ_OK) build_die("sub a", s, rc);
  if ((rc = mq_subscription_create(s, "t", "b", "s.*", &qo)) != MQ_OK) build_die("sub b", s, rc);

  /* Phase 1: checkpointed into the main file. */
  for (int64_t i = 0; i < 40; i++) build_put(s, t, tag, i, 1);
  for (int64_t i = 0; i < 20; i++) build_put(s, t, tag, SEQ_SPAN + i, 1);
  for (int64_t i = 0; i < 10; i++) build_put(s, t, tag, 2 * SEQ_SPAN + i, 1);
  build_lease(s, t, tag, 0, 8, 2);
  build_lease(s, t, tag, 1, 4, 3);
  build_lease(s, t, tag, 2, 3, 2);
  build_lease(s, t, tag, 3, 2, 0);
  if ((rc = mq_store_checkpoint(s)) != MQ_OK) build_die("checkpoint", s, rc);
  if (stale_shm) {
    char shm[400];
    snprintf(shm, sizeof shm, "%s-shm", path);
    if (!copy_file(shm, stale_shm)) build_die("copying the -shm", s, MQ_ERROR);
  }

  /* Phase 2: left in the WAL. */
  for (int64_t i = 40; i < 70; i++) build_put(s, t, tag, i, 2);
  for (int64_t i = 20; i < 30; i++) build_put(s, t, tag, SEQ_SPAN + i, 2);
  for (int64_t i = 10; i < 15; i++) build_put(s, t, tag, 2 * SEQ_SPAN + i, 2);
  build_lease(s, t, tag, 0, 10, 3);
  build_lease(s, t, tag, 1, 3, 2);
  build_lease(s, t, tag, 2, 2, 1);
  build_lease(s, t, tag, 3, 3, 2);
  t->built = 1;
  _exit(0); /* no close: the WAL stays */
}

static int run_builder(const char *path, truth *t, int tag, const char *stale_shm) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    tu_child_setup();
    build_store(path, t, tag, stale_shm);
  }
  int st = pid > 0 ? tu_wait(pid) : -1;
  unlink_gate_shm(path);
  return st == 0 && t->built;
}

/* ---- Mutations -------------------------------------------------------------- */

enum mut_class {
  M_WAL_TRUNC_RANDOM,
  M_WAL_TRUNC_FRAME,
  M_WAL_FLIP_FRAME,
  M_WAL_FLIP_HEADER,
  M_WAL_FLIP_SALT,
  M_WAL_FLIP_CKSUM,
  M_WAL_MISSING,
  M_WAL_MISPAIRED,
  M_SHM_STALE,
  M_DB_HEADER_ZERO,
  M_DB_HEADER_GARBAGE,
  M_BTREE_STRUCT,
  M_PAGE_FLIP,
  M_PAYLOAD_SQL,
  M_PAYLOAD_FILE,
  M_BODY_MISSING,
  M_ZERO_LENGTH,
  M_DIRECTORY,
  M_READONLY_FILE,
  M_READONLY_DIR,
  M_NEWER_VERSION,
  M_COUNT
};

static const char *const mut_class_names[M_COUNT] = {
    "wal-trunc-random", "wal-trunc-frame",   "wal-flip-frame", "wal-flip-header",
    "wal-flip-salt",    "wal-flip-cksum",    "wal-missing",    "wal-mispaired",
    "shm-stale",        "db-header-zero",    "db-header-garbage", "btree-struct",
    "page-flip",        "payload-sql",       "payload-file",   "body-missing",
    "zero-length",
    "directory",        "readonly-file",     "readonly-dir",   "newer-version"};

/* How many of each class per unit of MQ_FAULT_SCALE. */
static const int mut_class_count[M_COUNT] = {25, 15, 30, 12, 12, 12, 1, 2, 1, 4, 6, 50,
                                             50, 8,  8,  2,  2,  1, 1, 1, 1};

static int is_wal_class(int c) { return c <= M_SHM_STALE; }

/* What the child saw; in shared memory, reset before every child. */
typedef struct outcome {
  int done;
  int open_rc, open_ro_rc, verify_rc, peek_rc, get_rc;
  int scan_rc[NQ];
  int64_t verify_problems, scan_corrupt;
  int verify_named;          /* a problem line named the damaged message */
  int write_rc;              /* a put on a writable open */
  int64_t returned, bad_payload, misplaced, id_mismatch, resurrected, missing, dup;
  int64_t foreign;           /* payloads of the other store (mispaired WAL) */
  int detected;              /* MQ_ECORRUPT / MQ_ENOTMQ / MQ_EVERSION seen, or problems */
  int damaged_returned;      /* the message whose payload we damaged came back */
  char note[200];
} outcome;

static outcome *g_out;
static int g_verbose; /* MQ_CORRUPT_VERBOSE: say where each bad payload came from */

static void tell_bad(const char *api, int q, int64_t id, const void *data, size_t len) {
  if (!g_verbose) return;
  char head[40];
  size_t n = len < sizeof head - 1 ? len : sizeof head - 1;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = ((const unsigned char *)data)[i];
    head[i] = ch >= 32 && ch < 127 ? (char)ch : '.';
  }
  head[n] = 0;
  fprintf(stderr, "  bad payload from %s on %s: id %lld, %zu bytes \"%s\"\n", api, q_names[q],
          (long long)id, len, head);
}
static int64_t g_damaged_id = -1; /* payload classes: the message damaged */
static int g_damaged_zlib;        /* ... and its payload is stored compressed */
static int g_tag = 1;             /* payload tag of the golden store */

static void path_of(char *buf, size_t cap, const char *dir, const char *suffix) {
  snprintf(buf, cap, "%s/m.db%s", dir, suffix);
}

static int64_t file_len(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (int64_t)st.st_size : -1;
}

static int flip_bit(const char *path, int64_t off, int bit) {
  int fd = open(path, O_RDWR);
  unsigned char b;
  int ok = fd >= 0 && pread(fd, &b, 1, off) == 1;
  if (ok) {
    b ^= (unsigned char)(1u << (bit & 7));
    ok = pwrite(fd, &b, 1, off) == 1;
  }
  if (fd >= 0) close(fd);
  return ok;
}

static int write_at(const char *path, int64_t off, const void *data, size_t n) {
  int fd = open(path, O_RDWR);
  int ok = fd >= 0 && pwrite(fd, data, n, off) == (ssize_t)n;
  if (fd >= 0) close(fd);
  return ok;
}

static int page_size_of(const char *db) {
  unsigned char h[100];
  int fd = open(db, O_RDONLY);
  int ok = fd >= 0 && pread(fd, h, sizeof h, 0) == (ssize_t)sizeof h;
  if (fd >= 0) close(fd);
  if (!ok) return 4096;
  int ps = h[16] << 8 | h[17];
  return ps == 1 ? 65536 : ps >= 512 ? ps : 4096;
}

/* Copy a base store (its -wal and -shm when it has them) into dir as m.db. */
static int copy_base(const char *base, const char *dir) {
  char from[400], to[400];
  static const char *const sfx[3] = {"", "-wal", "-shm"};
  for (int i = 0; i < 3; i++) {
    snprintf(from, sizeof from, "%s%s", base, sfx[i]);
    path_of(to, sizeof to, dir, sfx[i]);
    if (i > 0 && access(from, F_OK) != 0) continue;
    if (!copy_file(from, to)) return 0;
  }
  return 1;
}

/* Damage to the main file is tried on both bases: with the hot WAL (where
** newer copies of many pages live in the WAL) and on the closed store. */
static int uses_closed_base(int c) {
  return c == M_DB_HEADER_ZERO || c == M_DB_HEADER_GARBAGE || c == M_BTREE_STRUCT ||
         c == M_PAGE_FLIP;
}

/* A payload of queue q that is live, checkpointed and larger than a page
** (its overflow pages are in the main file only and are never rewritten
** while it lives).  Returns its seq, or -1. */
static int64_t pick_big_live(uint64_t *rng, int q) {
  int64_t cand[64];
  int n = 0;
  unsigned char buf[8192];
  for (int64_t seq = q * SEQ_SPAN; seq < q * SEQ_SPAN + SEQ_SPAN && n < 64; seq++)
    if (g_truth->state[q][seq] == T_LIVE && g_truth->phase[seq] == 1 &&
        make_payload(g_tag, seq, buf, sizeof buf) > 4500)
      cand[n++] = seq;
  return n ? cand[tu_rand(rng) % (uint64_t)n] : -1;
}

/* Find where len bytes of needle sit in the file; -1 if not exactly once. */
static int64_t find_in_file(const char *path, const unsigned char *needle, size_t len) {
  int64_t size = file_len(path), at = -1;
  if (size <= 0) return -1;
  unsigned char *all = malloc((size_t)size);
  int fd = open(path, O_RDONLY);
  if (all && fd >= 0 && pread(fd, all, (size_t)size, 0) == size) {
    for (int64_t i = 0; i + (int64_t)len <= size; i++) {
      if (memcmp(all + i, needle, len) == 0) {
        if (at >= 0) {
          at = -1;
          break;
        }
        at = i;
      }
    }
  }
  if (fd >= 0) close(fd);
  free(all);
  return at;
}

/* Flip one bit of message id's stored payload through SQLite, as a
** careless tool would: the file stays sound, only the payload is wrong. */
static int flip_payload_sql(const char *db, int64_t id, uint64_t where, int bit) {
  int len = 0;
  unsigned char *copy = tu_payload_get(db, id, &len);
  if (!copy) return 0;
  copy[where % (uint64_t)len] ^= (unsigned char)(1u << (bit & 7));
  int ok = tu_payload_set(db, id, "data = ?1", copy, len) == 1;
  free(copy);
  return ok;
}

/* Apply mutation c with parameters from rng to the copy in dir.  Returns
** 1 if applied, 0 if not applicable (the parent skips it), -1 on a setup
** error.  desc receives a description for failure reports. */
static int mutate(int c, uint64_t *rng, const char *dir, char *desc, size_t cap) {
  char db[400], wal[400], shm[400];
  path_of(db, sizeof db, dir, "");
  path_of(wal, sizeof wal, dir, "-wal");
  path_of(shm, sizeof shm, dir, "-shm");
  int64_t wlen = file_len(wal), dlen = file_len(db);
  int ps = page_size_of(db);
  int64_t frame = 24 + ps, nframes = wlen > 32 ? (wlen - 32) / frame : 0;
  int bit = (int)(tu_rand(rng) % 8);
  g_damaged_id = -1;
  g_damaged_zlib = 0;
  switch (c) {
    case M_WAL_TRUNC_RANDOM: {
      if (wlen <= 0) return 0;
      int64_t at = (int64_t)(tu_rand(rng) % (uint64_t)wlen);
      snprintf(desc, cap, "WAL (%lld bytes) truncated to %lld", (long long)wlen, (long long)at);
      return truncate(wal, at) == 0 ? 1 : -1;
    }
    case M_WAL_TRUNC_FRAME: {
      if (nframes < 1) return 0;
      int64_t k = (int64_t)(tu_rand(rng) % (uint64_t)nframes);
      snprintf(desc, cap, "WAL truncated after frame %lld of %lld", (long long)k,
               (long long)nframes);
      return truncate(wal, 32 + k * frame) == 0 ? 1 : -1;
    }
    case M_WAL_FLIP_FRAME: {
      if (nframes < 1) return 0;
      int64_t k = (int64_t)(tu_rand(rng) % (uint64_t)nframes);
      int64_t off = 32 + k * frame + (int64_t)(tu_rand(rng) % (uint64_t)frame);
      snprintf(desc, cap, "WAL frame %lld of %lld: bit %d of byte %lld flipped", (long long)k,
               (long long)nframes, bit, (long long)off);
      return flip_bit(wal, off, bit) ? 1 : -1;
    }
    case M_WAL_FLIP_HEADER: {
      if (wlen < 32) return 0;
      int64_t off = (int64_t)(tu_rand(rng) % 32);
      snprintf(desc, cap, "WAL header: bit %d of byte %lld flipped", bit, (long long)off);
      return flip_bit(wal, off, bit) ? 1 : -1;
    }
    case M_WAL_FLIP_SALT:
    case M_WAL_FLIP_CKSUM: {
      if (nframes < 1) return 0;
      /* The WAL header's field (salt 16..23, checksum 24..31) or a frame
      ** header's (salt 8..15, checksum 16..23). */
      int in_header = tu_rand(rng) % 3 == 0;
      int64_t k = (int64_t)(tu_rand(rng) % (uint64_t)nframes);
      int64_t base = in_header ? (c == M_WAL_FLIP_SALT ? 16 : 24)
                               : 32 + k * frame + (c == M_WAL_FLIP_SALT ? 8 : 16);
      int64_t off = base + (int64_t)(tu_rand(rng) % 8);
      snprintf(desc, cap, "WAL %s %s: bit %d of byte %lld flipped",
               in_header ? "header" : "frame", c == M_WAL_FLIP_SALT ? "salt" : "checksum", bit,
               (long long)off);
      return flip_bit(wal, off, bit) ? 1 : -1;
    }
    case M_WAL_MISSING:
      snprintf(desc, cap, "WAL and -shm deleted");
      unlink(shm);
      return unlink(wal) == 0 ? 1 : -1;
    case M_WAL_MISPAIRED: {
      char from[400];
      snprintf(desc, cap, "WAL (and -shm) replaced by those of another store");
      snprintf(from, sizeof from, "%s-wal", g_other);
      unlink(shm);
      return copy_file(from, wal) ? 1 : -1;
    }
    case M_SHM_STALE:
      snprintf(desc, cap, "-shm replaced by a copy taken before the WAL part was written");
      return copy_file(g_stale_shm, shm) ? 1 : -1;
    case M_DB_HEADER_ZERO: {
      unsigned char z[100];
      memset(z, 0, sizeof z);
      snprintf(desc, cap, "database header (100 bytes) zeroed");
      return write_at(db, 0, z, sizeof z) ? 1 : -1;
    }
    case M_DB_HEADER_GARBAGE: {
      unsigned char g[100];
      for (size_t i = 0; i < sizeof g; i++) g[i] = (unsigned char)tu_rand(rng);
      size_t n = 16 + (size_t)(tu_rand(rng) % 85); /* the magic string at least */
      snprintf(desc, cap, "database header: first %zu bytes garbage", n);
      return write_at(db, 0, g, n) ? 1 : -1;
    }
    case M_BTREE_STRUCT: {
      /* A b-tree page of the main file: a bit of its page header or of its
      ** cell pointer array. */
      int64_t npages = dlen / ps;
      for (int tries = 0; tries < 50 && npages > 1; tries++) {
        int64_t pg = 1 + (int64_t)(tu_rand(rng) % (uint64_t)(npages - 1)); /* 0-based, not page 1 */
        unsigned char h[12];
        int fd = open(db, O_RDONLY);
        int ok = fd >= 0 && pread(fd, h, sizeof h, pg * ps) == (ssize_t)sizeof h;
        if (fd >= 0) close(fd);
        if (!ok || (h[0] != 2 && h[0] != 5 && h[0] != 10 && h[0] != 13)) continue;
        int hdr = h[0] == 2 || h[0] == 5 ? 12 : 8;
        int cells = h[3] << 8 | h[4];
        int64_t span = hdr + 2 * cells;
        int64_t off = pg * ps + (int64_t)(tu_rand(rng) % (uint64_t)span);
        snprintf(desc, cap, "b-tree page %lld (type %d, %d cells): bit %d of byte %lld flipped",
                 (long long)pg + 1, h[0], cells, bit, (long long)off);
        return flip_bit(db, off, bit) ? 1 : -1;
      }
      return 0;
    }
    case M_PAGE_FLIP: {
      if (dlen <= ps) return 0;
      int64_t off = ps + (int64_t)(tu_rand(rng) % (uint64_t)(dlen - ps));
      snprintf(desc, cap, "main file: bit %d of byte %lld (page %lld) flipped", bit,
               (long long)off, (long long)(off / ps + 1));
      return flip_bit(db, off, bit) ? 1 : -1;
    }
    case M_PAYLOAD_SQL: {
      /* Rewrite one live message's stored bytes as a careless tool would:
      ** the file stays sound, only the payload is wrong. */
      int q = (int)(tu_rand(rng) % 2);
      int64_t cand[128];
      int n = 0;
      for (int64_t seq = q * SEQ_SPAN; seq < (q + 1) * SEQ_SPAN && n < 128; seq++)
        if (g_truth->state[q][seq] == T_LIVE) cand[n++] = seq;
      if (!n) return 0;
      int64_t seq = cand[tu_rand(rng) % (uint64_t)n];
      g_damaged_id = g_truth->id[seq];
      g_damaged_zlib = q == 1; /* "z" compresses */
      snprintf(desc, cap, "payload of message %lld (queue %s): bit %d flipped through SQL",
               (long long)g_damaged_id, q_names[q], bit);
      return flip_payload_sql(db, g_damaged_id, tu_rand(rng), bit) ? 1 : -1;
    }
    case M_PAYLOAD_FILE: {
      int64_t seq = pick_big_live(rng, 0);
      if (seq < 0) return 0;
      unsigned char buf[8192];
      size_t len = make_payload(g_tag, seq, buf, sizeof buf);
      /* Past the first 4096 bytes: up to 4061 bytes of a row stay on its
      ** b-tree leaf page, which later writes to its neighbours put in the
      ** WAL, hiding a flip in the main file; only the overflow pages are
      ** never rewritten while the message lives. */
      size_t at = 4100 + (size_t)(tu_rand(rng) % (uint64_t)(len - 4200));
      int64_t off = find_in_file(db, buf + at, 24);
      if (off < 0) return 0;
      g_damaged_id = g_truth->id[seq];
      g_damaged_zlib = 0;
      snprintf(desc, cap, "payload of message %lld: bit %d flipped in the main file at %lld",
               (long long)g_damaged_id, bit, (long long)off);
      return flip_bit(db, off, bit) ? 1 : -1;
    }
    case M_BODY_MISSING: {
      /* The payload row of a live message is gone (a lost page, a hand
      ** edit): the message must not come back with an empty payload. */
      int q = (int)(tu_rand(rng) % 2);
      int64_t cand[128];
      int n = 0;
      for (int64_t seq = q * SEQ_SPAN; seq < (q + 1) * SEQ_SPAN && n < 128; seq++)
        if (g_truth->state[q][seq] == T_LIVE) cand[n++] = seq;
      if (!n) return 0;
      g_damaged_id = g_truth->id[cand[tu_rand(rng) % (uint64_t)n]];
      /* A small payload lives in the message row: its columns go NULL. */
      int in_row = tu_payload_inline(db, g_damaged_id) == 1;
      char sql[200];
      snprintf(sql, sizeof sql,
               in_row ? "UPDATE mq_msg SET size = NULL, crc = NULL, codec = NULL, headers = NULL,"
                        " data = NULL WHERE id = %lld"
                      : "DELETE FROM mq_body WHERE id = (SELECT body_id FROM mq_msg WHERE id = %lld)",
               (long long)g_damaged_id);
      snprintf(desc, cap, "payload %s of message %lld (queue %s) deleted through SQL",
               in_row ? "columns" : "row", (long long)g_damaged_id, q_names[q]);
      return tu_sql_exec(db, sql) == SQLITE_OK ? 1 : -1;
    }
    case M_ZERO_LENGTH:
      if (tu_rand(rng) % 2) {
        unlink(wal);
        unlink(shm);
        snprintf(desc, cap, "main file truncated to 0 bytes, no WAL");
      } else {
        snprintf(desc, cap, "main file truncated to 0 bytes, WAL kept");
      }
      return truncate(db, 0) == 0 ? 1 : -1;
    case M_DIRECTORY:
      snprintf(desc, cap, "main file replaced by a directory");
      unlink(wal);
      unlink(shm);
      unlink(db);
      return mkdir(db, 0700) == 0 ? 1 : -1;
    case M_READONLY_FILE:
    case M_READONLY_DIR:
      snprintf(desc, cap, "%s read-only (opened by an unprivileged user)",
               c == M_READONLY_FILE ? "main file (0400)" : "directory (0500) and files (0400)");
      return 1; /* applied by the child, which drops privileges first */
    case M_NEWER_VERSION:
      snprintf(desc, cap, "PRAGMA user_version set to 99");
      return tu_sql_exec(db, "PRAGMA user_version = 99") == SQLITE_OK ? 1 : -1;
  }
  return 0;
}

/* ---- The child: open, verify, read everything ----------------------------- */

static int is_detect_code(int rc) {
  return rc == MQ_ECORRUPT || rc == MQ_ENOTMQ || rc == MQ_EVERSION;
}

static void note_rc(int rc) {
  if (is_detect_code(rc)) g_out->detected = 1;
}

static void verify_line(void *ctx, const char *problem) {
  (void)ctx;
  char want[64];
  snprintf(want, sizeof want, "message %lld:", (long long)g_damaged_id);
  if (g_damaged_id >= 0 && strstr(problem, want) && strstr(problem, "checksum"))
    g_out->verify_named = 1;
  snprintf(want, sizeof want, "message %lld has no payload", (long long)g_damaged_id);
  if (g_damaged_id >= 0 && strstr(problem, want)) g_out->verify_named = 1;
}

typedef struct seen_ctx {
  int q;
  unsigned char *seen; /* per seq: times returned */
} seen_ctx;

/* The seq of a returned payload, or -1 after counting it as foreign (the
** other store's) or bad (nobody's). */
static int64_t payload_check(const char *api, int q, int64_t id, const void *data, size_t len) {
  int64_t seq = payload_seq(g_tag, data, len);
  if (seq >= 0) return seq;
  if (payload_seq(2, data, len) >= 0) {
    g_out->foreign++;
  } else {
    g_out->bad_payload++;
    tell_bad(api, q, id, data, len);
  }
  return -1;
}

/* Judge one returned message of queue q. */
static void judge(int q, int64_t id, const void *data, size_t len, unsigned char *seen) {
  g_out->returned++;
  if (id == g_damaged_id && q < 2) g_out->damaged_returned++;
  int64_t seq = payload_check("get", q, id, data, len);
  if (seq < 0) return;
  int want_q = queue_of_seq(seq);
  if (want_q != (q >= 2 ? 2 : q)) {
    g_out->misplaced++;
    return;
  }
  if (q < 2 && g_truth->id[seq] != id) g_out->id_mismatch++;
  if (g_truth->state[q][seq] == T_ACKED) g_out->resurrected++;
  if (g_truth->state[q][seq] == T_NONE) g_out->misplaced++;
  if (seen[seq]++ && seen[seq] == 2) g_out->dup++;
}

static int scan_cb(void *ctx, const mq_msg *m, int state) {
  (void)state;
  seen_ctx *c = ctx;
  /* Scan results are judged for their payloads only; identity and loss are
  ** judged on the gets. */
  payload_check("scan", c->q, mq_msg_id(m), mq_msg_data(m), mq_msg_size(m));
  if (mq_msg_id(m) == g_damaged_id && c->q < 2) g_out->damaged_returned++;
  return 0;
}

static void read_everything(mq_store *s, int gets) {
  unsigned char seen[NQ][MAX_SEQ];
  memset(seen, 0, sizeof seen);
  int64_t problems = 0;
  g_out->verify_rc = mq_store_verify(s, verify_line, NULL, &problems);
  g_out->verify_problems = problems;
  note_rc(g_out->verify_rc);
  if (problems) g_out->detected = 1;
  for (int q = 0; q < NQ; q++) {
    seen_ctx c = {q, seen[q]};
    int64_t corrupt = 0;
    g_out->scan_rc[q] = mq_queue_scan(s, q_names[q], scan_cb, &c, &corrupt);
    note_rc(g_out->scan_rc[q]);
    g_out->scan_corrupt += corrupt;
    if (corrupt) g_out->detected = 1;
    mq_msg *pk[128];
    size_t n = 0;
    int rc = mq_peek(s, q_names[q], 128, pk, &n);
    note_rc(rc);
    if (rc != MQ_OK && g_out->peek_rc == MQ_OK) g_out->peek_rc = rc;
    for (size_t i = 0; rc == MQ_OK && i < n; i++) {
      payload_check("peek", q, mq_msg_id(pk[i]), mq_msg_data(pk[i]), mq_msg_size(pk[i]));
      if (mq_msg_id(pk[i]) == g_damaged_id && q < 2) g_out->damaged_returned++;
      mq_msg_free(pk[i]);
    }
  }
  if (!gets) return;
  mq_get_options go;
  mq_get_options_init(&go);
  go.visibility_ms = 3600000;
  for (int q = 0; q < NQ; q++) {
    for (int i = 0; i < 4000; i++) {
      mq_msg *m = NULL;
      int rc = mq_get(s, q_names[q], &go, &m);
      if (rc == MQ_EMPTY) break;
      note_rc(rc);
      if (rc != MQ_OK) {
        if (g_out->get_rc == MQ_OK) g_out->get_rc = rc;
        break;
      }
      judge(q, mq_msg_id(m), mq_msg_data(m), mq_msg_size(m), seen[q]);
      mq_msg_free(m);
    }
    /* What should have come back and did not. */
    int span_q = q >= 2 ? 2 : q;
    for (int64_t seq = span_q * SEQ_SPAN; seq < (span_q + 1) * SEQ_SPAN; seq++)
      if (g_truth->state[q][seq] == T_LIVE && !seen[q][seq] &&
          !(g_truth->id[seq] == g_damaged_id && q < 2))
        g_out->missing++;
  }
}

static mq_store *child_open(const char *db, int flags, int *rc) {
  mq_store_options o;
  mq_store *s = NULL;
  mq_store_options_init(&o);
  o.sync = MQ_SYNC_FULL;
  o.flags = flags;
  o.clock = test_clock;
  o.min_free_bytes = 0;
  *rc = mq_store_open(db, &o, &s);
  return s;
}

static void drop_privileges(void) {
  if (geteuid() != 0) return;
  if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0) {
    snprintf(g_out->note, sizeof g_out->note, "could not drop privileges: %s", strerror(errno));
    _exit(4);
  }
}

static void child_main(int c, const char *dir) {
  char db[400];
  path_of(db, sizeof db, dir, "");
  test_now_ms += 10 * 3600 * 1000LL; /* past every lease */
  int ro = c == M_READONLY_FILE || c == M_READONLY_DIR;
  if (ro) {
    /* readonly-file: the main file only; readonly-dir: everything, as on
    ** a read-only mount. */
    drop_privileges();
    chmod(db, 0400);
    if (c == M_READONLY_DIR) {
      char side[420];
      snprintf(side, sizeof side, "%s-wal", db);
      chmod(side, 0400);
      snprintf(side, sizeof side, "%s-shm", db);
      chmod(side, 0400);
      chmod(dir, 0500);
    }
  }
  int rc;
  mq_store *s = child_open(db, MQ_OPEN_CREATE, &rc);
  g_out->open_rc = rc;
  note_rc(rc);
  if (s) {
    read_everything(s, !ro);
    if (ro) g_out->write_rc = mq_put(s, "q", "x", 1, NULL, NULL);
    mq_store_close(s);
  } else if (ro) {
    /* A read-only open must still read what is there. */
    s = child_open(db, MQ_OPEN_READONLY, &rc);
    g_out->open_ro_rc = rc;
    note_rc(rc);
    if (s) {
      read_everything(s, 0);
      mq_store_close(s);
    }
  }
  g_out->done = 1;
}

/* ---- The CLI ------------------------------------------------------------------ */

/* Run `mq FILE check`; returns its exit status (-1 if it could not run)
** and its stdout in out. */
static int run_cli_check(const char *db, char *out, size_t cap) {
#ifdef MQ_CLI_PATH
  int p[2];
  out[0] = 0;
  if (pipe(p) != 0) return -1;
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(p[1], 1);
    close(p[0]);
    close(p[1]);
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) dup2(devnull, 2);
    execl(MQ_CLI_PATH, "mq", db, "check", (char *)NULL);
    _exit(127);
  }
  close(p[1]);
  size_t have = 0;
  ssize_t n;
  while (have + 1 < cap && (n = read(p[0], out + have, cap - 1 - have)) > 0) have += (size_t)n;
  out[have] = 0;
  close(p[0]);
  return pid > 0 ? tu_wait(pid) : -1;
#else
  (void)db;
  (void)out;
  (void)cap;
  return -1;
#endif
}

/* ---- The parent: run the corpus and judge ------------------------------------ */

typedef struct class_fig {
  int run, skipped, crashed, bad_data, detected, silent, harmless, failed;
  int64_t lost, resurrected;
} class_fig;

static class_fig g_fig[M_COUNT];
static int g_cli_checked, g_cli_named;
static int g_closed_base;  /* the current mutation was made on the closed store */
static int64_t g_foreign;  /* other-store payloads read through a mispaired WAL */
static const char *g_only; /* MQ_CORRUPT_ONLY: run only this class */

static void rm_tree_copy(const char *dir) {
  char p[400];
  static const char *const sfx[3] = {"", "-wal", "-shm"};
  for (int i = 0; i < 3; i++) {
    path_of(p, sizeof p, dir, sfx[i]);
    if (unlink(p) != 0 && (errno == EISDIR || errno == EPERM)) rmdir(p);
  }
}

/* Judge one finished child.  Returns 1 if it passed. */
static int judge_outcome(int c, const outcome *o, int status, const char *desc) {
  class_fig *f = &g_fig[c];
  char why[300] = "";
  f->run++;
  if (status != 0 || !o->done) {
    f->crashed++;
    snprintf(why, sizeof why, "the child %s %d", status >= 128 ? "died from signal" : "exited with",
             status >= 128 ? status - 128 : status);
  } else if (o->bad_payload || (o->foreign && c != M_WAL_MISPAIRED)) {
    f->bad_data++;
    snprintf(why, sizeof why, "%lld payload(s) returned that were never put",
             (long long)(o->bad_payload + o->foreign));
  } else {
    /* A WAL from another store is applied by SQLite as if it were ours:
    ** its messages are counted, not failed (a documented SQLite limit). */
    if (c == M_WAL_MISPAIRED) g_foreign += o->foreign;
    int visible = o->missing || o->resurrected || o->misplaced || o->id_mismatch || o->dup;
    if (o->detected) f->detected++;
    else if (visible) f->silent++;
    else f->harmless++;
    f->lost += o->missing;
    f->resurrected += o->resurrected;
    switch (c) {
      case M_DB_HEADER_ZERO:
      case M_DB_HEADER_GARBAGE:
        /* With a hot WAL, SQLite reads page 1 from the WAL, whose copy of
        ** the header is intact: the store may then open with nothing lost.
        ** A closed store has only the damaged header. */
        if (o->open_rc != MQ_ENOTMQ &&
            (g_closed_base || o->open_rc != MQ_OK || visible || o->detected))
          snprintf(why, sizeof why, "open returned %d (%s), expected MQ_ENOTMQ%s", o->open_rc,
                   mq_errstr(o->open_rc),
                   g_closed_base ? "" : " (or an intact store read through the WAL)");
        break;
      case M_NEWER_VERSION:
        if (o->open_rc != MQ_EVERSION)
          snprintf(why, sizeof why, "open returned %d (%s), expected MQ_EVERSION", o->open_rc,
                   mq_errstr(o->open_rc));
        break;
      case M_DIRECTORY:
        if (o->open_rc != MQ_ECANTOPEN)
          snprintf(why, sizeof why, "open returned %d (%s), expected MQ_ECANTOPEN", o->open_rc,
                   mq_errstr(o->open_rc));
        break;
      case M_PAYLOAD_SQL:
      case M_PAYLOAD_FILE:
      case M_BODY_MISSING:
        /* A deflate stream has bits nothing reads (the padding after its
        ** last block): a flip there leaves the payload as it was, and it
        ** comes back whole -- checked byte for byte (no bad payload). */
        if (o->damaged_returned && g_damaged_zlib && c == M_PAYLOAD_SQL && !o->detected &&
            !visible)
          break;
        if (o->damaged_returned)
          snprintf(why, sizeof why, "the damaged message was returned %d time(s)",
                   o->damaged_returned);
        else if (o->open_rc != MQ_OK || o->verify_rc != MQ_ECORRUPT || !o->verify_named)
          snprintf(why, sizeof why,
                   "open %d, verify %d (%lld problems), damaged message %snamed by verify",
                   o->open_rc, o->verify_rc, (long long)o->verify_problems,
                   o->verify_named ? "" : "not ");
        else if (o->scan_corrupt < 1)
          snprintf(why, sizeof why, "scans counted no corrupt payload");
        else if (o->missing || o->resurrected || o->misplaced || o->id_mismatch)
          snprintf(why, sizeof why,
                   "other messages affected: missing %lld, resurrected %lld, misplaced %lld",
                   (long long)o->missing, (long long)o->resurrected, (long long)o->misplaced);
        break;
      case M_READONLY_FILE:
      case M_READONLY_DIR:
        /* The store cannot be written; it may or may not open read-write
        ** (SQLite falls back to read-only), but no write may succeed and
        ** what is read must be right. */
        if (o->open_rc == MQ_OK && o->write_rc == MQ_OK)
          snprintf(why, sizeof why, "a put succeeded on a read-only store");
        else if (o->open_rc != MQ_OK && o->open_rc != MQ_ECANTOPEN && o->open_rc != MQ_EREADONLY)
          snprintf(why, sizeof why, "open returned %d (%s)", o->open_rc, mq_errstr(o->open_rc));
        break;
      case M_BTREE_STRUCT:
        /* Damage to the structure of a b-tree must be reported if it has
        ** any effect at all. */
        if (visible && !o->detected)
          snprintf(why, sizeof why, "structural damage changed what is read, unreported");
        break;
      case M_PAGE_FLIP:
        /* A flipped bit inside a row (an integer column: a state, a time)
        ** is invisible to SQLite and to the payload CRC: counted as
        ** silent, not failed.  Wrong payloads never pass. */
        break;
      default:
        break;
    }
  }
  if (g_verbose)
    fprintf(stderr, "  %s: %s: open %d ro-open %d verify %d (%lld problems) get %d write %d; "
            "returned %lld missing %lld resurrected %lld foreign %lld%s\n",
            mut_class_names[c], desc, o->open_rc, o->open_ro_rc, o->verify_rc,
            (long long)o->verify_problems, o->get_rc, o->write_rc, (long long)o->returned,
            (long long)o->missing, (long long)o->resurrected, (long long)o->foreign,
            o->detected ? " [detected]" : "");
  if (why[0]) {
    f->failed++;
    fprintf(stderr, "FAIL corrupt %s: %s: %s [open %d verify %d get %d; returned %lld, missing "
            "%lld, resurrected %lld]%s%s\n",
            mut_class_names[c], desc, why, o->open_rc, o->verify_rc, o->get_rc,
            (long long)o->returned, (long long)o->missing, (long long)o->resurrected,
            o->note[0] ? " note: " : "", o->note);
    return 0;
  }
  return 1;
}

static void run_corpus(int scale) {
  uint64_t rng = g_seed;
  char dir[320], ro_base[64] = "";
  int setup_errors = 0;
  for (int c = 0; c < M_COUNT; c++) {
    int n = mut_class_count[c] * scale;
    if (g_only && strcmp(g_only, mut_class_names[c]) != 0) n = 0;
    for (int i = 0; i < n; i++) {
      const char *work = g_dir;
      if (c == M_READONLY_FILE || c == M_READONLY_DIR) {
        /* A directory the unprivileged user can reach. */
        snprintf(ro_base, sizeof ro_base, "/tmp/mq-corrupt-ro-XXXXXX");
        if (!mkdtemp(ro_base)) {
          setup_errors++;
          continue;
        }
        chmod(ro_base, 0755);
        work = ro_base;
      }
      snprintf(dir, sizeof dir, "%s", work);
      char desc[256] = "";
      uint64_t mrng = rng ^ ((uint64_t)c << 32 | (uint64_t)i);
      tu_rand(&rng);
      g_closed_base = uses_closed_base(c) && tu_rand(&mrng) % 2;
      int ok = copy_base(g_closed_base ? g_closed : g_golden, dir);
      int applied = ok ? mutate(c, &mrng, dir, desc, sizeof desc) : -1;
      if (applied == 1 && g_closed_base) {
        size_t l = strlen(desc);
        snprintf(desc + l, sizeof desc - l, " (closed store)");
      }
      if (applied < 0) {
        setup_errors++;
        fprintf(stderr, "setup error for %s #%d: %s\n", mut_class_names[c], i, strerror(errno));
      }
      if (applied == 1 && (c == M_READONLY_FILE || c == M_READONLY_DIR) && geteuid() == 0) {
        char p[400];
        static const char *const sfx[3] = {"", "-wal", "-shm"};
        for (int k = 0; k < 3; k++) {
          path_of(p, sizeof p, dir, sfx[k]);
          if (chown(p, 65534, 65534) != 0) applied = -1;
        }
        if (chown(dir, 65534, 65534) != 0) applied = -1;
      }
      if (applied != 1) {
        g_fig[c].skipped++;
      } else {
        char db[400];
        path_of(db, sizeof db, dir, "");
        memset(g_out, 0, sizeof *g_out);
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
          tu_child_setup();
          alarm(60);
          signal(SIGALRM, SIG_DFL);
          child_main(c, dir);
          fflush(NULL);
          _exit(0);
        }
        int st = pid > 0 ? tu_wait(pid) : -1;
        CHECK(judge_outcome(c, g_out, st, desc));
        if ((c == M_PAYLOAD_SQL || c == M_PAYLOAD_FILE) && g_damaged_id >= 0 && i < 2) {
          char out[4096];
          int cst = run_cli_check(db, out, sizeof out);
          if (cst >= 0 && cst != 127) {
            char want[64];
            snprintf(want, sizeof want, "message %lld:", (long long)g_damaged_id);
            g_cli_checked++;
            CHECK(cst == 6);
            CHECK(strstr(out, want) != NULL);
            if (cst == 6 && strstr(out, want)) g_cli_named++;
            else
              fprintf(stderr, "  mq check on \"%s\": status %d, output \"%s\"\n", desc, cst, out);
          }
        }
        unlink_gate_shm(db);
      }
      if (c == M_READONLY_DIR) chmod(dir, 0755);
      rm_tree_copy(dir);
      if (ro_base[0]) {
        rmdir(ro_base);
        ro_base[0] = 0;
      }
    }
  }
  CHECK(setup_errors == 0);
}

int main(void) {
  const char *sc = getenv("MQ_FAULT_SCALE");
  int scale = sc && atoi(sc) > 0 ? atoi(sc) : 1;
  const char *seed = getenv("MQ_CORRUPT_SEED");
  g_verbose = getenv("MQ_CORRUPT_VERBOSE") != NULL;
  g_only = getenv("MQ_CORRUPT_ONLY");
  g_seed = seed && *seed ? strtoull(seed, NULL, 0) : 0x6d71c0de5eedULL;
  tu_watchdog(600);

  g_truth = mmap(NULL, sizeof *g_truth, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  g_other_truth =
      mmap(NULL, sizeof *g_truth, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  g_out = mmap(NULL, sizeof *g_out, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (g_truth == MAP_FAILED || g_other_truth == MAP_FAILED || g_out == MAP_FAILED) return 2;
  memset(g_truth, 0, sizeof *g_truth);
  memset(g_other_truth, 0, sizeof *g_other_truth);

  const char *tmp = getenv("MQ_TEST_TMPDIR");
  if (!tmp || !*tmp) tmp = "/tmp";
  mkdir(tmp, 0700);
  snprintf(g_dir, sizeof g_dir, "%s/corrupt-XXXXXX", tmp);
  if (!mkdtemp(g_dir)) return 2;
  snprintf(g_golden, sizeof g_golden, "%s/golden.db", g_dir);
  snprintf(g_other, sizeof g_other, "%s/other.db", g_dir);
  snprintf(g_stale_shm, sizeof g_stale_shm, "%s/stale-shm", g_dir);
  snprintf(g_closed, sizeof g_closed, "%s/closed.db", g_dir);

  test_current = "build";
  int built = run_builder(g_golden, g_truth, g_tag, g_stale_shm);
  CHECK(built);
  if (built) {
    /* The closed base: a copy opened and closed cleanly, which
    ** checkpoints the WAL into the main file and removes it. */
    int rc;
    char wal[400];
    built = copy_base(g_golden, g_dir);
    char made[400];
    path_of(made, sizeof made, g_dir, "");
    rename(made, g_closed);
    path_of(made, sizeof made, g_dir, "-wal");
    snprintf(wal, sizeof wal, "%s-wal", g_closed);
    rename(made, wal);
    path_of(made, sizeof made, g_dir, "-shm");
    snprintf(wal, sizeof wal, "%s-shm", g_closed);
    rename(made, wal);
    mq_store *s = child_open(g_closed, MQ_OPEN_CREATE, &rc);
    CHECK_OK(rc);
    if (s) CHECK_OK(mq_store_close(s));
    snprintf(wal, sizeof wal, "%s-wal", g_closed);
    CHECK(access(wal, F_OK) != 0);
    built = built && rc == MQ_OK;
  }
  CHECK(run_builder(g_other, g_other_truth, 2, NULL));
  if (built) {
    test_current = "corpus";
    run_corpus(scale);
  }

  int total = 0, crashed = 0, bad = 0, failed = 0, detected = 0, silent = 0, harmless = 0;
  int wal_silent = 0, wal_run = 0, db_silent = 0;
  int64_t wal_lost = 0, wal_res = 0;
  char by_class[2048] = "";
  for (int c = 0; c < M_COUNT; c++) {
    class_fig *f = &g_fig[c];
    total += f->run;
    crashed += f->crashed;
    bad += f->bad_data;
    failed += f->failed;
    detected += f->detected;
    silent += f->silent;
    harmless += f->harmless;
    if (is_wal_class(c)) {
      wal_run += f->run;
      wal_silent += f->silent;
      wal_lost += f->lost;
      wal_res += f->resurrected;
    } else {
      db_silent += f->silent;
    }
    size_t l = strlen(by_class);
    snprintf(by_class + l, sizeof by_class - l, "%s%s %d/%d/%d/%d", l ? ", " : "",
             mut_class_names[c], f->run, f->detected, f->silent, f->harmless);
  }
  printf("corrupt: seed 0x%llx · mutations %d (by class run/detected/silent/no-effect: %s) · "
         "crashes or sanitizer reports %d · wrong payloads returned %d · failed expectations %d "
         "· detected %d · silent %d (WAL silent-loss window, F3: %d of %d WAL mutations, %lld "
         "puts lost, %lld acked messages back; main-file damage not seen %d) · no visible effect "
         "%d · other-store messages read through a mispaired WAL %lld · mq check named the "
         "damaged message %d/%d%s\n",
         (unsigned long long)g_seed, total, by_class, crashed, bad, failed, detected, silent,
         wal_silent, wal_run, (long long)wal_lost, (long long)wal_res, db_silent, harmless,
         (long long)g_foreign, g_cli_named, g_cli_checked,
#ifdef MQ_CLI_PATH
         ""
#else
         " (SKIPPED: the mq CLI was not built)"
#endif
  );
  test_unlink_store(g_golden);
  test_unlink_store(g_other);
  test_unlink_store(g_closed);
  unlink(g_stale_shm);
  rmdir(g_dir);
  return test_done();
}
