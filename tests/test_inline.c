/*
** test_inline.c -- payloads kept in their message row (format 2): a plain
** put whose stored bytes and headers take at most min(1024, page size / 4)
** keeps them in its mq_msg row (body_id 0), a larger one in mq_body.
**
** What a user relies on is that the two are indistinguishable from the
** API: a batch whose rows of 32 mix both (with headers, with compression
** that makes a large payload small) comes back byte for byte with its
** headers and publish ids, stats count the bytes as given, a batch of only
** large payloads takes the multi-row mq_body INSERT and frees every body at
** ack, the boundary follows the page size exactly, and verify, scan and get
** find damage in either place: bad bytes in a body, bad bytes in a row, a
** row whose payload columns are gone.
*/
#include "testutil.h"

#define N 70

/* A batch whose rows of 32 mix inline and body entries, with headers and
** compression, and one whose rows are all bodies (the multi-row mq_body
** INSERT): every message comes back byte for byte with its headers. */
static void batch_mixed(void) {
  const char *p = test_path("rv-mixed");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  mq_queue_options qo;
  mq_queue_options_init(&qo);
  qo.compress_above = 3000;
  CHECK_OK(mq_queue_create(s, "q", &qo));
  static unsigned char data[N][6000];
  static char hval[N][16];
  mq_entry e[N];
  mq_put_options po[N];
  mq_header h[N];
  int64_t ids[N];
  int64_t bytes = 0;
  for (int i = 0; i < N; i++) {
    /* 0: tiny, 1: 2000 B body, 2: 1024 B (inline without headers), 3: 5000 B
    ** compressible (inline once compressed), 4: 5000 B noise (body). */
    size_t len = i % 5 == 0 ? 7 : i % 5 == 1 ? 2000 : i % 5 == 2 ? 1024 : 5000;
    for (size_t k = 0; k < len; k++)
      data[i][k] = i % 5 == 4 ? (unsigned char)((k * 2654435761u + (unsigned)i) >> 13)
                              : (unsigned char)('a' + (k / 50 + (size_t)i) % 26);
    mq_put_options_init(&po[i]);
    if (i % 3 == 1) {
      snprintf(hval[i], sizeof hval[i], "h%d", i);
      h[i].name = "n";
      h[i].value = hval[i];
      po[i].headers = &h[i];
      po[i].n_headers = 1;
    }
    e[i].data = data[i];
    e[i].len = len;
    e[i].opts = &po[i];
    bytes += (int64_t)len;
  }
  CHECK_OK(mq_put_batch(s, "q", e, N, ids));
  int inl = 0, body = 0;
  for (int i = 0; i < N; i++) {
    int in_row = tu_payload_inline(p, ids[i]);
    inl += in_row == 1;
    body += in_row == 0;
    /* 1024 B plus a header does not fit; without one it does. */
    if (i % 5 == 2) CHECK(in_row == (i % 3 != 1));
    if (i % 5 == 1 || i % 5 == 4) CHECK(in_row == 0);
    if (i % 5 == 0 || i % 5 == 3) CHECK(in_row == 1);
  }
  CHECK(inl > 0 && body > 0);
  CHECK(tu_stats(s, "q").bytes == bytes);
  CHECK_VERIFY_CLEAN(s);
  int seen = 0;
  for (mq_msg *m; (m = tu_get(s, "q")) != NULL; mq_msg_free(m), seen++) {
    int k = -1;
    for (int i = 0; i < N; i++)
      if (ids[i] == mq_msg_id(m)) k = i;
    CHECK(k >= 0);
    if (k < 0) break;
    CHECK(mq_msg_publish_id(m) == ids[k]);
    CHECK(mq_msg_size(m) == e[k].len && memcmp(mq_msg_data(m), data[k], e[k].len) == 0);
    const char *hv = mq_msg_header(m, "n");
    CHECK(k % 3 == 1 ? hv && strcmp(hv, hval[k]) == 0 : hv == NULL);
    CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
  }
  CHECK(seen == N);
  CHECK(tu_sql_int(p, "SELECT count(*) FROM mq_body") == 0);

  /* 64 bodies: two full multi-row mq_body INSERTs. */
  mq_entry b[64];
  int64_t bids[64];
  for (int i = 0; i < 64; i++) {
    b[i].data = data[(i % 14) * 5 + 1];
    b[i].len = 2000;
    b[i].opts = NULL;
  }
  CHECK_OK(mq_put_batch(s, "q", b, 64, bids));
  CHECK(tu_sql_int(p, "SELECT count(*) FROM mq_body") == 64);
  seen = 0;
  for (mq_msg *m; (m = tu_get(s, "q")) != NULL; mq_msg_free(m), seen++) {
    CHECK(mq_msg_size(m) == 2000 && memcmp(mq_msg_data(m), b[seen].data, 2000) == 0);
    CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
  }
  CHECK(seen == 64);
  CHECK(tu_sql_int(p, "SELECT count(*) FROM mq_body") == 0);
  mq_store_close(s);
  test_unlink_store(p);
}

