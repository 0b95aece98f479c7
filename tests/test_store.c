/*
** test_store.c -- opening, creating and refusing store files.
**
** What a user relies on when they point mq at a path: a new file (and its
** -wal and -shm companions) gets exactly the permission bits asked for,
** whatever the umask; a symbolic link, a missing directory, a file that is
** not ours or one from a newer format is refused with a distinct code and a
** message naming the file, and is left as it was; queues, messages and even
** outstanding leases survive close and reopen; a read-only handle reads but
** refuses every change.  Foreign and newer files are made with the sqlite3
** API directly, the way another program would have made them.
*/
#include "testutil.h"

static unsigned tu_mode_of(const char *path) {
  struct stat sb;
  if (stat(path, &sb) != 0) return 0;
  return (unsigned)(sb.st_mode & 0777);
}

static int tu_exists(const char *path) {
  struct stat sb;
  return lstat(path, &sb) == 0;
}

/* Open with the test clock, NORMAL sync, no free-space floor, and the
** given file mode and page size (0: the defaults). */
static int open_new(const char *path, unsigned mode, int page_size, mq_store **out) {
  mq_store_options o;
  mq_store_options_init(&o);
  o.sync = MQ_SYNC_NORMAL;
  o.clock = test_clock;
  o.min_free_bytes = 0;
  if (mode) o.mode = mode;
  o.page_size = page_size;
  return mq_store_open(path, &o, out);
}

static int open_mode(const char *path, unsigned mode, mq_store **out) {
  return open_new(path, mode, 0, out);
}

/* Check the main file and, once they exist, its companions. */
static void check_modes(const char *path, unsigned want) {
  char side[600];
  CHECK(tu_mode_of(path) == want);
  if (tu_mode_of(path) != want)
    fprintf(stderr, "  %s: mode %o, expected %o\n", path, tu_mode_of(path), want);
  snprintf(side, sizeof side, "%s-wal", path);
  CHECK(tu_exists(side)); /* open in WAL mode after a write: it must exist */
  CHECK(tu_mode_of(side) == want);
  snprintf(side, sizeof side, "%s-shm", path);
  CHECK(tu_exists(side));
  CHECK(tu_mode_of(side) == want);
}

static void test_mode_default_0600(void) {
  mode_t old = umask(022);
  const char *p = test_path("mode600");
  mq_store *s = NULL;
  CHECK_OK(open_mode(p, 0, &s));
  if (s) {
    CHECK_OK(mq_queue_create(s, "q", NULL));
    CHECK_OK(mq_put(s, "q", "x", 1, NULL, NULL));
    check_modes(p, 0600);
  }
  mq_store_close(s);
  umask(old);
  test_unlink_store(p);
}

static void test_mode_0660_honoured(void) {
  /* Under umask 022 a plain open(2) would give 0640: the umask must not
  ** apply, so a group can share the queue. */
  mode_t old = umask(022);
  const char *p = test_path("mode660");
  mq_store *s = NULL;
  CHECK_OK(open_mode(p, 0660, &s));
  if (s) {
    CHECK_OK(mq_queue_create(s, "q", NULL));
    CHECK_OK(mq_put(s, "q", "x", 1, NULL, NULL));
    check_modes(p, 0660);
  }
  mq_store_close(s);
  umask(old);
  test_unlink_store(p);
}

static void test_mode_0600_under_umask_0(void) {
  mode_t old = umask(0);
  const char *p = test_path("mode600u0");
  mq_store *s = NULL;
  CHECK_OK(open_mode(p, 0, &s));
  if (s) {
    CHECK_OK(mq_queue_create(s, "q", NULL));
    CHECK_OK(mq_put(s, "q", "x", 1, NULL, NULL));
    check_modes(p, 0600);
  }
  mq_store_close(s);
  umask(old);
  test_unlink_store(p);
}

/* The last failed open's message must name the file. */
static void check_errmsg_names(const char *path) {
  const char *msg = mq_errmsg(NULL);
  CHECK(msg != NULL);
  if (!msg) return;
  CHECK(msg[0] != 0);
  CHECK(strstr(msg, tu_basename(path)) != NULL);
  if (!strstr(msg, tu_basename(path)))
    fprintf(stderr, "  errmsg \"%s\" does not name %s\n", msg, path);
}

