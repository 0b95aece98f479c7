/*
** demo.c -- a work queue survives a worker killed in the middle of a job.
**
** Run it with `bash scripts/demo.sh`, or build it and run `demo [file]`
** (default file: demo.db in the current directory).
**
** What happens, step by step (the parent process prints each step):
**   1. The parent creates queue "jobs" (visibility 2000 ms, max_receives 5,
**      dead letters to "jobs-dead") and puts 20 jobs into it.
**   2. It forks two worker processes.  Each opens its own handle on the same
**      file and loops: get a job, "work" on it for a few milliseconds, ack it.
**   3. Worker 1 takes its third job and never finishes it: it tells the
**      parent which job it holds, over a pipe, and blocks.  The parent kills
**      it with SIGKILL right then -- after the lease, before the ack.
**   4. Nobody acks that job, so after its 2000 ms lease it is visible again,
**      and worker 2 gets it (receive count 2) and finishes it.
**   5. The parent checks that every job was acked exactly once and that the
**      queue is empty, prints the queue's statistics and exits 0, or 1 if
**      anything went wrong.
**
** Why it is written so: the kill is coordinated, not timed -- worker 1
** reports its lease and waits on a pipe, so the kill always lands between
** lease and ack.  Worker 2 never takes so many jobs that worker 1 could run
** out of them before its third (it waits for the parent at that point), so
** the story happens on every run.  The lease does run out in real time: fine
** for a demo, while mq's own tests inject the clock instead.  Workers report
** to the parent through one pipe of fixed-size records (each write is atomic)
** so the parent alone prints and counts.  A store handle is never used
** across fork(): the parent closes its handle before forking and opens a new
** one afterwards.  Only the public API (mq.h) is used.
*/
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mq.h"

#define DEMO_JOBS 20
#define DEMO_VISIBILITY_MS 2000
#define DEMO_VICTIM_LEASE 3   /* worker 1 dies holding its 3rd job */
#define DEMO_WORKER_LIMIT_MS 60000 /* a worker gives up after this long */
#define DEMO_PARENT_LIMIT_MS 90000 /* the parent gives up after this long */

/* One report from a worker to the parent. */
enum {
  DEMO_EV_LEASED = 'L',  /* took a job */
  DEMO_EV_ACKED = 'A',   /* acked it (rc says whether the ack worked) */
  DEMO_EV_HOLDING = 'H', /* worker 1: took its fatal job, now blocks */
  DEMO_EV_WAITING = 'W', /* nothing ready, but a job is still leased */
  DEMO_EV_IDLE = 'I',    /* nothing left anywhere: exiting */
  DEMO_EV_FAILED = 'F'   /* a call failed: rc and what */
};

typedef struct demo_event {
  char kind;
  char what[23]; /* the failed call, for DEMO_EV_FAILED */
  int worker;
  int job;
  int receives;
  int rc;
  long long id;
} demo_event;

static struct timespec demo_t0;

static long long demo_ms_since(const struct timespec *t0) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)(t.tv_sec - t0->tv_sec) * 1000 +
         (t.tv_nsec - t0->tv_nsec) / 1000000;
}

/* Print one line of the story, stamped with the time since the start. */
#ifdef __GNUC__
static void demo_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#endif
static void demo_say(const char *fmt, ...) {
  va_list ap;
  long long ms = demo_ms_since(&demo_t0);
  printf("[%3lld.%03llds] ", ms / 1000, ms % 1000);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  fflush(stdout);
}

static void demo_send(int fd, char kind, int worker, int job, int receives,
                      int rc, long long id, const char *what) {
  demo_event ev;
  memset(&ev, 0, sizeof ev);
  ev.kind = kind;
  ev.worker = worker;
  ev.job = job;
  ev.receives = receives;
  ev.rc = rc;
  ev.id = id;
  if (what) snprintf(ev.what, sizeof ev.what, "%s", what);
  /* sizeof ev < PIPE_BUF, so the write is atomic: reports of the two
  ** workers never interleave.  If the parent is gone there is nobody to
  ** tell; the worker simply goes on to its exit. */
  if (write(fd, &ev, sizeof ev) != (ssize_t)sizeof ev) return;
}

