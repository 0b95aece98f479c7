/*
** test_integrity.c -- payload checksums and compression, checked against
** the bytes actually in the file.
**
** Corruption is reported, never returned as data: a payload whose stored
** bytes no longer match their CRC32 is dead-lettered with reason "corrupt
** payload" and the consumer gets the next good message instead; the log
** callback hears about it.  The damage is done the way a bad disk or a
** careless `sqlite3 queue.db` session would do it: by rewriting the row
** that holds the payload (its own mq_msg row for a small one, mq_body for a
** large one: both are damaged in turn) while the store is closed.  Compression is checked the same way, by the
** stored length of the payload: above compress_above a compressible payload
** is stored much smaller, an incompressible one is not stored larger, and
** both come back byte for byte.
*/
#include "testutil.h"

typedef struct log_box {
  int calls;
  int serious; /* MQ_LOG_ERROR or MQ_LOG_WARN */
  char last[512];
} log_box;

static void log_cb(void *ctx, int level, const char *msg) {
  log_box *b = (log_box *)ctx;
  b->calls++;
  if (level <= MQ_LOG_WARN) b->serious++;
  snprintf(b->last, sizeof b->last, "%s", msg ? msg : "(null)");
}

static mq_store *open_logged(const char *path, log_box *box) {
  mq_store_options o;
  mq_store *s = NULL;
  mq_store_options_init(&o);
  o.sync = MQ_SYNC_NORMAL;
  o.clock = test_clock;
  o.min_free_bytes = 0;
  o.log = log_cb;
  o.log_ctx = box;
  int rc = mq_store_open(path, &o, &s);
  CHECK_OK(rc);
  if (rc != MQ_OK) {
    fprintf(stderr, "open(%s): %s\n", path, mq_errmsg(NULL));
    exit(2);
  }
  return s;
}

/* Flip one byte in the middle of message id's stored payload. */
static void corrupt_payload(const char *path, int64_t id) {
  int len = 0;
  unsigned char *copy = tu_payload_get(path, id, &len);
  CHECK(copy != NULL);
  if (copy) {
    copy[len / 2] ^= 0x5a;
    CHECK(tu_payload_set(path, id, "data = ?1", copy, len) == 1);
  }
  free(copy);
}

static int64_t stored_len(const char *path, int64_t id) {
  return tu_payload_int(path, id, "length(data)");
}

/* Every message the library hands out must carry exactly one of the
** payloads we put: never damaged bytes. */
static int is_original(const mq_msg *m, const char *const *orig, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (tu_msg_is(m, orig[i])) return 1;
  return 0;
}

/* Payloads of 3 texts, padded to pad bytes when pad > 0. */
static void payloads(char out[3][2048], size_t pad) {
  static const char *const text[] = {"first payload, to be damaged", "second payload, good",
                                     "third, good"};
  for (int i = 0; i < 3; i++) {
    snprintf(out[i], 2048, "%s", text[i]);
    size_t n = strlen(out[i]);
    for (; n < pad && n < 2047; n++) out[i][n] = (char)('a' + n % 26);
    out[i][n] = 0;
  }
}

static void corrupt_payload_skipped(size_t pad) {
  const char *p = test_path("crc");
  log_box box = {0, 0, ""};
  mq_store *s = open_logged(p, &box);
  tu_create(s, "q", 1000, 0, NULL);
  char buf[3][2048];
  payloads(buf, pad);
  const char *const orig[] = {buf[0], buf[1], buf[2]};
  int64_t bad = tu_put(s, "q", orig[0]);
  int64_t good = tu_put(s, "q", orig[1]);
  int64_t good2 = tu_put(s, "q", orig[2]);
  CHECK_OK(mq_store_close(s));
  CHECK(tu_payload_inline(p, bad) == (pad < 1000));
  corrupt_payload(p, bad);

  s = open_logged(p, &box);
  /* Peek must not show the damaged bytes either. */
  mq_msg *pk[4];
  size_t n = 0;
  if (mq_peek(s, "q", 4, pk, &n) == MQ_OK) {
    for (size_t i = 0; i < n; i++) {
      CHECK(is_original(pk[i], orig, 3));
      mq_msg_free(pk[i]);
    }
  }

  int serious_before = box.serious;
  mq_msg *m = tu_get(s, "q");
  CHECK(m && mq_msg_id(m) == good && tu_msg_is(m, orig[1]));
  CHECK(box.serious > serious_before); /* the log callback reported it */
  if (box.serious <= serious_before) fprintf(stderr, "  no ERROR/WARN log\n");
  if (m) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
  mq_msg_free(m);
  m = tu_get(s, "q");
  CHECK(m && mq_msg_id(m) == good2 && tu_msg_is(m, orig[2]));
  if (m) CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
  mq_msg_free(m);

  /* It is dead (no dlq here), never delivered, and says why. */
  test_now_ms += 100000;
  CHECK(tu_get(s, "q") == NULL);
  CHECK_STATS(s, "q", 0, 0, 0, 1, 1);
  CHECK_OK(mq_store_close(s));
  char reason[64];
  char sql[96];
  snprintf(sql, sizeof sql, "SELECT reason FROM mq_msg WHERE id = %lld", (long long)bad);
  tu_sql_text(p, sql, reason, sizeof reason);
  CHECK(strcmp(reason, "corrupt payload") == 0);
  if (strcmp(reason, "corrupt payload")) fprintf(stderr, "  reason \"%s\"\n", reason);
  test_unlink_store(p);
}