static void test_symlink_refused(void) {
  const char *real = test_path("symreal");
  const char *link = test_path("symlink");
  const char *dangling = test_path("symdangling");
  const char *target = test_path("symtarget");
  mq_store *s = NULL;

  s = test_open(real, MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  mq_store_close(s);

  CHECK(symlink(real, link) == 0);
  s = (mq_store *)&test_failures;
  CHECK_RC(open_mode(link, 0, &s), MQ_ECANTOPEN);
  CHECK(s == NULL);
  check_errmsg_names(link);

  /* A dangling link must not create its target either. */
  CHECK(symlink(target, dangling) == 0);
  s = (mq_store *)&test_failures;
  CHECK_RC(open_mode(dangling, 0, &s), MQ_ECANTOPEN);
  CHECK(s == NULL);
  CHECK(!tu_exists(target));
  check_errmsg_names(dangling);

  unlink(link);
  unlink(dangling);
  test_unlink_store(real);
}

static void test_garbage_file(void) {
  const char *p = test_path("garbage");
  unsigned char junk[8192], back[8192];
  for (size_t i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)(i * 7 + 13);
  memcpy(junk, "this is not a database, it is a grocery list\n", 45);
  FILE *f = fopen(p, "wb");
  CHECK(f != NULL);
  if (!f) return;
  fwrite(junk, 1, sizeof junk, f);
  fclose(f);

  mq_store *s = (mq_store *)&test_failures;
  CHECK_RC(open_mode(p, 0, &s), MQ_ENOTMQ);
  CHECK(s == NULL);
  check_errmsg_names(p);

  /* Refused and left exactly as it was. */
  f = fopen(p, "rb");
  CHECK(f != NULL);
  if (f) {
    CHECK(fread(back, 1, sizeof back, f) == sizeof back);
    CHECK(fgetc(f) == EOF);
    fclose(f);
    CHECK(memcmp(junk, back, sizeof junk) == 0);
  }
  test_unlink_store(p);
}

static void test_foreign_sqlite_db(void) {
  const char *p = test_path("foreign");
  sqlite3 *db = NULL;
  CHECK(sqlite3_open(p, &db) == SQLITE_OK);
  CHECK(sqlite3_exec(db,
                     "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT);"
                     "INSERT INTO users(name) VALUES('alice'),('bob');",
                     NULL, NULL, NULL) == SQLITE_OK);
  sqlite3_close(db);

  mq_store *s = (mq_store *)&test_failures;
  CHECK_RC(open_mode(p, 0, &s), MQ_ENOTMQ);
  CHECK(s == NULL);
  check_errmsg_names(p);

  /* The other application's file is untouched: same tables, same rows, and
  ** not switched to WAL mode behind its back. */
  CHECK(tu_sql_int(p, "SELECT count(*) FROM sqlite_master") == 1);
  CHECK(tu_sql_int(p, "SELECT count(*) FROM users") == 2);
  char mode[32];
  tu_sql_text(p, "PRAGMA journal_mode", mode, sizeof mode);
  CHECK(strcmp(mode, "delete") == 0);
  test_unlink_store(p);
}

static void test_newer_format(void) {
  const char *p = test_path("newer");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  CHECK_OK(mq_put(s, "q", "keep", 4, NULL, NULL));
  CHECK_OK(mq_store_close(s));

  int64_t v = tu_sql_int(p, "PRAGMA user_version");
  CHECK(v >= 0);
  char sql[64];
  snprintf(sql, sizeof sql, "PRAGMA user_version = %lld", (long long)(v + 1));
  CHECK(tu_sql_exec(p, sql) == SQLITE_OK);

  s = (mq_store *)&test_failures;
  CHECK_RC(open_mode(p, 0, &s), MQ_EVERSION);
  CHECK(s == NULL);
  check_errmsg_names(p);
  /* Not "upgraded" or rewritten by the failed open. */
  CHECK(tu_sql_int(p, "PRAGMA user_version") == v + 1);
  CHECK(tu_sql_int(p, "SELECT count(*) FROM mq_msg") == 1);

  /* Read-only is refused as well: we cannot read a format we do not know. */
  mq_store_options o;
  mq_store_options_init(&o);
  o.flags = MQ_OPEN_READONLY;
  o.clock = test_clock;
  s = (mq_store *)&test_failures;
  CHECK_RC(mq_store_open(p, &o, &s), MQ_EVERSION);
  CHECK(s == NULL);
  test_unlink_store(p);
}

static void test_missing_directory(void) {
  char p[700];
  const char *base = test_path("nodir");
  snprintf(p, sizeof p, "%s.dir/sub/q.db", base);
  mq_store *s = (mq_store *)&test_failures;
  CHECK_RC(open_mode(p, 0, &s), MQ_ECANTOPEN);
  CHECK(s == NULL);
  check_errmsg_names(p);
  char dir[700];
  snprintf(dir, sizeof dir, "%s.dir", base);
  CHECK(!tu_exists(dir)); /* no directory was made on the way */
}

static void test_missing_file_without_create(void) {
  const char *p = test_path("nocreate");
  mq_store_options o;
  mq_store_options_init(&o);
  o.flags = 0; /* no MQ_OPEN_CREATE */
  o.clock = test_clock;
  mq_store *s = (mq_store *)&test_failures;
  CHECK_RC(mq_store_open(p, &o, &s), MQ_ECANTOPEN);
  CHECK(s == NULL);
  check_errmsg_names(p);
  CHECK(!tu_exists(p));

  o.flags = MQ_OPEN_READONLY;
  s = (mq_store *)&test_failures;
  CHECK_RC(mq_store_open(p, &o, &s), MQ_ECANTOPEN);
  CHECK(s == NULL);
  CHECK(!tu_exists(p));
}

static void test_reopen_keeps_everything(void) {
  const char *p = test_path("reopen");
  mq_store *s = test_open(p, MQ_SYNC_FULL);
  mq_queue_options qo;
  mq_queue_options_init(&qo);
  qo.visibility_ms = 5000;
  qo.max_receives = 7;
  CHECK_OK(mq_queue_create(s, "beta", &qo));
  CHECK_OK(mq_queue_create(s, "alpha", NULL));
  mq_header h[1] = {{"k", "v"}};
  mq_put_options po;
  mq_put_options_init(&po);
  po.priority = 3;
  po.headers = h;
  po.n_headers = 1;
  int64_t a1 = tu_put(s, "alpha", "one");
  int64_t a2 = tu_put_opts(s, "alpha", "two", &po);
  int64_t b1 = tu_put(s, "beta", "leased");
  tu_put(s, "beta", "waiting");
  mq_msg *lease = tu_get(s, "beta");
  CHECK(tu_msg_is(lease, "leased"));
  CHECK_OK(mq_store_close(s));

  /* A message outlives the handle it came from. */
  CHECK(tu_msg_is(lease, "leased"));
  CHECK(mq_msg_id(lease) == b1);

  s = test_open(p, MQ_SYNC_FULL);
  char **names = NULL;
  size_t n = 0;
  CHECK_OK(mq_queue_list(s, &names, &n));
  CHECK(n == 2);
  if (n == 2) {
    CHECK(strcmp(names[0], "alpha") == 0);
    CHECK(strcmp(names[1], "beta") == 0);
  }
  mq_list_free(names, n);

  /* The options persisted: same options is OK, different is EEXIST. */
  CHECK_OK(mq_queue_create(s, "beta", &qo));
  qo.visibility_ms = 6000;
  CHECK_RC(mq_queue_create(s, "beta", &qo), MQ_EEXIST);

  CHECK_STATS(s, "alpha", 2, 0, 0, 0, 2);
  CHECK_STATS(s, "beta", 1, 1, 0, 0, 2);
  mq_msg *m = tu_get(s, "alpha");
  CHECK(m && mq_msg_id(m) == a2 && tu_msg_is(m, "two"));
  CHECK(m && mq_msg_priority(m) == 3);
  CHECK(m && mq_msg_header(m, "k") && strcmp(mq_msg_header(m, "k"), "v") == 0);
  mq_msg_free(m);
  m = tu_get(s, "alpha");
  CHECK(m && mq_msg_id(m) == a1 && tu_msg_is(m, "one"));
  mq_msg_free(m);

  /* The lease taken before the close still hides its message, and its
  ** receipt still acks it. */
  m = tu_get(s, "beta");
  CHECK(tu_msg_is(m, "waiting"));
  mq_msg_free(m);
  CHECK(tu_get(s, "beta") == NULL);
  if (lease) CHECK_OK(mq_ack(s, "beta", mq_msg_receipt(lease)));
  CHECK_STATS(s, "beta", 0, 1, 0, 0, 1);
  mq_msg_free(lease);
  CHECK_OK(mq_store_close(s));
  test_unlink_store(p);
}

static void test_readonly(void) {
  const char *p = test_path("readonly");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s, "q", 1000, 0, NULL);
  tu_create(s, "dlq", 0, 0, NULL);
  tu_put(s, "q", "a");
  tu_put(s, "q", "b");
  mq_msg *held = tu_get(s, "q"); /* a real receipt to try on the RO handle */
  CHECK(held != NULL);
  tu_snapshot before, after;
  tu_snap(s, &before);
  CHECK_OK(mq_store_close(s));

  mq_store *ro = NULL;
  CHECK_OK(tu_open_ex(p, MQ_SYNC_NORMAL, MQ_OPEN_READONLY, test_clock, NULL, &ro));
  if (!ro) return;

  /* Reads work. */
  tu_snap(ro, &after);
  CHECK(tu_snap_eq(&before, &after));
  mq_msg *pk[4];
  size_t n = 9;
  CHECK_OK(mq_peek(ro, "q", 4, pk, &n));
  CHECK(n == 1);
  if (n == 1) {
    CHECK(tu_msg_is(pk[0], "b"));
    mq_msg_free(pk[0]);
  }

  /* Every change is refused with MQ_EREADONLY and a message. */
  int64_t id = 77;
  CHECK_RC(mq_put(ro, "q", "c", 1, NULL, &id), MQ_EREADONLY);
  CHECK(id == 0);
  CHECK(mq_errmsg(ro)[0] != 0);
  mq_entry e[1] = {{"c", 1, NULL}};
  CHECK_RC(mq_put_batch(ro, "q", e, 1, NULL), MQ_EREADONLY);
  CHECK(mq_errmsg(ro)[0] != 0);
  mq_msg *m = (mq_msg *)&test_failures;
  CHECK_RC(mq_get(ro, "q", NULL, &m), MQ_EREADONLY);
  CHECK(m == NULL);
  CHECK(mq_errmsg(ro)[0] != 0);
  CHECK_RC(mq_queue_create(ro, "new", NULL), MQ_EREADONLY);
  CHECK(mq_errmsg(ro)[0] != 0);
  CHECK_RC(mq_queue_drop(ro, "dlq"), MQ_EREADONLY);
  CHECK_RC(mq_queue_purge(ro, "q", NULL), MQ_EREADONLY);
  if (held) {
    CHECK_RC(mq_ack(ro, "q", mq_msg_receipt(held)), MQ_EREADONLY);
    CHECK_RC(mq_nack(ro, "q", mq_msg_receipt(held), 0, NULL), MQ_EREADONLY);
    CHECK_RC(mq_touch(ro, "q", mq_msg_receipt(held), 9000), MQ_EREADONLY);
  }
  CHECK_RC(mq_redrive(ro, "q", 0, NULL), MQ_EREADONLY);
  tu_snap(ro, &after);
  CHECK(tu_snap_eq(&before, &after));
  CHECK_OK(mq_store_close(ro));

  /* And nothing changed in the file. */
  s = test_open(p, MQ_SYNC_NORMAL);
  tu_snap(s, &after);
  CHECK(tu_snap_eq(&before, &after));
  if (held) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(held)));
  mq_msg_free(held);
  CHECK_OK(mq_store_close(s));
  test_unlink_store(p);
}

