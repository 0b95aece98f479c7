/*
** cli_queue.c -- the `mq` commands that work on queues and on the store as
** a whole: create, drop, purge, ls, stats, redrive and check.
**
** Each command parses and checks its whole command line before it opens
** the file, so a usage error never creates or touches a store.  Commands
** that only read (ls, stats, check) open the file read-only, which also
** means they work on a file the user may read but not write, and cannot
** change it by accident.
**
** ls and stats see the whole store: queues, and topics with their
** subscriptions ("topic/sub"), each with its kind and options from
** mq_queue_info_get, because a subscription is a queue to every command
** here.  A name dropped by another process between the listing and the
** per-name call is left out, not reported: it is simply gone.  A topic's
** name where a queue is meant gets a message naming the right command,
** since the library would treat it as a queue that is always empty.
*/
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Parse exactly `want` positional arguments (or at most `want` when
** optional is set). */
static int cli_positional(cli_ctx *ctx, const cli_args *a, size_t want, int optional,
                          const char *what) {
  if (a->npos > want) return cli_usage(ctx, "unexpected argument \"%s\"", a->pos[want]);
  if (a->npos < want && !optional) return cli_usage(ctx, "missing %s", what);
  return CLI_EXIT_OK;
}

int cli_queue_options(cli_ctx *ctx, const cli_args *a, size_t first, int from, int to,
                      mq_queue_options *o, unsigned *given) {
  static const char *const names[CLI_QUEUE_NOPTS] = {
      "--visibility",  "--max-receives",   "--dlq",         "--retention",
      "--max-payload", "--compress-above", "--dedup-window"};
  int64_t v;
  int st;
  *given = 0;
  for (int k = from; k < to; k++) {
    const char *s = a->val[first + (size_t)(k - from)];
    if (!s) continue;
    *given |= 1u << k;
    switch (k) {
      case CLI_QO_VISIBILITY:
        if ((st = cli_parse_ms(ctx, names[k], s, &o->visibility_ms))) return st;
        break;
      case CLI_QO_MAX_RECEIVES:
        if ((st = cli_parse_int(ctx, names[k], s, 0, 1000000000, &v))) return st;
        o->max_receives = (int)v;
        break;
      case CLI_QO_DLQ:
        o->dlq = *s ? s : NULL;
        break;
      case CLI_QO_RETENTION:
        if ((st = cli_parse_ms(ctx, names[k], s, &o->retention_ms))) return st;
        break;
      case CLI_QO_MAX_PAYLOAD:
      case CLI_QO_COMPRESS_ABOVE:
        if ((st = cli_parse_size(ctx, names[k], s, &v))) return st;
        if ((uint64_t)v > SIZE_MAX) return cli_usage(ctx, "%s %s is too large", names[k], s);
        if (k == CLI_QO_MAX_PAYLOAD)
          o->max_payload = (size_t)v;
        else
          o->compress_above = (size_t)v;
        break;
      default:
        if ((st = cli_parse_ms(ctx, names[k], s, &o->dedup_window_ms))) return st;
        break;
    }
  }
  return CLI_EXIT_OK;
}

int cli_ensure_queue(cli_ctx *ctx, const char *queue, const mq_queue_options *o) {
  mq_queue_info info;
  int rc = mq_queue_info_get(ctx->store, queue, &info);
  if (rc == MQ_ENOTFOUND) {
    rc = mq_queue_create(ctx->store, queue, o);
    /* Another process created it since we looked (or it is a topic, which
    ** the put then reports): use it as it is. */
    if (rc == MQ_EEXIST) rc = MQ_OK;
  }
  return rc == MQ_OK ? CLI_EXIT_OK : cli_fail(ctx, rc);
}

int cli_cmd_create(cli_ctx *ctx, int argc, char **argv) {
  static const cli_optspec spec[] = {CLI_QUEUE_OPTSPECS};
  cli_args a;
  mq_queue_options o;
  unsigned given;
  int st = cli_args_parse(ctx, argc, argv, spec, CLI_QUEUE_NOPTS, &a);
  if (st) return st;
  mq_queue_options_init(&o);
  if (!(st = cli_positional(ctx, &a, 1, 0, "QUEUE")) &&
      !(st = cli_queue_options(ctx, &a, 0, 0, CLI_QUEUE_NOPTS, &o, &given)) &&
      !(st = cli_open(ctx, CLI_OPEN_CREATE))) {
    int rc = mq_queue_create(ctx->store, a.pos[0], &o);
    if (rc != MQ_OK) st = cli_fail(ctx, rc);
  }
  cli_args_free(&a);
  return st;
}

