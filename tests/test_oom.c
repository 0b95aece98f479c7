/*
** test_oom.c -- allocation failures and I/O errors at every point of every
** API call, in the way SQLite tests itself.
**
** For each sequence of calls (open and create, put, a compressed batch,
** get, ack, nack, touch, redrive, publish to three subscriptions, the
** read-only calls, checkpoint, close), and for N = 1, 2, ..., the Nth
** allocation fails -- once ("fail once") or from then on ("fail forever") --
** until the sequence runs to its end without reaching N.  After every
** iteration:
**   - the call returned a code mq.h documents for the failure (MQ_ENOMEM,
**     or MQ_EUNKNOWN where a commit's outcome is unknown), never crashed;
**   - nothing leaked: every allocation of the library and of SQLite made
**     during the iteration was freed once the store was closed (and LSan
**     agrees, in a sanitized build);
**   - the store's state (every queue's counts, every message's id, state and
**     receive count) is exactly the state before the call if it failed, the
**     state after a clean run if it succeeded, either one after MQ_EUNKNOWN;
**   - the handle still works (a put, get and ack on a spare queue), and the
**     file, reopened, passes mq_store_verify with the same state.
** The same loop then runs with I/O errors from crashvfs.h: the Nth xRead,
** xWrite, xSync or xTruncate fails, once or for good; codes must be
** MQ_EIO, MQ_EUNKNOWN or MQ_EFULL (MQ_EBUSY from close, whose checkpoint is
** optional), and nothing acknowledged may be lost.
**
** Where the allocations come from: SQLite's go through
** sqlite3_config(SQLITE_CONFIG_MALLOC), set before anything else touches
** SQLite; the library's own (malloc, calloc, realloc, strdup in src/) and
** zlib's (compress2 and uncompress, which allocate inside libz) through the
** linker's --wrap, which tests/CMakeLists.txt sets for this program only and
** announces with MQ_OOM_WRAP.  Without it only SQLite's allocations are
** failed, and the test says so.  free is wrapped too, so that a leak is
** counted exactly in every build, not only under LSan.
**
** Each (sequence, fault) loop runs in a child process, so an abort is
** counted rather than ending the test, and LeakSanitizer checks each child.
** Nothing here is random: every run makes the same choices.  To look at one
** failure, MQ_OOM_ONLY="SEQUENCE:FAULT:once|forever:N" (for instance
** "put:alloc:forever:52", or "get:xWrite:once:1") runs that iteration alone
** and prints a backtrace of the injected allocation failure.
*/
#include <dirent.h>
#include <execinfo.h>
#include <sys/mman.h>
#include <zlib.h>

#include "crashvfs.h"
#include "mqi.h" /* mqi_pack_put: what a PULL endpoint stores */
#include "testutil.h"

/* ---- the failing allocator ------------------------------------------------ */

static struct {
  int armed;
  int sticky;
  long count;   /* allocations seen while armed */
  long fail_at; /* 0: never */
  long failed;  /* allocations refused */
} oom;

static int g_verbose; /* MQ_OOM_ONLY: one iteration, with a backtrace at the fault */

static int oom_fail_now(void) {
  if (!oom.armed) return 0;
  oom.count++;
  if (oom.fail_at && (oom.count == oom.fail_at || (oom.sticky && oom.count > oom.fail_at))) {
    if (g_verbose && oom.failed == 0) {
      void *bt[32];
      int n = backtrace(bt, 32);
      fprintf(stderr, "  allocation %ld fails here:\n", oom.count);
      backtrace_symbols_fd(bt, n, 2);
    }
    oom.failed++;
    return 1;
  }
  return 0;
}

#ifdef MQ_OOM_WRAP
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t k);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
void __real_free(void *p);
int __real_compress2(Bytef *d, uLongf *dl, const Bytef *s, uLong sl, int level);
int __real_uncompress(Bytef *d, uLongf *dl, const Bytef *s, uLong sl);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t k);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);
void __wrap_free(void *p);
int __wrap_compress2(Bytef *d, uLongf *dl, const Bytef *s, uLong sl, int level);
int __wrap_uncompress(Bytef *d, uLongf *dl, const Bytef *s, uLong sl);
#define REAL_MALLOC __real_malloc
#define REAL_FREE __real_free
#else
#define REAL_MALLOC malloc
#define REAL_FREE free
#endif

/* Live allocations of the wrapped functions, as a set of pointers (open
** addressing with tombstones); the program is single-threaded.  Pointers
** are stored masked, so that LeakSanitizer does not take the set for a
** reference and still reports what the library leaks. */
#define LIVE_CAP (1 << 16)
#define LIVE_TOMB ((uintptr_t)1)
#define LIVE_MASK ((uintptr_t)0x5a5a5a5a5a5a5a5aULL)
static long live_count;

#ifdef MQ_OOM_WRAP
static uintptr_t live_set[LIVE_CAP];

static size_t live_slot(uintptr_t h) {
  h ^= h >> 17;
  h *= 0x9e3779b97f4a7c15ULL;
  return (size_t)(h >> 40) & (LIVE_CAP - 1);
}