static void demo_pause_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* The worker process: take jobs until none is left anywhere.  victim says
** whether this worker is the one that dies holding a job.  ctl is the
** read end of its pipe from the parent. */
static int demo_worker(const char *path, int worker, int victim, int events,
                       int ctl) {
  struct timespec start;
  mq_store *store = NULL;
  mq_get_options gopts;
  int leases = 0;
  int released = 0;
  int waiting = 0;
  char c;
  int rc;

  clock_gettime(CLOCK_MONOTONIC, &start);
  rc = mq_store_open(path, NULL, &store);
  if (rc != MQ_OK) {
    demo_send(events, DEMO_EV_FAILED, worker, -1, 0, rc, 0, "mq_store_open");
    return 1;
  }
  mq_get_options_init(&gopts);
  gopts.wait_ms = 250; /* then look again: a lease may have run out */

  while (demo_ms_since(&start) < DEMO_WORKER_LIMIT_MS) {
    mq_msg *msg = NULL;
    char text[32];
    int job = -1;

    /* Leave worker 1 enough jobs to die on (see the header comment). */
    if (!victim && !released && leases >= DEMO_JOBS - DEMO_VICTIM_LEASE) {
      if (read(ctl, &c, 1) < 0) { /* byte or EOF: either way go on */
      }
      released = 1;
    }

    rc = mq_get(store, "jobs", &gopts, &msg);
    if (rc == MQ_EMPTY) {
      mq_queue_stats st;
      rc = mq_queue_stats_get(store, "jobs", &st);
      if (rc != MQ_OK) {
        demo_send(events, DEMO_EV_FAILED, worker, -1, 0, rc, 0, "mq_queue_stats_get");
        break;
      }
      if (st.total == 0) {
        demo_send(events, DEMO_EV_IDLE, worker, -1, 0, MQ_OK, 0, NULL);
        mq_store_close(store);
        return 0;
      }
      /* A job is still leased to someone: wait for it. */
      if (!waiting)
        demo_send(events, DEMO_EV_WAITING, worker, -1, 0, MQ_OK,
                  (long long)st.inflight, NULL);
      waiting = 1;
      continue;
    }
    if (rc != MQ_OK) {
      demo_send(events, DEMO_EV_FAILED, worker, -1, 0, rc, 0, "mq_get");
      break;
    }

    snprintf(text, sizeof text, "%.*s", (int)mq_msg_size(msg),
             (const char *)mq_msg_data(msg));
    if (sscanf(text, "job %d", &job) != 1) job = -1;
    leases++;
    waiting = 0;
    demo_send(events, DEMO_EV_LEASED, worker, job, mq_msg_receives(msg), MQ_OK,
              (long long)mq_msg_id(msg), NULL);

    if (victim && leases == DEMO_VICTIM_LEASE) {
      /* Hold the lease and wait to be killed.  The read returns only if the
      ** parent died (EOF) or misbehaved; then just leave. */
      demo_send(events, DEMO_EV_HOLDING, worker, job, mq_msg_receives(msg),
                MQ_OK, (long long)mq_msg_id(msg), NULL);
      if (read(ctl, &c, 1) < 0) {
      }
      mq_msg_free(msg);
      mq_store_close(store);
      return 3;
    }

    demo_pause_ms(20 + 7 * (job % 5)); /* the "work" */
    rc = mq_ack(store, "jobs", mq_msg_receipt(msg));
    demo_send(events, DEMO_EV_ACKED, worker, job, mq_msg_receives(msg), rc,
              (long long)mq_msg_id(msg), "mq_ack");
    mq_msg_free(msg);
  }
  if (demo_ms_since(&start) >= DEMO_WORKER_LIMIT_MS)
    demo_send(events, DEMO_EV_FAILED, worker, -1, 0, MQ_ERROR, 0, "time limit");
  mq_store_close(store);
  return 1;
}

