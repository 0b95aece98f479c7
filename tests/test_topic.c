/*
** test_topic.c -- topics and durable subscriptions: fan-out, filters, late
** subscribers, independent acks, payload stored once and freed after the
** last ack, and every queue behaviour on "topic/sub".
*/
#include <sqlite3.h>
#include <sys/stat.h>

#include "harness.h"

static int64_t count_rows(const char *path, const char *sql) {
  sqlite3 *db;
  sqlite3_stmt *st;
  int64_t n = -1;
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) return -1;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return n;
}

static void filters(void) {
  static const struct {
    const char *filter, *subject;
    int want;
  } t[] = {
      {NULL, "a.b", 1},
      {"", NULL, 1},
      {"a.b", "a.b", 1},
      {"a.b", "a.c", 0},
      {"a.b", "a.b.c", 0},
      {"a.b.c", "a.b", 0},
      {"a.*", "a.b", 1},
      {"a.*", "a", 0},
      {"a.*", "a.b.c", 0},
      {"*.b", "a.b", 1},
      {"a.*.c", "a..c", 1}, /* an empty level is a level */
      {"a..c", "a..c", 1},
      {"a..c", "a.b.c", 0},
      {"a.>", "a.b", 1},
      {"a.>", "a.b.c.d", 1},
      {"a.>", "a", 0},
      {"a.#", "a", 1},
      {"a.#", "a.b.c", 1},
      {"#", NULL, 1},
      {"#", "x", 1},
      {">", NULL, 0},
      {">", "x.y", 1},
      {"*", NULL, 0},
      {"*", "x", 1},
      {"a.b", NULL, 0},
      {"sensors/+/temp", "sensors/kitchen/temp", 1}, /* MQTT style */
      {"sensors/+/temp", "sensors.kitchen.temp", 1}, /* separators are equivalent */
      {"sensors/#", "sensors/kitchen/temp", 1},
      {"sensors/#", "sensor/kitchen", 0},
      {"a.b.", "a.b.", 1}, /* trailing empty level */
      {"a.b.", "a.b", 0},
      {"c++", "c++", 1}, /* '+' inside a level is text */
      {"a*", "a*", -1},  /* a wildcard must be a whole level */
      {"a.>.b", "a.x.b", -1},
      {"#.a", "x.a", -1},
  };
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    int got = mq_subject_matches(t[i].filter, t[i].subject);
    if (got != t[i].want)
      fprintf(stderr, "filter \"%s\" subject \"%s\": got %d want %d\n",
              t[i].filter ? t[i].filter : "(null)", t[i].subject ? t[i].subject : "(null)", got,
              t[i].want);
    CHECK(got == t[i].want);
  }
}

static int scan_nothing(void *ctx, const mq_msg *m, int state) {
  (void)ctx;
  (void)m;
  (void)state;
  return 0;
}

static int get_body(mq_store *s, const char *q, char *buf, size_t cap, char *receipt) {
  mq_msg *m = NULL;
  int rc = mq_get(s, q, NULL, &m);
  if (rc != MQ_OK) return rc;
  snprintf(buf, cap, "%.*s", (int)mq_msg_size(m), (const char *)mq_msg_data(m));
  if (receipt) strcpy(receipt, mq_msg_receipt(m));
  mq_msg_free(m);
  return MQ_OK;
}

