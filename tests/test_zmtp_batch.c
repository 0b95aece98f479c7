/*
** test_zmtp_batch.c -- a PULL endpoint's batch keeps every message it was
** given, byte for byte and in order, wherever the bytes live.
**
** Small payloads are copied into shared chunks, large ones keep their own
** memory; a batch that failed to commit goes back in front of the newer
** one, chunks and all; committed items leave from the front.  Each case
** checks the payloads, their CRCs (zlib's) and the multipart frame lists
** after the operation, so a chunk handed out twice, a payload cut at a
** chunk's end or a lost chunk shows as a wrong byte (and under ASan as
** the overrun or use after free it is).
**
** This test calls the server's internal mqi_batch_* functions on purpose.
*/
#include "harness.h"
#include "zmtp_net.h"

#include <zlib.h>

/* The payload of message k: its length and bytes follow from k. */
static size_t tb_len(size_t k) {
  static const size_t sizes[] = {0, 1, 15, 16, 100, 4095, 4096, 4097, 70000, 300};
  return sizes[k % (sizeof sizes / sizeof sizes[0])];
}

static unsigned char tb_byte(size_t k, size_t i) { return (unsigned char)(k * 31 + i * 7 + 1); }

/* A decoded frame as the decoder hands it over: malloc'd body. */
static mqi_zmtp_frame tb_frame(size_t k, size_t from, size_t len) {
  mqi_zmtp_frame f = {0, len, NULL};
  if (len) {
    f.body = malloc(len);
    for (size_t i = 0; i < len; i++) f.body[i] = tb_byte(k, from + i);
  }
  return f;
}

/* Add message k: one frame, or (multi) three frames splitting it. */
static int tb_add(mqi_srv_batch *b, mqi_srv_pool *pool, size_t k, int multi) {
  size_t len = tb_len(k);
  mqi_zmtp_frame parts[3];
  size_t n = 1;
  if (!multi) {
    parts[0] = tb_frame(k, 0, len);
  } else {
    size_t a = len / 3, c = len - 2 * a;
    parts[0] = tb_frame(k, 0, a);
    parts[1] = tb_frame(k, a, a);
    parts[2] = tb_frame(k, 2 * a, c);
    n = 3;
  }
  int rc = mqi_batch_add(b, pool, parts, n);
  for (size_t i = 0; i < n; i++) free(parts[i].body);
  return rc;
}

/* Item i of b is message k, whole. */
static int tb_is(const mqi_srv_batch *b, size_t i, size_t k, int multi) {
  const mqi_srv_item *it = &b->items[i];
  size_t len = tb_len(k);
  if (it->len != len || (len && !it->data)) return 0;
  for (size_t j = 0; j < len; j++)
    if (((const unsigned char *)it->data)[j] != tb_byte(k, j)) return 0;
  if (it->crc != (uint32_t)crc32_z(0L, it->data ? it->data : (const void *)"", len)) return 0;
  if (!multi) return it->frames == NULL;
  char want[80];
  size_t a = len / 3;
  snprintf(want, sizeof want, "%zu,%zu,%zu", a, a, len - 2 * a);
  return it->frames && strcmp(it->frames, want) == 0;
}

static size_t tb_bytes(size_t from, size_t n) {
  size_t sum = 0;
  for (size_t k = from; k < from + n; k++) sum += tb_len(k);
  return sum;
}

/* Thousands of messages of every size class, single and multipart: all
** kept, in order, across many chunks. */
static void keeps_every_byte(void) {
  mqi_srv_batch b = {0};
  mqi_srv_pool pool = {0};
  enum { N = 2000 };
  for (size_t k = 0; k < N; k++) CHECK_OK(tb_add(&b, &pool, k, k % 7 == 3));
  CHECK(b.n == N && b.bytes == tb_bytes(0, N));
  int bad = 0;
  for (size_t k = 0; k < N; k++) bad += !tb_is(&b, k, k, k % 7 == 3);
  CHECK(bad == 0);
  /* Small payloads share chunks; the large ones have their own. */
  for (size_t k = 0; k < N; k++) CHECK(b.items[k].heap == (tb_len(k) > 4096));
  mqi_batch_free(&b, &pool);
  CHECK(b.n == 0 && b.items == NULL && b.chunks == NULL && b.bytes == 0);
  mqi_batch_pool_free(&pool);
}

/* A one-frame message too large for a chunk is taken from the decoder,
** not copied: the frame's body is the item's. */
static void large_frame_taken_not_copied(void) {
  mqi_srv_batch b = {0};
  mqi_srv_pool pool = {0};
  mqi_zmtp_frame f = tb_frame(8, 0, tb_len(8));
  unsigned char *body = f.body;
  CHECK_OK(mqi_batch_add(&b, &pool, &f, 1));
  CHECK(f.body == NULL && b.items[0].data == body && b.items[0].heap);
  CHECK(tb_is(&b, 0, 8, 0));
  /* A small one is copied: the caller still owns (and frees) its frame. */
  f = tb_frame(4, 0, tb_len(4));
  CHECK_OK(mqi_batch_add(&b, &pool, &f, 1));
  CHECK(f.body != NULL && b.items[1].data != f.body && !b.items[1].heap);
  free(f.body);
  CHECK(tb_is(&b, 1, 4, 0));
  mqi_batch_free(&b, &pool);
  mqi_batch_pool_free(&pool);
}