static void live_add(void *p) {
  if (!p) return;
  uintptr_t k = (uintptr_t)p ^ LIVE_MASK;
  size_t i = live_slot(k);
  for (size_t n = 0; n < LIVE_CAP; n++, i = (i + 1) & (LIVE_CAP - 1)) {
    if (live_set[i] == 0 || live_set[i] == LIVE_TOMB) {
      live_set[i] = k;
      live_count++;
      return;
    }
  }
}

static void live_del(void *p) {
  if (!p) return;
  uintptr_t k = (uintptr_t)p ^ LIVE_MASK;
  size_t i = live_slot(k);
  for (size_t n = 0; n < LIVE_CAP && live_set[i]; n++, i = (i + 1) & (LIVE_CAP - 1)) {
    if (live_set[i] == k) {
      live_set[i] = LIVE_TOMB;
      live_count--;
      return;
    }
  }
}

void *__wrap_malloc(size_t n) {
  if (oom_fail_now()) return NULL;
  void *p = __real_malloc(n);
  live_add(p);
  return p;
}
void *__wrap_calloc(size_t n, size_t k) {
  if (oom_fail_now()) return NULL;
  void *p = __real_calloc(n, k);
  live_add(p);
  return p;
}
void *__wrap_realloc(void *p, size_t n) {
  if (oom_fail_now()) return NULL;
  void *q = __real_realloc(p, n);
  if (q || n == 0) live_del(p);
  live_add(q);
  return q;
}
char *__wrap_strdup(const char *s) {
  if (oom_fail_now()) return NULL;
  char *p = __real_strdup(s);
  live_add(p);
  return p;
}
void __wrap_free(void *p) {
  live_del(p);
  __real_free(p);
}
/* zlib allocates inside libz, out of the linker's reach: a failure there
** shows as Z_MEM_ERROR, which is what these return. */
int __wrap_compress2(Bytef *d, uLongf *dl, const Bytef *s, uLong sl, int level) {
  if (oom_fail_now()) return Z_MEM_ERROR;
  return __real_compress2(d, dl, s, sl, level);
}
int __wrap_uncompress(Bytef *d, uLongf *dl, const Bytef *s, uLong sl) {
  if (oom_fail_now()) return Z_MEM_ERROR;
  return __real_uncompress(d, dl, s, sl);
}
#endif

/* SQLite's allocator: an 16-byte header keeps the size (and alignment). */
static long sq_live;

static void *sq_malloc(int n) {
  if (oom_fail_now()) return NULL;
  uint64_t *p = REAL_MALLOC((size_t)n + 16);
  if (!p) return NULL;
  p[0] = (uint64_t)n;
  sq_live++;
  return p + 2;
}
static void sq_free(void *p) {
  if (!p) return;
  sq_live--;
  REAL_FREE((uint64_t *)p - 2);
}
static int sq_size(void *p) { return p ? (int)((uint64_t *)p - 2)[0] : 0; }
static void *sq_realloc(void *p, int n) {
  if (!p) return sq_malloc(n);
  if (oom_fail_now()) return NULL;
  uint64_t *q = REAL_MALLOC((size_t)n + 16);
  if (!q) return NULL;
  q[0] = (uint64_t)n;
  int old = sq_size(p);
  memcpy(q + 2, p, (size_t)(old < n ? old : n));
  REAL_FREE((uint64_t *)p - 2);
  return q + 2;
}
static int sq_roundup(int n) { return (n + 7) & ~7; }
static int sq_init(void *x) {
  (void)x;
  return SQLITE_OK;
}
static void sq_shutdown(void *x) { (void)x; }

/* ---- the sequences --------------------------------------------------------- */

typedef struct ctx {
  char path[512];
  mq_store *s;
  char receipt[MQ_RECEIPT_MAX + 1];
} ctx;

static char g_dir[256];
static unsigned g_counter;

/* A fresh store path on tmpfs: the loop does thousands of commits. */
static const char *fresh_path(char *buf, size_t cap) {
  snprintf(buf, cap, "%s/s%u.db", g_dir, g_counter++);
  test_unlink_store(buf);
  return buf;
}

static mq_store *open_store(const char *path) {
  mq_store *s = NULL;
  int rc = tu_open_ex(path, MQ_SYNC_FULL, MQ_OPEN_CREATE, test_clock, NULL, &s);
  if (rc != MQ_OK) {
    fprintf(stderr, "open %s (unarmed): %s: %s\n", path, mq_errstr(rc), mq_errmsg(NULL));
    exit(2);
  }
  return s;
}

static void must(int rc, const char *what) {
  if (rc != MQ_OK) {
    fprintf(stderr, "setup: %s: %s\n", what, mq_errstr(rc));
    exit(2);
  }
}

static void make_queue(mq_store *s, const char *name, int max_receives, const char *dlq,
                       size_t compress_above) {
  mq_queue_options o;
  mq_queue_options_init(&o);
  o.max_receives = max_receives;
  o.dlq = dlq;
  o.compress_above = compress_above;
  must(mq_queue_create(s, name, &o), name);
}

static void put_text(mq_store *s, const char *q, const char *text) {
  must(mq_put(s, q, text, strlen(text), NULL, NULL), "put");
}

