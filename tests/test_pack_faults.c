/*
** test_pack_faults.c -- packs (src/pack.c, format 3) where things go
** wrong: a full disk, damaged pack rows, a reboot with the clock at 1970,
** read-only handles, another process holding the write lock, hostile
** blobs.  Each case states what a user relies on; each failed on the first
** version of packs (found in review).
*/
#include <pthread.h>

#include "faultvfs.h"
#include "harness.h"
#include "packutil.h"

/* 1. Acks keep working near a full disk with packs stored: a budget that
** leaves room for an ack leaves none for a settle, so acks must not settle
** (they are what frees the space).  Control: the same budget acks fine
** with no pack stored. */
static void acks_work_near_full_disk(void) {
  const char *p = test_path("packf-full");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s, "q", 30000, 0, NULL);
  tu_put(s, "q", "a");
  tu_put(s, "q", "b");
  mq_msg *a = tu_get(s, "q");
  mq_msg *b = tu_get(s, "q");
  CHECK(a && b);
  if (!a || !b) return;
  /* Control: 64 KiB of disk is plenty for an ack. */
  faultvfs_arm_reset();
  faultvfs.write_budget = 64 * 1024;
  faultvfs.budget_growth_only = 1;
  CHECK_OK(mq_ack(s, "q", mq_msg_receipt(a)));
  faultvfs_arm_reset();
  /* A PULL endpoint stores a burst: 2000 messages of 1 KiB. */
  for (int k = 0; k < 8; k++) CHECK_OK(pack_n(s, "q", 250, 1024, "burst"));
  CHECK(packs_in(p) > 0);
  /* The same 64 KiB are left; the consumer acks what it holds. */
  faultvfs.write_budget = 64 * 1024;
  faultvfs.budget_growth_only = 1;
  int rc = MQ_OK;
  for (int i = 0; i < 5; i++) {
    rc = mq_ack(s, "q", mq_msg_receipt(b));
    if (rc == MQ_OK) break;
  }
  if (rc != MQ_OK)
    fprintf(stderr, "  ack with packs stored: %s: %s\n", mq_errstr(rc), mq_errmsg(s));
  CHECK_RC(rc, MQ_OK);
  faultvfs_arm_reset();
  mq_msg_free(a);
  mq_msg_free(b);
  mq_store_close(s);
  test_unlink_store(p);
}

/* 2. A damaged pack never blocks the store, and loses nothing it need
** not: here pack a's ids collide with a row (one damaged integer), so its
** settle fails with a constraint error in every transaction.  The intact
** pack b after it is delivered all the same, pack a's messages under new
** ids, and verify reports the collision. */
static void damaged_pack_blocks_nothing(void) {
  const char *p = test_path("packf-block");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s, "q", 30000, 0, NULL);
  int64_t row = tu_put(s, "q", "row");
  mq_msg *m = tu_get(s, "q"); /* the row stays, leased */
  mq_msg_free(m);
  CHECK_OK(pack_n(s, "q", 3, 16, "a"));
  CHECK_OK(pack_n(s, "q", 3, 16, "b"));
  mq_store_close(s);
  CHECK(pack_take_id(p, row) == SQLITE_OK);
  s = test_open(p, MQ_SYNC_NORMAL);
  int64_t problems = -1;
  CHECK_RC(mq_store_verify(s, NULL, NULL, &problems), MQ_ECORRUPT);
  CHECK(problems == 1); /* the collision is reported */
  /* Pack b is intact: it comes out.  Pack a's messages are intact too, only
  ** its ids are taken: they come out under new ids, after b's. */
  int got_a = 0, got_b = 0;
  for (int i = 0; i < 8; i++) {
    mq_msg *g = NULL;
    if (mq_get(s, "q", NULL, &g) != MQ_OK) break;
    if (mq_msg_size(g) >= 2 && memcmp(mq_msg_data(g), "a-", 2) == 0) {
      CHECK(got_b == 3);
      got_a++;
    }
    if (mq_msg_size(g) >= 2 && memcmp(mq_msg_data(g), "b-", 2) == 0) got_b++;
    mq_ack(s, "q", mq_msg_receipt(g));
    mq_msg_free(g);
  }
  fprintf(stderr, "  delivered: %d of pack a, %d of pack b; packs left %lld\n", got_a, got_b,
          (long long)packs_in(p));
  CHECK(got_a == 3 && got_b == 3);
  CHECK(packs_in(p) == 0);
  mq_store_close(s);
  test_unlink_store(p);
}

