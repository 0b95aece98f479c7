/*
** cli_topic.c -- the `mq` commands for topics and durable subscriptions:
** topic create/drop/ls/stats, subscribe and unsubscribe.  (publish lives
** with put in cli_msg.c, whose options it shares.)
**
** A subscription is a queue named "topic/sub" for everything after it is
** created -- get, ack, nack, touch, peek, stats, purge, redrive, export --
** so those commands need nothing here.  What is here is what only topics
** have: creating and dropping them, the subscription set, and the topic's
** own counts beside each subscription's.
**
** As everywhere in the tool, the whole command line is checked before the
** file is opened; a subscription's filter too, with mq_subject_matches, so
** a malformed filter is a usage error that never touches the store.
** `topic` takes its subcommand as its first argument; global options may
** come before FILE or after the subcommand.
*/
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Exactly `want` positional arguments, the missing one named by what[i]. */
static int cli_topic_args(cli_ctx *ctx, const cli_args *a, size_t want, const char *const *what) {
  if (a->npos > want) return cli_usage(ctx, "unexpected argument \"%s\"", a->pos[want]);
  if (a->npos < want) return cli_usage(ctx, "missing %s", what[a->npos]);
  return CLI_EXIT_OK;
}

static const char *const cli_topic_what[] = {"TOPIC", "SUB"};

/* ---- topic create / drop ------------------------------------------------ */

/* A topic takes the last four queue options, in their usual order. */
static int cli_topic_create(cli_ctx *ctx, int argc, char **argv) {
  static const cli_optspec spec[] = {{"retention", CLI_VALUE},
                                     {"max-payload", CLI_VALUE},
                                     {"compress-above", CLI_VALUE},
                                     {"dedup-window", CLI_VALUE}};
  cli_args a;
  mq_queue_options o;
  unsigned given;
  int st = cli_args_parse(ctx, argc, argv, spec, 4, &a);
  if (st) return st;
  mq_queue_options_init(&o);
  if (!(st = cli_topic_args(ctx, &a, 1, cli_topic_what)) &&
      !(st = cli_queue_options(ctx, &a, 0, CLI_QO_RETENTION, CLI_QUEUE_NOPTS, &o, &given)) &&
      !(st = cli_open(ctx, CLI_OPEN_CREATE))) {
    int rc = mq_topic_create(ctx->store, a.pos[0], &o);
    if (rc != MQ_OK) st = cli_fail(ctx, rc);
  }
  cli_args_free(&a);
  return st;
}

static int cli_topic_drop(cli_ctx *ctx, int argc, char **argv) {
  cli_args a;
  int st = cli_args_parse(ctx, argc, argv, NULL, 0, &a);
  if (st) return st;
  if (!(st = cli_topic_args(ctx, &a, 1, cli_topic_what)) && !(st = cli_open(ctx, CLI_OPEN_WRITE))) {
    int rc = mq_topic_drop(ctx->store, a.pos[0]);
    if (rc != MQ_OK) st = cli_fail(ctx, rc);
  }
  cli_args_free(&a);
  return st;
}

/* ---- topic ls / stats ----------------------------------------------------- */