/* A store with the spare "probe" queue, "q" holding two messages; the
** first is stored compressed, so reading it needs zlib. */
static void setup_basic(ctx *c) {
  static char big[2000];
  for (size_t k = 0; k < sizeof big; k++) big[k] = (char)('a' + (int)(k / 40) % 26);
  c->s = open_store(c->path);
  make_queue(c->s, "probe", 0, NULL, 0);
  make_queue(c->s, "q", 0, NULL, 100);
  must(mq_put(c->s, "q", big, sizeof big, NULL, NULL), "put");
  put_text(c->s, "q", "second message");
}

/* The same, reopened: nothing is in SQLite's page cache, so the call under
** test has to read the file (and can meet a read error). */
static void setup_cold(ctx *c) {
  setup_basic(c);
  mq_store_close(c->s);
  c->s = open_store(c->path);
}

/* ... with the first one leased, its receipt kept. */
static void setup_leased(ctx *c) {
  setup_basic(c);
  mq_msg *m = NULL;
  must(mq_get(c->s, "q", NULL, &m), "get");
  snprintf(c->receipt, sizeof c->receipt, "%s", mq_msg_receipt(m));
  mq_msg_free(m);
}

/* Three messages in packs (pack.c), as a PULL endpoint stores them: one
** with a header, one empty, one above the queue's compress_above (100). */
static int pack_three(ctx *c) {
  static char big[3000];
  memset(big, 'p', sizeof big);
  static const char hdr[] = "zmtp-frames\0" "3,4\0";
  mqi_put_item it[3];
  memset(it, 0, sizeof it);
  it[0].data = "abcdefg";
  it[0].len = 7;
  it[0].headers = (char *)hdr;
  it[0].headers_len = sizeof hdr - 1;
  it[2].data = big;
  it[2].len = sizeof big;
  for (int i = 0; i < 3; i++)
    it[i].crc = (uint32_t)crc32_z(0L, (const Bytef *)(it[i].data ? it[i].data : ""), it[i].len);
  return mqi_pack_put(c->s, "q", it, 3);
}

static void setup_packed(ctx *c) {
  setup_basic(c);
  must(pack_three(c), "pack");
}

/* ... reopened: the packs are read from the file by the call under test. */
static void setup_packed_cold(ctx *c) {
  setup_packed(c);
  mq_store_close(c->s);
  c->s = open_store(c->path);
}

static void setup_none(ctx *c) { (void)c; }

static void setup_dead(ctx *c) {
  c->s = open_store(c->path);
  make_queue(c->s, "probe", 0, NULL, 0);
  make_queue(c->s, "dlq", 0, NULL, 0);
  make_queue(c->s, "q", 1, "dlq", 0);
  put_text(c->s, "q", "one");
  put_text(c->s, "q", "two");
  for (int i = 0; i < 2; i++) {
    mq_msg *m = NULL;
    must(mq_get(c->s, "q", NULL, &m), "get");
    mq_msg_free(m);
  }
  test_now_ms += 60000; /* both leases run out: the next get dead-letters them */
  mq_msg *m = NULL;
  if (mq_get(c->s, "q", NULL, &m) != MQ_EMPTY) exit(2);
}

static void setup_topic(ctx *c) {
  c->s = open_store(c->path);
  make_queue(c->s, "probe", 0, NULL, 0);
  mq_queue_options o;
  mq_queue_options_init(&o);
  o.compress_above = 500;
  must(mq_topic_create(c->s, "t", &o), "topic");
  must(mq_subscription_create(c->s, "t", "a", NULL, NULL), "sub a");
  must(mq_subscription_create(c->s, "t", "b", "x.*", NULL), "sub b");
  must(mq_subscription_create(c->s, "t", "c", "#", NULL), "sub c");
  must(mq_publish(c->s, "t", "x.0", "earlier", 7, NULL, NULL, NULL), "publish");
}

static int run_open_create(ctx *c) {
  int rc = tu_open_ex(c->path, MQ_SYNC_FULL, MQ_OPEN_CREATE, test_clock, NULL, &c->s);
  if (rc != MQ_OK) return rc;
  mq_queue_options o;
  mq_queue_options_init(&o);
  o.max_receives = 3;
  return mq_queue_create(c->s, "q", &o);
}

static int run_put(ctx *c) {
  mq_put_options po;
  mq_put_options_init(&po);
  mq_header h[2] = {{"kind", "order"}, {"trace", "abc-123"}};
  po.headers = h;
  po.n_headers = 2;
  po.dedup_key = "order-1";
  po.priority = 2;
  int64_t id = 0;
  return mq_put(c->s, "q", "a message with headers", 22, &po, &id);
}

static int run_put_batch(ctx *c) {
  static char big[3][3000];
  mq_entry e[3];
  for (int i = 0; i < 3; i++) {
    for (size_t k = 0; k < sizeof big[i]; k++) big[i][k] = (char)('a' + (int)(k / 50 + (size_t)i) % 26);
    e[i].data = big[i];
    e[i].len = sizeof big[i];
    e[i].opts = NULL;
  }
  int64_t ids[3];
  return mq_put_batch(c->s, "q", e, 3, ids);
}

