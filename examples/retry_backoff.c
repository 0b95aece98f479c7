/*
** retry_backoff.c -- retries with exponential backoff, a delayed job, a
** dead-letter queue, and a redrive once the bug is fixed.
**
** Build it with the project (target example_retry_backoff) and run
** `retry_backoff [file]` (default file: retry_backoff.db in the current
** directory).  The test suite runs it (ctest example_retry_backoff).
**
** What it shows:
**   1. Queue "jobs" with max_receives 5 and dead letters going to
**      "jobs.dead".  Four jobs: one that works at once, one that fails
**      twice (a flaky payment gateway) and then works, one that always fails
**      (a decoder bug), and one put with a 60 s delay (a scheduled report).
**   2. A worker that acks what it handled and, on failure, gives the message
**      back with mq_nack and a delay that doubles with each delivery
**      (mq_msg_receives): 1 s, 2 s, 4 s, then capped at 4 s.  The reason
**      passed to mq_nack travels with the message.
**   3. The always-failing job, nacked on its fifth delivery, has used up
**      max_receives: mq moves it to "jobs.dead" with its reason and receive
**      count, so it no longer blocks the worker.
**   4. The bug gets "fixed"; mq_redrive sends the dead letter back to "jobs"
**      with its receive count reset, and the worker finishes it.
** At the end it checks that all of this happened exactly so -- when each
** delivery came, how many there were, what reached the dlq -- and exits 0
** only then; its last line is "retry_backoff: story complete".
**
** Why an injected clock: backoff is about time passing.  A real worker
** leaves mq_store_options.clock NULL and lets mq_get wait (wait_ms) for the
** next message to become visible; that would make this program sleep for a
** minute and print different times on every run.  Instead it gives the
** store its own clock (a variable), and whenever nothing is ready it looks
** up, with mq_queue_scan, when the next delayed message becomes visible and
** moves the clock exactly there.  mq uses only that clock for delays and
** leases, so the run is instant and its output the same every time -- which
** is also how mq's own tests treat time.  Only the public API is used.
*/
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "mq.h"

#define BASE_DELAY_MS 1000 /* first retry after 1 s ... */
#define MAX_DELAY_MS 4000  /* ... doubling, but never more than 4 s */
#define MAX_RECEIVES 5     /* the fifth failed delivery dead-letters it */

/* The store's clock: milliseconds, moved only by this program. */
static int64_t clock_now;
static int64_t clock_start;

static int64_t example_clock(void *ctx) {
  (void)ctx;
  return clock_now;
}

/* Set once the decoder bug is "fixed" (step 4). */
static int decoder_fixed;

/* What the story must show, counted as it happens. */
static struct {
  int done;            /* jobs acked */
  int charge_attempts; /* deliveries of the flaky job */
  int resize_attempts; /* deliveries of the failing job, before the redrive */
  int64_t report_at;   /* when the delayed job was delivered (ms after start) */
  int backoff_ok;      /* every retry came exactly after its backoff */
} seen = {0, 0, 0, -1, 1};

static int check(mq_store *store, int rc, const char *what) {
  if (rc != MQ_OK) fprintf(stderr, "%s: %s: %s\n", what, mq_errstr(rc), mq_errmsg(store));
  return rc == MQ_OK;
}

/* The backoff: 1 s after the first delivery, doubling, capped. */
static int64_t backoff_ms(int receives) {
  int64_t d = BASE_DELAY_MS;
  for (int i = 1; i < receives && d < MAX_DELAY_MS; i++) d *= 2;
  return d < MAX_DELAY_MS ? d : MAX_DELAY_MS;
}

/* The "work".  Returns NULL on success, or why it failed. */
static const char *handle(const char *job, int receives) {
  if (strcmp(job, "charge card 42") == 0 && receives < 3) return "payment gateway timed out";
  if (strcmp(job, "resize photo.png") == 0 && !decoder_fixed) return "decoder: bad PNG header";
  return NULL;
}

/* When a retry of the failing jobs was due, per job, so that each delivery
** can be checked against its backoff (0 = not waiting for a retry). */
static int64_t due_charge, due_resize;