static int cli_topic_ls(cli_ctx *ctx, int argc, char **argv) {
  cli_args a;
  int st = cli_args_parse(ctx, argc, argv, NULL, 0, &a);
  if (st) return st;
  char **t = NULL;
  size_t nt = 0;
  if (!(st = cli_topic_args(ctx, &a, 0, cli_topic_what)) && !(st = cli_open(ctx, CLI_OPEN_READ))) {
    int rc = mq_topic_list(ctx->store, &t, &nt);
    if (rc != MQ_OK) st = cli_fail(ctx, rc);
  }
  int w = 5;
  for (size_t i = 0; i < nt; i++)
    if ((int)strlen(t[i]) > w) w = (int)strlen(t[i]);
  if (!st && !ctx->json) printf("%-*s %13s\n", w, "topic", "subscriptions");
  for (size_t i = 0; !st && i < nt; i++) {
    char **s = NULL;
    size_t ns = 0;
    int rc = mq_subscription_list(ctx->store, t[i], &s, &ns);
    if (rc == MQ_ENOTFOUND) continue; /* dropped since the listing */
    if (rc != MQ_OK) {
      st = cli_fail(ctx, rc);
      break;
    }
    mq_list_free(s, ns);
    if (ctx->json) {
      cli_jobj o;
      cli_jobj_begin(&o, stdout);
      cli_jobj_str(&o, "topic", t[i], strlen(t[i]));
      cli_jobj_int(&o, "subscriptions", (int64_t)ns);
      cli_jobj_end(&o);
    } else {
      printf("%-*s %13zu\n", w, t[i], ns);
    }
  }
  mq_list_free(t, nt);
  cli_args_free(&a);
  return st;
}

static int cli_topic_stats(cli_ctx *ctx, int argc, char **argv) {
  cli_args a;
  int st = cli_args_parse(ctx, argc, argv, NULL, 0, &a);
  if (st) return st;
  if ((st = cli_topic_args(ctx, &a, 1, cli_topic_what)) || (st = cli_open(ctx, CLI_OPEN_READ))) {
    cli_args_free(&a);
    return st;
  }
  const char *topic = a.pos[0];
  mq_topic_stats ts;
  char **subs = NULL;
  size_t ns = 0, k = 0;
  int rc = mq_topic_stats_get(ctx->store, topic, &ts);
  if (rc == MQ_OK) rc = mq_subscription_list(ctx->store, topic, &subs, &ns);
  if (rc != MQ_OK) st = cli_fail(ctx, rc);
  mq_queue_stats *s = st ? NULL : calloc(ns ? ns : 1, sizeof *s);
  mq_queue_info *info = st ? NULL : calloc(ns ? ns : 1, sizeof *info);
  char **names = st ? NULL : calloc(ns ? ns : 1, sizeof *names);
  if (!st && (!s || !info || !names)) st = cli_error(CLI_EXIT_OTHER, "out of memory");
  for (size_t i = 0; !st && i < ns; i++) {
    size_t len = strlen(topic) + 1 + strlen(subs[i]) + 1;
    if (!(names[k] = malloc(len))) {
      st = cli_error(CLI_EXIT_OTHER, "out of memory");
      break;
    }
    snprintf(names[k], len, "%s/%s", topic, subs[i]);
    rc = mq_queue_info_get(ctx->store, names[k], &info[k]);
    if (rc == MQ_OK) rc = mq_queue_stats_get(ctx->store, names[k], &s[k]);
    if (rc == MQ_ENOTFOUND) { /* unsubscribed since the listing */
      free(names[k]);
      continue;
    }
    if (rc != MQ_OK) {
      free(names[k]);
      st = cli_fail(ctx, rc);
      break;
    }
    k++;
  }
  if (!st) {
    if (ctx->json) {
      cli_jobj o;
      cli_jobj_begin(&o, stdout);
      cli_jobj_str(&o, "topic", topic, strlen(topic));
      cli_jobj_int(&o, "subscriptions", ts.subscriptions);
      cli_jobj_int(&o, "messages", ts.messages);
      cli_jobj_int(&o, "payloads", ts.payloads);
      cli_jobj_int(&o, "bytes", ts.bytes);
      cli_jobj_end(&o);
    } else {
      printf("topic %s: subscriptions %" PRId64 ", messages %" PRId64 ", payloads %" PRId64
             ", bytes %" PRId64 "\n",
             topic, ts.subscriptions, ts.messages, ts.payloads, ts.bytes);
    }
    if (k) cli_stats_print(ctx, names, s, info, k);
  }
  for (size_t i = 0; names && i < k; i++) free(names[i]);
  free(names);
  free(s);
  free(info);
  mq_list_free(subs, ns);
  cli_args_free(&a);
  return st;
}

