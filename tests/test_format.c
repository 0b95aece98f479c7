/*
** test_format.c -- files of the previous on-disk format (version 1) keep
** working: a read-write open upgrades them in place and loses nothing, a
** read-only open never writes them, and a read-only handle keeps reading
** correctly when another handle or process upgrades the file under it.
**
** A version 1 file is built here with plain sqlite3 calls from the schema
** the previous release wrote (copied below: a frozen historical format, not
** the library's current one), holding what that release stored: every
** payload in mq_body (message id = body id), a zlib-compressed body, one
** with headers, and a topic publish whose body two subscriptions share
** (refs 2).  Version 2 keeps small payloads of plain puts in the mq_msg
** row (body_id 0), so every check mixes old body-backed rows with new
** inline ones: payloads, headers, priority-then-FIFO order, byte counts,
** verify, and the shared body freed only after its last ack.  Time is the
** injected clock; concurrent upgraders are real processes released at once
** by closing a pipe.  (A newer format refused with MQ_EVERSION is
** test_store.c's test_newer_format.)
*/
#include <sys/syscall.h>
#include <zlib.h>

#include "testutil.h"

/* The schema of format version 1, byte for byte as mq 0.1.0 created it. */
static const char v1_schema[] =
    "CREATE TABLE mq_meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
    "CREATE TABLE mq_queue( id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
    " kind INTEGER NOT NULL DEFAULT 0, parent_id INTEGER, filter TEXT,"
    " visibility_ms INTEGER NOT NULL, max_receives INTEGER NOT NULL, dlq_id INTEGER,"
    " retention_ms INTEGER NOT NULL, max_payload INTEGER NOT NULL,"
    " compress_above INTEGER NOT NULL, dedup_window_ms INTEGER NOT NULL,"
    " created_at INTEGER NOT NULL);"
    "CREATE INDEX mq_queue_parent ON mq_queue(parent_id) WHERE parent_id IS NOT NULL;"
    "CREATE TABLE mq_body( id INTEGER PRIMARY KEY, refs INTEGER NOT NULL,"
    " size INTEGER NOT NULL, crc INTEGER NOT NULL, codec INTEGER NOT NULL, headers BLOB,"
    " subject TEXT, data BLOB NOT NULL);"
    "CREATE TABLE mq_msg( id INTEGER PRIMARY KEY, queue_id INTEGER NOT NULL,"
    " body_id INTEGER NOT NULL, state INTEGER NOT NULL, priority INTEGER NOT NULL,"
    " visible_at INTEGER NOT NULL, lease INTEGER, receives INTEGER NOT NULL,"
    " enqueued_at INTEGER NOT NULL, expires_at INTEGER, origin_id INTEGER, reason TEXT);"
    "CREATE INDEX mq_msg_queue ON mq_msg(queue_id, state, priority DESC, id);"
    "CREATE INDEX mq_msg_timer ON mq_msg(queue_id, visible_at) WHERE state IN (1,2);"
    "CREATE INDEX mq_msg_expiry ON mq_msg(queue_id, expires_at) WHERE expires_at IS NOT NULL;"
    "CREATE TABLE mq_dedup( queue_id INTEGER NOT NULL, key TEXT NOT NULL,"
    " msg_id INTEGER NOT NULL, expires_at INTEGER NOT NULL,"
    " PRIMARY KEY(queue_id, key)) WITHOUT ROWID;"
    "CREATE INDEX mq_dedup_expiry ON mq_dedup(expires_at);";

#define V1_COLUMNS 12 /* of mq_msg; version 2 adds size, crc, codec, headers, data */
#define V2_COLUMNS 17
#define CUR_FORMAT 3 /* what a read-write open leaves a file at (format 3: packs) */
#define COLS_SQL "SELECT count(*) FROM pragma_table_info('mq_msg')"
#define V1_HEADERS "trace\0t-2\0empty\0" /* two pairs; sizeof includes the last NUL */

static unsigned char big3k[3000], big4k[4000], big2k[2000];

typedef struct want {
  int64_t id;
  const void *data;
  size_t len;
} want;
#define WS(id, text) \
  { id, text, sizeof text - 1 }
#define WB(id, buf) \
  { id, buf, sizeof buf }

/* "jobs" of the fixture in delivery order: priority 5 first, then FIFO. */
static want v1_jobs[5];

static void fill(unsigned char *b, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) b[i] = (unsigned char)('a' + (i * 7 + seed + i / 13) % 26);
}

static void v1_exec(sqlite3 *db, const char *sql) {
  char *e = NULL;
  int rc = sqlite3_exec(db, sql, NULL, NULL, &e);
  CHECK(rc == SQLITE_OK);
  if (rc != SQLITE_OK) fprintf(stderr, "  v1 fixture: %s\n", e ? e : "?");
  sqlite3_free(e);
}