static void fan_out_and_filters(void) {
  const char *p = test_path("topic");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  CHECK_OK(mq_topic_create(s, "events", NULL));
  CHECK_OK(mq_subscription_create(s, "events", "all", NULL, NULL));
  CHECK_OK(mq_subscription_create(s, "events", "kitchen", "sensors.kitchen.*", NULL));
  CHECK_OK(mq_subscription_create(s, "events", "temps", "sensors/+/temp", NULL));

  int64_t id, delivered;
  CHECK_OK(mq_publish(s, "events", "sensors.kitchen.temp", "21C", 3, NULL, &id, &delivered));
  CHECK(id > 0 && delivered == 3);
  CHECK_OK(mq_publish(s, "events", "sensors.hall.temp", "19C", 3, NULL, &id, &delivered));
  CHECK(delivered == 2);
  CHECK_OK(mq_publish(s, "events", "sensors.kitchen.door", "open", 4, NULL, &id, &delivered));
  CHECK(delivered == 2);
  CHECK_OK(mq_publish(s, "events", NULL, "hello", 5, NULL, &id, &delivered));
  CHECK(delivered == 1);

  char b[64], r[80];
  CHECK_OK(get_body(s, "events/kitchen", b, sizeof b, NULL));
  CHECK(strcmp(b, "21C") == 0);
  CHECK_OK(get_body(s, "events/kitchen", b, sizeof b, NULL));
  CHECK(strcmp(b, "open") == 0);
  CHECK_RC(get_body(s, "events/kitchen", b, sizeof b, NULL), MQ_EMPTY);
  CHECK_OK(get_body(s, "events/temps", b, sizeof b, NULL));
  CHECK(strcmp(b, "21C") == 0);
  CHECK_OK(get_body(s, "events/temps", b, sizeof b, r));
  CHECK(strcmp(b, "19C") == 0);
  CHECK_OK(mq_ack(s, "events/temps", r));

  mq_queue_stats st;
  CHECK_OK(mq_queue_stats_get(s, "events/all", &st));
  CHECK(st.ready == 4 && st.total == 4);

  /* The subject travels with the message, and so does the publish id:
  ** the same in every subscription, unlike each delivery's own id. */
  mq_msg *m = NULL, *m2 = NULL;
  CHECK_OK(mq_get(s, "events/all", NULL, &m));
  CHECK(m && mq_msg_subject(m) && strcmp(mq_msg_subject(m), "sensors.kitchen.temp") == 0);
  int64_t first_pub;
  CHECK_OK(mq_publish(s, "events", "sensors.kitchen.x", "k", 1, NULL, &first_pub, NULL));
  mq_msg *seen[8];
  size_t nseen = 0;
  CHECK_OK(mq_peek(s, "events/kitchen", 8, seen, &nseen));
  CHECK(nseen == 1 && mq_msg_publish_id(seen[0]) == first_pub && mq_msg_id(seen[0]) != first_pub);
  for (size_t i = 0; i < nseen; i++) mq_msg_free(seen[i]);
  CHECK_OK(mq_get(s, "events/kitchen", NULL, &m2));
  CHECK(m2 && mq_msg_publish_id(m2) == first_pub);
  mq_msg_free(m2);
  mq_msg_free(m);

  /* A late subscriber sees nothing older. */
  CHECK_OK(mq_subscription_create(s, "events", "late", NULL, NULL));
  CHECK_RC(get_body(s, "events/late", b, sizeof b, NULL), MQ_EMPTY);
  CHECK_OK(mq_publish(s, "events", "x", "new", 3, NULL, NULL, &delivered));
  CHECK(delivered == 2); /* all + late */
  CHECK_OK(get_body(s, "events/late", b, sizeof b, NULL));
  CHECK(strcmp(b, "new") == 0);

  /* Bad input: malformed filter and subject, unknown topic, put to a topic. */
  CHECK_RC(mq_subscription_create(s, "events", "bad", "a.>.b", NULL), MQ_EINVAL);
  CHECK_RC(mq_publish(s, "events", "a.*", "x", 1, NULL, NULL, NULL), MQ_EINVAL);
  CHECK_RC(mq_publish(s, "nope", NULL, "x", 1, NULL, NULL, NULL), MQ_ENOTFOUND);
  CHECK_RC(mq_put(s, "events", "x", 1, NULL, NULL), MQ_EINVAL);
  CHECK_RC(mq_put(s, "events/all", "x", 1, NULL, NULL), MQ_EINVAL);
  CHECK_RC(mq_get(s, "events", NULL, &m), MQ_EINVAL);
  /* A topic holds no messages itself: every call that needs them says so
  ** instead of answering like an empty queue. */
  mq_queue_stats qs;
  mq_msg *pk[2];
  size_t npk;
  int64_t moved;
  CHECK_RC(mq_queue_stats_get(s, "events", &qs), MQ_EINVAL);
  CHECK_RC(mq_peek(s, "events", 2, pk, &npk), MQ_EINVAL);
  CHECK_RC(mq_queue_purge(s, "events", NULL), MQ_EINVAL);
  CHECK_RC(mq_redrive(s, "events", 0, &moved), MQ_EINVAL);
  CHECK_RC(mq_ack(s, "events", "00000000000000010000000000000001"), MQ_EINVAL);
  CHECK_RC(mq_queue_scan(s, "events", scan_nothing, NULL, NULL), MQ_EINVAL);
  CHECK(strstr(mq_errmsg(s), "is a topic") != NULL);
  /* An oversized publish fails whether or not a subscription matches. */
  mq_queue_options to;
  mq_queue_options_init(&to);
  to.max_payload = 4;
  CHECK_OK(mq_topic_create(s, "small", &to));
  CHECK_RC(mq_publish(s, "small", NULL, "12345", 5, NULL, NULL, NULL), MQ_ETOOBIG);
  CHECK_OK(mq_subscription_create(s, "small", "x", NULL, NULL));
  CHECK_RC(mq_publish(s, "small", NULL, "12345", 5, NULL, NULL, NULL), MQ_ETOOBIG);
  CHECK_OK(mq_publish(s, "small", NULL, "1234", 4, NULL, NULL, NULL));
  CHECK_OK(mq_topic_drop(s, "small"));
  CHECK_RC(mq_queue_create(s, "events", NULL), MQ_EEXIST);
  CHECK_RC(mq_queue_drop(s, "events"), MQ_EINVAL);
  CHECK_RC(mq_subscription_create(s, "events", "all", "other", NULL), MQ_EEXIST);
  CHECK_OK(mq_subscription_create(s, "events", "all", NULL, NULL)); /* same again */

  char **names;
  size_t n;
  CHECK_OK(mq_subscription_list(s, "events", &names, &n));
  CHECK(n == 4 && strcmp(names[0], "all") == 0 && strcmp(names[3], "temps") == 0);
  mq_list_free(names, n);
  CHECK_OK(mq_topic_list(s, &names, &n));
  CHECK(n == 1 && strcmp(names[0], "events") == 0);
  mq_list_free(names, n);
  CHECK_OK(mq_queue_list(s, &names, &n));
  CHECK(n == 0); /* topics and subscriptions are not queues */
  mq_list_free(names, n);
  mq_store_close(s);
  test_unlink_store(p);
}

