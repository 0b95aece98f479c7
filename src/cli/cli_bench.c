/*
** cli_bench.c -- `mq bench`: quick put, get, ack and full-cycle figures on
** the user's own file, disk and sync mode.
**
** It answers "how fast is mq here?", not "how fast is mq": the numbers
** include this machine's fsync, the file system and the --sync mode given,
** which is the point -- the same command on a laptop SSD and on an SD card
** gives the figures that matter for each.  One message per call, from one
** thread, so they are the latency-bound floor; group commit across
** threads (bench/ has that) does better.
**
** The work happens in a queue of its own, named after the process, which
** is dropped at the end, so running it on a live store leaves the real
** queues alone.  The progress bar goes to stderr only when stderr is a
** terminal, so redirected output stays clean.
*/
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

typedef struct cli_bench {
  cli_ctx *ctx;
  const char *queue;
  int64_t count;
  size_t size;
  unsigned char *payload;
  char (*receipts)[MQ_RECEIPT_MAX + 1];
  int tty;
} cli_bench;

static double cli_bench_clock(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void cli_bench_progress(const cli_bench *b, const char *phase, int64_t done) {
  if (!b->tty) return;
  int64_t step = b->count / 50 ? b->count / 50 : 1;
  if (done % step != 0 && done != b->count) return;
  int width = 40, fill = (int)(done * width / (b->count ? b->count : 1));
  fprintf(stderr, "\r%-6s [%.*s%*s] %3d%%", phase, fill, "########################################",
          width - fill, "", (int)(done * 100 / (b->count ? b->count : 1)));
  fflush(stderr);
}

static void cli_bench_report(cli_bench *b, const char *phase, double secs) {
  if (b->tty) fprintf(stderr, "\r%60s\r", "");
  double rate = secs > 0 ? (double)b->count / secs : 0;
  if (b->ctx->json) {
    cli_jobj o;
    cli_jobj_begin(&o, stdout);
    cli_jobj_str(&o, "op", phase, strlen(phase));
    cli_jobj_int(&o, "count", b->count);
    cli_jobj_int(&o, "size", (int64_t)b->size);
    cli_jobj_double(&o, "seconds", secs);
    cli_jobj_double(&o, "ops_per_sec", rate);
    cli_jobj_end(&o);
  } else {
    printf("%-6s %10" PRId64 " ops %9.3f s %12.0f ops/s\n", phase, b->count, secs, rate);
  }
  fflush(stdout);
}

static int cli_bench_put(cli_bench *b, int64_t i) {
  /* Vary the first bytes so no two payloads are equal. */
  if (b->size >= sizeof i) memcpy(b->payload, &i, sizeof i);
  return mq_put(b->ctx->store, b->queue, b->payload, b->size, NULL, NULL);
}

static int cli_bench_get(cli_bench *b, char *receipt) {
  mq_msg *m = NULL;
  int rc = mq_get(b->ctx->store, b->queue, NULL, &m);
  if (rc == MQ_OK) {
    snprintf(receipt, MQ_RECEIPT_MAX + 1, "%s", mq_msg_receipt(m));
    mq_msg_free(m);
  }
  return rc;
}

/* The four phases; returns MQ_OK or the first failure's code. */
static int cli_bench_run(cli_bench *b) {
  int rc = MQ_OK;
  double t0 = cli_bench_clock();
  for (int64_t i = 0; rc == MQ_OK && i < b->count; i++) {
    rc = cli_bench_put(b, i);
    cli_bench_progress(b, "put", i + 1);
  }
  if (rc != MQ_OK) return rc;
  cli_bench_report(b, "put", cli_bench_clock() - t0);

  t0 = cli_bench_clock();
  for (int64_t i = 0; rc == MQ_OK && i < b->count; i++) {
    rc = cli_bench_get(b, b->receipts[i]);
    cli_bench_progress(b, "get", i + 1);
  }
  if (rc != MQ_OK) return rc;
  cli_bench_report(b, "get", cli_bench_clock() - t0);

  t0 = cli_bench_clock();
  for (int64_t i = 0; rc == MQ_OK && i < b->count; i++) {
    rc = mq_ack(b->ctx->store, b->queue, b->receipts[i]);
    cli_bench_progress(b, "ack", i + 1);
  }
  if (rc != MQ_OK) return rc;
  cli_bench_report(b, "ack", cli_bench_clock() - t0);

  t0 = cli_bench_clock();
  for (int64_t i = 0; rc == MQ_OK && i < b->count; i++) {
    rc = cli_bench_put(b, i);
    if (rc == MQ_OK) rc = cli_bench_get(b, b->receipts[0]);
    if (rc == MQ_OK) rc = mq_ack(b->ctx->store, b->queue, b->receipts[0]);
    cli_bench_progress(b, "cycle", i + 1);
  }
  if (rc != MQ_OK) return rc;
  cli_bench_report(b, "cycle", cli_bench_clock() - t0);
  return MQ_OK;
}

int cli_cmd_bench(cli_ctx *ctx, int argc, char **argv) {
  static const cli_optspec spec[] = {{"count", CLI_VALUE}, {"size", CLI_VALUE}};
  cli_args a;
  int st = cli_args_parse(ctx, argc, argv, spec, 2, &a);
  if (st) return st;
  int64_t count = 1000, size = 100;
  if (a.npos) st = cli_usage(ctx, "unexpected argument \"%s\"", a.pos[0]);
  if (!st && a.val[0]) st = cli_parse_int(ctx, "--count", a.val[0], 1, 10000000, &count);
  if (!st && a.val[1]) st = cli_parse_size(ctx, "--size", a.val[1], &size);
  if (!st && (uint64_t)size > MQ_PAYLOAD_LIMIT)
    st = cli_usage(ctx, "--size is above the library's limit of %zu bytes", MQ_PAYLOAD_LIMIT);
  cli_args_free(&a);
  if (st) return st;

  char queue[64];
  snprintf(queue, sizeof queue, "mq-bench-%ld", (long)getpid());
  cli_bench b = {ctx, queue, count, (size_t)size, NULL, NULL, isatty(STDERR_FILENO)};
  b.payload = malloc(b.size ? b.size : 1);
  b.receipts = malloc((size_t)count * sizeof *b.receipts);
  if (!b.payload || !b.receipts) st = cli_error(CLI_EXIT_OTHER, "out of memory");
  if (!st) {
    for (size_t i = 0; i < b.size; i++) b.payload[i] = (unsigned char)('a' + i % 26);
    st = cli_open(ctx, CLI_OPEN_WRITE);
  }
  if (!st) {
    mq_queue_options qo;
    mq_queue_options_init(&qo);
    /* Leases long enough that none runs out between the get and ack phases. */
    qo.visibility_ms = 3600 * 1000;
    if (b.size > qo.max_payload) qo.max_payload = b.size;
    int rc = mq_queue_create(ctx->store, queue, &qo);
    if (rc == MQ_OK) {
      rc = cli_bench_run(&b);
      if (b.tty) fprintf(stderr, "\r%60s\r", "");
      if (rc != MQ_OK) st = cli_fail_at(ctx, rc, "bench");
      rc = mq_queue_drop(ctx->store, queue);
      if (rc != MQ_OK && !st) st = cli_fail_at(ctx, rc, "dropping %s", queue);
    } else {
      st = cli_fail(ctx, rc);
    }
  }
  free(b.payload);
  free(b.receipts);
  return st;
}
