/*
** test_badinput.c -- every public function against bad input.
**
** The contract is uniform: bad input gets the documented code, output
** pointers come back NULL (or 0), the handle's message says something, and
** nothing in the store changes.  So this test is a table: the operations
** that take a queue name are crossed with a list of bad names, a NULL
** store, an unknown queue and an unknown "topic/subscription" address; then a list of single cases covers payloads,
** options, out pointers and receipts.  Around every case the test takes a
** snapshot of all queues and their counts and requires it unchanged, and a
** lease taken before the first case must still be ackable after the last.
** Out pointers are preset to a non-NULL sentinel so "left alone" and "set
** to NULL" can be told apart.
*/
#include "mqi.h"
#include "testutil.h"

#define SENT ((mq_msg *)(void *)&test_checks)

enum {
  OP_CREATE,
  OP_DROP,
  OP_PURGE,
  OP_STATS,
  OP_PUT,
  OP_PUT_BATCH,
  OP_GET,
  OP_GET_BATCH,
  OP_PEEK,
  OP_ACK,
  OP_ACK_BATCH,
  OP_NACK,
  OP_TOUCH,
  OP_REDRIVE,
  OP_N
};

static const char *const op_name[OP_N] = {
    "mq_queue_create", "mq_queue_drop", "mq_queue_purge", "mq_queue_stats_get",
    "mq_put",          "mq_put_batch",  "mq_get",         "mq_get_batch",
    "mq_peek",         "mq_ack",        "mq_ack_batch",   "mq_nack",
    "mq_touch",        "mq_redrive"};

/* Run one operation with otherwise valid arguments; on failure, check that
** its out values were reset.  Anything it obtains on success is freed. */
static int call_op(int op, mq_store *s, const char *q, const char *receipt) {
  int rc = -1;
  switch (op) {
    case OP_CREATE:
      rc = mq_queue_create(s, q, NULL);
      break;
    case OP_DROP:
      rc = mq_queue_drop(s, q);
      break;
    case OP_PURGE: {
      int64_t d = 77;
      rc = mq_queue_purge(s, q, &d);
      if (rc != MQ_OK) CHECK(d == 0);
      break;
    }
    case OP_STATS: {
      mq_queue_stats st;
      rc = mq_queue_stats_get(s, q, &st);
      break;
    }
    case OP_PUT: {
      int64_t id = 77;
      rc = mq_put(s, q, "x", 1, NULL, &id);
      if (rc != MQ_OK) CHECK(id == 0);
      break;
    }
    case OP_PUT_BATCH: {
      mq_entry e[2] = {{"x", 1, NULL}, {"y", 1, NULL}};
      int64_t ids[2];
      rc = mq_put_batch(s, q, e, 2, ids);
      break;
    }
    case OP_GET: {
      mq_msg *m = SENT;
      rc = mq_get(s, q, NULL, &m);
      if (rc != MQ_OK) CHECK(m == NULL);
      else mq_msg_free(m);
      break;
    }
    case OP_GET_BATCH:
    case OP_PEEK: {
      mq_msg *ms[2] = {SENT, SENT};
      size_t n = 77;
      rc = op == OP_PEEK ? mq_peek(s, q, 2, ms, &n) : mq_get_batch(s, q, NULL, 2, ms, &n);
      if (rc != MQ_OK) CHECK(n == 0);
      else
        for (size_t i = 0; i < n && i < 2; i++) mq_msg_free(ms[i]);
      break;
    }
    case OP_ACK:
      rc = mq_ack(s, q, receipt);
      break;
    case OP_ACK_BATCH: {
      const char *rs[1] = {receipt};
      int res[1];
      rc = mq_ack_batch(s, q, rs, 1, res);
      break;
    }
    case OP_NACK:
      rc = mq_nack(s, q, receipt, 0, NULL);
      break;
    case OP_TOUCH:
      rc = mq_touch(s, q, receipt, 1000);
      break;
    case OP_REDRIVE: {
      int64_t mv = 77;
      rc = mq_redrive(s, q, 0, &mv);
      if (rc != MQ_OK) CHECK(mv == 0);
      break;
    }
  }
  return rc;
}

typedef struct fixture {
  mq_store *s;
  const char *path;
  mq_msg *held; /* a live lease on "q", acked at the very end */
  tu_snapshot before;
} fixture;

static void fx_before(fixture *f) { tu_snap(f->s, &f->before); }

