/*
** test_vfs.c -- the writing connection's VFS (src/vfs.c): long sequential
** writes start their write-back early, scattered ones do not, what is
** written reads back unchanged, and an application's own default VFS is
** used as it is.
**
** The hint itself only changes timing, so what a test can see is the count
** of hints given (mqi_vfs_hints, internal on purpose).  It also catches the
** day a new SQLite moves the descriptor inside its file object: vfs.c then
** finds no descriptor, gives no hint, and sequential_hinted fails here
** instead of the speed-up quietly going away.
*/
#include "faultvfs.h"
#include "harness.h"
#include "mqi.h"
#include "testutil.h"

#include <sqlite3.h>

#define BLOCK 4096
#define BLOCKS 1024 /* 4 MiB */

static void fill(unsigned char *p, size_t n, uint64_t seed) {
  uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)tu_rand(&x);
}

#ifdef __linux__
/* The store's VFS, found by the name it gives. */
static sqlite3_vfs *mq_vfs(void) {
  const char *name = mqi_vfs_name();
  sqlite3_vfs *vfs = name ? sqlite3_vfs_find(name) : NULL;
  CHECK(vfs != NULL);
  return vfs;
}

/* Open name through vfs as SQLite would: the name double-NUL terminated,
** the file's memory not zeroed (xOpen must not count on it).  *rc gets
** xOpen's code; the caller closes the file if it opened and frees it. */
static sqlite3_file *raw_open(sqlite3_vfs *vfs, const char *name, int flags, int *rc) {
  char path[600] = {0};
  snprintf(path, sizeof path - 1, "%s", name);
  sqlite3_file *f = malloc((size_t)vfs->szOsFile);
  memset(f, 0xa5, (size_t)vfs->szOsFile);
  int out = 0;
  *rc = vfs->xOpen(vfs, path, f, flags, &out);
  return f;
}

#define RAW_CREATE (SQLITE_OPEN_CREATE | SQLITE_OPEN_READWRITE)
#endif

/* A store's big batch is hinted (its WAL frames and the checkpoint's
** pages), and every byte comes back; the file is sound to plain SQLite. */
static void sequential_hinted(void) {
#ifdef __linux__
  CHECK(mqi_vfs_name() != NULL);
  enum { N = 24, SIZE = 256 * 1024 };
  const char *path = test_path("vfs-seq");
  mq_store *s = test_open(path, MQ_SYNC_FULL);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  unsigned char *buf = malloc((size_t)N * SIZE);
  mq_entry e[N];
  for (int i = 0; i < N; i++) {
    fill(buf + (size_t)i * SIZE, SIZE, (uint64_t)i + 1);
    e[i] = (mq_entry){buf + (size_t)i * SIZE, SIZE, NULL};
  }
  uint64_t before = mqi_vfs_hints();
  CHECK_OK(mq_put_batch(s, "q", e, N, NULL));
  /* 6 MiB of WAL in 1 MiB runs, then the checkpoint's pages. */
  CHECK(mqi_vfs_hints() - before >= 5);
  for (int i = 0; i < N; i++) {
    mq_msg *m = NULL;
    CHECK_OK(mq_get(s, "q", NULL, &m));
    if (!m) break;
    CHECK(mq_msg_size(m) == SIZE);
    CHECK(memcmp(mq_msg_data(m), buf + (size_t)i * SIZE, SIZE) == 0);
    CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
    mq_msg_free(m);
  }
  CHECK_OK(mq_store_close(s));
  char ic[64];
  tu_sql_text(path, "PRAGMA integrity_check", ic, sizeof ic);
  CHECK(strcmp(ic, "ok") == 0);
  free(buf);
#else
  CHECK(mqi_vfs_name() == NULL);
#endif
}

static int write_block(sqlite3_file *f, const unsigned char *p, int block) {
  return f->pMethods->xWrite(f, p + (size_t)block * BLOCK, BLOCK, (sqlite3_int64)block * BLOCK);
}