/* 3. Store time never runs backwards: in a new boot without a real-time
** clock it goes on from the newest enqueue time in the file, packs'
** included, or packed messages would settle enqueued in the future. */
static mq_store *open_default(const char *path) {
  mq_store_options o;
  mq_store *s = NULL;
  mq_store_options_init(&o);
  o.min_free_bytes = 0;
  if (mq_store_open(path, &o, &s) != MQ_OK) return NULL;
  return s;
}

static void reboot_clock_counts_packs(void) {
  const char *p = test_path("packf-clock");
  mqi_os_test_set_boot("boot-a", 0, 0);
  mq_store *s = open_default(p);
  CHECK(s != NULL);
  if (!s) return;
  CHECK_OK(mq_queue_create(s, "q", NULL));
  CHECK_OK(mq_put(s, "q", "row", 3, NULL, NULL));
  /* An hour of the same boot later, the PULL endpoint stores a pack. */
  mqi_os_test_set_boot("boot-a", 3600 * 1000, 3600 * 1000);
  CHECK_OK(pack_n(s, "q", 2, 8, "p"));
  int64_t packed_at = tu_sql_int(p, "SELECT max(enqueued_at) FROM mq_pack");
  mq_store_close(s);
  /* The device reboots with its wall clock at 1970. */
  int64_t real_now = mqi_os_realtime_ms();
  mqi_os_test_set_boot("boot-b", -mqi_os_boot_ms() + 5, -real_now);
  s = open_default(p);
  CHECK(s != NULL);
  if (s) {
    int64_t now = mq_store_now(s);
    fprintf(stderr, "  after the reboot: now - pack's enqueued_at = %lld ms\n",
            (long long)(now - packed_at));
    CHECK(now > packed_at);
    mq_store_close(s);
  }
  mqi_os_test_set_boot(NULL, 0, 0);
  test_unlink_store(p);
}

/* 4. `mq FILE export QUEUE` (the backup command) opens the file read-only
** and walks it with mq_queue_scan: packed messages, which a read-only
** handle cannot settle, are in the walk.  The same walk as the CLI: */
static int count_one(void *ctx, const mq_msg *m, int state) {
  (void)m;
  (void)state;
  (*(int *)ctx)++;
  return 0;
}

static void readonly_scan_shows_packs(void) {
  const char *p = test_path("packf-export");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s, "q", 30000, 0, NULL);
  tu_put(s, "q", "row");
  CHECK_OK(pack_n(s, "q", 5, 8, "p"));
  mq_store_close(s);
  mq_store *r = NULL;
  CHECK_OK(tu_open_ex(p, MQ_SYNC_NORMAL, MQ_OPEN_READONLY, test_clock, NULL, &r));
  if (!r) return;
  int seen = 0;
  int64_t corrupt = 0;
  CHECK_OK(mq_queue_scan(r, "q", count_one, &seen, &corrupt));
  mq_queue_stats st = tu_stats(r, "q");
  fprintf(stderr, "  read-only export: %d of %lld messages\n", seen, (long long)st.total);
  CHECK(seen == st.total);
  mq_store_close(r);
  test_unlink_store(p);
}