/* One delivery: handle it, then ack or nack with backoff. */
static int work_one(mq_store *store, mq_msg *msg) {
  char job[64];
  size_t n = mq_msg_size(msg) < sizeof job - 1 ? mq_msg_size(msg) : sizeof job - 1;
  int receives = mq_msg_receives(msg);
  int64_t t = clock_now - clock_start;
  memcpy(job, mq_msg_data(msg), n);
  job[n] = '\0';

  int64_t *due = NULL;
  if (strcmp(job, "charge card 42") == 0) due = &due_charge;
  if (strcmp(job, "resize photo.png") == 0) due = &due_resize;
  if (due && *due && clock_now != *due) seen.backoff_ok = 0; /* early or late */
  if (due == &due_charge) seen.charge_attempts++;
  if (due == &due_resize && !decoder_fixed) seen.resize_attempts++;
  if (strcmp(job, "monthly report") == 0) seen.report_at = t;

  const char *why = handle(job, receives);
  if (!why) {
    printf("t=%3" PRId64 "s  %-17s delivery %d: done, ack\n", t / 1000, job, receives);
    if (due) *due = 0;
    seen.done++;
    return check(store, mq_ack(store, "jobs", mq_msg_receipt(msg)), "mq_ack");
  }
  /* Failed: give it back, visible again after the backoff.  On the last
  ** allowed delivery mq dead-letters it instead, keeping the reason. */
  int64_t delay = backoff_ms(receives);
  if (receives >= MAX_RECEIVES) {
    printf("t=%3" PRId64 "s  %-17s delivery %d: %s -> dead letter\n", t / 1000, job, receives, why);
    if (due) *due = 0;
  } else {
    printf("t=%3" PRId64 "s  %-17s delivery %d: %s, retry in %" PRId64 " s\n", t / 1000, job,
           receives, why, delay / 1000);
    if (due) *due = clock_now + delay;
  }
  return check(store, mq_nack(store, "jobs", mq_msg_receipt(msg), delay, why), "mq_nack");
}

/* mq_queue_scan callback: the earliest time a delayed message shows up. */
static int earliest_visible(void *ctx, const mq_msg *msg, int state) {
  int64_t *next = ctx;
  if (state == MQ_STATE_DELAYED && (*next == 0 || mq_msg_visible_at(msg) < *next))
    *next = mq_msg_visible_at(msg);
  return 0;
}

/* The worker: take what is ready; when nothing is, move the clock to the
** next delayed message; stop when there is none.  Bounded: the story needs
** about a dozen rounds. */
static int worker(mq_store *store) {
  for (int round = 0; round < 100; round++) {
    mq_msg *msg = NULL;
    int rc = mq_get(store, "jobs", NULL, &msg);
    if (rc == MQ_OK) {
      int ok = work_one(store, msg);
      mq_msg_free(msg);
      if (!ok) return 0;
      continue;
    }
    if (rc != MQ_EMPTY) return check(store, rc, "mq_get");
    int64_t next = 0;
    if (!check(store, mq_queue_scan(store, "jobs", earliest_visible, &next, NULL), "mq_queue_scan"))
      return 0;
    if (next == 0) return 1; /* nothing delayed either: the queue is drained */
    clock_now = next;
  }
  fprintf(stderr, "worker: still busy after 100 rounds\n");
  return 0;
}

/* Start from empty queues, so the program can run twice on one file.  The
** dlq cannot be dropped while "jobs" names it, so "jobs" goes first. */
static int setup(mq_store *store) {
  mq_queue_options opts;
  int rc = mq_queue_drop(store, "jobs");
  if (rc != MQ_OK && rc != MQ_ENOTFOUND) return check(store, rc, "mq_queue_drop(jobs)");
  rc = mq_queue_drop(store, "jobs.dead");
  if (rc != MQ_OK && rc != MQ_ENOTFOUND) return check(store, rc, "mq_queue_drop(jobs.dead)");
  if (!check(store, mq_queue_create(store, "jobs.dead", NULL), "mq_queue_create(jobs.dead)"))
    return 0;
  mq_queue_options_init(&opts);
  opts.max_receives = MAX_RECEIVES;
  opts.dlq = "jobs.dead";
  return check(store, mq_queue_create(store, "jobs", &opts), "mq_queue_create(jobs)");
}