/* drop and purge: one queue name, a read-write open, one call. */
static int cli_one_queue(cli_ctx *ctx, int argc, char **argv, cli_args *a) {
  int st = cli_args_parse(ctx, argc, argv, NULL, 0, a);
  if (st) return st;
  if ((st = cli_positional(ctx, a, 1, 0, "QUEUE")) || (st = cli_open(ctx, CLI_OPEN_WRITE)))
    cli_args_free(a);
  return st;
}

int cli_cmd_drop(cli_ctx *ctx, int argc, char **argv) {
  cli_args a;
  int st = cli_one_queue(ctx, argc, argv, &a);
  if (st) return st;
  int rc = mq_queue_drop(ctx->store, a.pos[0]);
  mq_queue_info info;
  if (rc == MQ_EINVAL && mq_queue_info_get(ctx->store, a.pos[0], &info) == MQ_OK &&
      info.kind != MQ_KIND_QUEUE) {
    /* The library's message names its own calls; name the commands. */
    const char *slash = strchr(a.pos[0], '/');
    if (info.kind == MQ_KIND_TOPIC)
      st = cli_error(CLI_EXIT_USAGE, "\"%s\" is a topic: drop it with mq FILE topic drop %s",
                     a.pos[0], a.pos[0]);
    else
      st = cli_error(CLI_EXIT_USAGE,
                     "\"%s\" is a subscription: drop it with mq FILE unsubscribe %.*s %s",
                     a.pos[0], slash ? (int)(slash - a.pos[0]) : 0, a.pos[0],
                     slash ? slash + 1 : "");
  } else if (rc != MQ_OK) {
    st = cli_fail(ctx, rc);
  }
  cli_args_free(&a);
  return st;
}

static void cli_print_count(cli_ctx *ctx, const char *queue, const char *key, int64_t n) {
  if (ctx->json) {
    cli_jobj o;
    cli_jobj_begin(&o, stdout);
    cli_jobj_str(&o, "queue", queue, strlen(queue));
    cli_jobj_int(&o, key, n);
    cli_jobj_end(&o);
  } else {
    printf("%s %" PRId64 "\n", key, n);
  }
}

int cli_cmd_purge(cli_ctx *ctx, int argc, char **argv) {
  cli_args a;
  int st = cli_one_queue(ctx, argc, argv, &a);
  if (st) return st;
  int64_t n = 0;
  if ((st = cli_reject_topic(ctx, a.pos[0], "purge"))) {
    cli_args_free(&a);
    return st;
  }
  int rc = mq_queue_purge(ctx->store, a.pos[0], &n);
  if (rc != MQ_OK)
    st = cli_fail(ctx, rc);
  else
    cli_print_count(ctx, a.pos[0], "purged", n);
  cli_args_free(&a);
  return st;
}

int cli_cmd_redrive(cli_ctx *ctx, int argc, char **argv) {
  static const cli_optspec spec[] = {{"max", CLI_VALUE}};
  cli_args a;
  int64_t max = 0, moved = 0;
  int st = cli_args_parse(ctx, argc, argv, spec, 1, &a);
  if (st) return st;
  if (!(st = cli_positional(ctx, &a, 1, 0, "QUEUE")) &&
      !(a.val[0] && (st = cli_parse_int(ctx, "--max", a.val[0], 0, INT64_MAX, &max))) &&
      !(st = cli_open(ctx, CLI_OPEN_WRITE)) && !(st = cli_reject_topic(ctx, a.pos[0], "redrive"))) {
    int rc = mq_redrive(ctx->store, a.pos[0], max, &moved);
    if (rc != MQ_OK)
      st = cli_fail(ctx, rc);
    else
      cli_print_count(ctx, a.pos[0], "moved", moved);
  }
  cli_args_free(&a);
  return st;
}

/* ---- listing ------------------------------------------------------------------ */

/* One name of the store, in the order ls shows them. */
typedef struct cli_entry {
  char *name;      /* "queue", "topic" or "topic/sub"; owned */
  int kind;        /* MQ_KIND_* */
  int64_t subs;    /* a topic's subscriptions */
} cli_entry;