/* ---- topic: the subcommands ------------------------------------------------ */

typedef struct cli_subcommand {
  const char *name;
  const char *cmd; /* for messages */
  int (*run)(cli_ctx *ctx, int argc, char **argv);
  const char *usage; /* after "mq FILE " */
} cli_subcommand;

static const cli_subcommand cli_topic_cmds[] = {
    {"create", "topic create", cli_topic_create,
     "topic create TOPIC [--max-payload BYTES] [--compress-above BYTES] [--retention MS] "
     "[--dedup-window MS]"},
    {"drop", "topic drop", cli_topic_drop, "topic drop TOPIC"},
    {"ls", "topic ls", cli_topic_ls, "topic ls"},
    {"stats", "topic stats", cli_topic_stats, "topic stats TOPIC"},
};

int cli_cmd_topic(cli_ctx *ctx, int argc, char **argv) {
  if (argc < 1) return cli_usage(ctx, "topic needs a subcommand: create, drop, ls or stats");
  for (size_t i = 0; i < sizeof cli_topic_cmds / sizeof cli_topic_cmds[0]; i++) {
    const cli_subcommand *c = &cli_topic_cmds[i];
    if (strcmp(argv[0], c->name) != 0) continue;
    ctx->cmd = c->cmd;
    ctx->usage = c->usage;
    return c->run(ctx, argc - 1, argv + 1);
  }
  return cli_usage(ctx, "unknown topic subcommand \"%s\": create, drop, ls or stats", argv[0]);
}

/* ---- subscribe / unsubscribe ------------------------------------------------ */

/* A subscription takes the first four queue options, then its filter. */
int cli_cmd_subscribe(cli_ctx *ctx, int argc, char **argv) {
  static const cli_optspec spec[] = {{"visibility", CLI_VALUE},
                                     {"max-receives", CLI_VALUE},
                                     {"dlq", CLI_VALUE},
                                     {"retention", CLI_VALUE},
                                     {"filter", CLI_VALUE}};
  cli_args a;
  mq_queue_options o;
  unsigned given;
  int st = cli_args_parse(ctx, argc, argv, spec, 5, &a);
  if (st) return st;
  const char *filter = a.val[4];
  mq_queue_options_init(&o);
  if (!(st = cli_topic_args(ctx, &a, 2, cli_topic_what)) &&
      !(st = cli_queue_options(ctx, &a, 0, CLI_QO_VISIBILITY, CLI_QO_RETENTION + 1, &o, &given))) {
    /* The library would refuse it too, but only once the file is open. */
    if (filter && mq_subject_matches(filter, "") < 0)
      st = cli_usage(ctx,
                     "--filter \"%s\" is malformed: levels are separated by '.' or '/'; '*', "
                     "'+', '>' and '#' must be whole levels, '>' and '#' only the last; at "
                     "most %d bytes, no control characters",
                     filter, MQ_SUBJECT_MAX);
  }
  if (!st && !(st = cli_open(ctx, CLI_OPEN_WRITE))) {
    int rc = mq_subscription_create(ctx->store, a.pos[0], a.pos[1], filter, &o);
    if (rc != MQ_OK) st = cli_fail(ctx, rc);
  }
  cli_args_free(&a);
  return st;
}

int cli_cmd_unsubscribe(cli_ctx *ctx, int argc, char **argv) {
  cli_args a;
  int st = cli_args_parse(ctx, argc, argv, NULL, 0, &a);
  if (st) return st;
  if (!(st = cli_topic_args(ctx, &a, 2, cli_topic_what)) && !(st = cli_open(ctx, CLI_OPEN_WRITE))) {
    int rc = mq_subscription_drop(ctx->store, a.pos[0], a.pos[1]);
    if (rc != MQ_OK) st = cli_fail(ctx, rc);
  }
  cli_args_free(&a);
  return st;
}