/* One mq_body row as version 1 wrote it; zip stores it zlib-compressed. */
static void v1_body(sqlite3 *db, int64_t id, int refs, const void *data, size_t len,
                    const char *hdr, size_t hlen, const char *subject, int zip) {
  uLongf zlen = compressBound((uLong)len);
  unsigned char *z = zip ? malloc(zlen) : NULL;
  if (zip) CHECK(z && compress2(z, &zlen, data, (uLong)len, 6) == Z_OK);
  sqlite3_stmt *st = NULL;
  CHECK(sqlite3_prepare_v2(db,
                           "INSERT INTO mq_body(id, refs, size, crc, codec, headers, subject,"
                           " data) VALUES(?1,?2,?3,?4,?5,?6,?7,?8)",
                           -1, &st, NULL) == SQLITE_OK);
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int(st, 2, refs);
  sqlite3_bind_int64(st, 3, (int64_t)len);
  sqlite3_bind_int64(st, 4, (int64_t)crc32_z(0L, data, len));
  sqlite3_bind_int(st, 5, zip ? 1 : 0);
  if (hdr) sqlite3_bind_blob(st, 6, hdr, (int)hlen, SQLITE_STATIC);
  if (subject) sqlite3_bind_text(st, 7, subject, -1, SQLITE_STATIC);
  sqlite3_bind_blob(st, 8, zip ? (const void *)z : data, zip ? (int)zlen : (int)len, SQLITE_STATIC);
  CHECK(sqlite3_step(st) == SQLITE_DONE);
  sqlite3_finalize(st);
  free(z);
}

/* A version 1 store: queue "jobs" with messages 1..5 (3 has priority 5, 2
** has headers, 5 is compressed), topic "news" with subscriptions "a" and
** "b" sharing publish 6 (messages 7 and 8); next_id 9. */
static void make_v1(const char *path) {
  sqlite3 *db = NULL;
  char sql[1024];
  CHECK(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) == SQLITE_OK);
  v1_exec(db, "PRAGMA journal_mode=WAL; BEGIN IMMEDIATE");
  v1_exec(db, v1_schema);
  snprintf(sql, sizeof sql,
           "PRAGMA application_id=%d; PRAGMA user_version=1;"
           "INSERT INTO mq_meta VALUES('created_by', 'mq 0.1.0'), ('next_id', 9);"
           "INSERT INTO mq_queue(id, name, kind, parent_id, filter, visibility_ms, max_receives,"
           " dlq_id, retention_ms, max_payload, compress_above, dedup_window_ms, created_at)"
           " VALUES(1,'jobs',0,NULL,NULL,30000,0,NULL,0,1048576,3500,300000,1699999900000),"
           " (2,'news',1,NULL,NULL,30000,0,NULL,0,1048576,0,300000,1699999900000),"
           " (3,'news/a',2,2,NULL,30000,0,NULL,0,1048576,0,300000,1699999900000),"
           " (4,'news/b',2,2,'news.>',30000,0,NULL,0,1048576,0,300000,1699999900000);",
           0x6D710A01);
  v1_exec(db, sql);
  v1_body(db, 1, 1, "alpha", 5, NULL, 0, NULL, 0);
  v1_body(db, 2, 1, "bravo", 5, V1_HEADERS, sizeof V1_HEADERS, NULL, 0);
  v1_body(db, 3, 1, "charlie", 7, NULL, 0, NULL, 0);
  v1_body(db, 4, 1, big3k, sizeof big3k, NULL, 0, NULL, 0);
  v1_body(db, 5, 1, big4k, sizeof big4k, NULL, 0, NULL, 1);
  v1_body(db, 6, 2, "kickoff", 7, NULL, 0, "news.sports", 0);
  /* Enqueued (and visible) one ms apart, before test_now_ms. */
  v1_exec(db,
          "INSERT INTO mq_msg(id, queue_id, body_id, state, priority, visible_at, receives,"
          " enqueued_at) SELECT column1, column2, column3, 0, column4, 1699999990000 + column1,"
          " 0, 1699999990000 + column1 FROM (VALUES(1,1,1,0), (2,1,2,0), (3,1,3,5), (4,1,4,0),"
          " (5,1,5,0), (7,3,6,0), (8,4,6,0))");
  v1_exec(db, "COMMIT");
  CHECK(sqlite3_close(db) == SQLITE_OK);
  CHECK(tu_sql_int(path, "SELECT codec FROM mq_body WHERE id = 5") == 1);
}

static int same(const mq_msg *m, const void *data, size_t len) {
  return m && mq_msg_size(m) == len && (len == 0 || memcmp(mq_msg_data(m), data, len) == 0);
}