static void cli_entries_free(cli_entry *e, size_t n) {
  for (size_t i = 0; e && i < n; i++) free(e[i].name);
  free(e);
}

static int cli_entries_add(cli_entry **e, size_t *n, size_t *cap, const char *a, const char *b,
                           int kind, int64_t subs) {
  if (*n == *cap) {
    size_t ncap = *cap ? *cap * 2 : 32;
    cli_entry *ne = realloc(*e, ncap * sizeof *ne);
    if (!ne) return -1;
    *e = ne;
    *cap = ncap;
  }
  size_t la = strlen(a), lb = b ? strlen(b) + 1 : 0;
  char *name = malloc(la + lb + 1);
  if (!name) return -1;
  memcpy(name, a, la);
  if (b) {
    name[la] = '/';
    memcpy(name + la + 1, b, lb - 1);
  }
  name[la + lb] = '\0';
  (*e)[*n].name = name;
  (*e)[*n].kind = kind;
  (*e)[*n].subs = subs;
  (*n)++;
  return 0;
}

/* Every queue (sorted), then every topic (sorted, included only when
** topics is set) followed by its subscriptions (sorted) as "topic/sub". A
** topic dropped by another process while we list is left out. */
static int cli_entries_list(cli_ctx *ctx, int topics, cli_entry **out, size_t *count) {
  char **q = NULL, **t = NULL;
  size_t nq = 0, nt = 0, n = 0, cap = 0;
  cli_entry *e = NULL;
  int st = CLI_EXIT_OK, rc = mq_queue_list(ctx->store, &q, &nq);
  if (rc == MQ_OK) rc = mq_topic_list(ctx->store, &t, &nt);
  for (size_t i = 0; rc == MQ_OK && i < nq && !st; i++)
    if (cli_entries_add(&e, &n, &cap, q[i], NULL, MQ_KIND_QUEUE, 0)) st = CLI_EXIT_OTHER;
  for (size_t i = 0; rc == MQ_OK && i < nt && !st; i++) {
    char **s = NULL;
    size_t ns = 0;
    int src = mq_subscription_list(ctx->store, t[i], &s, &ns);
    if (src == MQ_ENOTFOUND) continue;
    if (src != MQ_OK) {
      rc = src;
      break;
    }
    if (topics && cli_entries_add(&e, &n, &cap, t[i], NULL, MQ_KIND_TOPIC, (int64_t)ns))
      st = CLI_EXIT_OTHER;
    for (size_t k = 0; k < ns && !st; k++)
      if (cli_entries_add(&e, &n, &cap, t[i], s[k], MQ_KIND_SUBSCRIPTION, 0)) st = CLI_EXIT_OTHER;
    mq_list_free(s, ns);
  }
  mq_list_free(q, nq);
  mq_list_free(t, nt);
  if (rc != MQ_OK) st = cli_fail(ctx, rc);
  else if (st) st = cli_error(st, "out of memory");
  if (st) {
    cli_entries_free(e, n);
    return st;
  }
  *out = e;
  *count = n;
  return CLI_EXIT_OK;
}

int cli_cmd_ls(cli_ctx *ctx, int argc, char **argv) {
  cli_args a;
  int st = cli_args_parse(ctx, argc, argv, NULL, 0, &a);
  if (st) return st;
  cli_entry *e = NULL;
  size_t n = 0;
  if (!(st = cli_positional(ctx, &a, 0, 0, "")) && !(st = cli_open(ctx, CLI_OPEN_READ)))
    st = cli_entries_list(ctx, 1, &e, &n);
  int w = 1;
  for (size_t i = 0; i < n; i++)
    if ((int)strlen(e[i].name) > w) w = (int)strlen(e[i].name);
  for (size_t i = 0; !st && i < n; i++) {
    mq_queue_info info;
    int rc = mq_queue_info_get(ctx->store, e[i].name, &info);
    if (rc == MQ_ENOTFOUND) continue; /* dropped since the listing */
    if (rc != MQ_OK) {
      st = cli_fail(ctx, rc);
      break;
    }
    if (ctx->json) {
      cli_jobj o;
      cli_jobj_begin(&o, stdout);
      cli_jobj_str(&o, "queue", e[i].name, strlen(e[i].name));
      cli_info_json(&o, &info);
      if (info.kind == MQ_KIND_TOPIC) cli_jobj_int(&o, "subscriptions", e[i].subs);
      cli_jobj_end(&o);
    } else {
      printf("%-*s %-12s", w, e[i].name, cli_kind_name(info.kind));
      if (info.kind == MQ_KIND_TOPIC) printf(" subscriptions=%" PRId64, e[i].subs);
      cli_info_human(stdout, &info);
      putchar('\n');
    }
  }
  cli_entries_free(e, n);
  cli_args_free(&a);
  return st;
}

