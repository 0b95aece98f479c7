/*
** cli_msg.c -- the `mq` commands that work on messages: put, get, peek,
** ack, nack and touch.
**
** Payloads are bytes: put reads standard input whole and unaltered (no
** newline is added or stripped), and `get --raw` writes exactly the stored
** bytes.  The human layout and --json are for reading; --raw is for piping
** a payload into another program.
**
** `get --ack` acks only after the message has been written out and stdout
** flushed without error, so a consumer whose output fails (full disk,
** closed pipe) leaves the message to be delivered again: the tool keeps
** the library's at-least-once promise rather than losing a message.
*/
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define CLI_PUT_BATCH 500
#define CLI_GET_MAX 10000

/* ---- put --------------------------------------------------------------------- */

enum { PUT_DELAY, PUT_PRIORITY, PUT_TTL, PUT_DEDUP, PUT_HEADER, PUT_LINES, PUT_CREATE, PUT_NOPTS };

static void cli_print_id(cli_ctx *ctx, int64_t id) {
  if (ctx->json) {
    cli_jobj o;
    cli_jobj_begin(&o, stdout);
    cli_jobj_int(&o, "id", id);
    cli_jobj_end(&o);
  } else {
    printf("%" PRId64 "\n", id);
  }
}

/* Every line of buf as one message, CLI_PUT_BATCH per transaction. */
static int cli_put_lines(cli_ctx *ctx, const char *queue, char *buf, size_t len,
                         const mq_put_options *po) {
  mq_entry *e = malloc(CLI_PUT_BATCH * sizeof *e);
  int64_t *ids = malloc(CLI_PUT_BATCH * sizeof *ids);
  int st = CLI_EXIT_OK;
  size_t pos = 0, line = 0, stored = 0;
  if (!e || !ids) st = cli_error(CLI_EXIT_OTHER, "out of memory");
  while (st == CLI_EXIT_OK && pos < len) {
    size_t n = 0, first = line + 1;
    while (n < CLI_PUT_BATCH && pos < len) {
      char *nl = memchr(buf + pos, '\n', len - pos);
      size_t end = nl ? (size_t)(nl - buf) : len;
      e[n].data = buf + pos;
      e[n].len = end - pos;
      e[n].opts = po;
      n++;
      line++;
      pos = nl ? end + 1 : len;
    }
    int rc = mq_put_batch(ctx->store, queue, e, n, ids);
    if (rc != MQ_OK) {
      st = cli_fail_at(ctx, rc, "lines %zu-%zu (the %zu lines before were stored)", first, line,
                       stored);
      break;
    }
    for (size_t i = 0; i < n; i++) cli_print_id(ctx, ids[i]);
    stored += n;
  }
  free(e);
  free(ids);
  return st;
}