static int64_t bytes_of(const want *w, size_t n) {
  int64_t b = 0;
  for (size_t i = 0; i < n; i++) b += (int64_t)w[i].len;
  return b;
}

/* Message 2 of the fixture carries the headers V1_HEADERS encodes. */
static void check_v1_headers(const mq_msg *m) {
  const char *t = mq_msg_header(m, "trace"), *e = mq_msg_header(m, "empty");
  CHECK(mq_msg_header_count(m) == 2);
  CHECK(t && strcmp(t, "t-2") == 0);
  CHECK(e && strcmp(e, "") == 0);
}

/* mq_peek of at most max returns exactly w, in order, with the right
** payloads. */
static void check_peek_max(mq_store *s, const char *q, size_t max, const want *w, size_t n) {
  mq_msg *m[16];
  size_t got = 99;
  CHECK_OK(mq_peek(s, q, max < 16 ? max : 16, m, &got));
  CHECK(got == n);
  for (size_t i = 0; i < got && i < 16; i++) {
    int ok = i < n && mq_msg_id(m[i]) == w[i].id && same(m[i], w[i].data, w[i].len);
    CHECK(ok);
    if (!ok)
      fprintf(stderr, "  peek(%s)[%zu]: id %lld size %zu\n", q, i, (long long)mq_msg_id(m[i]),
              mq_msg_size(m[i]));
    if (mq_msg_id(m[i]) == 2) check_v1_headers(m[i]);
    mq_msg_free(m[i]);
  }
}
#define check_peek(s, q, w, n) check_peek_max(s, q, 16, w, n)

typedef struct scan_ctx {
  const want *w;
  size_t n, seen, bad;
  uint64_t hit; /* bit i: w[i] was seen (n <= 64) */
} scan_ctx;

/* Each wanted message once, intact and ready; anything else is bad. */
static int scan_match(void *ctx, const mq_msg *m, int state) {
  scan_ctx *c = ctx;
  size_t i = 0;
  while (i < c->n && c->w[i].id != mq_msg_id(m)) i++;
  if (i == c->n || (c->hit >> i & 1) || !same(m, c->w[i].data, c->w[i].len) ||
      state != MQ_STATE_READY)
    c->bad++;
  if (i < c->n) c->hit |= (uint64_t)1 << i;
  c->seen++;
  return 0;
}

/* mq_queue_scan, mq_queue_stats_get and mq_store_verify all agree with w. */
static void check_reads(mq_store *s, const char *q, const want *w, size_t n) {
  scan_ctx c = {w, n, 0, 0, 0};
  int64_t corrupt = -1;
  CHECK_OK(mq_queue_scan(s, q, scan_match, &c, &corrupt));
  CHECK(corrupt == 0 && c.seen == n && c.bad == 0);
  mq_queue_stats st = tu_stats(s, q);
  CHECK(st.ready == (int64_t)n && st.total == (int64_t)n && st.bytes == bytes_of(w, n));
  if (st.bytes != bytes_of(w, n))
    fprintf(stderr, "  stats(%s).bytes %lld, expected %lld\n", q, (long long)st.bytes,
            (long long)bytes_of(w, n));
  CHECK_VERIFY_CLEAN(s);
}

static int info_format(mq_store *s) {
  mq_store_info info;
  CHECK_OK(mq_store_info_get(s, &info));
  return info.format_version;
}

/* Get the next message of q, check it is w (any id if w->id is 0), ack it. */
static void take(mq_store *s, const char *q, const want *w) {
  mq_msg *m = tu_get(s, q);
  int ok = m && (!w->id || mq_msg_id(m) == w->id) && same(m, w->data, w->len);
  CHECK(ok);
  if (!ok)
    fprintf(stderr, "  take(%s): got id %lld, expected %lld\n", q,
            (long long)(m ? mq_msg_id(m) : -1), (long long)w->id);
  if (m && mq_msg_id(m) == 2) check_v1_headers(m);
  if (m) CHECK_OK(mq_ack(s, q, mq_msg_receipt(m)));
  mq_msg_free(m);
}

static mq_store *open_ro(const char *path, int injected_clock) {
  mq_store *s = NULL;
  int rc = tu_open_ex(path, MQ_SYNC_NORMAL, MQ_OPEN_READONLY, injected_clock ? test_clock : NULL,
                      NULL, &s);
  CHECK_RC(rc, MQ_OK);
  if (rc != MQ_OK) fprintf(stderr, "  open_ro: %s\n", mq_errmsg(NULL));
  return s;
}

