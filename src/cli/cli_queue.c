/*
** cli_queue.c -- the `mq` commands that work on queues and on the store as
** a whole: create, drop, purge, ls, stats, redrive and check.
**
** Each command parses and checks its whole command line before it opens
** the file, so a usage error never creates or touches a store.  Commands
** that only read (ls, stats, check) open the file read-only, which also
** means they work on a file the user may read but not write, and cannot
** change it by accident.
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

int cli_queue_options(cli_ctx *ctx, const cli_args *a, size_t first, mq_queue_options *o,
                      int *any) {
  static const char *const names[CLI_QUEUE_NOPTS] = {
      "--visibility",  "--max-receives",   "--dlq",         "--retention",
      "--max-payload", "--compress-above", "--dedup-window"};
  int64_t v;
  int st;
  mq_queue_options_init(o);
  *any = 0;
  for (size_t k = 0; k < CLI_QUEUE_NOPTS; k++) {
    const char *s = a->val[first + k];
    if (!s) continue;
    *any = 1;
    switch (k) {
      case 0:
        if ((st = cli_parse_ms(ctx, names[k], s, &o->visibility_ms))) return st;
        break;
      case 1:
        if ((st = cli_parse_int(ctx, names[k], s, 0, 1000000000, &v))) return st;
        o->max_receives = (int)v;
        break;
      case 2:
        o->dlq = s;
        break;
      case 3:
        if ((st = cli_parse_ms(ctx, names[k], s, &o->retention_ms))) return st;
        break;
      case 4:
      case 5:
        if ((st = cli_parse_size(ctx, names[k], s, &v))) return st;
        if ((uint64_t)v > SIZE_MAX) return cli_usage(ctx, "%s %s is too large", names[k], s);
        if (k == 4)
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

int cli_ensure_queue(cli_ctx *ctx, const char *queue, const mq_queue_options *o, int strict) {
  mq_queue_stats s;
  int rc = strict ? MQ_ENOTFOUND : mq_queue_stats_get(ctx->store, queue, &s);
  if (rc == MQ_ENOTFOUND) {
    rc = mq_queue_create(ctx->store, queue, o);
    /* Another process created it since we looked: use it as it is. */
    if (rc == MQ_EEXIST && !strict) rc = MQ_OK;
  }
  return rc == MQ_OK ? CLI_EXIT_OK : cli_fail(ctx, rc);
}

int cli_cmd_create(cli_ctx *ctx, int argc, char **argv) {
  static const cli_optspec spec[] = {CLI_QUEUE_OPTSPECS};
  cli_args a;
  mq_queue_options o;
  int any, st = cli_args_parse(ctx, argc, argv, spec, CLI_QUEUE_NOPTS, &a);
  if (st) return st;
  if (!(st = cli_positional(ctx, &a, 1, 0, "QUEUE")) &&
      !(st = cli_queue_options(ctx, &a, 0, &o, &any)) && !(st = cli_open(ctx, CLI_OPEN_CREATE))) {
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
  if (rc != MQ_OK) st = cli_fail(ctx, rc);
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
      !(st = cli_open(ctx, CLI_OPEN_WRITE))) {
    int rc = mq_redrive(ctx->store, a.pos[0], max, &moved);
    if (rc != MQ_OK)
      st = cli_fail(ctx, rc);
    else
      cli_print_count(ctx, a.pos[0], "moved", moved);
  }
  cli_args_free(&a);
  return st;
}

int cli_cmd_ls(cli_ctx *ctx, int argc, char **argv) {
  cli_args a;
  int st = cli_args_parse(ctx, argc, argv, NULL, 0, &a);
  if (st) return st;
  char **names = NULL;
  size_t n = 0;
  if (!(st = cli_positional(ctx, &a, 0, 0, "")) && !(st = cli_open(ctx, CLI_OPEN_READ))) {
    int rc = mq_queue_list(ctx->store, &names, &n);
    if (rc != MQ_OK) st = cli_fail(ctx, rc);
    for (size_t i = 0; i < n; i++) {
      if (ctx->json) {
        cli_jobj o;
        cli_jobj_begin(&o, stdout);
        cli_jobj_str(&o, "queue", names[i], strlen(names[i]));
        cli_jobj_end(&o);
      } else {
        puts(names[i]);
      }
    }
    mq_list_free(names, n);
  }
  cli_args_free(&a);
  return st;
}

/* ---- stats ----------------------------------------------------------------- */

static void cli_stats_json(const char *q, const mq_queue_stats *s) {
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
  cli_jobj_end(&o);
}

/* A table whose first column fits the longest name; numbers right-aligned
** so that columns of counts read at a glance. */
static void cli_stats_table(char **names, const mq_queue_stats *s, size_t n) {
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
  char **names = NULL, *one[1];
  size_t n = 0;
  int rc = MQ_OK;
  if (a.npos) {
    one[0] = (char *)(uintptr_t)a.pos[0];
    n = 1;
  } else {
    rc = mq_queue_list(ctx->store, &names, &n);
  }
  mq_queue_stats *s = rc == MQ_OK ? calloc(n ? n : 1, sizeof *s) : NULL;
  if (rc != MQ_OK) {
    st = cli_fail(ctx, rc);
  } else if (!s) {
    st = cli_error(CLI_EXIT_OTHER, "out of memory");
  } else {
    char **list = names ? names : one;
    for (size_t i = 0; i < n && st == CLI_EXIT_OK; i++) {
      rc = mq_queue_stats_get(ctx->store, list[i], &s[i]);
      /* A queue dropped by another process since the listing is gone, not
      ** an error of this command. */
      if (rc == MQ_ENOTFOUND && names) {
        memmove(list + i, list + i + 1, (n - i - 1) * sizeof *list);
        n--;
        i--;
        continue;
      }
      if (rc != MQ_OK) st = cli_fail(ctx, rc);
    }
    if (st == CLI_EXIT_OK) {
      if (ctx->json)
        for (size_t i = 0; i < n; i++) cli_stats_json(list[i], &s[i]);
      else
        cli_stats_table(list, s, n);
    }
  }
  free(s);
  mq_list_free(names, names ? n : 0);
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

int cli_cmd_check(cli_ctx *ctx, int argc, char **argv) {
  cli_args a;
  int st = cli_args_parse(ctx, argc, argv, NULL, 0, &a);
  if (st) return st;
  st = cli_positional(ctx, &a, 0, 0, "");
  cli_args_free(&a);
  if (st || (st = cli_open(ctx, CLI_OPEN_READ))) return st;
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