/* After a case: the code, a message when the store is known, and no change. */
static void fx_after(fixture *f, int line, const char *what, int rc, int want,
                     int alt, int store_known) {
  tu_snapshot after;
  test_checks++;
  if (rc != want && rc != alt) {
    test_failures++;
    fprintf(stderr, "%s:%d: [%s] %s returned %d (%s), expected %d (%s)\n", __FILE__,
            line, test_current, what, rc, mq_errstr(rc), want, mq_errstr(want));
  }
  if (store_known && rc != MQ_OK) {
    test_checks++;
    if (mq_errmsg(f->s)[0] == 0) {
      test_failures++;
      fprintf(stderr, "%s:%d: [%s] %s: mq_errmsg is empty\n", __FILE__, line,
              test_current, what);
    }
  }
  tu_snap(f->s, &after);
  test_checks++;
  if (!tu_snap_eq(&f->before, &after)) {
    test_failures++;
    fprintf(stderr, "%s:%d: [%s] %s changed the store\n", __FILE__, line, test_current,
            what);
  }
}

/* One table row: evaluate expr between two snapshots.  alt is a second
** acceptable code where mq.h allows two readings, or -1. */
#define CASE(f, want, alt, known, expr)                                         \
  do {                                                                          \
    fx_before(f);                                                               \
    int rc__ = (expr);                                                          \
    fx_after(f, __LINE__, #expr, rc__, (want), (alt), (known));                 \
  } while (0)

static fixture fx_setup(void) {
  fixture f;
  memset(&f, 0, sizeof f);
  f.path = test_path("badinput");
  f.s = test_open(f.path, MQ_SYNC_NORMAL);
  mq_queue_options o;
  mq_queue_options_init(&o);
  o.max_payload = 100;
  o.visibility_ms = 60000;
  CHECK_OK(mq_queue_create(f.s, "dlq", NULL));
  o.dlq = "dlq";
  o.max_receives = 3;
  CHECK_OK(mq_queue_create(f.s, "q", &o));
  tu_put(f.s, "q", "one");
  tu_put(f.s, "q", "two");
  tu_put(f.s, "q", "three");
  tu_put(f.s, "dlq", "d");
  f.held = tu_get(f.s, "q");
  CHECK(f.held != NULL);
  if (!f.held) exit(2);
  return f;
}

static void fx_teardown(fixture *f) {
  /* Nothing that failed disturbed the lease taken before it all. */
  CHECK_STATS(f->s, "q", 2, 1, 0, 0, 3);
  CHECK_OK(mq_ack(f->s, "q", mq_msg_receipt(f->held)));
  mq_msg_free(f->held);
  CHECK_OK(mq_store_close(f->s));
  test_unlink_store(f->path);
}

static void test_null_store(void) {
  fixture f = fx_setup();
  const char *r = mq_msg_receipt(f.held);
  for (int op = 0; op < OP_N; op++) {
    fx_before(&f);
    int rc = call_op(op, NULL, "q", r);
    fx_after(&f, __LINE__, op_name[op], rc, MQ_EINVAL, -1, 0);
  }
  char **names = (char **)(void *)SENT;
  size_t n = 77;
  CASE(&f, MQ_EINVAL, -1, 0, mq_queue_list(NULL, &names, &n));
  CHECK(names == NULL && n == 0);
  CASE(&f, MQ_EINVAL, -1, 0, mq_store_checkpoint(NULL));
  mq_store_info si;
  memset(&si, 0x55, sizeof si);
  CASE(&f, MQ_EINVAL, -1, 0, mq_store_info_get(NULL, &si));
  CHECK(si.page_size == 0 && si.queues == 0 && si.created_by[0] == 0);
  CHECK(mq_errmsg(NULL) != NULL);
  fx_teardown(&f);
}

static void test_bad_names(void) {
  fixture f = fx_setup();
  const char *r = mq_msg_receipt(f.held);
  static char toolong[MQ_NAME_MAX + 2];
  memset(toolong, 'n', MQ_NAME_MAX + 1);
  toolong[MQ_NAME_MAX + 1] = 0;
  const char *bad[] = {NULL,  "",    toolong, "a b",    " q",    "q ",
                       "tab\tx", "nl\nx", "del\x7fx", "\xc3\xa9t\xc3\xa9", "/q",
                       "q/",  "a/b/c", "a b/c", "a/b c", "//"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    for (int op = 0; op < OP_N; op++) {
      char what[96];
      snprintf(what, sizeof what, "%s(name #%zu)", op_name[op], i);
      fx_before(&f);
      int rc = call_op(op, f.s, bad[i], r);
      fx_after(&f, __LINE__, what, rc, MQ_EINVAL, -1, 1);
    }
  fx_teardown(&f);
}

/* "a/b" is how a subscription is addressed where a queue name is taken
** (get, ack, nack, touch, peek, stats, purge, redrive): well formed, so
** with no such topic it is MQ_ENOTFOUND there.  A queue itself can never
** be named so: create and drop refuse it.  mq.h does not list put among
** the calls that take a subscription, so either code is accepted there. */
static void test_slash_names(void) {
  fixture f = fx_setup();
  const char *r = mq_msg_receipt(f.held);
  for (int op = 0; op < OP_N; op++) {
    int want = MQ_ENOTFOUND, alt = -1;
    if (op == OP_CREATE || op == OP_DROP) want = MQ_EINVAL;
    if (op == OP_PUT || op == OP_PUT_BATCH) alt = MQ_EINVAL;
    fx_before(&f);
    int rc = call_op(op, f.s, "a/b", r);
    fx_after(&f, __LINE__, op_name[op], rc, want, alt, 1);
  }
  fx_teardown(&f);
}

static void test_unknown_queue(void) {
  fixture f = fx_setup();
  const char *r = mq_msg_receipt(f.held);
  for (int op = 0; op < OP_N; op++) {
    if (op == OP_CREATE) continue;
    fx_before(&f);
    int rc = call_op(op, f.s, "nosuch", r);
    fx_after(&f, __LINE__, op_name[op], rc, MQ_ENOTFOUND, -1, 1);
  }
  fx_teardown(&f);
}

static void test_payloads(void) {
  fixture f = fx_setup();
  char big[101];
  memset(big, 'b', sizeof big);
  int64_t id = 77;
  CASE(&f, MQ_ETOOBIG, -1, 1, mq_put(f.s, "q", big, 101, NULL, &id));
  CHECK(id == 0);
  mq_entry e1[3] = {{"a", 1, NULL}, {big, 101, NULL}, {"c", 1, NULL}};
  CASE(&f, MQ_ETOOBIG, -1, 1, mq_put_batch(f.s, "q", e1, 3, NULL));
  id = 77;
  CASE(&f, MQ_EINVAL, -1, 1, mq_put(f.s, "q", NULL, 5, NULL, &id));
  CHECK(id == 0);
  mq_entry e2[2] = {{"a", 1, NULL}, {NULL, 1, NULL}};
  CASE(&f, MQ_EINVAL, -1, 1, mq_put_batch(f.s, "q", e2, 2, NULL));
  CASE(&f, MQ_EINVAL, -1, 1, mq_put_batch(f.s, "q", NULL, 2, NULL));
  fx_teardown(&f);
}

static void test_put_options(void) {
  fixture f = fx_setup();
  static char longkey[MQ_NAME_MAX + 2], longhdr[257];
  memset(longkey, 'k', MQ_NAME_MAX + 1);
  memset(longhdr, 'h', 256);
  mq_put_options po;
  int64_t id;
#define PUT_BAD(setup)                                                \
  do {                                                                \
    mq_put_options_init(&po);                                         \
    setup;                                                            \
    id = 77;                                                          \
    CASE(&f, MQ_EINVAL, -1, 1, mq_put(f.s, "q", "x", 1, &po, &id));   \
    CHECK(id == 0);                                                   \
    mq_entry e_[1] = {{"x", 1, &po}};                                 \
    CASE(&f, MQ_EINVAL, -1, 1, mq_put_batch(f.s, "q", e_, 1, NULL));  \
  } while (0)
  PUT_BAD(po.delay_ms = -1);
  PUT_BAD(po.ttl_ms = -1);
  PUT_BAD(po.dedup_key = "");
  PUT_BAD(po.dedup_key = longkey);
  PUT_BAD((po.headers = NULL, po.n_headers = 1));
  mq_header h1[1] = {{NULL, "v"}};
  PUT_BAD((po.headers = h1, po.n_headers = 1));
  mq_header h2[1] = {{"", "v"}};
  PUT_BAD((po.headers = h2, po.n_headers = 1));
  mq_header h3[1] = {{longhdr, "v"}};
  PUT_BAD((po.headers = h3, po.n_headers = 1));
  mq_header h4[2] = {{"ok", "v"}, {"n", NULL}};
  PUT_BAD((po.headers = h4, po.n_headers = 2));
#undef PUT_BAD
  fx_teardown(&f);
}

static void test_queue_options(void) {
  fixture f = fx_setup();
  mq_queue_options o;
#define CREATE_BAD(want, alt, setup)                                 \
  do {                                                               \
    mq_queue_options_init(&o);                                       \
    setup;                                                           \
    CASE(&f, want, alt, 1, mq_queue_create(f.s, "newq", &o));        \
    CASE(&f, want, alt, 1, mq_queue_create(f.s, "q", &o));           \
  } while (0)
  CREATE_BAD(MQ_EINVAL, -1, o.visibility_ms = -1);
  CREATE_BAD(MQ_EINVAL, -1, o.max_receives = -1);
  CREATE_BAD(MQ_EINVAL, -1, o.retention_ms = -1);
  CREATE_BAD(MQ_EINVAL, -1, o.dedup_window_ms = -1);
  CREATE_BAD(MQ_EINVAL, -1, o.max_payload = MQ_PAYLOAD_LIMIT + 1);
  CREATE_BAD(MQ_EINVAL, -1, o.dlq = "a b");
  CREATE_BAD(MQ_EINVAL, -1, o.dlq = "");
  /* "It must exist": either reading of the code is the documented one. */
  CREATE_BAD(MQ_EINVAL, MQ_ENOTFOUND, (o.dlq = "nowhere", o.max_receives = 2));
#undef CREATE_BAD
  mq_queue_options_init(&o);
  o.dlq = "newq";
  CASE(&f, MQ_EINVAL, -1, 1, mq_queue_create(f.s, "newq", &o));
  o.dlq = "q";
  CASE(&f, MQ_EINVAL, -1, 1, mq_queue_create(f.s, "q", &o));
  fx_teardown(&f);
}

static void test_get_and_out_pointers(void) {
  fixture f = fx_setup();
  mq_get_options go;
  mq_msg *m;
  mq_msg *ms[2];
  size_t n;

  mq_get_options_init(&go);
  go.visibility_ms = -1;
  m = SENT;
  CASE(&f, MQ_EINVAL, -1, 1, mq_get(f.s, "q", &go, &m));
  CHECK(m == NULL);
  n = 77;
  CASE(&f, MQ_EINVAL, -1, 1, mq_get_batch(f.s, "q", &go, 2, ms, &n));
  CHECK(n == 0);
  mq_get_options_init(&go);
  go.wait_ms = -1;
  m = SENT;
  CASE(&f, MQ_EINVAL, -1, 1, mq_get(f.s, "q", &go, &m));
  CHECK(m == NULL);

  /* NULL out pointers: refused before anything is leased. */
  CASE(&f, MQ_EINVAL, -1, 1, mq_get(f.s, "q", NULL, NULL));
  n = 77;
  CASE(&f, MQ_EINVAL, -1, 1, mq_get_batch(f.s, "q", NULL, 2, NULL, &n));
  CHECK(n == 0);
  CASE(&f, MQ_EINVAL, -1, 1, mq_get_batch(f.s, "q", NULL, 2, ms, NULL));
  n = 77;
  CASE(&f, MQ_EINVAL, -1, 1, mq_get_batch(f.s, "q", NULL, 0, ms, &n));
  CHECK(n == 0);
  CASE(&f, MQ_EINVAL, -1, 1, mq_peek(f.s, "q", 2, NULL, &n));
  CASE(&f, MQ_EINVAL, -1, 1, mq_peek(f.s, "q", 2, ms, NULL));
  char **names = (char **)(void *)SENT;
  n = 77;
  CASE(&f, MQ_EINVAL, -1, 1, mq_queue_list(f.s, NULL, &n));
  CHECK(n == 0);
  CASE(&f, MQ_EINVAL, -1, 1, mq_queue_list(f.s, &names, NULL));
  CHECK(names == NULL);
  CASE(&f, MQ_EINVAL, -1, 1, mq_queue_stats_get(f.s, "q", NULL));
  CASE(&f, MQ_EINVAL, -1, 1, mq_store_info_get(f.s, NULL));
  fx_teardown(&f);
}

static void test_settle_args(void) {
  fixture f = fx_setup();
  const char *r = mq_msg_receipt(f.held);
  CASE(&f, MQ_EINVAL, -1, 1, mq_ack(f.s, "q", NULL));
  CASE(&f, MQ_EINVAL, -1, 1, mq_nack(f.s, "q", NULL, 0, NULL));
  CASE(&f, MQ_EINVAL, -1, 1, mq_touch(f.s, "q", NULL, 1000));
  CASE(&f, MQ_EINVAL, -1, 1, mq_ack_batch(f.s, "q", NULL, 1, NULL));
  const char *rs[2] = {r, NULL};
  int res[2];
  CASE(&f, MQ_EINVAL, -1, 1, mq_ack_batch(f.s, "q", rs, 2, res));
  CASE(&f, MQ_EINVAL, -1, 1, mq_nack(f.s, "q", r, -1, NULL));
  static char reason[1002];
  memset(reason, 'r', 1001);
  CASE(&f, MQ_EINVAL, -1, 1, mq_nack(f.s, "q", r, 0, reason));
  CASE(&f, MQ_EINVAL, -1, 1, mq_touch(f.s, "q", r, -1));
  int64_t mv = 77;
  CASE(&f, MQ_EINVAL, -1, 1, mq_redrive(f.s, "q", -1, &mv));
  CHECK(mv == 0);
  fx_teardown(&f);
}

static void test_open_args(void) {
  mq_store *s = (mq_store *)(void *)&test_checks;
  CHECK_RC(mq_store_open(NULL, NULL, &s), MQ_EINVAL);
  CHECK(s == NULL);
  CHECK(mq_errmsg(NULL) != NULL);

  const char *p = test_path("badopen");
  struct stat sb;
  CHECK_RC(mq_store_open(p, NULL, NULL), MQ_EINVAL);
  CHECK(stat(p, &sb) != 0); /* nothing was created */

  mq_store_options o;
  mq_store_options_init(&o);
  o.sync = 99;
  s = (mq_store *)(void *)&test_checks;
  CHECK_RC(mq_store_open(p, &o, &s), MQ_EINVAL);
  CHECK(s == NULL);
  CHECK(mq_errmsg(NULL)[0] != 0);
  CHECK(stat(p, &sb) != 0);
  mq_store_options_init(&o);
  o.sync = -1;
  CHECK_RC(mq_store_open(p, &o, &s), MQ_EINVAL);
  CHECK(stat(p, &sb) != 0);
}

static void test_destructors_accept_null(void) {
  CHECK_OK(mq_store_close(NULL));
  mq_msg_free(NULL);
  mq_list_free(NULL, 0);
  CHECK(mq_errstr(MQ_EINVAL) != NULL);
}

/* A message cut to fit a small buffer (a ZMTP reply's text, a server's
** error) stays UTF-8: it is cut before a character, never inside one. */
static void test_error_text_cut_at_a_character(void) {
  const char *msg = "queue \"caf\xc3\xa9\xe2\x82\xac\" is full"; /* café€ */
  char buf[64];
  mqi_err_text(buf, sizeof buf, msg);
  CHECK(strcmp(buf, msg) == 0);
  mqi_err_text(buf, 12, msg); /* room for 11 bytes: "queue \"caf" (10) + half of é */
  CHECK(strcmp(buf, "queue \"caf") == 0);
  mqi_err_text(buf, 13, msg); /* all of é */
  CHECK(strcmp(buf, "queue \"caf\xc3\xa9") == 0);
  mqi_err_text(buf, 15, msg); /* and two of the three bytes of € */
  CHECK(strcmp(buf, "queue \"caf\xc3\xa9") == 0);
  mqi_err_text(buf, 16, msg);
  CHECK(strcmp(buf, "queue \"caf\xc3\xa9\xe2\x82\xac") == 0);
  mqi_err_text(buf, 1, msg);
  CHECK(buf[0] == 0);
}

int main(void) {
  TEST(test_null_store);
  TEST(test_bad_names);
  TEST(test_slash_names);
  TEST(test_unknown_queue);
  TEST(test_payloads);
  TEST(test_put_options);
  TEST(test_queue_options);
  TEST(test_get_and_out_pointers);
  TEST(test_settle_args);
  TEST(test_open_args);
  TEST(test_destructors_accept_null);
  TEST(test_error_text_cut_at_a_character);
  return test_done();
}