static void test_errstr_all_codes(void) {
  const char *t[19];
  for (int rc = 0; rc <= MQ_EREADONLY; rc++) {
    t[rc] = mq_errstr(rc);
    CHECK(t[rc] != NULL);
    if (t[rc]) CHECK(t[rc][0] != 0);
  }
  for (int a = 0; a <= MQ_EREADONLY; a++)
    for (int b = a + 1; b <= MQ_EREADONLY; b++)
      if (t[a] && t[b]) {
        CHECK(strcmp(t[a], t[b]) != 0);
        if (!strcmp(t[a], t[b])) fprintf(stderr, "  codes %d and %d: same text\n", a, b);
      }
  /* Codes we never defined still get some text. */
  CHECK(mq_errstr(-1) != NULL);
  CHECK(mq_errstr(19) != NULL);
  CHECK(mq_errstr(100000) != NULL);
  CHECK(mq_errmsg(NULL) != NULL);
}

static void test_versions(void) {
  CHECK(strcmp(mq_libversion(), MQ_VERSION) == 0);
  CHECK(mq_sqlite_version() != NULL && mq_sqlite_version()[0] != 0);
  CHECK(strcmp(mq_sqlite_version(), sqlite3_libversion()) == 0);
}

static int open_paged(const char *path, int page_size, mq_store **out) {
  return open_new(path, 0, page_size, out);
}

