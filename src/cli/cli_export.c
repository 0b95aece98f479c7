/*
** cli_export.c -- `mq export` and `mq import`: a queue as JSON lines, for
** backups and for moving messages between files.
**
** Export walks the queue with mq_queue_scan (one consistent snapshot, all
** states, id order) and writes one object per message.  Times are written
** both as absolute store-clock values (visible_at, expires_at) and as what
** remains of them (delay_ms, ttl_ms) so the file explains itself.
**
** Import is all-or-nothing against bad input: it reads the whole of
** standard input and parses every line before it opens the store, so a
** malformed line anywhere imports nothing (and creates no file).  Only
** then does it put the messages, in batches of --batch per transaction, to
** keep each transaction and the WAL bounded on a large file.  A failure of
** the store itself in the middle (disk full, a payload over the queue's
** max_payload) therefore leaves the earlier batches imported; the message
** says exactly which lines were, so the rest can be imported again.
**
** What cannot be carried over through the public API is not pretended:
** ids are assigned anew, receive counts restart at 0, enqueue times become
** the import time, nack reasons are dropped, in-flight messages arrive
** ready (no consumer holds a lease in the new file), and dead ones arrive
** ready unless --skip-dead.  doc/cli.md lists this.
*/
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* ---- export ------------------------------------------------------------------- */

typedef struct cli_export_state {
  cli_ctx *ctx;
  int64_t count;
} cli_export_state;

static int cli_export_one(void *arg, const mq_msg *m, int state) {
  cli_export_state *e = arg;
  cli_export_line(stdout, m, state, cli_now(e->ctx));
  e->count++;
  /* Stop at the first failed write (a closed pipe, a full disk). */
  return ferror(stdout) ? 1 : 0;
}

int cli_cmd_export(cli_ctx *ctx, int argc, char **argv) {
  cli_args a;
  int st = cli_args_parse(ctx, argc, argv, NULL, 0, &a);
  if (st) return st;
  if (a.npos != 1)
    st = a.npos ? cli_usage(ctx, "unexpected argument \"%s\"", a.pos[1])
                : cli_usage(ctx, "missing QUEUE");
  if (!st) st = cli_open(ctx, CLI_OPEN_READ);
  if (!st) {
    cli_export_state e = {ctx, 0};
    int64_t corrupt = 0;
    int rc = mq_queue_scan(ctx->store, a.pos[0], cli_export_one, &e, &corrupt);
    if (rc != MQ_OK)
      st = cli_fail(ctx, rc);
    else if (!(st = cli_finish(ctx, CLI_EXIT_OK)) && corrupt)
      st = cli_error(CLI_EXIT_DAMAGED,
                     "queue \"%s\": %" PRId64
                     " message(s) with a damaged payload were not "
                     "exported (run mq FILE check)",
                     a.pos[0], corrupt);
  }
  cli_args_free(&a);
  return st;
}

/* ---- import ------------------------------------------------------------------- */

#define CLI_IMPORT_BATCH 500

/* A line of the input: where it is, and its number for messages. */
typedef struct cli_line {
  const char *s;
  size_t len;
  size_t no;
} cli_line;

/* Split buf into its non-blank lines.  *lines is owned by the caller. */
static int cli_split_lines(const char *buf, size_t len, cli_line **lines, size_t *n) {
  size_t cap = 0, k = 0, no = 0;
  cli_line *l = NULL;
  for (size_t pos = 0; pos < len;) {
    const char *nl = memchr(buf + pos, '\n', len - pos);
    size_t end = nl ? (size_t)(nl - buf) : len;
    no++;
    int blank = 1;
    for (size_t i = pos; i < end && blank; i++)
      blank = buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\r';
    if (!blank) {
      if (k == cap) {
        cap = cap ? cap * 2 : 1024;
        cli_line *nlines = realloc(l, cap * sizeof *l);
        if (!nlines) {
          free(l);
          return cli_error(CLI_EXIT_OTHER, "out of memory");
        }
        l = nlines;
      }
      l[k].s = buf + pos;
      l[k].len = end - pos;
      l[k].no = no;
      k++;
    }
    pos = nl ? end + 1 : len;
  }
  *lines = l;
  *n = k;
  return CLI_EXIT_OK;
}

/* The put options for a record as of now.  Returns 0 to put it, 1 when it
** has expired since the export (skip it). */
static int cli_import_opts(const cli_record *r, int64_t now, mq_put_options *po) {
  mq_put_options_init(po);
  po->priority = (int)r->priority;
  po->headers = r->headers;
  po->n_headers = r->n_headers;
  /* A delay counts only for a message that was delayed: an in-flight one
  ** has no consumer in the new file, a ready or dead one was visible.
  ** The absolute time wins over the remainder, because it stays right
  ** however long after the export the import runs. */
  if (r->state == MQ_STATE_DELAYED || r->state < 0) {
    if (r->has_visible_at)
      po->delay_ms = r->visible_at > now ? r->visible_at - now : 0;
    else if (r->has_delay)
      po->delay_ms = r->delay_ms;
  }
  if (r->has_expires_at) {
    if (r->expires_at <= now) return 1;
    po->ttl_ms = r->expires_at - now;
  } else if (r->has_ttl) {
    po->ttl_ms = r->ttl_ms;
  }
  return 0;
}