/* Rows of MQI_PUT_ROWS go in with one multi-row INSERT: 34 entries take
** that path and then the single-row one (payloads this small are kept in
** their mq_msg rows: no mq_body INSERT at all). */
static int run_put_rows(ctx *c) {
  static char p[34][120];
  mq_entry e[34];
  for (int i = 0; i < 34; i++) {
    memset(p[i], 'a' + i % 26, sizeof p[i]);
    e[i].data = p[i];
    e[i].len = sizeof p[i];
    e[i].opts = NULL;
  }
  int64_t ids[34];
  return mq_put_batch(c->s, "q", e, 34, ids);
}

/* The same rows with payloads kept in mq_body (all of them: the multi-row
** mq_body INSERT) and mixed (inline and body entries in one row of 32). */
static int run_put_rows_big(ctx *c, int mixed) {
  static char p[34][2000];
  mq_entry e[34];
  for (int i = 0; i < 34; i++) {
    memset(p[i], 'a' + i % 26, sizeof p[i]);
    e[i].data = p[i];
    e[i].len = mixed && i % 2 ? 120 : sizeof p[i];
    e[i].opts = NULL;
  }
  int64_t ids[34];
  return mq_put_batch(c->s, "q", e, 34, ids);
}
static int run_put_rows_bodies(ctx *c) { return run_put_rows_big(c, 0); }
static int run_put_rows_mixed(ctx *c) { return run_put_rows_big(c, 1); }

static int run_get(ctx *c) {
  mq_msg *m = (mq_msg *)&oom; /* must be reset by the call */
  int rc = mq_get(c->s, "q", NULL, &m);
  if (rc != MQ_OK && m != NULL) {
    fprintf(stderr, "  mq_get returned %s but left *out set\n", mq_errstr(rc));
    test_failures++;
    m = NULL;
  }
  mq_msg_free(m);
  return rc;
}

static int run_get_batch(ctx *c) {
  mq_msg *m[4];
  size_t n = 99;
  int rc = mq_get_batch(c->s, "q", NULL, 4, m, &n);
  if (rc != MQ_OK) {
    int bad = n != 0;
    for (int i = 0; i < 4; i++) bad |= m[i] != NULL;
    if (bad) {
      fprintf(stderr, "  mq_get_batch returned %s but left outputs set\n", mq_errstr(rc));
      test_failures++;
    }
    return rc;
  }
  for (size_t i = 0; i < n; i++) mq_msg_free(m[i]);
  return rc;
}

static int run_pack(ctx *c) { return pack_three(c); }

static int run_purge(ctx *c) {
  int64_t deleted = 0;
  return mq_queue_purge(c->s, "q", &deleted);
}

static int run_ack(ctx *c) { return mq_ack(c->s, "q", c->receipt); }
static int run_nack(ctx *c) { return mq_nack(c->s, "q", c->receipt, 0, "try later"); }
static int run_touch(ctx *c) { return mq_touch(c->s, "q", c->receipt, 90000); }

static int run_redrive(ctx *c) {
  int64_t moved = -1;
  int rc = mq_redrive(c->s, "dlq", 0, &moved);
  if (rc == MQ_OK && moved != 2) {
    fprintf(stderr, "  redrive moved %lld, expected 2\n", (long long)moved);
    test_failures++;
  }
  return rc;
}

static int run_publish(ctx *c) {
  static char body[2000];
  for (size_t k = 0; k < sizeof body; k++) body[k] = (char)('a' + (int)(k / 40) % 26);
  int64_t id = 0, delivered = 0;
  int rc = mq_publish(c->s, "t", "x.1", body, sizeof body, NULL, &id, &delivered);
  if (rc == MQ_OK && delivered != 3) {
    fprintf(stderr, "  publish reached %lld subscriptions, expected 3\n", (long long)delivered);
    test_failures++;
  }
  return rc;
}

static int scan_count(void *x, const mq_msg *m, int state) {
  (void)m;
  (void)state;
  ++*(int *)x;
  return 0;
}

static void print_problem(void *x, const char *problem) {
  (void)x;
  fprintf(stderr, "  verify reports: %s\n", problem);
}

static int run_reads(ctx *c) {
  mq_queue_stats st;
  int rc = mq_queue_stats_get(c->s, "q", &st);
  if (rc != MQ_OK) return rc;
  mq_msg *m[2];
  size_t n = 0;
  if ((rc = mq_peek(c->s, "q", 2, m, &n)) != MQ_OK) return rc;
  for (size_t i = 0; i < n; i++) mq_msg_free(m[i]);
  char **names = NULL;
  size_t count = 0;
  if ((rc = mq_queue_list(c->s, &names, &count)) != MQ_OK) return rc;
  mq_list_free(names, count);
  if ((rc = mq_topic_list(c->s, &names, &count)) != MQ_OK) return rc;
  mq_list_free(names, count);
  int seen = 0;
  int64_t corrupt = 0;
  if ((rc = mq_queue_scan(c->s, "q", scan_count, &seen, &corrupt)) != MQ_OK) return rc;
  mq_queue_info info;
  if ((rc = mq_queue_info_get(c->s, "q", &info)) != MQ_OK) return rc;
  int64_t problems = 0;
  return mq_store_verify(c->s, g_verbose ? print_problem : NULL, NULL, &problems);
}