/* The inline limit: min(1024, page/4) of stored bytes + headers. */
static void inline_boundary(void) {
  static const int pages[] = {512, 4096, 65536};
  static unsigned char buf[2048];
  memset(buf, 'x', sizeof buf);
  for (size_t k = 0; k < sizeof pages / sizeof pages[0]; k++) {
    const char *p = test_path("rv-bound");
    mq_store_options o;
    tu_options(&o, MQ_SYNC_FULL);
    o.page_size = pages[k];
    mq_store *s = NULL;
    CHECK_OK(mq_store_open(p, &o, &s));
    if (!s) continue;
    CHECK_OK(mq_queue_create(s, "q", NULL));
    size_t lim = pages[k] / 4 < 1024 ? (size_t)pages[k] / 4 : 1024;
    int64_t a = -1, b = -1, c = -1;
    CHECK_OK(mq_put(s, "q", buf, lim, NULL, &a));
    CHECK_OK(mq_put(s, "q", buf, lim + 1, NULL, &b));
    CHECK_OK(mq_put(s, "q", buf, 0, NULL, &c));
    CHECK(tu_payload_inline(p, a) == 1 && tu_payload_inline(p, b) == 0 &&
          tu_payload_inline(p, c) == 1);
    mq_msg *m[3];
    size_t n = 0;
    CHECK_OK(mq_peek(s, "q", 3, m, &n));
    CHECK(n == 3);
    CHECK(n == 3 && mq_msg_id(m[0]) == a && mq_msg_size(m[0]) == lim &&
          memcmp(mq_msg_data(m[0]), buf, lim) == 0);
    CHECK(n == 3 && mq_msg_id(m[1]) == b && mq_msg_size(m[1]) == lim + 1 &&
          memcmp(mq_msg_data(m[1]), buf, lim + 1) == 0);
    CHECK(n == 3 && mq_msg_id(m[2]) == c && mq_msg_size(m[2]) == 0);
    for (size_t i = 0; i < n; i++) mq_msg_free(m[i]);
    CHECK_VERIFY_CLEAN(s);
    mq_store_close(s);
    test_unlink_store(p);
  }
}

static void collect_line(void *ctx, const char *line) {
  char *buf = ctx;
  size_t n = strlen(buf);
  snprintf(buf + n, 4096 - n, "%s\n", line);
}

static int count_scan(void *ctx, const mq_msg *m, int state) {
  (void)m;
  (void)state;
  (*(int *)ctx)++;
  return 0;
}

/* verify names damage in both places a payload can be, deterministically:
** a body's bytes, an inline row's bytes, an inline row whose payload
** columns were emptied. */
static void verify_names_both_kinds(void) {
  const char *p = test_path("rv-verify");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(s, "jobs", NULL));
  static char big[2000];
  memset(big, '1', sizeof big);
  int64_t id1 = -1, id2 = -1, id3 = -1, id4 = -1;
  CHECK_OK(mq_put(s, "jobs", big, sizeof big, NULL, &id1));
  CHECK_OK(mq_put(s, "jobs", "second payload", 14, NULL, &id2));
  CHECK_OK(mq_put(s, "jobs", "third payload", 13, NULL, &id3));
  CHECK_OK(mq_put(s, "jobs", "fourth, good", 12, NULL, &id4));
  mq_store_close(s);
  CHECK(tu_payload_inline(p, id1) == 0 && tu_payload_inline(p, id2) == 1 &&
        tu_payload_inline(p, id3) == 1);
  CHECK(tu_payload_set(p, id1, "data = CAST(zeroblob(2000) AS BLOB)", NULL, 0) == 1);
  CHECK(tu_payload_set(p, id2, "data = CAST('second pAyload' AS BLOB)", NULL, 0) == 1);
  CHECK(tu_payload_set(p, id3, "size = NULL, crc = NULL, codec = NULL, data = NULL", NULL, 0) == 1);
  s = test_open(p, MQ_SYNC_NORMAL);
  static char report[4096];
  report[0] = 0;
  int64_t problems = -1;
  CHECK_RC(mq_store_verify(s, collect_line, report, &problems), MQ_ECORRUPT);
  CHECK(problems == 3);
  fprintf(stderr, "%s", report);
  char want[100];
  for (int i = 0; i < 3; i++) {
    int64_t id = i == 0 ? id1 : i == 1 ? id2 : id3;
    snprintf(want, sizeof want, "message %lld: %s", (long long)id,
             i < 2 ? "payload fails its checksum" : "has no payload");
    CHECK(strstr(report, want) != NULL);
  }
  int n = 0;
  int64_t corrupt = -1;
  CHECK_OK(mq_queue_scan(s, "jobs", count_scan, &n, &corrupt));
  CHECK(n == 1 && corrupt == 3);
  mq_msg *m = tu_get(s, "jobs");
  CHECK(m && mq_msg_id(m) == id4);
  mq_msg_free(m);
  CHECK(tu_stats(s, "jobs").dead == 3);
  mq_store_close(s);
  test_unlink_store(p);
}

int main(void) {
  tu_watchdog(120);
  TEST(batch_mixed);
  TEST(inline_boundary);
  TEST(verify_names_both_kinds);
  return test_done();
}
