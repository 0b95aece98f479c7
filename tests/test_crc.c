/*
** test_crc.c -- the payload checksum is zlib's crc32, whichever way it is
** computed.
**
** Files store it: a file written by one build (or one CPU) is read by
** another, so mqi_crc32 must equal zlib's crc32 for every length and
** alignment, whether it folds with PCLMULQDQ or falls back to zlib.  The
** lengths cover every path through the folding code: under 16 bytes (zlib
** only), one to three 16-byte blocks, the 64-byte lanes, and tails of 0 to
** 15 bytes after each.
**
** This test calls the internal mqi_crc32 on purpose.
*/
#include "harness.h"
#include "mqi.h"
#include "testutil.h"

#include <sqlite3.h>
#include <zlib.h>

static uint32_t zlib_crc(const unsigned char *p, size_t len) {
  return (uint32_t)crc32_z(0L, p, len);
}

/* Every length to 1100 and some long ones, at every alignment of 16. */
static void matches_zlib(void) {
  enum { MAX = 70000 };
  unsigned char *buf = malloc(MAX + 16);
  uint64_t x = 0x9e3779b97f4a7c15ULL;
  for (size_t i = 0; i < MAX + 16; i++) buf[i] = (unsigned char)tu_rand(&x);
  static const size_t longs[] = {4095, 4096, 4097, 65535, 65536, 65536 + 63, MAX};
  int bad = 0;
  for (size_t off = 0; off < 16; off++) {
    for (size_t len = 0; len <= 1100 && bad < 5; len++)
      if (mqi_crc32(buf + off, len) != zlib_crc(buf + off, len)) {
        fprintf(stderr, "  offset %zu, length %zu differs\n", off, len);
        bad++;
      }
    for (size_t k = 0; k < sizeof longs / sizeof longs[0] && bad < 5; k++)
      if (mqi_crc32(buf + off, longs[k]) != zlib_crc(buf + off, longs[k])) {
        fprintf(stderr, "  offset %zu, length %zu differs\n", off, longs[k]);
        bad++;
      }
  }
  CHECK(bad == 0);
  /* Uniform bytes reach the reduction with all bits clear or all set. */
  memset(buf, 0, 4096);
  for (size_t len = 0; len <= 4096; len += 17) CHECK(mqi_crc32(buf, len) == zlib_crc(buf, len));
  memset(buf, 0xff, 4096);
  for (size_t len = 0; len <= 4096; len += 17) CHECK(mqi_crc32(buf, len) == zlib_crc(buf, len));
  CHECK(mqi_crc32(NULL, 0) == 0);
  CHECK(mqi_crc32("123456789", 9) == 0xcbf43926u); /* the standard check value */
  CHECK(mqi_crc32("1234567890123456789012345678901234567890", 40) ==
        zlib_crc((const unsigned char *)"1234567890123456789012345678901234567890", 40));
  free(buf);
}

/* On a CPU that has the instruction, the fast path is the one in use:
** otherwise the comparisons above only ever tested zlib against itself. */
static void uses_clmul_when_present(void) {
#if defined(__x86_64__)
  FILE *f = fopen("/proc/cpuinfo", "r");
  int has = 0;
  char line[4096];
  while (f && !has && fgets(line, sizeof line, f))
    if (strncmp(line, "flags", 5) == 0 && strstr(line, " pclmulqdq")) has = 1;
  if (f) fclose(f);
  if (has) CHECK(mqi_crc32_accelerated() == 1);
#else
  CHECK(mqi_crc32_accelerated() == 0);
#endif
}

/* What a put stores is zlib's crc32 of the payload, in the message row and
** in mq_body alike, and reads check it. */
static void stored_crc_is_zlibs(void) {
  const char *path = test_path("crc");
  mq_store *s = test_open(path, MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  static const size_t sizes[] = {0, 15, 16, 100, 1000, 5000};
  enum { N = sizeof sizes / sizeof sizes[0] };
  unsigned char *p = malloc(5000);
  for (size_t i = 0; i < 5000; i++) p[i] = (unsigned char)(i * 7 + 3);
  for (size_t i = 0; i < N; i++) CHECK_OK(mq_put(s, "q", p, sizes[i], NULL, NULL));
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  CHECK(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK);
  CHECK(sqlite3_prepare_v2(db,
                           "SELECT coalesce(m.crc, b.crc) FROM mq_msg m"
                           " LEFT JOIN mq_body b ON b.id = m.body_id ORDER BY m.id",
                           -1, &st, NULL) == SQLITE_OK);
  size_t k = 0;
  while (st && sqlite3_step(st) == SQLITE_ROW && k < N) {
    CHECK((uint32_t)sqlite3_column_int64(st, 0) == zlib_crc(p, sizes[k]));
    k++;
  }
  CHECK(k == N);
  sqlite3_finalize(st);
  sqlite3_close(db);
  for (size_t i = 0; i < N; i++) {
    mq_msg *m = NULL;
    CHECK_OK(mq_get(s, "q", NULL, &m));
    CHECK(m && mq_msg_size(m) == sizes[i]);
    mq_msg_free(m);
  }
  free(p);
  mq_store_close(s);
}

int main(void) {
  TEST(matches_zlib);
  TEST(uses_clmul_when_present);
  TEST(stored_crc_is_zlibs);
  return test_done();
}