static void test_corrupt_payload_skipped(void) {
  corrupt_payload_skipped(0);    /* in the message row */
  corrupt_payload_skipped(1500); /* in mq_body */
}

static void test_corrupt_crc_to_dlq(void) {
  /* Damage the checksum instead of the data: the pair no longer agrees,
  ** which is all the reader can know. */
  const char *p = test_path("crc2");
  log_box box = {0, 0, ""};
  mq_store *s = open_logged(p, &box);
  tu_create(s, "dlq", 0, 0, NULL);
  tu_create(s, "q", 1000, 5, "dlq");
  static const char *const orig[] = {"checksum will lie", "fine"};
  int64_t bad = tu_put(s, "q", orig[0]);
  int64_t good = tu_put(s, "q", orig[1]);
  CHECK_OK(mq_store_close(s));
  CHECK(tu_payload_set(p, bad, "crc = crc + 1", NULL, 0) == 1);

  s = open_logged(p, &box);
  mq_msg *m = tu_get(s, "q");
  CHECK(m && mq_msg_id(m) == good && tu_msg_is(m, orig[1]));
  mq_msg_free(m);
  CHECK_STATS(s, "q", 0, 1, 0, 0, 1);
  CHECK_STATS(s, "dlq", 1, 0, 0, 0, 1);
  /* Whatever the dlq does with it, the damaged payload never comes out. */
  for (int k = 0; k < 3; k++) {
    m = tu_get(s, "dlq");
    CHECK(m == NULL || is_original(m, orig, 2));
    if (m) {
      CHECK(mq_msg_reason(m) && strcmp(mq_msg_reason(m), "corrupt payload") == 0);
      mq_msg_free(m);
    }
  }
  CHECK_OK(mq_store_close(s));
  test_unlink_store(p);
}

static void fill_text(char *buf, size_t len, unsigned seed) {
  size_t off = 0;
  unsigned line = 0;
  while (off < len) {
    char tmp[128];
    int k = snprintf(tmp, sizeof tmp, "%u line %06u: the quick brown fox jumps over the lazy dog\n",
                     seed, line++);
    size_t take = (size_t)k < len - off ? (size_t)k : len - off;
    memcpy(buf + off, tmp, take);
    off += take;
  }
}

static void fill_random(char *buf, size_t len, uint64_t seed) {
  for (size_t i = 0; i < len; i++) buf[i] = (char)(tu_rand(&seed) >> 24);
}

static int64_t file_size(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 ? (int64_t)sb.st_size : -1;
}

#define BIG ((size_t)100 * 1024)