/* Create the queues and put the jobs; the handle is closed again before
** any fork. */
static int demo_produce(const char *path) {
  mq_store *store = NULL;
  mq_queue_options qopts;
  int64_t purged = 0, purged_dead = 0;
  int rc;

  rc = mq_store_open(path, NULL, &store);
  if (rc != MQ_OK) {
    fprintf(stderr, "demo: cannot open %s: %s (%s)\n", path, mq_errstr(rc),
            mq_errmsg(NULL));
    return rc;
  }
  mq_queue_options_init(&qopts);
  qopts.visibility_ms = DEMO_VISIBILITY_MS;
  qopts.max_receives = 5;
  qopts.dlq = "jobs-dead";
  rc = mq_queue_create(store, "jobs-dead", NULL);
  if (rc == MQ_OK) rc = mq_queue_create(store, "jobs", &qopts);
  if (rc == MQ_EEXIST) {
    fprintf(stderr, "demo: %s already has a queue \"jobs\" with other options; "
            "remove the file and run again\n", path);
  }
  /* A file left over from an earlier run: start from empty queues. */
  if (rc == MQ_OK) rc = mq_queue_purge(store, "jobs", &purged);
  if (rc == MQ_OK) rc = mq_queue_purge(store, "jobs-dead", &purged_dead);
  if (rc == MQ_OK && purged + purged_dead > 0)
    demo_say("parent: removed %lld messages left from an earlier run",
             (long long)(purged + purged_dead));
  if (rc == MQ_OK)
    demo_say("parent: queue \"jobs\" ready (visibility %d ms, max_receives 5, "
             "dead letters to \"jobs-dead\")", DEMO_VISIBILITY_MS);

  int64_t first = 0, last = 0;
  for (int i = 1; rc == MQ_OK && i <= DEMO_JOBS; i++) {
    char text[16];
    int64_t id = 0;
    int n = snprintf(text, sizeof text, "job %d", i);
    rc = mq_put(store, "jobs", text, (size_t)n, NULL, &id);
    if (i == 1) first = id;
    last = id;
  }
  if (rc == MQ_OK)
    demo_say("producer: put %d jobs (message ids %lld..%lld)", DEMO_JOBS,
             (long long)first, (long long)last);
  else
    fprintf(stderr, "demo: setting up %s failed: %s (%s)\n", path,
            mq_errstr(rc), mq_errmsg(store));
  int crc = mq_store_close(store);
  return rc != MQ_OK ? rc : crc;
}

static pid_t demo_fork_worker(const char *path, int worker, int victim,
                              int events[2], int ctl[2][2]) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid != 0) return pid;
  /* Child: keep only its own ends of the pipes. */
  close(events[0]);
  for (int w = 0; w < 2; w++) {
    close(ctl[w][1]);
    if (w != worker - 1) close(ctl[w][0]);
  }
  _exit(demo_worker(path, worker, victim, events[1], ctl[worker - 1][0]));
}