static void upgrade_keeps_every_message(void) {
  const char *p = test_path("fmt-up");
  make_v1(p);
  CHECK(tu_sql_int(p, "PRAGMA user_version") == 1);
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  CHECK(tu_sql_int(p, "PRAGMA user_version") == CUR_FORMAT);
  CHECK(tu_sql_int(p, COLS_SQL) == V2_COLUMNS);
  CHECK(tu_sql_int(p, "SELECT count(*) FROM sqlite_schema WHERE name = 'mq_pack'") == 1);
  /* Old rows untouched: payloads still in their bodies, none inline. */
  CHECK(tu_sql_int(p, "SELECT count(*) FROM mq_body") == 6);
  CHECK(tu_sql_int(p,
                   "SELECT count(*) FROM mq_msg WHERE body_id = 0 OR size IS NOT NULL"
                   " OR data IS NOT NULL") == 0);
  mq_store_info info;
  CHECK_OK(mq_store_info_get(s, &info));
  CHECK(info.format_version == CUR_FORMAT && strcmp(info.created_by, "mq 0.1.0") == 0);
  CHECK(info.queues == 1 && info.topics == 1 && info.subscriptions == 2);

  check_peek(s, "jobs", v1_jobs, 5);
  check_reads(s, "jobs", v1_jobs, 5);
  const want kick = WS(7, "kickoff");
  check_peek(s, "news/a", &kick, 1);

  /* New puts: ids continue from next_id; small ones inline, large in a body. */
  mq_header h = {"src", "new"};
  mq_put_options po;
  mq_put_options_init(&po);
  po.priority = 5;
  po.headers = &h;
  po.n_headers = 1;
  int64_t hi = -1, small = -1, large = -1;
  CHECK_OK(mq_put(s, "jobs", "new-high", 8, &po, &hi));
  CHECK_OK(mq_put(s, "jobs", "new-small", 9, NULL, &small));
  CHECK_OK(mq_put(s, "jobs", big2k, sizeof big2k, NULL, &large));
  CHECK(hi == 9 && small == 10 && large == 11);
  CHECK(tu_sql_int(p, "SELECT body_id FROM mq_msg WHERE id = 9") == 0);
  CHECK(tu_sql_int(p, "SELECT body_id FROM mq_msg WHERE id = 10") == 0);
  CHECK(tu_sql_int(p, "SELECT body_id FROM mq_msg WHERE id = 11") == 11);
  CHECK(tu_sql_int(p, "SELECT size FROM mq_body WHERE id = 11") == 2000);
  want all[8] = {v1_jobs[0], WS(9, "new-high"), v1_jobs[1],          v1_jobs[2],
                 v1_jobs[3], v1_jobs[4],        WS(10, "new-small"), WB(11, big2k)};
  check_peek(s, "jobs", all, 8);
  check_reads(s, "jobs", all, 8);

  /* Close and reopen: everything is still there, nothing upgraded twice. */
  CHECK_OK(mq_store_close(s));
  s = test_open(p, MQ_SYNC_NORMAL);
  CHECK(tu_sql_int(p, "PRAGMA user_version") == CUR_FORMAT);
  CHECK(tu_sql_int(p, COLS_SQL) == V2_COLUMNS);
  check_peek(s, "jobs", all, 8);

  /* Three leased (old body, new inline, old body), then verify the mix. */
  mq_msg *held[3] = {NULL, NULL, NULL};
  for (int i = 0; i < 3; i++) {
    held[i] = tu_get(s, "jobs");
    CHECK(held[i] && mq_msg_id(held[i]) == all[i].id && same(held[i], all[i].data, all[i].len));
  }
  if (held[1])
    CHECK(mq_msg_header(held[1], "src") && !strcmp(mq_msg_header(held[1], "src"), "new"));
  CHECK_STATS(s, "jobs", 5, 3, 0, 0, 8);
  CHECK(tu_stats(s, "jobs").bytes == bytes_of(all, 8));
  CHECK_VERIFY_CLEAN(s);
  for (int i = 0; i < 3; i++)
    if (held[i]) CHECK_OK(mq_ack(s, "jobs", mq_msg_receipt(held[i])));
  for (int i = 0; i < 3; i++) mq_msg_free(held[i]);
  CHECK(tu_sql_int(p, "SELECT count(*) FROM mq_body WHERE id IN (1, 3)") == 0);
  for (int i = 3; i < 8; i++) take(s, "jobs", &all[i]);
  CHECK(tu_get(s, "jobs") == NULL);
  CHECK(tu_sql_int(p, "SELECT count(*) FROM mq_body WHERE id IN (2, 4, 5, 11)") == 0);

  /* The old publish reaches both subscriptions; its body goes with the last
  ** ack.  A new publish still stores its payload once, in mq_body. */
  int64_t pub = -1, delivered = -1;
  CHECK_OK(mq_publish(s, "news", "news.sports", "second", 6, NULL, &pub, &delivered));
  CHECK(pub == 12 && delivered == 2);
  CHECK(tu_sql_int(p, "SELECT refs FROM mq_body WHERE id = 12") == 2);
  CHECK(tu_sql_int(p, "SELECT count(*) FROM mq_msg WHERE body_id = 12") == 2);
  mq_msg *m = NULL;
  size_t n = 0;
  CHECK_OK(mq_peek(s, "news/b", 1, &m, &n));
  CHECK(n == 1 && mq_msg_publish_id(m) == 6 && mq_msg_subject(m) &&
        strcmp(mq_msg_subject(m), "news.sports") == 0);
  mq_msg_free(m);
  const want a[2] = {WS(7, "kickoff"), WS(0, "second")}, b[2] = {WS(8, "kickoff"), WS(0, "second")};
  take(s, "news/a", &a[0]);
  CHECK(tu_sql_int(p, "SELECT refs FROM mq_body WHERE id = 6") == 1);
  take(s, "news/b", &b[0]);
  CHECK(tu_sql_int(p, "SELECT count(*) FROM mq_body WHERE id = 6") == 0);
  take(s, "news/a", &a[1]);
  take(s, "news/b", &b[1]);
  CHECK(tu_sql_int(p, "SELECT count(*) FROM mq_body") == 0);
  CHECK(tu_sql_int(p, "SELECT count(*) FROM mq_msg") == 0);
  CHECK_VERIFY_CLEAN(s);
  CHECK_OK(mq_store_close(s));
  char ok[64];
  tu_sql_text(p, "PRAGMA integrity_check", ok, sizeof ok);
  CHECK(strcmp(ok, "ok") == 0);
  test_unlink_store(p);
}