/* ---- stats ----------------------------------------------------------------- */

static void cli_stats_json(const char *q, const mq_queue_stats *s, const mq_queue_info *info) {
  cli_jobj o;
  cli_jobj_begin(&o, stdout);
  cli_jobj_str(&o, "queue", q, strlen(q));
  cli_jobj_int(&o, "ready", s->ready);
  cli_jobj_int(&o, "inflight", s->inflight);
  cli_jobj_int(&o, "delayed", s->delayed);
  cli_jobj_int(&o, "dead", s->dead);
  cli_jobj_int(&o, "total", s->total);
  cli_jobj_int(&o, "oldest_age_ms", s->oldest_age_ms);
  cli_jobj_int(&o, "bytes", s->bytes);
  if (info) cli_info_json(&o, info);
  cli_jobj_end(&o);
}

void cli_stats_print(cli_ctx *ctx, char **names, const mq_queue_stats *s,
                     const mq_queue_info *info, size_t n) {
  if (ctx->json) {
    for (size_t i = 0; i < n; i++) cli_stats_json(names[i], &s[i], info ? &info[i] : NULL);
    return;
  }
  /* A table whose first column fits the longest name; numbers right-
  ** aligned so that columns of counts read at a glance. */
  int w = 5;
  for (size_t i = 0; i < n; i++)
    if ((int)strlen(names[i]) > w) w = (int)strlen(names[i]);
  printf("%-*s %10s %10s %10s %10s %10s %14s %12s\n", w, "queue", "ready", "inflight", "delayed",
         "dead", "total", "oldest_age_ms", "bytes");
  for (size_t i = 0; i < n; i++)
    printf("%-*s %10" PRId64 " %10" PRId64 " %10" PRId64 " %10" PRId64 " %10" PRId64 " %14" PRId64
           " %12" PRId64 "\n",
           w, names[i], s[i].ready, s[i].inflight, s[i].delayed, s[i].dead, s[i].total,
           s[i].oldest_age_ms, s[i].bytes);
}

int cli_cmd_stats(cli_ctx *ctx, int argc, char **argv) {
  cli_args a;
  int st = cli_args_parse(ctx, argc, argv, NULL, 0, &a);
  if (st) return st;
  if ((st = cli_positional(ctx, &a, 1, 1, "")) || (st = cli_open(ctx, CLI_OPEN_READ))) {
    cli_args_free(&a);
    return st;
  }
  cli_entry *e = NULL, one = {NULL, 0, 0};
  size_t n = 0;
  if (a.npos) {
    one.name = (char *)(uintptr_t)a.pos[0];
    n = 1;
  } else {
    st = cli_entries_list(ctx, 0, &e, &n);
  }
  mq_queue_stats *s = st ? NULL : calloc(n ? n : 1, sizeof *s);
  mq_queue_info *info = st ? NULL : calloc(n ? n : 1, sizeof *info);
  char **names = st ? NULL : calloc(n ? n : 1, sizeof *names);
  if (!st && (!s || !info || !names)) st = cli_error(CLI_EXIT_OTHER, "out of memory");
  size_t k = 0; /* the names still there */
  for (size_t i = 0; !st && i < n; i++) {
    const char *name = e ? e[i].name : one.name;
    int rc = mq_queue_info_get(ctx->store, name, &info[k]);
    if (rc == MQ_OK && info[k].kind == MQ_KIND_TOPIC)
      st = cli_error(CLI_EXIT_USAGE,
                     "\"%s\" is a topic: see mq FILE topic stats %s, or the stats of one of "
                     "its subscriptions, \"%s/SUB\"",
                     name, name, name);
    if (rc == MQ_OK && !st) rc = mq_queue_stats_get(ctx->store, name, &s[k]);
    /* A queue dropped by another process since the listing is gone, not
    ** an error of this command. */
    if (rc == MQ_ENOTFOUND && e) continue;
    if (rc != MQ_OK) st = cli_fail(ctx, rc);
    if (!st) names[k++] = (char *)(uintptr_t)name;
  }
  if (!st) {
    cli_stats_print(ctx, names, s, info, k);
    if (!ctx->json && a.npos && k == 1) {
      printf("kind: %s\noptions:", cli_kind_name(info[0].kind));
      cli_info_human(stdout, &info[0]);
      putchar('\n');
    }
  }
  free(s);
  free(info);
  free(names);
  cli_entries_free(e, e ? n : 0);
  cli_args_free(&a);
  return st;
}