static void keep_info_line(void *ctx, int level, const char *msg) {
  if (level == MQ_LOG_INFO) snprintf(ctx, 300, "%s", msg);
}

/* A new file gets the page size asked for; an existing one keeps its own,
** and its messages, whatever a later open asks -- and the log says so. */
static void test_page_size_of_new_file(void) {
  const char *p = test_path("pages");
  mq_store *s = NULL;
  CHECK_OK(open_paged(p, 65536, &s));
  CHECK_OK(mq_queue_create(s, "q", NULL));
  CHECK_OK(mq_put(s, "q", "kept", 4, NULL, NULL));
  CHECK_OK(mq_store_close(s));
  CHECK(tu_sql_int(p, "PRAGMA page_size") == 65536);

  char said[300] = "";
  mq_store_options o;
  mq_store_options_init(&o);
  o.clock = test_clock;
  o.min_free_bytes = 0;
  o.page_size = 1024;
  o.log = keep_info_line;
  o.log_ctx = said;
  CHECK_OK(mq_store_open(p, &o, &s));
  CHECK(strstr(said, "page_size 1024 not applied") != NULL);
  mq_msg *m = NULL;
  CHECK_OK(mq_get(s, "q", NULL, &m));
  CHECK(m && mq_msg_size(m) == 4 && memcmp(mq_msg_data(m), "kept", 4) == 0);
  mq_msg_free(m);
  CHECK_OK(mq_store_close(s));
  CHECK(tu_sql_int(p, "PRAGMA page_size") == 65536);

  const char *d = test_path("pages_default");
  CHECK_OK(open_paged(d, 0, &s));
  CHECK_OK(mq_queue_create(s, "q", NULL));
  CHECK_OK(mq_store_close(s));
  CHECK(tu_sql_int(d, "PRAGMA page_size") == 4096);
  test_unlink_store(p);
  test_unlink_store(d);
}