/* 5. mq.h (mq_store_open, Threads): read calls "never wait for the
** handle's commits nor make them wait", packs stored or not: a read does
** not settle, so another process's write lock does not hold it up. */
static void reads_do_not_wait_for_writers(void) {
  const char *p = test_path("packf-readwait");
  mq_store_options o;
  tu_options(&o, MQ_SYNC_NORMAL);
  o.busy_timeout_ms = 20000;
  mq_store *s = NULL;
  CHECK_OK(mq_store_open(p, &o, &s));
  if (!s) return;
  tu_create(s, "q", 30000, 0, NULL);
  CHECK_OK(pack_n(s, "q", 5, 8, "p"));
  sqlite3 *db = NULL;
  CHECK(sqlite3_open(p, &db) == SQLITE_OK);
  CHECK(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK);
  int64_t t0 = tu_mono_ms();
  mq_queue_info info;
  CHECK_OK(mq_queue_info_get(s, "q", &info));
  mq_msg *m[8];
  size_t n = 0;
  CHECK_OK(mq_peek(s, "q", 8, m, &n));
  CHECK(n == 5);
  for (size_t i = 0; i < n; i++) mq_msg_free(m[i]);
  int seen = 0;
  int64_t corrupt = 0;
  CHECK_OK(mq_queue_scan(s, "q", count_one, &seen, &corrupt));
  CHECK(seen == 5);
  int64_t took = tu_mono_ms() - t0;
  fprintf(stderr, "  info, peek and scan while another connection writes: %lld ms\n",
          (long long)took);
  CHECK(took < 10000); /* a read that waited would take the 20 s busy timeout */
  sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
  sqlite3_close(db);
  mq_store_close(s);
  test_unlink_store(p);
}

/* 6. A pack whose message count is damaged (n outside 1..256) but whose
** data and queue are intact: verify reports it, on a read-only handle and
** on a writable one alike (verify changes nothing), and the messages are
** recovered from the data when the pack settles. */
static void verify_reports_damaged_count(void) {
  const char *p = test_path("packf-verify");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s, "q", 30000, 0, NULL);
  CHECK_OK(pack_n(s, "q", 3, 16, "v"));
  mq_store_close(s);
  CHECK(tu_sql_exec(p, "UPDATE mq_pack SET n = 300") == SQLITE_OK);
  mq_store *r = NULL;
  CHECK_OK(tu_open_ex(p, MQ_SYNC_NORMAL, MQ_OPEN_READONLY, test_clock, NULL, &r));
  int64_t ro_problems = 0;
  if (r) mq_store_verify(r, NULL, NULL, &ro_problems);
  mq_store_close(r);
  s = test_open(p, MQ_SYNC_NORMAL);
  int64_t problems = 0;
  CHECK_RC(mq_store_verify(s, NULL, NULL, &problems), MQ_ECORRUPT);
  CHECK(ro_problems == 1);
  CHECK(problems == ro_problems);                            /* the same file, the same answer */
  CHECK(tu_sql_int(p, "SELECT count(*) FROM mq_pack") == 1); /* verify changed nothing */
  for (int i = 0; i < 3; i++) {
    mq_msg *m = tu_get(s, "q");
    CHECK(m != NULL);
    if (!m) break;
    char want[16];
    snprintf(want, sizeof want, "v-%d", i);
    CHECK(strcmp(mq_msg_data(m), want) == 0);
    CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
    mq_msg_free(m);
  }
  CHECK(tu_stats(s, "q").total == 0);
  mq_store_close(s);
  test_unlink_store(p);
}

/* 7. Hostile pack blobs (random bytes, empty, long varints): verify,
** peek, scan and settle neither read out of bounds (the ASan+UBSan build)
** nor leave the pack in place. */
static void hostile_reads(mq_store *s) {
  mq_msg *m[8];
  size_t n = 0;
  if (mq_peek(s, "q", 8, m, &n) == MQ_OK)
    for (size_t i = 0; i < n; i++) mq_msg_free(m[i]);
  int seen = 0;
  int64_t corrupt = 0;
  mq_queue_scan(s, "q", count_one, &seen, &corrupt);
}