static int run_checkpoint(ctx *c) { return mq_store_checkpoint(c->s); }

static int run_close(ctx *c) {
  int rc = mq_store_close(c->s);
  c->s = NULL;
  return rc;
}

typedef struct seq_def {
  const char *name;
  void (*setup)(ctx *c);
  int (*run)(ctx *c);
  int opens;  /* run opens the store */
  int closes; /* run closes the store */
} seq_def;

static const seq_def SEQS[] = {
    {"open+create", setup_none, run_open_create, 1, 0},
    {"put", setup_basic, run_put, 0, 0},
    {"put_batch compressed", setup_basic, run_put_batch, 0, 0},
    {"put_batch rows", setup_basic, run_put_rows, 0, 0},
    {"put_batch rows, bodies", setup_basic, run_put_rows_bodies, 0, 0},
    {"put_batch rows, mixed", setup_basic, run_put_rows_mixed, 0, 0},
    {"get", setup_basic, run_get, 0, 0},
    {"get, cold cache", setup_cold, run_get, 0, 0},
    {"pack put", setup_basic, run_pack, 0, 0},
    {"get settling packs", setup_packed_cold, run_get, 0, 0},
    {"put with packs stored", setup_packed, run_put, 0, 0},
    {"reads of packs", setup_packed_cold, run_reads, 0, 0},
    {"purge with packs stored", setup_packed_cold, run_purge, 0, 0},
    {"get_batch", setup_basic, run_get_batch, 0, 0},
    {"ack", setup_leased, run_ack, 0, 0},
    {"nack", setup_leased, run_nack, 0, 0},
    {"touch", setup_leased, run_touch, 0, 0},
    {"redrive", setup_dead, run_redrive, 0, 0},
    {"publish to 3 subscriptions", setup_topic, run_publish, 0, 0},
    {"stats/peek/list/scan/verify", setup_cold, run_reads, 0, 0},
    {"checkpoint", setup_basic, run_checkpoint, 0, 0},
    {"close", setup_basic, run_close, 0, 1},
};
#define NSEQ (sizeof SEQS / sizeof SEQS[0])

/* ---- observing a store ----------------------------------------------------- */

typedef struct snapbuf {
  char *p;
  size_t cap, len;
} snapbuf;

static void sb_add(snapbuf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (b->len < b->cap) {
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    if (n > 0) b->len += (size_t)n;
  }
  va_end(ap);
}

static int snap_msg(void *x, const mq_msg *m, int state) {
  sb_add(x, " %lld:%d:%d:%zu", (long long)mq_msg_id(m), state, mq_msg_receives(m), mq_msg_size(m));
  return 0;
}

/* Everything observable about the queues a sequence touches, as text. */
static void snapshot(mq_store *s, char *out, size_t cap) {
  static const char *const names[] = {"probe", "q", "dlq", "t/a", "t/b", "t/c"};
  snapbuf b = {out, cap, 0};
  out[0] = 0;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    mq_queue_stats st;
    int rc = mq_queue_stats_get(s, names[i], &st);
    if (rc == MQ_ENOTFOUND) {
      sb_add(&b, "%s:-|", names[i]);
      continue;
    }
    if (rc != MQ_OK) {
      sb_add(&b, "%s:error %d|", names[i], rc);
      continue;
    }
    sb_add(&b, "%s: %lld %lld %lld %lld %lld %lld;", names[i], (long long)st.ready,
           (long long)st.inflight, (long long)st.delayed, (long long)st.dead,
           (long long)st.total, (long long)st.bytes);
    mq_queue_scan(s, names[i], snap_msg, &b, NULL);
    sb_add(&b, "|");
  }
  mq_topic_stats ts;
  if (mq_topic_stats_get(s, "t", &ts) == MQ_OK)
    sb_add(&b, "t: %lld %lld %lld", (long long)ts.messages, (long long)ts.payloads,
           (long long)ts.bytes);
}

/* ---- the loop ------------------------------------------------------------- */

enum { FAULT_ALLOC, FAULT_READ, FAULT_WRITE, FAULT_SYNC, FAULT_TRUNCATE, FAULT_FULL };
static const char *const fault_names[] = {"alloc", "xRead", "xWrite", "xSync", "xTruncate",
                                          "SQLITE_FULL"};

typedef struct stats {
  long points_once, points_sticky, iterations, aborts, leaks, inconsistent, wrong_code,
      unusable, lost, other;
  long codes[32];
} stats;

static stats *S_alloc, *S_io; /* in shared memory: the loops run in children */
static int g_printed;

#define SNAP_CAP 8192

static void complain(const seq_def *q, int fault, int sticky, long n, const char *what, int rc) {
  if (g_printed++ >= 6) return; /* per loop: the first few say enough */
  fprintf(stderr, "  PROBLEM [%s, %s %s at %ld]: %s (rc %d %s)\n", q->name, fault_names[fault],
          sticky ? "forever" : "once", n, what, rc, mq_errstr(rc));
}