static void payload_once_until_last_ack(void) {
  const char *p = test_path("topic-once");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  CHECK_OK(mq_topic_create(s, "t", NULL));
  char name[32];
  for (int i = 0; i < 100; i++) {
    snprintf(name, sizeof name, "s%03d", i);
    CHECK_OK(mq_subscription_create(s, "t", name, NULL, NULL));
  }
  static char big[64 * 1024];
  for (size_t i = 0; i < sizeof big; i++) big[i] = (char)(i * 7 + i / 251);
  int64_t delivered, id = 0;
  mq_put_options po;
  mq_put_options_init(&po);
  po.priority = 3;
  CHECK_OK(mq_publish(s, "t", "x", big, sizeof big, &po, &id, &delivered));
  CHECK(delivered == 100);
  CHECK_OK(mq_store_checkpoint(s));

  mq_topic_stats ts;
  CHECK_OK(mq_topic_stats_get(s, "t", &ts));
  CHECK(ts.subscriptions == 100 && ts.messages == 100 && ts.payloads == 1);
  CHECK(ts.bytes == (int64_t)sizeof big);
  CHECK(count_rows(p, "SELECT count(*) FROM mq_body") == 1);
  /* The file holds one copy: 100 copies would be 6.4 MB. */
  struct stat sb;
  CHECK(stat(p, &sb) == 0);
  CHECK(sb.st_size < 4 * (int64_t)sizeof big);

  /* Acks on 99 subscriptions leave the payload; the 100th removes it. */
  for (int i = 0; i < 100; i++) {
    snprintf(name, sizeof name, "t/s%03d", i);
    mq_msg *m = NULL;
    CHECK_OK(mq_get(s, name, NULL, &m));
    CHECK(m && mq_msg_size(m) == sizeof big && memcmp(mq_msg_data(m), big, sizeof big) == 0);
    /* Every subscription's message has the publish's options, and its own
    ** id (rows of 32 go in with one statement: see put.c). */
    CHECK(m && mq_msg_priority(m) == 3 && mq_msg_id(m) > id && mq_msg_id(m) <= id + 100);
    if (i == 50) { /* an ack on one subscription does not touch another */
      mq_queue_stats qs;
      CHECK_OK(mq_queue_stats_get(s, "t/s051", &qs));
      CHECK(qs.ready == 1);
    }
    if (m) CHECK_OK(mq_ack(s, name, mq_msg_receipt(m)));
    mq_msg_free(m);
    if (i == 98) CHECK(count_rows(p, "SELECT refs FROM mq_body") == 1);
  }
  CHECK(count_rows(p, "SELECT count(*) FROM mq_body") == 0);
  CHECK_OK(mq_topic_stats_get(s, "t", &ts));
  CHECK(ts.messages == 0 && ts.payloads == 0);
  mq_store_close(s);
  test_unlink_store(p);
}

