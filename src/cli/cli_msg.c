/*
** cli_msg.c -- the `mq` commands that work on messages: put, publish, get,
** peek, ack, nack and touch.  A subscription is read like a queue, by the
** name "topic/sub", so get and the settling commands need nothing of their
** own for topics; publish shares put's options and payload handling.
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
/* publish takes put's first six options, then its own. */
enum { PUB_SUBJECT = PUT_CREATE, PUB_NOPTS };

/* What put and publish send: parsed from the command line (and standard
** input) before the file is opened. */
typedef struct cli_send {
  const char *name;    /* the queue or topic */
  int publish;
  const char *subject; /* publish --subject, or NULL */
  int lines;
  mq_put_options po;
  mq_header *h;        /* the headers, owned */
  const char *data;    /* DATA from the command line, or NULL */
  char *buf;           /* standard input, owned */
  size_t len;
} cli_send;

static void cli_print_sent(cli_ctx *ctx, const cli_send *m, int64_t id, int64_t delivered) {
  if (ctx->json) {
    cli_jobj o;
    cli_jobj_begin(&o, stdout);
    cli_jobj_int(&o, "id", id);
    if (m->publish) cli_jobj_int(&o, "delivered", delivered);
    cli_jobj_end(&o);
  } else if (m->publish) {
    printf("%" PRId64 " delivered %" PRId64 "\n", id, delivered);
  } else {
    printf("%" PRId64 "\n", id);
  }
}

/* Parse the positional arguments and the options put and publish share,
** and read standard input when it is the payload. */
static int cli_send_parse(cli_ctx *ctx, const cli_args *a, cli_send *m) {
  int st = CLI_EXIT_OK;
  int64_t v;
  const char *what = m->publish ? "TOPIC" : "QUEUE";
  mq_put_options_init(&m->po);
  m->lines = a->val[PUT_LINES] != NULL;
  m->data = a->npos > 1 ? a->pos[1] : NULL;
  m->name = a->npos ? a->pos[0] : NULL;
  if (a->npos < 1)
    st = cli_usage(ctx, "missing %s", what);
  else if (a->npos > 2)
    st = cli_usage(ctx, "unexpected argument \"%s\" (quote DATA that has spaces)", a->pos[2]);
  else if (m->lines && m->data)
    st = cli_usage(ctx, "--lines reads standard input: give no DATA");
  else if (m->lines && a->val[PUT_DEDUP])
    st = cli_usage(ctx, "--dedup would store only the first of the lines");
  if (!st && a->val[PUT_DELAY])
    st = cli_parse_ms(ctx, "--delay", a->val[PUT_DELAY], &m->po.delay_ms);
  if (!st && a->val[PUT_TTL]) st = cli_parse_ms(ctx, "--ttl", a->val[PUT_TTL], &m->po.ttl_ms);
  if (!st && a->val[PUT_PRIORITY] &&
      !(st = cli_parse_int(ctx, "--priority", a->val[PUT_PRIORITY], INT32_MIN, INT32_MAX, &v)))
    m->po.priority = (int)v;
  m->po.dedup_key = a->val[PUT_DEDUP];
  size_t nh = a->nmulti[PUT_HEADER];
  if (!st && nh) {
    if (!(m->h = calloc(nh, sizeof *m->h))) st = cli_error(CLI_EXIT_OTHER, "out of memory");
    for (size_t i = 0; !st && i < nh; i++) {
      /* NAME=VALUE: split at the first '=', so a value may contain '='. */
      char *nv = (char *)(uintptr_t)a->multi[PUT_HEADER][i], *eq = strchr(nv, '=');
      if (!eq || eq == nv) {
        st = cli_usage(ctx, "--header takes NAME=VALUE, not \"%s\"", nv);
        break;
      }
      *eq = '\0';
      m->h[i].name = nv;
      m->h[i].value = eq + 1;
    }
    m->po.headers = m->h;
    m->po.n_headers = nh;
  }
  /* Read the payload before opening, so a failed read creates no file. */
  if (!st && (!m->data || strcmp(m->data, "-") == 0))
    st = cli_read_all(stdin, m->lines ? (size_t)-1 / 4 : MQ_PAYLOAD_LIMIT, &m->buf, &m->len);
  return st;
}

/* A put or publish refused because the name is of the wrong kind: the
** library's message names its own calls (or the bad byte '/' in a topic
** name), this one the tool's commands. */
static int cli_put_fail(cli_ctx *ctx, int rc, const cli_send *m) {
  mq_queue_info info;
  const char *name = m->name;
  if (rc == MQ_EINVAL && (!m->publish || strchr(name, '/')) &&
      mq_queue_info_get(ctx->store, name, &info) == MQ_OK) {
    if (info.kind == MQ_KIND_TOPIC)
      return cli_error(CLI_EXIT_USAGE, "\"%s\" is a topic: send to it with mq FILE publish %s",
                       name, name);
    if (info.kind == MQ_KIND_SUBSCRIPTION)
      return cli_error(CLI_EXIT_USAGE,
                       "\"%s\" is a subscription: publish to its topic \"%.*s\" instead", name,
                       (int)strcspn(name, "/"), name);
  }
  return cli_fail(ctx, rc);
}