/* Is rc a code mq.h allows for this kind of failure? */
static int code_ok(const seq_def *q, int fault, int rc) {
  if (rc == MQ_OK) return 1;
  if (q->closes) return rc == MQ_EBUSY; /* close: only the checkpoint is optional */
  if (fault == FAULT_ALLOC) return rc == MQ_ENOMEM || rc == MQ_EUNKNOWN;
  /* SQLite answers a failed first read of a file with SQLITE_CANTOPEN. */
  if (q->opens && rc == MQ_ECANTOPEN) return 1;
  if (rc == MQ_EIO || rc == MQ_EUNKNOWN) return 1;
  if (fault == FAULT_FULL && rc == MQ_EFULL) return 1;
  if (q->run == run_checkpoint && rc == MQ_EBUSY) return 1;
  return 0;
}

static void arm(int fault, long n, int sticky) {
  if (fault == FAULT_ALLOC) {
    oom.count = oom.failed = 0;
    oom.fail_at = n;
    oom.sticky = sticky;
    oom.armed = 1;
    return;
  }
  crashvfs_reset();
  crashvfs.fail_op = fault == FAULT_READ    ? CRASHVFS_READ
                     : fault == FAULT_SYNC  ? CRASHVFS_SYNC
                     : fault == FAULT_TRUNCATE ? CRASHVFS_TRUNCATE
                                            : CRASHVFS_WRITE;
  crashvfs.fail_code = fault == FAULT_FULL ? SQLITE_FULL : 0;
  crashvfs.fail_at = (int)n;
  crashvfs.fail_sticky = sticky;
}

/* Disarm; returns whether a fault was injected. */
static int disarm(int fault) {
  if (fault == FAULT_ALLOC) {
    oom.armed = 0;
    return oom.failed > 0;
  }
  int hit = crashvfs.faults > 0;
  crashvfs.fail_op = CRASHVFS_NONE;
  crashvfs.fail_at = 0;
  return hit;
}

/* The state after a clean run of q, and the state before it. */
static void reference(const seq_def *q, char *before, char *after) {
  ctx c;
  memset(&c, 0, sizeof c);
  fresh_path(c.path, sizeof c.path);
  test_now_ms = 1700000000000LL;
  q->setup(&c);
  if (c.s) {
    snapshot(c.s, before, SNAP_CAP);
  } else { /* the state before an open: as good as an empty store */
    char other[512];
    mq_store *e = open_store(fresh_path(other, sizeof other));
    snapshot(e, before, SNAP_CAP);
    mq_store_close(e);
    test_unlink_store(other);
  }
  int rc = q->run(&c);
  if (rc != MQ_OK) {
    fprintf(stderr, "%s: the clean run failed: %s\n", q->name, mq_errstr(rc));
    exit(2);
  }
  if (!c.s) c.s = open_store(c.path);
  snapshot(c.s, after, SNAP_CAP);
  mq_store_close(c.s);
  test_unlink_store(c.path);
}