int cli_cmd_put(cli_ctx *ctx, int argc, char **argv) {
  static const cli_optspec spec[PUT_NOPTS] = {
      {"delay", CLI_VALUE},  {"priority", CLI_VALUE}, {"ttl", CLI_VALUE},  {"dedup", CLI_VALUE},
      {"header", CLI_MULTI}, {"lines", CLI_FLAG},     {"create", CLI_FLAG}};
  cli_args a;
  int st = cli_args_parse(ctx, argc, argv, spec, PUT_NOPTS, &a);
  if (st) return st;
  mq_put_options po;
  mq_put_options_init(&po);
  mq_header *h = NULL;
  char *buf = NULL;
  size_t len = 0;
  int64_t v;
  int lines = a.val[PUT_LINES] != NULL;
  const char *data = a.npos > 1 ? a.pos[1] : NULL;
  if (a.npos < 1)
    st = cli_usage(ctx, "missing QUEUE");
  else if (a.npos > 2)
    st = cli_usage(ctx, "unexpected argument \"%s\" (quote DATA that has spaces)", a.pos[2]);
  else if (lines && data)
    st = cli_usage(ctx, "--lines reads standard input: give no DATA");
  else if (lines && a.val[PUT_DEDUP])
    st = cli_usage(ctx, "--dedup would store only the first of the lines");
  if (!st && a.val[PUT_DELAY]) st = cli_parse_ms(ctx, "--delay", a.val[PUT_DELAY], &po.delay_ms);
  if (!st && a.val[PUT_TTL]) st = cli_parse_ms(ctx, "--ttl", a.val[PUT_TTL], &po.ttl_ms);
  if (!st && a.val[PUT_PRIORITY] &&
      !(st = cli_parse_int(ctx, "--priority", a.val[PUT_PRIORITY], INT32_MIN, INT32_MAX, &v)))
    po.priority = (int)v;
  po.dedup_key = a.val[PUT_DEDUP];
  size_t nh = a.nmulti[PUT_HEADER];
  if (!st && nh) {
    if (!(h = calloc(nh, sizeof *h))) st = cli_error(CLI_EXIT_OTHER, "out of memory");
    for (size_t i = 0; !st && i < nh; i++) {
      /* NAME=VALUE: split at the first '=', so a value may contain '='. */
      char *nv = (char *)(uintptr_t)a.multi[PUT_HEADER][i], *eq = strchr(nv, '=');
      if (!eq || eq == nv) {
        st = cli_usage(ctx, "--header takes NAME=VALUE, not \"%s\"", nv);
        break;
      }
      *eq = '\0';
      h[i].name = nv;
      h[i].value = eq + 1;
    }
    po.headers = h;
    po.n_headers = nh;
  }
  /* Read the payload before opening, so a failed read creates no file. */
  if (!st && (!data || strcmp(data, "-") == 0))
    st = cli_read_all(stdin, lines ? (size_t)-1 / 4 : MQ_PAYLOAD_LIMIT, &buf, &len);
  /* Without --create a put cannot succeed on a missing file (it has no
  ** queues), so only --create may create one. */
  int create = a.val[PUT_CREATE] != NULL;
  if (!st) st = cli_open(ctx, create ? CLI_OPEN_CREATE : CLI_OPEN_WRITE);
  if (!st && create) {
    mq_queue_options qo;
    mq_queue_options_init(&qo);
    st = cli_ensure_queue(ctx, a.pos[0], &qo, 0);
  }
  if (!st && lines) {
    st = cli_put_lines(ctx, a.pos[0], buf, len, &po);
  } else if (!st) {
    int64_t id = 0;
    const void *p = buf ? (const void *)buf : data;
    int rc = mq_put(ctx->store, a.pos[0], p, buf ? len : strlen(data), &po, &id);
    if (rc != MQ_OK)
      st = cli_fail(ctx, rc);
    else
      cli_print_id(ctx, id);
  }
  free(buf);
  free(h);
  cli_args_free(&a);
  return st;
}

/* ---- get and peek ------------------------------------------------------------ */

static int cli_write_msgs(cli_ctx *ctx, mq_msg **msgs, size_t n, int raw) {
  for (size_t i = 0; i < n; i++) {
    if (raw)
      fwrite(mq_msg_data(msgs[i]), 1, mq_msg_size(msgs[i]), stdout);
    else
      cli_print_msg(ctx, msgs[i]);
  }
  return cli_finish(ctx, CLI_EXIT_OK);
}

static int cli_count_opt(cli_ctx *ctx, const char *s, size_t *out) {
  int64_t v = 1;
  int st = s ? cli_parse_int(ctx, "--count", s, 1, CLI_GET_MAX, &v) : CLI_EXIT_OK;
  *out = (size_t)v;
  return st;
}

enum { GET_VISIBILITY, GET_WAIT, GET_COUNT, GET_RAW, GET_ACK, GET_NOPTS };