/* Straight through the VFS: 4 MiB written out of order get no hint (a
** checkpoint of scattered pages is faster left to its fsync); 4 MiB in
** order get one per MiB; a journal is not wrapped at all; and the bytes
** read back as written. */
static void scattered_not_hinted(void) {
#ifdef __linux__
  sqlite3_vfs *vfs = mq_vfs();
  if (!vfs) return;
  const char *path = test_path("vfs-raw");
  unsigned char *data = malloc((size_t)2 * BLOCKS * BLOCK), *back = malloc(BLOCK);
  fill(data, (size_t)2 * BLOCKS * BLOCK, 7);
  int rc;
  sqlite3_file *f = raw_open(vfs, path, SQLITE_OPEN_MAIN_DB | RAW_CREATE, &rc);
  CHECK(rc == SQLITE_OK);
  uint64_t before = mqi_vfs_hints();
  /* 389 is odd, so i * 389 mod 1024 visits every block, never two in a row. */
  for (int i = 0; i < BLOCKS; i++) CHECK(write_block(f, data, (i * 389) % BLOCKS) == SQLITE_OK);
  CHECK(mqi_vfs_hints() == before);
  for (int i = BLOCKS; i < 2 * BLOCKS; i++) CHECK(write_block(f, data, i) == SQLITE_OK);
  CHECK(mqi_vfs_hints() - before == BLOCKS * BLOCK / (1 << 20));
  for (int i = 0; i < 2 * BLOCKS; i += 97) {
    CHECK(f->pMethods->xRead(f, back, BLOCK, (sqlite3_int64)i * BLOCK) == SQLITE_OK);
    CHECK(memcmp(back, data + (size_t)i * BLOCK, BLOCK) == 0);
  }
  CHECK(f->pMethods->xClose(f) == SQLITE_OK);
  free(f);

  char journal[600];
  snprintf(journal, sizeof journal, "%s-journal", path);
  f = raw_open(vfs, journal, SQLITE_OPEN_MAIN_JOURNAL | RAW_CREATE, &rc);
  CHECK(rc == SQLITE_OK);
  before = mqi_vfs_hints();
  for (int i = 0; i < BLOCKS; i++) CHECK(write_block(f, data, i) == SQLITE_OK);
  CHECK(mqi_vfs_hints() == before);
  CHECK(f->pMethods->xClose(f) == SQLITE_OK);
  unlink(journal);
  free(f);
  free(data);
  free(back);
#endif
}

/* A failed open through the VFS leaves pMethods NULL, as SQLite's xOpen
** contract asks (SQLite would otherwise call xClose on a file never
** opened), even over memory that was not zeroed. */
static void open_failure_clean(void) {
#ifdef __linux__
  sqlite3_vfs *vfs = mq_vfs();
  if (!vfs) return;
  int rc;
  sqlite3_file *f =
      raw_open(vfs, test_path("vfs-missing"), SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_READWRITE, &rc);
  CHECK(rc != SQLITE_OK);
  CHECK(f->pMethods == NULL);
  free(f);
#endif
}

/* A sync ends the run: what was written before it is clean, and a commit
** under 1 MiB that is fsynced on its own is never hinted. */
static void sync_restarts_run(void) {
#ifdef __linux__
  sqlite3_vfs *vfs = mq_vfs();
  if (!vfs) return;
  unsigned char *data = malloc((size_t)BLOCKS * BLOCK);
  fill(data, (size_t)BLOCKS * BLOCK, 11);
  int rc;
  sqlite3_file *f = raw_open(vfs, test_path("vfs-sync"), SQLITE_OPEN_MAIN_DB | RAW_CREATE, &rc);
  CHECK(rc == SQLITE_OK);
  uint64_t before = mqi_vfs_hints();
  int b = 0;
  for (; b < 192; b++) CHECK(write_block(f, data, b) == SQLITE_OK); /* 768 KiB */
  CHECK(f->pMethods->xSync(f, SQLITE_SYNC_NORMAL) == SQLITE_OK);
  for (; b < 320; b++) CHECK(write_block(f, data, b) == SQLITE_OK); /* 512 KiB more */
  CHECK(mqi_vfs_hints() == before);
  for (; b < 448; b++) CHECK(write_block(f, data, b) == SQLITE_OK); /* 1 MiB since the sync */
  CHECK(mqi_vfs_hints() - before == 1);
  CHECK(f->pMethods->xClose(f) == SQLITE_OK);
  free(f);
  free(data);
#endif
}

/* An application that made its own VFS the default keeps it: the store
** writes through it (faultvfs counts the writes), unhinted. */
static void app_default_kept(void) {
  faultvfs_install();
  CHECK(mqi_vfs_name() == NULL);
  mq_store *s = test_open(test_path("vfs-app"), MQ_SYNC_FULL);
  faultvfs_arm_reset();
  uint64_t before = mqi_vfs_hints();
  CHECK_OK(mq_queue_create(s, "q", NULL));
  enum { SIZE = 1 << 20 };
  unsigned char *buf = malloc(SIZE);
  fill(buf, SIZE, 3);
  for (int i = 0; i < 3; i++) CHECK_OK(mq_put(s, "q", buf, SIZE, NULL, NULL));
  CHECK(faultvfs.writes > 0);
  CHECK(mqi_vfs_hints() == before);
  CHECK_OK(mq_store_close(s));
  free(buf);
}

int main(void) {
  TEST(sequential_hinted);
  TEST(scattered_not_hinted);
  TEST(open_failure_clean);
  TEST(sync_restarts_run);
  TEST(app_default_kept); /* last: faultvfs stays the default */
  return test_done();
}