/* One iteration: fail at n; returns whether the fault was reached. */
static int iterate(const seq_def *q, int fault, long n, int sticky, const char *before,
                   const char *after, stats *st) {
  static char now_snap[SNAP_CAP], again[SNAP_CAP];
  ctx c;
  memset(&c, 0, sizeof c);
  fresh_path(c.path, sizeof c.path);
  test_now_ms = 1700000000000LL;
  long live0 = live_count, sq0 = sq_live;
  q->setup(&c);
  arm(fault, n, sticky);
  int rc = q->run(&c);
  int hit = disarm(fault);
  if (g_verbose)
    fprintf(stderr, "  %s: %s (%s) -> %d %s: %s\n", q->name, fault_names[fault],
            sticky ? "forever" : "once", rc, mq_errstr(rc), c.s ? mq_errmsg(c.s) : mq_errmsg(NULL));
  st->iterations++;
  if (rc >= 0 && rc < 32) st->codes[rc]++;
  if (!code_ok(q, fault, rc)) {
    st->wrong_code++;
    complain(q, fault, sticky, n, "a code mq.h does not give for this failure", rc);
  }
  if (!hit && rc != MQ_OK) {
    st->wrong_code++;
    complain(q, fault, sticky, n, "failed although no fault was injected", rc);
  }

  /* The state, through the same handle when there is one. */
  if (!c.s) c.s = open_store(c.path);
  snapshot(c.s, now_snap, SNAP_CAP);
  int same_before = strcmp(now_snap, before) == 0, same_after = strcmp(now_snap, after) == 0;
  int consistent = rc == MQ_OK       ? same_after
                   : rc == MQ_EUNKNOWN ? same_before || same_after
                                       : same_before;
  if (q->closes && rc == MQ_EBUSY) consistent = same_before;
  if (!consistent) {
    st->inconsistent++;
    complain(q, fault, sticky, n, "state is neither unchanged nor fully applied", rc);
    if (g_printed <= 2)
      fprintf(stderr, "    before: %s\n    after:  %s\n    now:    %s\n", before, after, now_snap);
  }
  /* An acknowledged change must not be lost (I/O faults: the handle may
  ** have seen a failed fsync; the file decides). */
  int usable = 1, vrc, prc = MQ_OK, crc;
  if ((vrc = mq_store_verify(c.s, NULL, NULL, NULL)) != MQ_OK) usable = 0;
  if (g_verbose && vrc != MQ_OK) fprintf(stderr, "  verify: %s: %s\n", mq_errstr(vrc), mq_errmsg(c.s));
  mq_queue_info info;
  if (mq_queue_info_get(c.s, "probe", &info) == MQ_OK) {
    mq_msg *m = NULL;
    prc = mq_put(c.s, "probe", "p", 1, NULL, NULL);
    if (prc == MQ_OK) prc = mq_get(c.s, "probe", NULL, &m);
    if (prc == MQ_OK) prc = mq_ack(c.s, "probe", mq_msg_receipt(m));
    mq_msg_free(m);
    if (prc != MQ_OK) usable = 0;
    if (g_verbose && prc != MQ_OK)
      fprintf(stderr, "  probe put/get/ack: %s: %s\n", mq_errstr(prc), mq_errmsg(c.s));
  }
  if ((crc = mq_store_close(c.s)) != MQ_OK) usable = 0;
  if (g_verbose && crc != MQ_OK) fprintf(stderr, "  close: %s\n", mq_errstr(crc));
  c.s = NULL;
  /* Reopened from the file: sound, and the same state. */
  mq_store *s2 = open_store(c.path);
  if ((vrc = mq_store_verify(s2, NULL, NULL, NULL)) != MQ_OK) usable = 0;
  if (g_verbose && vrc != MQ_OK) fprintf(stderr, "  verify after reopen: %s\n", mq_errstr(vrc));
  snapshot(s2, again, SNAP_CAP);
  mq_store_close(s2);
  if (!usable) {
    st->unusable++;
    complain(q, fault, sticky, n, "the store is not usable or not sound afterwards", rc);
  }
  if (strcmp(again, now_snap) != 0) {
    st->lost++;
    complain(q, fault, sticky, n, "the state seen through the handle did not survive a reopen",
             rc);
    if (g_printed <= 2) fprintf(stderr, "    handle: %s\n    file:   %s\n", now_snap, again);
  }
  test_unlink_store(c.path);
  if (live_count != live0 || sq_live != sq0) {
    st->leaks++;
    char what[120];
    snprintf(what, sizeof what, "leak: %ld library and %ld SQLite allocations not freed",
             live_count - live0, sq_live - sq0);
    complain(q, fault, sticky, n, what, rc);
  }
  return hit;
}

/* Fail point n = 1, 2, ... until the sequence completes without reaching it. */
static void loop(const seq_def *q, int fault, stats *st) {
  static char before[SNAP_CAP], after[SNAP_CAP];
  reference(q, before, after);
  for (int sticky = 0; sticky < 2; sticky++) {
    long n;
    for (n = 1; n <= 20000; n++)
      if (!iterate(q, fault, n, sticky, before, after, st)) break;
    if (sticky) st->points_sticky += n - 1;
    else st->points_once += n - 1;
  }
}

/* Run one loop in a child process, so that an abort or a crash is counted
** (and the rest still runs), and so that LeakSanitizer, in a sanitized
** build, checks the child's heap when it exits. */
static void isolated(const seq_def *q, int fault, stats *st) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    exit(2);
  }
  if (pid == 0) {
    tu_child_setup();
    int before = test_failures;
    loop(q, fault, st);
    exit(test_failures != before ? 1 : 0); /* exit(), not _exit(): LSan runs */
  }
  int status = tu_wait(pid);
  if (status >= 128) {
    st->aborts++;
    fprintf(stderr, "  PROBLEM [%s, %s]: the process died with signal %d\n", q->name,
            fault_names[fault], status - 128);
  } else if (status == 23) { /* LeakSanitizer's exit code */
    st->leaks++;
    fprintf(stderr, "  PROBLEM [%s, %s]: LeakSanitizer found a leak\n", q->name,
            fault_names[fault]);
  } else if (status != 0) {
    st->other++;
  }
}

static void test_allocation_failures(void) {
#ifndef MQ_OOM_WRAP
  fprintf(stderr,
          "  NOTE: built without -Wl,--wrap (see tests/CMakeLists.txt): only SQLite's "
          "allocations are failed, not the library's own\n");
#endif
  for (size_t i = 0; i < NSEQ; i++) {
    long before = S_alloc->points_once + S_alloc->points_sticky;
    isolated(&SEQS[i], FAULT_ALLOC, S_alloc);
    fprintf(stderr, "  %-28s %5ld allocation failure points\n", SEQS[i].name,
            S_alloc->points_once + S_alloc->points_sticky - before);
  }
}

static void test_io_errors(void) {
  crashvfs_install();
  for (size_t i = 0; i < NSEQ; i++) {
    long before = S_io->points_once + S_io->points_sticky;
    for (int f = FAULT_READ; f <= FAULT_FULL; f++) isolated(&SEQS[i], f, S_io);
    fprintf(stderr, "  %-28s %5ld I/O failure points\n", SEQS[i].name,
            S_io->points_once + S_io->points_sticky - before);
  }
  crashvfs_uninstall();
}