int cli_cmd_get(cli_ctx *ctx, int argc, char **argv) {
  static const cli_optspec spec[GET_NOPTS] = {{"visibility", CLI_VALUE},
                                              {"wait", CLI_VALUE},
                                              {"count", CLI_VALUE},
                                              {"raw", CLI_FLAG},
                                              {"ack", CLI_FLAG}};
  cli_args a;
  int st = cli_args_parse(ctx, argc, argv, spec, GET_NOPTS, &a);
  if (st) return st;
  mq_get_options go;
  mq_get_options_init(&go);
  size_t max = 1, n = 0;
  mq_msg **msgs = NULL;
  if (a.npos != 1)
    st = a.npos ? cli_usage(ctx, "unexpected argument \"%s\"", a.pos[1])
                : cli_usage(ctx, "missing QUEUE");
  if (!st && a.val[GET_VISIBILITY])
    st = cli_parse_ms(ctx, "--visibility", a.val[GET_VISIBILITY], &go.visibility_ms);
  if (!st && a.val[GET_WAIT]) st = cli_parse_ms(ctx, "--wait", a.val[GET_WAIT], &go.wait_ms);
  if (!st) st = cli_count_opt(ctx, a.val[GET_COUNT], &max);
  if (!st && !(msgs = calloc(max, sizeof *msgs))) st = cli_error(CLI_EXIT_OTHER, "out of memory");
  if (!st) st = cli_open(ctx, CLI_OPEN_WRITE);
  if (!st) {
    int rc = mq_get_batch(ctx->store, a.pos[0], &go, max, msgs, &n);
    if (rc == MQ_EMPTY)
      st = cli_error(CLI_EXIT_EMPTY, "no message ready in queue \"%s\"", a.pos[0]);
    else if (rc != MQ_OK)
      st = cli_fail(ctx, rc);
  }
  if (!st) st = cli_write_msgs(ctx, msgs, n, a.val[GET_RAW] != NULL);
  if (!st && a.val[GET_ACK]) {
    const char **r = malloc(n * sizeof *r);
    int *res = malloc(n * sizeof *res);
    if (!r || !res) {
      st = cli_error(CLI_EXIT_OTHER, "out of memory");
    } else {
      for (size_t i = 0; i < n; i++) r[i] = mq_msg_receipt(msgs[i]);
      int rc = mq_ack_batch(ctx->store, a.pos[0], r, n, res);
      if (rc != MQ_OK) st = cli_fail_at(ctx, rc, "ack after get");
      for (size_t i = 0; rc == MQ_OK && i < n; i++)
        if (res[i] != MQ_OK)
          st = cli_error(cli_exit_status(res[i]), "message %" PRId64 ": ack after get: %s",
                         mq_msg_id(msgs[i]), mq_errstr(res[i]));
    }
    free(r);
    free(res);
  }
  for (size_t i = 0; msgs && i < n; i++) mq_msg_free(msgs[i]);
  free(msgs);
  cli_args_free(&a);
  return st;
}

int cli_cmd_peek(cli_ctx *ctx, int argc, char **argv) {
  static const cli_optspec spec[] = {{"count", CLI_VALUE}, {"raw", CLI_FLAG}};
  cli_args a;
  int st = cli_args_parse(ctx, argc, argv, spec, 2, &a);
  if (st) return st;
  size_t max = 1, n = 0;
  mq_msg **msgs = NULL;
  if (a.npos != 1)
    st = a.npos ? cli_usage(ctx, "unexpected argument \"%s\"", a.pos[1])
                : cli_usage(ctx, "missing QUEUE");
  if (!st) st = cli_count_opt(ctx, a.val[0], &max);
  if (!st && !(msgs = calloc(max, sizeof *msgs))) st = cli_error(CLI_EXIT_OTHER, "out of memory");
  if (!st) st = cli_open(ctx, CLI_OPEN_READ);
  if (!st) {
    int rc = mq_peek(ctx->store, a.pos[0], max, msgs, &n);
    if (rc != MQ_OK)
      st = cli_fail(ctx, rc);
    else if (n == 0)
      st = cli_error(CLI_EXIT_EMPTY, "no message ready in queue \"%s\"", a.pos[0]);
  }
  if (!st) st = cli_write_msgs(ctx, msgs, n, a.val[1] != NULL);
  for (size_t i = 0; msgs && i < n; i++) mq_msg_free(msgs[i]);
  free(msgs);
  cli_args_free(&a);
  return st;
}

/* ---- settling --------------------------------------------------------------- */