/* The CRC32 of a whole file, and its size. */
static uint32_t file_crc(const char *path, long *size) {
  FILE *f = fopen(path, "rb");
  uLong crc = crc32(0L, Z_NULL, 0);
  unsigned char buf[8192];
  size_t n;
  *size = -1;
  if (!f) return 0;
  *size = 0;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
    crc = crc32(crc, buf, (uInt)n);
    *size += (long)n;
  }
  fclose(f);
  return (uint32_t)crc;
}

static void readonly_leaves_v1_alone(void) {
  const char *p = test_path("fmt-ro");
  make_v1(p);
  long size0, size1;
  uint32_t crc0 = file_crc(p, &size0);
  CHECK(size0 > 0);
  const want kick = WS(8, "kickoff");
  for (int clock = 1; clock >= 0; clock--) { /* injected, then the store's own */
    mq_store *r = open_ro(p, clock);
    if (!r) break;
    CHECK(info_format(r) == 1);
    check_peek(r, "jobs", v1_jobs, 5);
    check_reads(r, "jobs", v1_jobs, 5);
    check_peek(r, "news/b", &kick, 1);
    mq_topic_stats ts;
    CHECK_OK(mq_topic_stats_get(r, "news", &ts));
    CHECK(ts.messages == 2 && ts.payloads == 1 && ts.bytes == 7);
    CHECK_RC(mq_put(r, "jobs", "x", 1, NULL, NULL), MQ_EREADONLY);
    mq_store_close(r);
  }
  uint32_t crc1 = file_crc(p, &size1);
  CHECK(crc1 == crc0 && size1 == size0);
  CHECK(tu_sql_int(p, "PRAGMA user_version") == 1);
  CHECK(tu_sql_int(p, COLS_SQL) == V1_COLUMNS);
  test_unlink_store(p);
}

/* A scan callback that, at the first message, opens the file read-write
** (which upgrades it) and puts a small message through that handle. */
typedef struct upgrade_ctx {
  const char *path;
  mq_store *w;
  size_t seen;
} upgrade_ctx;

static int scan_and_upgrade(void *ctx, const mq_msg *m, int state) {
  upgrade_ctx *u = ctx;
  (void)m;
  (void)state;
  if (u->seen++ == 0) {
    CHECK_OK(tu_open_ex(u->path, MQ_SYNC_NORMAL, 0, test_clock, NULL, &u->w));
    if (u->w) CHECK_OK(mq_put(u->w, "jobs", "during-scan", 11, NULL, NULL));
  }
  return 0;
}