static void print_codes(const char *what, const stats *st) {
  fprintf(stderr, "  %s results:", what);
  for (int i = 0; i < 32; i++)
    if (st->codes[i]) fprintf(stderr, " %s %ld,", i ? mq_errstr(i) : "ok", st->codes[i]);
  fprintf(stderr, "\n");
}

int main(void) {
  static const sqlite3_mem_methods mem = {sq_malloc, sq_free,    sq_realloc, sq_size,
                                          sq_roundup, sq_init,   sq_shutdown, NULL};
  /* Before anything else touches SQLite. */
  if (sqlite3_config(SQLITE_CONFIG_MALLOC, &mem) != SQLITE_OK) {
    fprintf(stderr, "sqlite3_config(SQLITE_CONFIG_MALLOC) failed\n");
    return 2;
  }
  stats *shared = mmap(NULL, 2 * sizeof(stats), PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared == MAP_FAILED) {
    perror("mmap");
    return 2;
  }
  memset(shared, 0, 2 * sizeof(stats));
  S_alloc = &shared[0];
  S_io = &shared[1];
  const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("MQ_TEST_TMPDIR");
  if (!base || !*base) base = "/tmp";
  {
    /* A run killed from outside leaves its stores behind: remove those of
    ** processes that are gone. */
    DIR *d = opendir(base);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
      long pid = strncmp(e->d_name, "mq-oom-", 7) == 0 ? strtol(e->d_name + 7, NULL, 10) : 0;
      if (pid > 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH) {
        char sub[600], f[900];
        snprintf(sub, sizeof sub, "%s/%s", base, e->d_name);
        DIR *d2 = opendir(sub);
        struct dirent *e2;
        while (d2 && (e2 = readdir(d2)) != NULL) {
          snprintf(f, sizeof f, "%s/%s", sub, e2->d_name);
          if (e2->d_name[0] != '.') unlink(f);
        }
        if (d2) closedir(d2);
        rmdir(sub);
      }
    }
    if (d) closedir(d);
  }
  snprintf(g_dir, sizeof g_dir, "%s/mq-oom-%ld", base, (long)getpid());
  mkdir(g_dir, 0700);
  tu_watchdog(280);
  const char *only = getenv("MQ_OOM_ONLY"); /* "SEQ:FAULT:once|forever:N", e.g. "put:alloc:forever:52" */
  if (only && *only) {
    char seqname[64] = "", fname[32] = "", mode[16] = "";
    long n = 0;
    if (sscanf(only, "%63[^:]:%31[^:]:%15[^:]:%ld", seqname, fname, mode, &n) != 4) {
      fprintf(stderr, "MQ_OOM_ONLY=%s: expected SEQ:FAULT:once|forever:N\n", only);
      return 2;
    }
    g_verbose = 1;
    for (size_t i = 0; i < NSEQ; i++)
      for (int f = FAULT_ALLOC; f <= FAULT_FULL; f++)
        if (!strcmp(SEQS[i].name, seqname) && !strcmp(fault_names[f], fname)) {
          static char before[SNAP_CAP], after[SNAP_CAP];
          if (f != FAULT_ALLOC) crashvfs_install();
          reference(&SEQS[i], before, after);
          iterate(&SEQS[i], f, n, strcmp(mode, "forever") == 0, before, after, S_alloc);
        }
    rmdir(g_dir);
    return test_done();
  }
  TEST(test_allocation_failures);
  TEST(test_io_errors);
  rmdir(g_dir);
  print_codes("allocation-failure", S_alloc);
  print_codes("I/O-failure", S_io);
  const stats *A = S_alloc, *I = S_io;
  CHECK(A->aborts == 0 && I->aborts == 0);
  CHECK(A->leaks == 0 && I->leaks == 0);
  CHECK(A->inconsistent == 0 && I->inconsistent == 0);
  CHECK(A->wrong_code == 0 && I->wrong_code == 0);
  CHECK(A->unusable == 0 && I->unusable == 0);
  CHECK(A->lost == 0 && I->lost == 0);
  CHECK(A->other == 0 && I->other == 0);
  CHECK(A->points_once > (long)NSEQ);
  CHECK(I->points_once > (long)NSEQ);
  fprintf(stderr,
          "allocation failure points %ld once / %ld persistent over %zu sequences · aborts %ld · "
          "leaks %ld · inconsistent states %ld · wrong codes %ld; I/O failure points %ld once / "
          "%ld persistent (xRead, xWrite, xSync, xTruncate, SQLITE_FULL) · aborts %ld · leaks "
          "%ld · inconsistent states %ld · wrong codes %ld · lost after reopen %ld\n",
          A->points_once, A->points_sticky, NSEQ, A->aborts, A->leaks, A->inconsistent,
          A->wrong_code, I->points_once, I->points_sticky, I->aborts, I->leaks, I->inconsistent,
          I->wrong_code, I->lost);
  return test_done();
}