int cli_cmd_ack(cli_ctx *ctx, int argc, char **argv) {
  cli_args a;
  int st = cli_args_parse(ctx, argc, argv, NULL, 0, &a);
  if (st) return st;
  if (a.npos < 2) {
    st = cli_usage(ctx, a.npos ? "missing RECEIPT" : "missing QUEUE");
    cli_args_free(&a);
    return st;
  }
  size_t n = a.npos - 1;
  const char *const *r = a.pos + 1;
  int *res = malloc(n * sizeof *res);
  if (!res) st = cli_error(CLI_EXIT_OTHER, "out of memory");
  if (!st) st = cli_open(ctx, CLI_OPEN_WRITE);
  if (!st && n == 1) {
    /* One receipt: the library's own message says why it is stale. */
    int rc = mq_ack(ctx->store, a.pos[0], r[0]);
    if (rc != MQ_OK && rc != MQ_ESTALE) st = cli_fail(ctx, rc);
    res[0] = rc;
    if (rc == MQ_ESTALE) st = cli_fail_at(ctx, rc, "receipt %s", r[0]);
  } else if (!st) {
    int rc = mq_ack_batch(ctx->store, a.pos[0], r, n, res);
    if (rc != MQ_OK) st = cli_fail(ctx, rc);
    for (size_t i = 0; rc == MQ_OK && i < n; i++)
      if (res[i] != MQ_OK)
        st = cli_error(cli_exit_status(res[i]), "receipt %s: %s (the other receipts were acked)",
                       r[i], mq_errstr(res[i]));
  }
  if (ctx->json && res && (st == CLI_EXIT_OK || st == CLI_EXIT_STALE)) {
    for (size_t i = 0; i < n; i++) {
      cli_jobj o;
      cli_jobj_begin(&o, stdout);
      cli_jobj_str(&o, "receipt", r[i], strlen(r[i]));
      cli_jobj_str(&o, "result", res[i] == MQ_OK ? "ok" : "stale", res[i] == MQ_OK ? 2 : 5);
      cli_jobj_end(&o);
    }
  }
  free(res);
  cli_args_free(&a);
  return st;
}

int cli_cmd_nack(cli_ctx *ctx, int argc, char **argv) {
  static const cli_optspec spec[] = {{"delay", CLI_VALUE}, {"reason", CLI_VALUE}};
  cli_args a;
  int64_t delay = 0;
  int st = cli_args_parse(ctx, argc, argv, spec, 2, &a);
  if (st) return st;
  if (a.npos != 2)
    st = a.npos > 2 ? cli_usage(ctx, "unexpected argument \"%s\"", a.pos[2])
                    : cli_usage(ctx, a.npos ? "missing RECEIPT" : "missing QUEUE");
  if (!st && a.val[0]) st = cli_parse_ms(ctx, "--delay", a.val[0], &delay);
  if (!st) st = cli_open(ctx, CLI_OPEN_WRITE);
  if (!st) {
    int rc = mq_nack(ctx->store, a.pos[0], a.pos[1], delay, a.val[1]);
    if (rc != MQ_OK) st = cli_fail(ctx, rc);
  }
  cli_args_free(&a);
  return st;
}

int cli_cmd_touch(cli_ctx *ctx, int argc, char **argv) {
  static const cli_optspec spec[] = {{"visibility", CLI_VALUE}};
  cli_args a;
  int64_t vis = 0;
  int st = cli_args_parse(ctx, argc, argv, spec, 1, &a);
  if (st) return st;
  if (a.npos != 2)
    st = a.npos > 2 ? cli_usage(ctx, "unexpected argument \"%s\"", a.pos[2])
                    : cli_usage(ctx, a.npos ? "missing RECEIPT" : "missing QUEUE");
  else if (!a.val[0])
    st = cli_usage(ctx, "touch needs --visibility MS");
  if (!st) st = cli_parse_ms(ctx, "--visibility", a.val[0], &vis);
  if (!st) st = cli_open(ctx, CLI_OPEN_WRITE);
  if (!st) {
    int rc = mq_touch(ctx->store, a.pos[0], a.pos[1], vis);
    if (rc != MQ_OK) st = cli_fail(ctx, rc);
  }
  cli_args_free(&a);
  return st;
}