static void readonly_reader_survives_an_upgrade(void) {
  const char *p = test_path("fmt-live");
  make_v1(p);
  mq_store *r = open_ro(p, 1);
  if (!r) return;
  check_peek(r, "jobs", v1_jobs, 5);
  CHECK(info_format(r) == 1);

  /* Upgraded while the reader scans: the scan keeps its version 1 snapshot. */
  upgrade_ctx u = {p, NULL, 0};
  int64_t corrupt = -1;
  CHECK_OK(mq_queue_scan(r, "jobs", scan_and_upgrade, &u, &corrupt));
  CHECK(u.seen == 5 && corrupt == 0 && u.w != NULL);
  CHECK(tu_sql_int(p, "PRAGMA user_version") == CUR_FORMAT);
  CHECK(info_format(r) == CUR_FORMAT);
  mq_header h = {"k", "inline"};
  mq_put_options po;
  mq_put_options_init(&po);
  po.headers = &h;
  po.n_headers = 1;
  int64_t id = -1;
  if (u.w) {
    CHECK_OK(mq_put(u.w, "jobs", "with-header", 11, &po, &id));
    CHECK_OK(mq_put(u.w, "jobs", big2k, sizeof big2k, NULL, NULL));
    take(u.w, "jobs", &v1_jobs[0]); /* an old body-backed message, acked */
  }
  CHECK(id == 10);
  CHECK(tu_sql_int(p, "SELECT count(*) FROM mq_msg WHERE body_id = 0") == 2);
  want now[7] = {v1_jobs[1],   v1_jobs[2],           v1_jobs[3],
                 v1_jobs[4],   WS(9, "during-scan"), WS(10, "with-header"),
                 WB(11, big2k)};
  check_peek(r, "jobs", now, 7);
  check_reads(r, "jobs", now, 7);
  mq_msg *m[8];
  size_t n = 0;
  CHECK_OK(mq_peek(r, "jobs", 8, m, &n));
  CHECK(n == 7);
  if (n == 7) {
    const char *v = mq_msg_header(m[5], "k");
    CHECK(v && strcmp(v, "inline") == 0);
  }
  for (size_t i = 0; i < n && i < 8; i++) mq_msg_free(m[i]);
  mq_store_close(u.w);
  mq_store_close(r);
  test_unlink_store(p);
}

/* Fork a child that waits until the pipe go is closed, then opens path
** read-write (upgrading it), puts "child-one" and "child-two" and exits 0
** if all went well.  Children are forked while the parent has no SQLite
** connection open: a connection's locks must not be inherited by fork. */
static pid_t upgrader_fork(const char *path, const int go[2], int busy_ms) {
  pid_t pid = fork();
  if (pid != 0) return pid;
  tu_child_setup();
  close(go[1]);
  char c;
  while (read(go[0], &c, 1) < 0 && errno == EINTR) {
  }
  mq_store_options o;
  tu_options(&o, MQ_SYNC_NORMAL);
  if (busy_ms) o.busy_timeout_ms = busy_ms;
  mq_store *w = NULL;
  int rc = mq_store_open(path, &o, &w);
  if (rc == MQ_OK) rc = mq_put(w, "jobs", "child-one", 9, NULL, NULL);
  if (rc == MQ_OK) rc = mq_put(w, "jobs", "child-two", 9, NULL, NULL);
  if (rc != MQ_OK) fprintf(stderr, "  child: %s: %s\n", mq_errstr(rc), mq_errmsg(w));
  if (w && mq_store_close(w) != MQ_OK) rc = MQ_ERROR;
  _exit(rc == MQ_OK ? 0 : 1);
}

/* The same with the upgrader in another process. */
static void readonly_reader_survives_a_process_upgrade(void) {
  const char *p = test_path("fmt-proc");
  make_v1(p);
  int go[2];
  CHECK(pipe(go) == 0);
  pid_t pid = upgrader_fork(p, go, 0);
  CHECK(pid > 0);
  mq_store *r = open_ro(p, 1);
  if (r) check_peek(r, "jobs", v1_jobs, 5);
  close(go[0]);
  close(go[1]); /* the child goes */
  if (pid > 0) CHECK(tu_wait(pid) == 0);
  CHECK(tu_sql_int(p, "PRAGMA user_version") == CUR_FORMAT);
  CHECK(tu_sql_int(p, "SELECT count(*) FROM mq_msg WHERE body_id = 0") == 2);
  want now[7] = {v1_jobs[0], v1_jobs[1],         v1_jobs[2],         v1_jobs[3],
                 v1_jobs[4], WS(9, "child-one"), WS(10, "child-two")};
  if (r) {
    check_peek(r, "jobs", now, 7);
    check_reads(r, "jobs", now, 7);
    CHECK(info_format(r) == CUR_FORMAT);
  }
  mq_store_close(r);
  test_unlink_store(p);
}

