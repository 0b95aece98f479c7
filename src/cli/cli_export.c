/*
** cli_export.c -- `mq export` and `mq import`: a queue as JSON lines, for
** backups and for moving messages between files.
**
** Export first writes a header line, the queue's name and options, so a
** backup can recreate the queue and not only its messages; then it walks
** the queue with mq_queue_scan (one consistent snapshot, all states, id
** order) and writes one object per message.  Times are written both as
** absolute store-clock values (visible_at, expires_at) and as what remains
** of them (delay_ms, ttl_ms) so the file explains itself.  "Now" is the
** store's clock (mq_store_now), the one every application of the file
** shares, never the wall clock.
**
** Import is all-or-nothing against bad input: it reads the whole of
** standard input and parses every line before it opens the store, so a
** malformed line anywhere imports nothing (and creates no file).  It then
** checks what the store would refuse half-way -- a payload over the target
** queue's max_payload, a dead-letter queue the header names that does not
** exist -- before it writes anything.  Only then does it put the messages,
** in batches of --batch per transaction, to keep each transaction and the
** WAL bounded on a large file.  A failure of the store itself in the
** middle (a full disk) therefore leaves the earlier batches imported; the
** message says exactly which lines were, so the rest can be imported again.
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
#include <unistd.h>

#include "cli.h"

/* ---- export ------------------------------------------------------------------- */

typedef struct cli_export_state {
  int64_t now; /* the store's time when the scan began */
  int64_t count;
} cli_export_state;