/* Committed items leave from the front; the rest stay intact, and so do
** their bytes once the front's chunks would have been reusable. */
static void drop_from_front(void) {
  mqi_srv_batch b = {0};
  mqi_srv_pool pool = {0};
  for (size_t k = 0; k < 500; k++) CHECK_OK(tb_add(&b, &pool, k, 0));
  mqi_batch_drop(&b, 123);
  CHECK(b.n == 377 && b.bytes == tb_bytes(123, 377));
  int bad = 0;
  for (size_t i = 0; i < b.n; i++) bad += !tb_is(&b, i, 123 + i, 0);
  CHECK(bad == 0);
  for (size_t k = 500; k < 600; k++) CHECK_OK(tb_add(&b, &pool, k, 0));
  for (size_t i = 0; i < b.n; i++) bad += !tb_is(&b, i, 123 + i, 0);
  CHECK(bad == 0);
  mqi_batch_drop(&b, b.n);
  CHECK(b.n == 0 && b.bytes == 0);
  mqi_batch_free(&b, &pool);
  mqi_batch_pool_free(&pool);
}

/* Dropping from a batch that never held anything (items is NULL) does
** nothing: no NULL + 0, no memmove of NULL, which UBSan reports. */
static void drop_from_empty(void) {
  mqi_srv_batch b = {0};
  mqi_batch_drop(&b, 0);
  mqi_batch_drop(&b, 3);
  CHECK(b.n == 0 && b.items == NULL && b.bytes == 0);
  mqi_batch_free(&b, NULL);
}

/* A failed batch goes back in front of what was read meanwhile: one batch,
** the old messages first, every byte of both kept; the front is left
** empty. */
static void failed_batch_goes_first(void) {
  mqi_srv_batch failed = {0}, newer = {0};
  mqi_srv_pool pool = {0};
  for (size_t k = 0; k < 300; k++) CHECK_OK(tb_add(&failed, &pool, k, k % 5 == 0));
  for (size_t k = 300; k < 700; k++) CHECK_OK(tb_add(&newer, &pool, k, k % 5 == 0));
  mqi_batch_drop(&failed, 100); /* a part was stored before the failure */
  CHECK_OK(mqi_batch_prepend(&newer, &failed));
  CHECK(failed.n == 0 && failed.items == NULL && failed.chunks == NULL);
  CHECK(newer.n == 600 && newer.bytes == tb_bytes(100, 600));
  int bad = 0;
  for (size_t i = 0; i < newer.n; i++) bad += !tb_is(&newer, i, 100 + i, (100 + i) % 5 == 0);
  CHECK(bad == 0);
  /* Prepending to an empty batch, and an empty one, change nothing else. */
  mqi_srv_batch empty = {0};
  CHECK_OK(mqi_batch_prepend(&empty, &newer));
  CHECK(empty.n == 600 && newer.n == 0);
  CHECK_OK(mqi_batch_prepend(&empty, &newer));
  CHECK(empty.n == 600 && empty.bytes == tb_bytes(100, 600));
  for (size_t i = 0; i < empty.n; i++) bad += !tb_is(&empty, i, 100 + i, (100 + i) % 5 == 0);
  CHECK(bad == 0);
  mqi_batch_free(&empty, &pool);
  mqi_batch_pool_free(&pool);
}

/* Freed chunks are reused by later batches, a bounded number of them; a
** reused chunk holds the new bytes, not the old. */
static void chunks_reused(void) {
  mqi_srv_batch b = {0};
  mqi_srv_pool pool = {0};
  for (size_t k = 0; k < 10000; k++) CHECK_OK(tb_add(&b, &pool, 4, 0)); /* 100 B each */
  mqi_batch_free(&b, &pool);
  size_t kept = pool.n;
  CHECK(kept > 1 && kept <= 64);
  for (size_t k = 0; k < 300; k++) CHECK_OK(tb_add(&b, &pool, 9, 0)); /* 300 B each */
  CHECK(pool.n < kept);
  int bad = 0;
  for (size_t i = 0; i < b.n; i++) bad += !tb_is(&b, i, 9, 0);
  CHECK(bad == 0);
  /* 80,000 small payloads fill far more chunks than the pool keeps. */
  for (size_t k = 0; k < 80000; k++) CHECK_OK(tb_add(&b, &pool, 4, 0));
  mqi_batch_free(&b, &pool);
  CHECK(pool.n == 64);
  mqi_batch_free(&b, NULL); /* an empty batch: nothing to do */
  mqi_batch_pool_free(&pool);
  CHECK(pool.n == 0 && pool.free == NULL);
}

int main(void) {
  TEST(keeps_every_byte);
  TEST(large_frame_taken_not_copied);
  TEST(drop_from_front);
  TEST(drop_from_empty);
  TEST(failed_batch_goes_first);
  TEST(chunks_reused);
  return test_done();
}