static void test_page_size_refused(void) {
  static const int bad[] = {1, 256, 1000, 3072, 131072, -4096};
  const char *p = test_path("pages_bad");
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    mq_store *s = (mq_store *)&test_failures;
    CHECK_RC(open_paged(p, bad[i], &s), MQ_EINVAL);
    CHECK(s == NULL);
    CHECK(strstr(mq_errmsg(NULL), "page_size") != NULL);
    CHECK(!tu_exists(p));
  }
}

/* With large pages the WAL is still folded into the file every ~4 MB, not
** every 1000 pages (64 MB): its size stays bounded while puts go on. */
static void test_page_size_wal_bounded(void) {
  const char *p = test_path("pages_wal");
  char wal[600];
  snprintf(wal, sizeof wal, "%s-wal", p);
  mq_store *s = NULL;
  CHECK_OK(open_paged(p, 65536, &s));
  CHECK_OK(mq_queue_create(s, "q", NULL));
  static unsigned char payload[16384];
  mq_entry e[16];
  for (size_t i = 0; i < 16; i++) e[i] = (mq_entry){payload, sizeof payload, NULL};
  off_t most = 0;
  for (int round = 0; round < 128; round++) { /* 32 MiB in all */
    payload[0] = (unsigned char)round;
    CHECK_OK(mq_put_batch(s, "q", e, 16, NULL));
    struct stat sb;
    if (stat(wal, &sb) == 0 && sb.st_size > most) most = sb.st_size;
  }
  CHECK(most > 0 && most < 12 * 1024 * 1024);
  if (most >= 12 * 1024 * 1024) fprintf(stderr, "  the WAL grew to %lld bytes\n", (long long)most);
  CHECK_OK(mq_store_close(s));
  test_unlink_store(p);
}

static void test_close_null(void) {
  CHECK_OK(mq_store_close(NULL));
}

int main(void) {
  TEST(test_mode_default_0600);
  TEST(test_mode_0660_honoured);
  TEST(test_mode_0600_under_umask_0);
  TEST(test_symlink_refused);
  TEST(test_garbage_file);
  TEST(test_foreign_sqlite_db);
  TEST(test_newer_format);
  TEST(test_missing_directory);
  TEST(test_missing_file_without_create);
  TEST(test_reopen_keeps_everything);
  TEST(test_readonly);
  TEST(test_errstr_all_codes);
  TEST(test_versions);
  TEST(test_page_size_of_new_file);
  TEST(test_page_size_refused);
  TEST(test_page_size_wal_bounded);
  TEST(test_close_null);
  return test_done();
}