static int cli_export_one(void *arg, const mq_msg *m, int state) {
  cli_export_state *e = arg;
  cli_export_line(stdout, m, state, e->now);
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
  mq_queue_info info;
  if (!st) {
    int rc = mq_queue_info_get(ctx->store, a.pos[0], &info);
    if (rc != MQ_OK) st = cli_fail(ctx, rc);
  }
  if (!st) st = cli_reject_topic(ctx, a.pos[0], "export");
  if (!st) {
    cli_jobj o, opts;
    cli_jobj_begin(&o, stdout);
    cli_jobj_str(&o, "queue", a.pos[0], strlen(a.pos[0]));
    cli_jobj_nested(&o, "options", &opts);
    cli_options_json(&opts, &info);
    cli_jobj_close(&opts);
    cli_jobj_end(&o);
    /* The scan holds the handle: no call into it from the callback, so
    ** "now" is read once, before. */
    cli_export_state e = {mq_store_now(ctx->store), 0};
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
  size_t body_len; /* filled by the check: the payload's size */
  int state;       /* and its state (MQ_STATE_*, -1 if none) */
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
  int64_t now = mq_store_now(im->ctx->store);
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

/* Check every line before anything is opened: the header may only be the
** first, every other line must be a message.  Fills each line's size and
** state.  Prints up to 10 problems. */
static int cli_import_check(cli_line *lines, size_t n) {
  int64_t bad = 0;
  for (size_t i = 0; i < n && bad < 10; i++) {
    cli_record r;
    cli_header h;
    char err[300];
    int hr = cli_header_parse(lines[i].s, lines[i].len, &h, err, sizeof err);
    if (hr != 0) {
      if (hr == 1) cli_header_free(&h);
      cli_error(CLI_EXIT_USAGE, "line %zu: an export header can only be the first line",
                lines[i].no);
      bad++;
      continue;
    }
    if (cli_record_parse(lines[i].s, lines[i].len, &r, err, sizeof err) != 0) {
      cli_error(CLI_EXIT_USAGE, "line %zu: %s", lines[i].no, err);
      bad++;
      continue;
    }
    lines[i].body_len = r.body_len;
    lines[i].state = r.state;
    cli_record_free(&r);
  }
  if (bad) return cli_error(CLI_EXIT_USAGE, "nothing imported: the input has malformed lines");
  return CLI_EXIT_OK;
}

/* Whether an existing queue has the options given on the command line:
** only those given are compared, the others may be anything. */
static int cli_import_same(const mq_queue_info *info, const mq_queue_options *o, unsigned given) {
  const char *dlq = o->dlq ? o->dlq : "";
  return !((given >> CLI_QO_VISIBILITY & 1) && info->visibility_ms != o->visibility_ms) &&
         !((given >> CLI_QO_MAX_RECEIVES & 1) && info->max_receives != o->max_receives) &&
         !((given >> CLI_QO_DLQ & 1) && strcmp(info->dlq, dlq) != 0) &&
         !((given >> CLI_QO_RETENTION & 1) && info->retention_ms != o->retention_ms) &&
         !((given >> CLI_QO_MAX_PAYLOAD & 1) && info->max_payload != o->max_payload) &&
         !((given >> CLI_QO_COMPRESS_ABOVE & 1) && info->compress_above != o->compress_above) &&
         !((given >> CLI_QO_DEDUP_WINDOW & 1) && info->dedup_window_ms != o->dedup_window_ms);
}

/* The options of a queue import creates: the defaults, replaced by the
** header's, replaced by those of the command line. */
static void cli_import_merge(mq_queue_options *o, const cli_header *h, const mq_queue_options *c,
                             unsigned cgiven) {
  const mq_queue_options *src[2] = {&h->o, c};
  unsigned given[2] = {h->given, cgiven};
  for (int i = 0; i < 2; i++) {
    const mq_queue_options *s = src[i];
    unsigned g = given[i];
    if (g >> CLI_QO_VISIBILITY & 1) o->visibility_ms = s->visibility_ms;
    if (g >> CLI_QO_MAX_RECEIVES & 1) o->max_receives = s->max_receives;
    if (g >> CLI_QO_DLQ & 1) o->dlq = s->dlq;
    if (g >> CLI_QO_RETENTION & 1) o->retention_ms = s->retention_ms;
    if (g >> CLI_QO_MAX_PAYLOAD & 1) o->max_payload = s->max_payload;
    if (g >> CLI_QO_COMPRESS_ABOVE & 1) o->compress_above = s->compress_above;
    if (g >> CLI_QO_DEDUP_WINDOW & 1) o->dedup_window_ms = s->dedup_window_ms;
  }
}

/* Decide, before anything is written, where the messages go and that they
** fit: sets *create when the queue must be created with o, and refuses a
** topic, a dead-letter queue that does not exist, options that disagree
** with an existing queue, and payloads over the queue's max_payload. */
static int cli_import_target(cli_ctx *ctx, cli_import *im, const mq_queue_options *o,
                             unsigned cgiven, int from_header, const cli_line *lines, size_t n,
                             int *create) {
  mq_queue_info info;
  size_t limit = o->max_payload;
  int rc = ctx->store ? mq_queue_info_get(ctx->store, im->queue, &info) : MQ_ENOTFOUND;
  *create = rc == MQ_ENOTFOUND;
  if (rc == MQ_OK) {
    if (info.kind != MQ_KIND_QUEUE)
      return cli_error(CLI_EXIT_USAGE,
                       "\"%s\" is a %s: import writes to queues only; nothing imported",
                       im->queue, cli_kind_name(info.kind));
    if (!cli_import_same(&info, o, cgiven))
      return cli_error(CLI_EXIT_USAGE,
                       "queue \"%s\" exists with other options than those given; nothing "
                       "imported (leave the options out to import into it as it is)",
                       im->queue);
    limit = info.max_payload;
  } else if (rc != MQ_ENOTFOUND) {
    return cli_fail(ctx, rc);
  } else if (o->dlq) {
    int drc = ctx->store ? mq_queue_info_get(ctx->store, o->dlq, &info) : MQ_ENOTFOUND;
    if (drc != MQ_OK && drc != MQ_ENOTFOUND) return cli_fail(ctx, drc);
    if (drc == MQ_ENOTFOUND || info.kind != MQ_KIND_QUEUE)
      return cli_error(CLI_EXIT_USAGE,
                       "%s queue \"%s\" the dead-letter queue \"%s\", which %s in %s; "
                       "nothing imported (create it first, or import with --dlq '' for none)",
                       from_header ? "the export header gives" : "--dlq gives", im->queue,
                       o->dlq, drc == MQ_ENOTFOUND ? "does not exist" : "is not a queue",
                       ctx->path);
  }
  int64_t big = 0;
  for (size_t i = 0; i < n && big < 10; i++) {
    if (lines[i].state == MQ_STATE_DEAD && im->skip_dead) continue;
    if (lines[i].body_len <= limit) continue;
    cli_error(CLI_EXIT_USAGE, "line %zu: the payload of %zu bytes is over the max payload of %zu "
              "bytes of queue \"%s\"", lines[i].no, lines[i].body_len, limit, im->queue);
    big++;
  }
  if (big) return cli_error(CLI_EXIT_USAGE, "nothing imported: payloads too large");
  return CLI_EXIT_OK;
}

int cli_cmd_import(cli_ctx *ctx, int argc, char **argv) {
  static const cli_optspec spec[IMP_NOPTS] = {
      CLI_QUEUE_OPTSPECS, {"batch", CLI_VALUE}, {"skip-dead", CLI_FLAG}};
  cli_args a;
  int st = cli_args_parse(ctx, argc, argv, spec, IMP_NOPTS, &a);
  if (st) return st;
  mq_queue_options co, qo;
  unsigned cgiven = 0;
  int64_t batch = CLI_IMPORT_BATCH;
  char *buf = NULL;
  size_t len = 0, n = 0;
  cli_line *lines = NULL, *msgs = NULL;
  cli_header h;
  int has_header = 0, create = 0;
  memset(&h, 0, sizeof h);
  mq_queue_options_init(&co);
  mq_queue_options_init(&qo);
  if (a.npos > 1) st = cli_usage(ctx, "unexpected argument \"%s\"", a.pos[1]);
  if (!st) st = cli_queue_options(ctx, &a, 0, 0, CLI_QUEUE_NOPTS, &co, &cgiven);
  if (!st && a.val[IMP_BATCH])
    st = cli_parse_int(ctx, "--batch", a.val[IMP_BATCH], 1, 100000, &batch);
  if (!st) st = cli_read_all(stdin, (size_t)-1 / 4, &buf, &len);
  if (!st) st = cli_split_lines(buf, len, &lines, &n);
  msgs = lines;
  if (!st && n) {
    char err[300];
    int hr = cli_header_parse(lines[0].s, lines[0].len, &h, err, sizeof err);
    if (hr < 0)
      st = cli_error(CLI_EXIT_USAGE, "line %zu: %s; nothing imported", lines[0].no, err);
    has_header = hr == 1;
    if (has_header) msgs++, n--;
  }
  /* Every line is checked before the store is opened: bad input imports
  ** nothing and creates nothing. */
  if (!st) st = cli_import_check(msgs, n);
  cli_import im = {ctx, a.npos ? a.pos[0] : h.queue, a.val[IMP_SKIP_DEAD] != NULL, (size_t)batch,
                   0, 0, 0};
  if (!st && !im.queue)
    st = cli_usage(ctx, "missing QUEUE (the input has no export header that names one)");
  if (!st) cli_import_merge(&qo, &h, &co, cgiven);
  /* A missing file is created only once everything is known to fit. */
  int exists = ctx->path && access(ctx->path, F_OK) == 0;
  if (!st && exists) st = cli_open(ctx, CLI_OPEN_WRITE);
  if (!st)
    st = cli_import_target(ctx, &im, &qo, cgiven, !(cgiven >> CLI_QO_DLQ & 1), msgs, n, &create);
  if (!st && !exists) st = cli_open(ctx, CLI_OPEN_CREATE);
  if (!st && create) {
    int rc = mq_queue_create(ctx->store, im.queue, &qo);
    /* Created by another process since we looked: used as it is, unless
    ** options were given for it. */
    if (rc != MQ_OK && !(rc == MQ_EEXIST && !cgiven)) st = cli_fail_at(ctx, rc, "nothing imported");
  }
  for (size_t i = 0; !st && i < n; i += im.batch)
    st = cli_import_batch(&im, msgs + i, n - i < im.batch ? n - i : im.batch);
  if (!st) {
    if (ctx->json) {
      cli_jobj o;
      cli_jobj_begin(&o, stdout);
      cli_jobj_str(&o, "queue", im.queue, strlen(im.queue));
      cli_jobj_bool(&o, "created", create);
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
  if (has_header) cli_header_free(&h);
  free(lines);
  free(buf);
  cli_args_free(&a);
  return st;
}