static void demo_print_stats(mq_store *store, const char *queue,
                             mq_queue_stats *st) {
  int rc = mq_queue_stats_get(store, queue, st);
  if (rc != MQ_OK) {
    demo_say("parent: stats of \"%s\" failed: %s", queue, mq_errstr(rc));
    memset(st, 0xff, sizeof *st); /* all -1: fails the final check */
    return;
  }
  demo_say("stats \"%s\": ready %lld, inflight %lld, delayed %lld, dead %lld, "
           "total %lld, bytes %lld", queue, (long long)st->ready,
           (long long)st->inflight, (long long)st->delayed, (long long)st->dead,
           (long long)st->total, (long long)st->bytes);
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "demo.db";
  int acks[DEMO_JOBS + 1] = {0};
  int events[2], ctl[2][2];
  pid_t pid[2] = {-1, -1};
  int alive[2] = {0, 0};
  int killed_job = -1, redelivered_job = -1, redelivered_to = 0;
  int failures = 0;

  clock_gettime(CLOCK_MONOTONIC, &demo_t0);
  signal(SIGPIPE, SIG_IGN);
  demo_say("mq %s demo on %s", mq_libversion(), path);
  if (demo_produce(path) != MQ_OK) return 1;

  if (pipe(events) != 0 || pipe(ctl[0]) != 0 || pipe(ctl[1]) != 0) {
    perror("demo: pipe");
    return 1;
  }
  for (int w = 0; w < 2; w++) {
    pid[w] = demo_fork_worker(path, w + 1, w == 0, events, ctl);
    if (pid[w] < 0) {
      perror("demo: fork");
      return 1;
    }
    alive[w] = 1;
    demo_say("parent: started worker %d (pid %ld)", w + 1, (long)pid[w]);
  }
  close(events[1]);
  close(ctl[0][0]);
  close(ctl[1][0]);

  /* Read the workers' reports until both are gone (EOF on the pipe). */
  for (;;) {
    demo_event ev;
    struct pollfd pfd = {events[0], POLLIN, 0};
    if (demo_ms_since(&demo_t0) > DEMO_PARENT_LIMIT_MS) {
      demo_say("parent: giving up after %d s", DEMO_PARENT_LIMIT_MS / 1000);
      failures++;
      break;
    }
    int pr = poll(&pfd, 1, 1000);
    if (pr < 0 && errno != EINTR) break;
    if (pr <= 0) continue;
    ssize_t n = read(events[0], &ev, sizeof ev);
    if (n == 0) break; /* every worker has exited */
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (n != (ssize_t)sizeof ev) {
      demo_say("parent: short report from a worker");
      failures++;
      continue;
    }
    int job_ok = ev.job >= 1 && ev.job <= DEMO_JOBS;
    switch (ev.kind) {
    case DEMO_EV_LEASED:
      if (ev.receives > 1) {
        demo_say("worker %d: took job %d again (delivery %d): the lease of "
                 "the dead worker ran out", ev.worker, ev.job, ev.receives);
        redelivered_job = ev.job;
        redelivered_to = ev.worker;
      } else {
        demo_say("worker %d: took job %d", ev.worker, ev.job);
      }
      break;
    case DEMO_EV_ACKED:
      if (ev.rc == MQ_OK && job_ok) {
        acks[ev.job]++;
        demo_say("worker %d: finished job %d, acked", ev.worker, ev.job);
      } else {
        demo_say("worker %d: ack of job %d failed: %s", ev.worker, ev.job,
                 mq_errstr(ev.rc));
        failures++;
      }
      break;
    case DEMO_EV_HOLDING:
      killed_job = ev.job;
      demo_say("worker %d: is working on job %d (leased, not acked)",
               ev.worker, ev.job);
      demo_say("parent: kill -9 worker %d (pid %ld) now", ev.worker,
               (long)pid[0]);
      kill(pid[0], SIGKILL);
      {
        int status = 0;
        if (waitpid(pid[0], &status, 0) == pid[0] && WIFSIGNALED(status))
          demo_say("parent: worker 1 is dead (signal %d); job %d stays "
                   "leased until its %d ms lease runs out", WTERMSIG(status),
                   killed_job, DEMO_VISIBILITY_MS);
      }
      alive[0] = 0;
      /* Let worker 2 take every job that is left. */
      if (write(ctl[1][1], "g", 1) != 1) {
      }
      break;
    case DEMO_EV_WAITING:
      demo_say("worker %d: nothing ready, %lld job(s) still leased: waiting",
               ev.worker, ev.id);
      break;
    case DEMO_EV_IDLE:
      demo_say("worker %d: no job left and none in flight: exiting", ev.worker);
      break;
    default:
      demo_say("worker %d: %s failed: %s", ev.worker, ev.what,
               mq_errstr(ev.rc));
      failures++;
      break;
    }
    if (ev.worker == 1 && (ev.kind == DEMO_EV_IDLE || ev.kind == DEMO_EV_FAILED)) {
      if (write(ctl[1][1], "g", 1) != 1) { /* worker 1 is done: release 2 */
      }
    }
  }

  /* Reap whoever is left; a worker that hangs is killed. */
  close(ctl[0][1]);
  close(ctl[1][1]);
  for (int w = 0; w < 2; w++) {
    int status = 0;
    if (!alive[w]) continue;
    if (failures) kill(pid[w], SIGKILL);
    if (waitpid(pid[w], &status, 0) == pid[w] &&
        !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
      demo_say("parent: worker %d ended badly (status %d)", w + 1, status);
      failures++;
    }
  }

  /* The verdict, from a fresh handle on the file. */
  mq_store *store = NULL;
  mq_queue_stats st, dead;
  int rc = mq_store_open(path, NULL, &store);
  if (rc != MQ_OK) {
    fprintf(stderr, "demo: reopen failed: %s\n", mq_errstr(rc));
    return 1;
  }
  demo_print_stats(store, "jobs", &st);
  demo_print_stats(store, "jobs-dead", &dead);
  mq_store_close(store);

  int once = 0;
  for (int j = 1; j <= DEMO_JOBS; j++) {
    if (acks[j] == 1) once++;
    else demo_say("job %d was acked %d times", j, acks[j]);
  }
  int ok = failures == 0 && once == DEMO_JOBS && st.total == 0 &&
           st.ready == 0 && st.inflight == 0 && dead.total == 0 &&
           killed_job > 0 && redelivered_job == killed_job;
  if (ok) {
    printf("all %d jobs done, job %d was redelivered after worker 1 was "
           "killed (worker %d finished it)\n", DEMO_JOBS, killed_job,
           redelivered_to);
    return 0;
  }
  printf("demo FAILED: %d of %d jobs acked exactly once, killed job %d, "
         "redelivered job %d, %d failures\n", once, DEMO_JOBS, killed_job,
         redelivered_job, failures);
  return 1;
}