/* ---- check ------------------------------------------------------------------ */

static void cli_check_problem(void *arg, const char *problem) {
  const cli_ctx *ctx = arg;
  size_t len = strlen(problem);
  if (ctx->json) {
    cli_jobj o;
    cli_jobj_begin(&o, stdout);
    if (cli_utf8_valid((const unsigned char *)problem, len))
      cli_jobj_str(&o, "problem", problem, len);
    else
      cli_jobj_base64(&o, "problem_base64", problem, len);
    cli_jobj_end(&o);
  } else {
    cli_print_safe(stdout, problem, len);
    putchar('\n');
  }
}

/* A command of the whole file with no arguments: check that there are
** none, and open the file read-only. */
static int cli_open_whole(cli_ctx *ctx, int argc, char **argv) {
  cli_args a;
  int st = cli_args_parse(ctx, argc, argv, NULL, 0, &a);
  if (st) return st;
  st = cli_positional(ctx, &a, 0, 0, "");
  cli_args_free(&a);
  return st ? st : cli_open(ctx, CLI_OPEN_READ);
}

int cli_cmd_check(cli_ctx *ctx, int argc, char **argv) {
  int st = cli_open_whole(ctx, argc, argv);
  if (st) return st;
  int64_t problems = 0;
  int rc = mq_store_verify(ctx->store, cli_check_problem, ctx, &problems);
  if (rc != MQ_OK && rc != MQ_ECORRUPT) return cli_fail(ctx, rc);
  if (ctx->json) {
    cli_jobj o;
    cli_jobj_begin(&o, stdout);
    cli_jobj_bool(&o, "ok", rc == MQ_OK);
    cli_jobj_int(&o, "problems", problems);
    cli_jobj_end(&o);
  } else if (rc == MQ_OK) {
    puts("ok");
  }
  if (rc == MQ_OK) return CLI_EXIT_OK;
  return cli_error(CLI_EXIT_DAMAGED, "%s is damaged: %" PRId64 " problem(s) found", ctx->path,
                   problems);
}

int cli_cmd_info(cli_ctx *ctx, int argc, char **argv) {
  int st = cli_open_whole(ctx, argc, argv);
  if (st) return st;
  mq_store_info si;
  int rc = mq_store_info_get(ctx->store, &si);
  if (rc != MQ_OK) return cli_fail(ctx, rc);
  if (ctx->json) {
    cli_jobj o;
    cli_jobj_begin(&o, stdout);
    cli_jobj_int(&o, "format_version", si.format_version);
    size_t n = strlen(si.created_by); /* from the file: maybe not UTF-8 */
    if (cli_utf8_valid((const unsigned char *)si.created_by, n))
      cli_jobj_str(&o, "created_by", si.created_by, n);
    else
      cli_jobj_base64(&o, "created_by_base64", si.created_by, n);
    cli_jobj_int(&o, "page_size", si.page_size);
    cli_jobj_int(&o, "file_bytes", si.file_bytes);
    cli_jobj_int(&o, "free_bytes", si.free_bytes);
    cli_jobj_int(&o, "wal_bytes", si.wal_bytes);
    cli_jobj_int(&o, "queues", si.queues);
    cli_jobj_int(&o, "topics", si.topics);
    cli_jobj_int(&o, "subscriptions", si.subscriptions);
    cli_jobj_end(&o);
  } else {
    printf("format          %d (created by ", si.format_version);
    cli_print_safe(stdout, si.created_by, strlen(si.created_by));
    printf(")\n");
    printf("page size       %d\n", si.page_size);
    printf("file            %" PRId64 " bytes (%" PRId64 " in free pages)\n", si.file_bytes,
           si.free_bytes);
    printf("wal             %" PRId64 " bytes\n", si.wal_bytes);
    printf("queues          %" PRId64 "\n", si.queues);
    printf("topics          %" PRId64 "\n", si.topics);
    printf("subscriptions   %" PRId64 "\n", si.subscriptions);
  }
  return CLI_EXIT_OK;
}