typedef struct cli_import {
  cli_ctx *ctx;
  const char *queue;
  int skip_dead;
  size_t batch;
  int64_t imported, expired, dead;
} cli_import;

/* Put lines[0..n) in one transaction. */
static int cli_import_batch(cli_import *im, const cli_line *lines, size_t n) {
  cli_record *recs = calloc(n, sizeof *recs);
  mq_put_options *po = calloc(n, sizeof *po);
  mq_entry *e = calloc(n, sizeof *e);
  size_t parsed = 0, k = 0;
  int st = CLI_EXIT_OK;
  char err[300];
  if (!recs || !po || !e) st = cli_error(CLI_EXIT_OTHER, "out of memory");
  int64_t now = cli_now(im->ctx);
  for (; !st && parsed < n; parsed++) {
    cli_record *r = &recs[parsed];
    /* Checked once already: a failure now would be a bug, not bad input. */
    if (cli_record_parse(lines[parsed].s, lines[parsed].len, r, err, sizeof err) != 0) {
      st = cli_error(CLI_EXIT_OTHER, "line %zu: %s", lines[parsed].no, err);
      break;
    }
    if (r->state == MQ_STATE_DEAD && im->skip_dead) {
      im->dead++;
      continue;
    }
    if (cli_import_opts(r, now, &po[k])) {
      im->expired++;
      continue;
    }
    e[k].data = r->body;
    e[k].len = r->body_len;
    e[k].opts = &po[k];
    k++;
  }
  if (!st && k) {
    int rc = mq_put_batch(im->ctx->store, im->queue, e, k, NULL);
    if (rc != MQ_OK)
      st = cli_fail_at(im->ctx, rc,
                       "importing lines %zu-%zu (nothing from line %zu on was imported; the "
                       "%" PRId64 " messages before it were)",
                       lines[0].no, lines[n - 1].no, lines[0].no, im->imported);
    else
      im->imported += (int64_t)k;
  }
  for (size_t i = 0; i < parsed && recs; i++) cli_record_free(&recs[i]);
  free(recs);
  free(po);
  free(e);
  return st;
}

enum { IMP_BATCH = CLI_QUEUE_NOPTS, IMP_SKIP_DEAD, IMP_NOPTS };

int cli_cmd_import(cli_ctx *ctx, int argc, char **argv) {
  static const cli_optspec spec[IMP_NOPTS] = {
      CLI_QUEUE_OPTSPECS, {"batch", CLI_VALUE}, {"skip-dead", CLI_FLAG}};
  cli_args a;
  int st = cli_args_parse(ctx, argc, argv, spec, IMP_NOPTS, &a);
  if (st) return st;
  mq_queue_options qo;
  int any = 0;
  int64_t batch = CLI_IMPORT_BATCH;
  char *buf = NULL;
  size_t len = 0, n = 0;
  cli_line *lines = NULL;
  if (a.npos != 1)
    st = a.npos ? cli_usage(ctx, "unexpected argument \"%s\"", a.pos[1])
                : cli_usage(ctx, "missing QUEUE");
  if (!st) st = cli_queue_options(ctx, &a, 0, &qo, &any);
  if (!st && a.val[IMP_BATCH])
    st = cli_parse_int(ctx, "--batch", a.val[IMP_BATCH], 1, 100000, &batch);
  if (!st) st = cli_read_all(stdin, (size_t)-1 / 4, &buf, &len);
  if (!st) st = cli_split_lines(buf, len, &lines, &n);

  /* Every line is checked before the store is opened: bad input imports
  ** nothing and creates nothing. */
  int64_t bad = 0;
  for (size_t i = 0; !st && i < n; i++) {
    cli_record r;
    char err[300];
    if (cli_record_parse(lines[i].s, lines[i].len, &r, err, sizeof err) != 0) {
      cli_error(CLI_EXIT_USAGE, "line %zu: %s", lines[i].no, err);
      if (++bad == 10) break; /* enough to see the pattern */
      continue;
    }
    cli_record_free(&r);
  }
  if (bad) st = cli_error(CLI_EXIT_USAGE, "nothing imported: the input has malformed lines");

  cli_import im = {ctx, a.npos ? a.pos[0] : NULL, a.val[IMP_SKIP_DEAD] != NULL, (size_t)batch, 0, 0,
                   0};
  if (!st) st = cli_open(ctx, CLI_OPEN_CREATE);
  if (!st) st = cli_ensure_queue(ctx, im.queue, &qo, any);
  for (size_t i = 0; !st && i < n; i += im.batch)
    st = cli_import_batch(&im, lines + i, n - i < im.batch ? n - i : im.batch);
  if (!st) {
    if (ctx->json) {
      cli_jobj o;
      cli_jobj_begin(&o, stdout);
      cli_jobj_str(&o, "queue", im.queue, strlen(im.queue));
      cli_jobj_int(&o, "imported", im.imported);
      cli_jobj_int(&o, "expired", im.expired);
      cli_jobj_int(&o, "skipped_dead", im.dead);
      cli_jobj_end(&o);
    } else {
      printf("imported %" PRId64 "\n", im.imported);
      if (im.expired) printf("expired %" PRId64 "\n", im.expired);
      if (im.dead) printf("skipped_dead %" PRId64 "\n", im.dead);
    }
  }
  free(lines);
  free(buf);
  cli_args_free(&a);
  return st;
}