static void test_compression(void) {
  const char *p = test_path("zlib");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  mq_queue_options qo;
  mq_queue_options_init(&qo);
  qo.compress_above = 100;
  CHECK_OK(mq_queue_create(s, "z", &qo));
  CHECK_OK(mq_queue_create(s, "plain", NULL)); /* default: never compress */

  char *text[10], *noise = malloc(BIG), *small = malloc(100), *flat = malloc(5000);
  int64_t tid[10], nid = -1, sid = -1, pid = -1, fid = -1;
  for (int i = 0; i < 10; i++) {
    text[i] = malloc(BIG);
    fill_text(text[i], BIG, (unsigned)i);
    CHECK_OK(mq_put(s, "z", text[i], BIG, NULL, &tid[i]));
  }
  fill_random(noise, BIG, 12345);
  memset(small, 'a', 100); /* compressible, but not above the threshold */
  CHECK_OK(mq_put(s, "z", noise, BIG, NULL, &nid));
  CHECK_OK(mq_put(s, "z", small, 100, NULL, &sid));
  CHECK_OK(mq_put(s, "plain", text[0], BIG, NULL, &pid));
  /* Compressed small enough to be kept in its message row. */
  memset(flat, 'f', 5000);
  CHECK_OK(mq_put(s, "z", flat, 5000, NULL, &fid));
  mq_queue_stats st = tu_stats(s, "z");
  CHECK(st.bytes == (int64_t)(11 * BIG + 100 + 5000)); /* sizes as given, not stored */
  CHECK_OK(mq_store_close(s));

  for (int i = 0; i < 10; i++) {
    int64_t len = stored_len(p, tid[i]);
    CHECK(len > 0 && len < (int64_t)(BIG / 10));
    if (i == 0) fprintf(stderr, "  100 KiB of text stored in %lld bytes\n", (long long)len);
  }
  int64_t nlen = stored_len(p, nid);
  CHECK(nlen > 0 && nlen <= (int64_t)BIG);
  CHECK(stored_len(p, sid) == 100);
  CHECK(stored_len(p, pid) == (int64_t)BIG);
  CHECK(tu_payload_inline(p, fid) == 1 && stored_len(p, fid) < 100);
  /* The whole file holds 1.1 MB of text in well under that. */
  int64_t fsize = file_size(p);
  fprintf(stderr, "  file size %lld bytes\n", (long long)fsize);
  CHECK(fsize > 0 && fsize < (int64_t)(6 * BIG));

  s = test_open(p, MQ_SYNC_NORMAL);
  for (int i = 0; i < 10; i++) {
    mq_msg *m = tu_get(s, "z");
    CHECK(m && mq_msg_id(m) == tid[i]);
    CHECK(m && mq_msg_size(m) == BIG && memcmp(mq_msg_data(m), text[i], BIG) == 0);
    if (m) CHECK_OK(mq_ack(s, "z", mq_msg_receipt(m)));
    mq_msg_free(m);
  }
  mq_msg *m = tu_get(s, "z");
  CHECK(m && mq_msg_id(m) == nid);
  CHECK(m && mq_msg_size(m) == BIG && memcmp(mq_msg_data(m), noise, BIG) == 0);
  mq_msg_free(m);
  m = tu_get(s, "z");
  CHECK(m && mq_msg_id(m) == sid && mq_msg_size(m) == 100 &&
        memcmp(mq_msg_data(m), small, 100) == 0);
  mq_msg_free(m);
  m = tu_get(s, "z");
  CHECK(m && mq_msg_id(m) == fid && mq_msg_size(m) == 5000 &&
        memcmp(mq_msg_data(m), flat, 5000) == 0);
  mq_msg_free(m);
  m = tu_get(s, "plain");
  CHECK(m && mq_msg_size(m) == BIG && memcmp(mq_msg_data(m), text[0], BIG) == 0);
  mq_msg_free(m);
  CHECK_OK(mq_store_close(s));
  for (int i = 0; i < 10; i++) free(text[i]);
  free(noise);
  free(small);
  free(flat);
  test_unlink_store(p);
}

static void test_corrupt_compressed(void) {
  const char *p = test_path("zcrc");
  log_box box = {0, 0, ""};
  mq_store *s = open_logged(p, &box);
  mq_queue_options qo;
  mq_queue_options_init(&qo);
  qo.compress_above = 100;
  CHECK_OK(mq_queue_create(s, "z", &qo));
  char *text = malloc(BIG);
  fill_text(text, BIG, 7);
  int64_t bad = -1;
  CHECK_OK(mq_put(s, "z", text, BIG, NULL, &bad));
  int64_t good = tu_put(s, "z", "after");
  CHECK_OK(mq_store_close(s));
  CHECK(stored_len(p, bad) < (int64_t)BIG); /* really compressed */
  corrupt_payload(p, bad);

  s = open_logged(p, &box);
  mq_msg *m = tu_get(s, "z");
  CHECK(m && mq_msg_id(m) == good && tu_msg_is(m, "after"));
  mq_msg_free(m);
  CHECK_STATS(s, "z", 0, 1, 0, 1, 2);
  CHECK_OK(mq_store_close(s));
  free(text);
  test_unlink_store(p);
}

int main(void) {
  TEST(test_corrupt_payload_skipped);
  TEST(test_corrupt_crc_to_dlq);
  TEST(test_compression);
  TEST(test_corrupt_compressed);
  return test_done();
}