/* Every line of the input as one message, CLI_PUT_BATCH per transaction. */
static int cli_send_lines(cli_ctx *ctx, const cli_send *m) {
  mq_entry *e = malloc(CLI_PUT_BATCH * sizeof *e);
  mq_pub_entry *pe = malloc(CLI_PUT_BATCH * sizeof *pe);
  int64_t *ids = malloc(CLI_PUT_BATCH * sizeof *ids);
  int st = CLI_EXIT_OK;
  size_t pos = 0, line = 0, stored = 0;
  if (!e || !pe || !ids) st = cli_error(CLI_EXIT_OTHER, "out of memory");
  while (st == CLI_EXIT_OK && pos < m->len) {
    size_t n = 0, first = line + 1;
    while (n < CLI_PUT_BATCH && pos < m->len) {
      char *nl = memchr(m->buf + pos, '\n', m->len - pos);
      size_t end = nl ? (size_t)(nl - m->buf) : m->len;
      e[n].data = pe[n].data = m->buf + pos;
      e[n].len = pe[n].len = end - pos;
      e[n].opts = pe[n].opts = &m->po;
      pe[n].subject = m->subject;
      n++;
      line++;
      pos = nl ? end + 1 : m->len;
    }
    int64_t delivered = 0;
    int rc = m->publish ? mq_publish_batch(ctx->store, m->name, pe, n, ids, &delivered)
                        : mq_put_batch(ctx->store, m->name, e, n, ids);
    if (rc != MQ_OK) {
      st = rc != MQ_EINVAL || stored
               ? cli_fail_at(ctx, rc, "lines %zu-%zu (the %zu lines before were stored)", first,
                             line, stored)
               : cli_put_fail(ctx, rc, m);
      break;
    }
    /* The lines share one subject and no dedup key, so each reached the
    ** same subscriptions; an id of 0 is a line that reached none. */
    size_t sent = 0;
    for (size_t i = 0; i < n; i++) sent += ids[i] != 0;
    for (size_t i = 0; i < n; i++)
      cli_print_sent(ctx, m, ids[i], ids[i] && sent ? delivered / (int64_t)sent : 0);
    stored += n;
  }
  free(e);
  free(pe);
  free(ids);
  return st;
}

static int cli_send_run(cli_ctx *ctx, const cli_send *m) {
  if (m->lines) return cli_send_lines(ctx, m);
  int64_t id = 0, delivered = 0;
  const void *p = m->buf ? (const void *)m->buf : m->data;
  size_t len = m->buf ? m->len : strlen(m->data);
  int rc = m->publish
               ? mq_publish(ctx->store, m->name, m->subject, p, len, &m->po, &id, &delivered)
               : mq_put(ctx->store, m->name, p, len, &m->po, &id);
  if (rc != MQ_OK) return cli_put_fail(ctx, rc, m);
  cli_print_sent(ctx, m, id, delivered);
  return CLI_EXIT_OK;
}

#define CLI_SEND_OPTSPECS                                                                   \
  {"delay", CLI_VALUE}, {"priority", CLI_VALUE}, {"ttl", CLI_VALUE}, {"dedup", CLI_VALUE}, \
      {"header", CLI_MULTI}, {"lines", CLI_FLAG}

int cli_cmd_put(cli_ctx *ctx, int argc, char **argv) {
  static const cli_optspec spec[PUT_NOPTS] = {CLI_SEND_OPTSPECS, {"create", CLI_FLAG}};
  cli_args a;
  cli_send m;
  memset(&m, 0, sizeof m);
  int st = cli_args_parse(ctx, argc, argv, spec, PUT_NOPTS, &a);
  if (st) return st;
  st = cli_send_parse(ctx, &a, &m);
  /* Without --create a put cannot succeed on a missing file (it has no
  ** queues), so only --create may create one. */
  int create = a.val[PUT_CREATE] != NULL;
  if (!st) st = cli_open(ctx, create ? CLI_OPEN_CREATE : CLI_OPEN_WRITE);
  if (!st && create) {
    mq_queue_options qo;
    mq_queue_options_init(&qo);
    st = cli_ensure_queue(ctx, m.name, &qo);
  }
  if (!st) st = cli_send_run(ctx, &m);
  free(m.buf);
  free(m.h);
  cli_args_free(&a);
  return st;
}

int cli_cmd_publish(cli_ctx *ctx, int argc, char **argv) {
  static const cli_optspec spec[PUB_NOPTS] = {CLI_SEND_OPTSPECS, {"subject", CLI_VALUE}};
  cli_args a;
  cli_send m;
  memset(&m, 0, sizeof m);
  m.publish = 1;
  int st = cli_args_parse(ctx, argc, argv, spec, PUB_NOPTS, &a);
  if (st) return st;
  m.subject = a.val[PUB_SUBJECT];
  st = cli_send_parse(ctx, &a, &m);
  /* A topic exists only in an existing file. */
  if (!st) st = cli_open(ctx, CLI_OPEN_WRITE);
  if (!st) st = cli_send_run(ctx, &m);
  free(m.buf);
  free(m.h);
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
    else if (n == 0 && !(st = cli_reject_topic(ctx, a.pos[0], "peek at")))
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
  /* A topic has no leases: its receipts can only look stale. */
  if (!st) st = cli_reject_topic(ctx, a.pos[0], "ack messages of");
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
    if (rc != MQ_OK && !(st = cli_reject_topic(ctx, a.pos[0], "nack messages of")))
      st = cli_fail(ctx, rc);
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
    if (rc != MQ_OK && !(st = cli_reject_topic(ctx, a.pos[0], "touch messages of")))
      st = cli_fail(ctx, rc);
  }
  cli_args_free(&a);
  return st;
}