/* Whether process pid is blocked in nanosleep or clock_nanosleep: SQLite's
** busy handler waiting for a lock.  -1 when /proc cannot tell. */
static int in_sleep(pid_t pid) {
  char path[64], buf[64] = "";
  snprintf(path, sizeof path, "/proc/%ld/syscall", (long)pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  int ok = fgets(buf, sizeof buf, f) != NULL;
  fclose(f);
  if (!ok) return -1;
  int nr = atoi(buf);
#ifdef SYS_nanosleep
  if (nr == SYS_nanosleep) return 1;
#endif
#ifdef SYS_clock_nanosleep
  if (nr == SYS_clock_nanosleep) return 1;
#endif
  return 0;
}

/* Another writer upgrades the file after an opener has read its version 1
** identity and before it gets the write lock: the opener must look again
** under the lock and find nothing left to do.  (mq's writer gate usually
** keeps two opens apart, but it is only an ordering hint: private without
** shared memory, skipped after a while.)  The other writer is a plain
** connection doing what version 2 does; the opener is a child, known to be
** waiting for the lock once it sleeps in SQLite's busy handler. */
static void upgrade_rechecks_under_the_lock(void) {
  const char *p = test_path("fmt-recheck");
  make_v1(p);
  int go[2];
  CHECK(pipe(go) == 0);
  pid_t pid = upgrader_fork(p, go, 60000);
  CHECK(pid > 0);
  sqlite3 *db = NULL;
  CHECK(sqlite3_open_v2(p, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK);
  v1_exec(db,
          "BEGIN IMMEDIATE;"
          "ALTER TABLE mq_msg ADD COLUMN size INTEGER;"
          "ALTER TABLE mq_msg ADD COLUMN crc INTEGER;"
          "ALTER TABLE mq_msg ADD COLUMN codec INTEGER;"
          "ALTER TABLE mq_msg ADD COLUMN headers BLOB;"
          "ALTER TABLE mq_msg ADD COLUMN data BLOB;"
          "PRAGMA user_version=2;");
  close(go[0]);
  close(go[1]); /* the child goes */
  int64_t deadline = tu_mono_ms() + 20000;
  int seen = 0;
  while (pid > 0 && !seen && tu_mono_ms() < deadline) {
    int r = in_sleep(pid);
    if (r < 0) break;
    seen = r;
    if (!seen) tu_sleep_ms(1);
  }
  /* Without the opener seen waiting, committing now would let it open
  ** after the upgrade, and a library with no re-check would pass. */
  CHECK(seen);
  if (!seen)
    fprintf(stderr, "  never saw the opener wait for the lock (/proc/PID/syscall unreadable?): "
                    "the interleaving was not forced\n");
  v1_exec(db, "COMMIT");
  CHECK(sqlite3_close(db) == SQLITE_OK);
  if (pid > 0) CHECK(tu_wait(pid) == 0);
  CHECK(tu_sql_int(p, COLS_SQL) == V2_COLUMNS);
  CHECK(tu_sql_int(p, "SELECT count(*) FROM mq_msg WHERE body_id = 0") == 2);
  test_unlink_store(p);
}

/* Several processes open one version 1 file read-write at the same moment:
** every open succeeds and the columns are added exactly once.  (The writer
** gate mostly orders the opens; upgrade_rechecks_under_the_lock forces the
** interleaving the gate would hide.) */
static void upgrade_is_atomic_under_contention(void) {
  enum { ROUNDS = 6, KIDS = 3 };
  for (int round = 0; round < ROUNDS; round++) {
    const char *p = test_path("fmt-race");
    make_v1(p);
    int go[2];
    CHECK(pipe(go) == 0);
    pid_t kids[KIDS];
    for (int k = 0; k < KIDS; k++) CHECK((kids[k] = upgrader_fork(p, go, 0)) > 0);
    close(go[0]);
    close(go[1]); /* every child's read returns now */
    for (int k = 0; k < KIDS; k++)
      if (kids[k] > 0) CHECK(tu_wait(kids[k]) == 0);
    CHECK(tu_sql_int(p, "PRAGMA user_version") == CUR_FORMAT);
    CHECK(tu_sql_int(p, COLS_SQL) == V2_COLUMNS);
    CHECK(tu_sql_int(p, "SELECT count(*) FROM mq_msg WHERE queue_id = 1") == 5 + 2 * KIDS);
    CHECK(tu_sql_int(p, "SELECT count(*) FROM mq_msg WHERE body_id = 0") == 2 * KIDS);
    mq_store *s = test_open(p, MQ_SYNC_NORMAL);
    check_peek_max(s, "jobs", 5, v1_jobs, 5); /* the kids' messages come after */
    CHECK_VERIFY_CLEAN(s);
    CHECK(tu_stats(s, "jobs").total == 5 + 2 * KIDS);
    mq_store_close(s);
    test_unlink_store(p);
  }
}

/* A file at user_version 1 whose mq_msg already has the format 2 columns
** (a hand "downgrade" to let an old library in, or a half-applied manual
** upgrade): what does a read-write open of the current library do? */
static void v1_with_columns(void) {
  const char *p = test_path("rv-v1cols");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  tu_put(s, "q", "inline");
  mq_store_close(s);
  CHECK(tu_sql_exec(p, "PRAGMA user_version=1") == SQLITE_OK);
  s = NULL;
  int rc = tu_open_ex(p, MQ_SYNC_NORMAL, 0, test_clock, NULL, &s);
  fprintf(stderr, "  open of v1+columns: %s: %s\n", mq_errstr(rc), mq_errmsg(NULL));
  CHECK_RC(rc, MQ_OK);
  if (s) {
    mq_msg *m = tu_get(s, "q");
    CHECK(tu_msg_is(m, "inline"));
    mq_msg_free(m);
    mq_store_close(s);
  }
  CHECK(tu_sql_int(p, "PRAGMA user_version") == CUR_FORMAT);
  test_unlink_store(p);
}


/* A read-only handle that has read a version 1 file (its reader caches the
** v1 schema) peeks, gets stats and verifies right after an in-process
** upgrade, with no other call in between to refresh its schema. */
static void reader_stale_schema(void) {
  const char *p = test_path("fmt-stale");
  make_v1(p);
  mq_store *r = open_ro(p, 1);
  if (!r) return;
  check_peek(r, "jobs", v1_jobs, 5);
  mq_store *w = test_open(p, MQ_SYNC_NORMAL); /* upgrades */
  CHECK_OK(mq_put(w, "jobs", "small", 5, NULL, NULL));
  const want now[6] = {v1_jobs[0], v1_jobs[1], v1_jobs[2], v1_jobs[3], v1_jobs[4],
                       WS(9, "small")};
  check_peek(r, "jobs", now, 6);
  CHECK_OK(mq_put(w, "jobs", "small2", 6, NULL, NULL));
  CHECK(tu_stats(r, "jobs").bytes == bytes_of(now, 6) + 6);
  CHECK_OK(mq_put(w, "jobs", "small3", 6, NULL, NULL));
  CHECK_VERIFY_CLEAN(r);
  mq_store_close(w);
  mq_store_close(r);
  test_unlink_store(p);
}

/* A newer library upgrades the file (user_version 3) while this one has it
** open: this library's reads and writes should refuse it (MQ_EVERSION), as
** its open would, instead of reading and writing format 3 as format 2. */
static void newer_format_under_an_open_handle(void) {
  const char *p = test_path("rv-newer");
  mq_store *w = test_open(p, MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(w, "q", NULL));
  tu_put(w, "q", "before");
  mq_store *r = NULL;
  CHECK_OK(tu_open_ex(p, MQ_SYNC_NORMAL, MQ_OPEN_READONLY, test_clock, NULL, &r));
  if (!r) return;
  CHECK(tu_sql_exec(p, "PRAGMA user_version=4") == SQLITE_OK);
  mq_msg *m[2];
  size_t n = 0;
  int rc = mq_peek(r, "q", 2, m, &n);
  fprintf(stderr, "  peek of a format 4 file by a format 3 reader: %s (%zu messages)\n",
          mq_errstr(rc), n);
  CHECK_RC(rc, MQ_EVERSION);
  for (size_t i = 0; rc == MQ_OK && i < n; i++) mq_msg_free(m[i]);
  rc = mq_put(w, "q", "after", 5, NULL, NULL);
  fprintf(stderr, "  put into a format 4 file by a format 3 writer: %s\n", mq_errstr(rc));
  CHECK_RC(rc, MQ_EVERSION);
  mq_store_close(r);
  mq_store_close(w);
  test_unlink_store(p);
}

int main(void) {
  tu_watchdog(240);
  fill(big3k, sizeof big3k, 3);
  fill(big4k, sizeof big4k, 4);
  fill(big2k, sizeof big2k, 2);
  v1_jobs[0] = (want)WS(3, "charlie");
  v1_jobs[1] = (want)WS(1, "alpha");
  v1_jobs[2] = (want)WS(2, "bravo");
  v1_jobs[3] = (want)WB(4, big3k);
  v1_jobs[4] = (want)WB(5, big4k);
  TEST(upgrade_keeps_every_message);
  TEST(readonly_leaves_v1_alone);
  TEST(readonly_reader_survives_an_upgrade);
  TEST(readonly_reader_survives_a_process_upgrade);
  TEST(upgrade_is_atomic_under_contention);
  TEST(upgrade_rechecks_under_the_lock);
  TEST(v1_with_columns);
  TEST(reader_stale_schema);
  TEST(newer_format_under_an_open_handle);
  return test_done();
}