static void hostile_blobs(void) {
  const char *p = test_path("packf-hostile");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s, "dlq", 30000, 0, NULL);
  tu_create(s, "q", 30000, 2, "dlq");
  mq_store_close(s);
  uint64_t x = 88172645463325252ULL;
  for (int round = 0; round < 40; round++) {
    s = test_open(p, MQ_SYNC_NORMAL);
    CHECK_OK(pack_n(s, "q", 4, 8, "h"));
    mq_store_close(s);
    char sql[1200];
    if (round == 0) {
      snprintf(sql, sizeof sql, "UPDATE mq_pack SET data = x''");
    } else if (round == 1) {
      snprintf(sql, sizeof sql, "UPDATE mq_pack SET data = x'ffffffffffffffffffffff01'");
    } else {
      char hex[1024];
      int len = (int)(1 + (x % 200));
      for (int i = 0; i < len; i++) {
        snprintf(hex + 2 * i, 3, "%02x", (unsigned)(tu_rand(&x) & 0xff));
      }
      snprintf(sql, sizeof sql, "UPDATE mq_pack SET data = x'%s', n = %d", hex, (int)(x % 6));
    }
    CHECK(tu_sql_exec(p, sql) == SQLITE_OK);
    mq_store *r = NULL;
    if (tu_open_ex(p, MQ_SYNC_NORMAL, MQ_OPEN_READONLY, test_clock, NULL, &r) == MQ_OK) {
      int64_t problems = 0;
      mq_store_verify(r, NULL, NULL, &problems);
      hostile_reads(r);
      mq_store_close(r);
    }
    s = test_open(p, MQ_SYNC_NORMAL);
    hostile_reads(s);
    for (int i = 0; i < 20; i++) {
      mq_msg *m = NULL;
      if (mq_get(s, "q", NULL, &m) != MQ_OK) break;
      mq_nack(s, "q", mq_msg_receipt(m), 0, NULL);
      mq_msg_free(m);
    }
    CHECK(packs_in(p) == 0);
    int64_t deleted = 0;
    mq_queue_purge(s, "q", &deleted);
    mq_queue_purge(s, "dlq", &deleted);
    mq_store_close(s);
  }
  test_unlink_store(p);
}

/* 8. Near a full disk, packed messages that cannot be settled are not
** "empty": the get fails with MQ_EFULL.  A purge, which needs no settle,
** frees them, and they do not come back. */
static void full_disk_get_fails_purge_frees(void) {
  const char *p = test_path("packf-purge");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  tu_create(s, "q", 30000, 0, NULL);
  /* 4096 small messages: 16 packs of a page each to delete, but some
  ** hundreds of KB of rows and index entries to settle. */
  for (int k = 0; k < 16; k++) CHECK_OK(pack_n(s, "q", 256, 8, "small"));
  faultvfs.write_budget = 128 * 1024;
  faultvfs.budget_growth_only = 1;
  mq_msg *m = NULL;
  CHECK_RC(mq_get(s, "q", NULL, &m), MQ_EFULL);
  CHECK(m == NULL);
  int64_t deleted = 0;
  CHECK_OK(mq_queue_purge(s, "q", &deleted));
  faultvfs_arm_reset();
  CHECK(deleted == 4096);
  CHECK(packs_in(p) == 0);
  CHECK(tu_stats(s, "q").total == 0);
  CHECK(tu_get(s, "q") == NULL);
  mq_store_close(s);
  test_unlink_store(p);
}

int main(void) {
  tu_watchdog(240);
  faultvfs_install();
  TEST(acks_work_near_full_disk);
  TEST(damaged_pack_blocks_nothing);
  TEST(reboot_clock_counts_packs);
  TEST(readonly_scan_shows_packs);
  TEST(reads_do_not_wait_for_writers);
  TEST(verify_reports_damaged_count);
  TEST(hostile_blobs);
  TEST(full_disk_get_fails_purge_frees);
  return test_done();
}