static void subscription_is_a_queue(void) {
  const char *p = test_path("topic-queue");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(s, "dead", NULL));
  CHECK_OK(mq_topic_create(s, "t", NULL));
  mq_queue_options qo;
  mq_queue_options_init(&qo);
  qo.visibility_ms = 1000;
  qo.max_receives = 2;
  qo.dlq = "dead";
  CHECK_OK(mq_subscription_create(s, "t", "work", NULL, &qo));
  CHECK_OK(mq_subscription_create(s, "t", "audit", NULL, NULL));
  mq_put_options po;
  mq_put_options_init(&po);
  po.ttl_ms = 60000;
  CHECK_OK(mq_publish(s, "t", NULL, "job", 3, &po, NULL, NULL));

  /* Lease, expiry and redelivery, stale receipt, dead-lettering. */
  mq_msg *m = NULL;
  CHECK_OK(mq_get(s, "t/work", NULL, &m));
  char r1[80];
  strcpy(r1, mq_msg_receipt(m));
  mq_msg_free(m);
  test_now_ms += 1001;
  CHECK_OK(mq_get(s, "t/work", NULL, &m));
  CHECK(mq_msg_receives(m) == 2);
  CHECK_RC(mq_ack(s, "t/work", r1), MQ_ESTALE);
  CHECK_OK(mq_nack(s, "t/work", mq_msg_receipt(m), 0, "failed twice"));
  mq_msg_free(m);
  CHECK_RC(mq_get(s, "t/work", NULL, &m), MQ_EMPTY);
  /* Look at the dead letter without leasing it (a leased one is not
  ** redriven from under its holder). */
  mq_msg *dl[2];
  size_t ndl = 0;
  CHECK_OK(mq_peek(s, "dead", 2, dl, &ndl));
  CHECK(ndl == 1 && strcmp(mq_msg_reason(dl[0]), "failed twice") == 0);
  for (size_t i = 0; i < ndl; i++) mq_msg_free(dl[i]);
  int64_t moved;
  CHECK_OK(mq_redrive(s, "dead", 0, &moved));
  CHECK(moved == 1);
  CHECK_OK(mq_get(s, "t/work", NULL, &m));
  CHECK(m && mq_msg_receives(m) == 1);
  if (m) CHECK_OK(mq_ack(s, "t/work", mq_msg_receipt(m)));
  mq_msg_free(m);

  /* The other subscription still has its copy until the TTL passes. */
  mq_queue_stats st;
  CHECK_OK(mq_queue_stats_get(s, "t/audit", &st));
  CHECK(st.ready == 1);
  test_now_ms += 60000;
  CHECK_RC(mq_get(s, "t/audit", NULL, &m), MQ_EMPTY);
  CHECK(count_rows(p, "SELECT count(*) FROM mq_body") == 0);

  /* Dropping the topic drops its subscriptions and their messages. */
  CHECK_OK(mq_publish(s, "t", NULL, "x", 1, NULL, NULL, NULL));
  CHECK_OK(mq_topic_drop(s, "t"));
  CHECK_RC(mq_queue_stats_get(s, "t/audit", &st), MQ_ENOTFOUND);
  CHECK(count_rows(p, "SELECT count(*) FROM mq_body") == 0);
  CHECK(count_rows(p, "SELECT count(*) FROM mq_queue") == 1);
  mq_store_close(s);
  test_unlink_store(p);
}

static void publish_batch_and_dedup(void) {
  const char *p = test_path("topic-batch");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  CHECK_OK(mq_topic_create(s, "t", NULL));
  CHECK_OK(mq_subscription_create(s, "t", "a", "x.*", NULL));
  CHECK_OK(mq_subscription_create(s, "t", "b", NULL, NULL));
  mq_pub_entry e[3] = {{"x.1", "one", 3, NULL}, {"y", "two", 3, NULL}, {"x.3", "three", 5, NULL}};
  int64_t ids[3], delivered;
  CHECK_OK(mq_publish_batch(s, "t", e, 3, ids, &delivered));
  CHECK(delivered == 5 && ids[0] && ids[1] && ids[2]);

  /* A bad entry fails the whole batch. */
  mq_pub_entry bad[2] = {{"x.1", "ok", 2, NULL}, {"x.*", "bad", 3, NULL}};
  CHECK_RC(mq_publish_batch(s, "t", bad, 2, ids, &delivered), MQ_EINVAL);
  mq_queue_stats st;
  CHECK_OK(mq_queue_stats_get(s, "t/b", &st));
  CHECK(st.total == 3);

  mq_put_options po;
  mq_put_options_init(&po);
  po.dedup_key = "k1";
  int64_t id1, id2;
  CHECK_OK(mq_publish(s, "t", "x.9", "d", 1, &po, &id1, &delivered));
  CHECK(delivered == 2);
  CHECK_OK(mq_publish(s, "t", "x.9", "d", 1, &po, &id2, &delivered));
  CHECK(id2 == id1 && delivered == 0);
  CHECK_OK(mq_queue_stats_get(s, "t/b", &st));
  CHECK(st.total == 4);
  mq_store_close(s);
  test_unlink_store(p);
}

