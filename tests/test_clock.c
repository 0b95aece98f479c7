/*
** test_clock.c -- the default clock: leases and delays follow the boot
** clock, so stepping the wall clock neither expires a lease early nor keeps
** a message hidden longer; across a reboot time never runs backwards and
** leases taken before it end.
**
** Reboots and wall-clock steps are simulated with the internal test hook
** mqi_os_test_set_boot (a boot id and shifts of both clocks), so nothing
** here sleeps and nothing touches the machine's real clock.
*/
#include "harness.h"
#include "mqi.h"

static mq_store *open_default(const char *path) {
  mq_store_options o;
  mq_store *s = NULL;
  mq_store_options_init(&o);
  o.min_free_bytes = 0; /* default clock: no o.clock */
  int rc = mq_store_open(path, &o, &s);
  if (rc != MQ_OK) {
    fprintf(stderr, "open %s: %s\n", path, mq_errmsg(NULL));
    exit(2);
  }
  return s;
}

static void wall_clock_steps_do_not_move_leases(void) {
  const char *p = test_path("clock-steps");
  mqi_os_test_set_boot("boot-a", 0, 0);
  mq_store *s = open_default(p);
  mq_queue_options qo;
  mq_queue_options_init(&qo);
  qo.visibility_ms = 30000;
  CHECK_OK(mq_queue_create(s, "q", &qo));
  CHECK_OK(mq_put(s, "q", "x", 1, NULL, NULL));
  mq_msg *m = NULL;
  CHECK_OK(mq_get(s, "q", NULL, &m));
  mq_msg_free(m);

  /* The wall clock jumps an hour forward, then an hour back: the lease is
  ** unaffected either way. */
  mqi_os_test_set_boot("boot-a", 0, 3600 * 1000);
  CHECK_RC(mq_get(s, "q", NULL, &m), MQ_EMPTY);
  mqi_os_test_set_boot("boot-a", 0, -3600 * 1000);
  CHECK_RC(mq_get(s, "q", NULL, &m), MQ_EMPTY);
  /* 30 s of boot time later it is delivered again -- not an hour later. */
  mqi_os_test_set_boot("boot-a", 30001, -3600 * 1000);
  CHECK_OK(mq_get(s, "q", NULL, &m));
  CHECK(m && mq_msg_receives(m) == 2);
  mq_msg_free(m);

  /* A second handle (another process would do the same) shares the time. */
  mq_store *s2 = open_default(p);
  mq_queue_stats a, b;
  CHECK_OK(mq_queue_stats_get(s, "q", &a));
  CHECK_OK(mq_queue_stats_get(s2, "q", &b));
  CHECK(a.inflight == 1 && b.inflight == 1);
  mq_store_close(s2);
  mq_store_close(s);
  mqi_os_test_set_boot(NULL, 0, 0);
  test_unlink_store(p);
}

static void reboot_without_rtc_continues_time(void) {
  const char *p = test_path("clock-1970");
  mqi_os_test_set_boot("boot-a", 0, 0);
  mq_store *s = open_default(p);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  CHECK_OK(mq_put(s, "q", "leased", 6, NULL, NULL));
  mq_put_options po;
  mq_put_options_init(&po);
  po.delay_ms = 60000;
  CHECK_OK(mq_put(s, "q", "later", 5, &po, NULL));
  mq_msg *m = NULL;
  CHECK_OK(mq_get(s, "q", NULL, &m));
  int64_t before = mq_msg_enqueued_at(m);
  mq_msg_free(m);
  mq_store_close(s);

  /* The device reboots with its wall clock at 1970 and its boot clock near
  ** zero. */
  int64_t real_now = mqi_os_realtime_ms();
  mqi_os_test_set_boot("boot-b", -mqi_os_boot_ms() + 5, -real_now);
  s = open_default(p);
  /* The lease ended with the reboot: the message is ready at once. */
  CHECK_OK(mq_get(s, "q", NULL, &m));
  CHECK(m && strcmp(mq_msg_data(m), "leased") == 0);
  mq_msg_free(m);
  /* Time did not run backwards: a new put is not older than the old one. */
  int64_t id;
  CHECK_OK(mq_put(s, "q", "new", 3, NULL, &id));
  mq_msg *peek[4];
  size_t n;
  CHECK_OK(mq_peek(s, "q", 4, peek, &n));
  CHECK(n == 1 && mq_msg_enqueued_at(peek[0]) >= before);
  for (size_t i = 0; i < n; i++) mq_msg_free(peek[i]);
  /* The delayed message still waits (its delay did not pass while off). */
  mq_queue_stats st;
  CHECK_OK(mq_queue_stats_get(s, "q", &st));
  CHECK(st.delayed == 1);
  mq_store_close(s);
  mqi_os_test_set_boot(NULL, 0, 0);
  test_unlink_store(p);
}

static void reboot_with_rtc_counts_downtime(void) {
  const char *p = test_path("clock-rtc");
  mqi_os_test_set_boot("boot-a", 0, 0);
  mq_store *s = open_default(p);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  mq_put_options po;
  mq_put_options_init(&po);
  po.delay_ms = 3600 * 1000;
  CHECK_OK(mq_put(s, "q", "due", 3, &po, NULL));
  mq_store_close(s);
  /* Two hours later by the (correct) wall clock, in a new boot. */
  mqi_os_test_set_boot("boot-b", -mqi_os_boot_ms() + 5, 2 * 3600 * 1000);
  s = open_default(p);
  mq_msg *m = NULL;
  CHECK_OK(mq_get(s, "q", NULL, &m));
  mq_msg_free(m);
  mq_store_close(s);
  mqi_os_test_set_boot(NULL, 0, 0);
  test_unlink_store(p);
}

int main(void) {
  TEST(wall_clock_steps_do_not_move_leases);
  TEST(reboot_without_rtc_continues_time);
  TEST(reboot_with_rtc_counts_downtime);
  return test_done();
}