static int put_jobs(mq_store *store) {
  static const char *const now[] = {"send welcome mail", "charge card 42", "resize photo.png"};
  mq_put_options later;
  for (size_t i = 0; i < sizeof now / sizeof now[0]; i++)
    if (!check(store, mq_put(store, "jobs", now[i], strlen(now[i]), NULL, NULL), "mq_put"))
      return 0;
  /* A scheduled job: invisible for 60 s, then an ordinary message. */
  mq_put_options_init(&later);
  later.delay_ms = 60000;
  return check(store, mq_put(store, "jobs", "monthly report", 14, &later, NULL), "mq_put(delay)");
}

/* The dead-letter queue holds the failing job, with its last reason and
** the number of deliveries it had.  Peek: look without leasing. */
static int inspect_dlq(mq_store *store) {
  mq_msg *msgs[4];
  size_t count = 0;
  if (!check(store, mq_peek(store, "jobs.dead", 4, msgs, &count), "mq_peek")) return 0;
  int ok = count == 1;
  for (size_t i = 0; i < count; i++) {
    const char *reason = mq_msg_reason(msgs[i]);
    printf("jobs.dead: \"%.*s\" after %d deliveries, reason \"%s\"\n", (int)mq_msg_size(msgs[i]),
           (const char *)mq_msg_data(msgs[i]), mq_msg_receives(msgs[i]), reason ? reason : "");
    ok = ok && mq_msg_size(msgs[i]) == 16 &&
         memcmp(mq_msg_data(msgs[i]), "resize photo.png", 16) == 0 &&
         mq_msg_receives(msgs[i]) == MAX_RECEIVES && reason &&
         strcmp(reason, "decoder: bad PNG header") == 0;
    mq_msg_free(msgs[i]);
  }
  if (!ok) fprintf(stderr, "jobs.dead does not hold exactly the failing job with its reason\n");
  return ok;
}

static int queue_total(mq_store *store, const char *queue, int64_t *total) {
  mq_queue_stats st;
  if (!check(store, mq_queue_stats_get(store, queue, &st), "mq_queue_stats_get")) return 0;
  *total = st.total;
  return 1;
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "retry_backoff.db";
  mq_store_options so;
  mq_store *store = NULL;
  int64_t moved = 0, left = -1, dead = -1;

  clock_start = clock_now = INT64_C(1700000000000); /* any fixed start */
  mq_store_options_init(&so);
  so.clock = example_clock;
  int ok = check(NULL, mq_store_open(path, &so, &store), "mq_store_open");
  ok = ok && setup(store) && put_jobs(store);

  if (ok) printf("-- the worker runs; failures come back after 1, 2, 4, 4 s\n");
  ok = ok && worker(store) && inspect_dlq(store);

  /* Step 4: the bug is fixed; send the dead letter back to its queue. */
  if (ok) {
    decoder_fixed = 1;
    ok = check(store, mq_redrive(store, "jobs.dead", 0, &moved), "mq_redrive");
    printf("-- decoder fixed; redrive moved %" PRId64 " message back to jobs\n", moved);
  }
  ok = ok && worker(store);
  ok = ok && queue_total(store, "jobs", &left) && queue_total(store, "jobs.dead", &dead);

  /* The story, checked: every job done once (the failing one after the
  ** redrive), the flaky one on its third delivery, the failing one
  ** delivered MAX_RECEIVES times before it was set aside, the delayed one
  ** not before its 60 s, every retry exactly when its backoff ended, and
  ** both queues empty. */
  if (ok && !(seen.done == 4 && seen.charge_attempts == 3 && seen.resize_attempts == MAX_RECEIVES &&
              seen.report_at == 60000 && seen.backoff_ok && moved == 1 && left == 0 && dead == 0)) {
    fprintf(stderr,
            "the story did not play out: done %d, charge attempts %d, resize attempts %d, "
            "report at %" PRId64 " ms, backoff %s, moved %" PRId64 ", left %" PRId64
            ", dead %" PRId64 "\n",
            seen.done, seen.charge_attempts, seen.resize_attempts, seen.report_at,
            seen.backoff_ok ? "ok" : "broken", moved, left, dead);
    ok = 0;
  }
  if (!check(store, mq_store_close(store), "mq_store_close")) ok = 0;
  if (ok) printf("retry_backoff: story complete\n");
  return ok ? 0 : 1;
}