/* Topic stats count what subscribers can still get: a delivery past its
** TTL or its subscription's retention is gone even before a get sweeps it,
** and so is a payload only such deliveries share. */
static void topic_stats_skip_expired(void) {
  const char *p = test_path("topic-stats-ttl");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  CHECK_OK(mq_topic_create(s, "t", NULL));
  mq_queue_options qo;
  mq_queue_options_init(&qo);
  qo.retention_ms = 500;
  CHECK_OK(mq_subscription_create(s, "t", "brief", NULL, &qo));
  CHECK_OK(mq_subscription_create(s, "t", "long", NULL, NULL));
  int64_t t0 = test_now_ms;
  mq_put_options po;
  mq_put_options_init(&po);
  po.ttl_ms = 1000;
  CHECK_OK(mq_publish(s, "t", NULL, "short", 5, &po, NULL, NULL));
  CHECK_OK(mq_publish(s, "t", NULL, "kept", 4, NULL, NULL, NULL));
  mq_topic_stats ts;
  CHECK_OK(mq_topic_stats_get(s, "t", &ts));
  CHECK(ts.messages == 4 && ts.payloads == 2 && ts.bytes == 9);

  test_now_ms = t0 + 500; /* "brief" lost both deliveries */
  CHECK_OK(mq_topic_stats_get(s, "t", &ts));
  CHECK(ts.messages == 2 && ts.payloads == 2 && ts.bytes == 9);
  test_now_ms = t0 + 1000; /* and "long" the one with a TTL */
  CHECK_OK(mq_topic_stats_get(s, "t", &ts));
  CHECK(ts.messages == 1 && ts.payloads == 1 && ts.bytes == 4);
  mq_queue_stats qs;
  CHECK_OK(mq_queue_stats_get(s, "t/long", &qs));
  CHECK(qs.total == ts.messages);
  mq_store_close(s);
  test_unlink_store(p);
}

/* No filter can name a subject level with '*', '>' or '#' in it (such a
** filter level is malformed), so a publish with one is refused and
** changes nothing; '+' inside a level is plain text on both sides. */
static void subject_levels_filters_can_name(void) {
  const char *p = test_path("topic-subjects");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  CHECK_OK(mq_topic_create(s, "t", NULL));
  CHECK_OK(mq_subscription_create(s, "t", "all", NULL, NULL));
  static const char *const bad[] = {"c#", "lang.c#", "a*b", "a.b*", "x>y", "#a.b", "a.+"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int64_t id = -1, delivered = -1;
    CHECK_RC(mq_publish(s, "t", bad[i], "x", 1, NULL, &id, &delivered), MQ_EINVAL);
    CHECK(id == 0 && delivered == 0);
    CHECK(strstr(mq_errmsg(s), "malformed") != NULL);
  }
  mq_pub_entry e[2] = {{"lang.c", "ok", 2, NULL}, {"lang.c#", "bad", 3, NULL}};
  CHECK_RC(mq_publish_batch(s, "t", e, 2, NULL, NULL), MQ_EINVAL);
  mq_queue_stats qs;
  CHECK_OK(mq_queue_stats_get(s, "t/all", &qs));
  CHECK(qs.total == 0);
  int64_t delivered = 0;
  CHECK_OK(mq_publish(s, "t", "lang.c++", "x", 1, NULL, NULL, &delivered));
  CHECK(delivered == 1);
  CHECK(mq_subject_matches("lang.c++", "lang.c++") == 1);
  mq_store_close(s);
  test_unlink_store(p);
}

int main(void) {
  TEST(filters);
  TEST(fan_out_and_filters);
  TEST(payload_once_until_last_ack);
  TEST(subscription_is_a_queue);
  TEST(publish_batch_and_dedup);
  TEST(topic_stats_skip_expired);
  TEST(subject_levels_filters_can_name);
  return test_done();
}
