/*
** cli_args.c -- command-line parsing for the `mq` tool: each command's
** options, the global options that may appear among them, strict parsers
** for numbers, durations and sizes, and reading standard input whole.
**
** Options are GNU style: --name VALUE or --name=VALUE, anywhere among the
** positional arguments, with "--" ending them so a payload or file name may
** start with a dash.  Every number is parsed strictly (the whole string,
** range-checked): "10x", "" or "-1" for a length is a usage error, never a
** silent zero, because a mistyped --visibility would otherwise turn into a
** lease nobody asked for.
*/
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* ---- global options ---------------------------------------------------------- */

static const char *const cli_globals[] = {"json", "sync", "busy-timeout", "page-size"};

int cli_global_known(const char *name, size_t len) {
  for (size_t i = 0; i < sizeof cli_globals / sizeof cli_globals[0]; i++)
    if (strlen(cli_globals[i]) == len && memcmp(cli_globals[i], name, len) == 0) return 1;
  return 0;
}

int cli_global_takes_value(const char *name) { return strcmp(name, "json") != 0; }

int cli_global_option(cli_ctx *ctx, const char *name, const char *value) {
  if (strcmp(name, "json") == 0) {
    if (value) return cli_usage(NULL, "option --json takes no value");
    ctx->json = 1;
    return CLI_EXIT_OK;
  }
  if (!value) return cli_usage(NULL, "option --%s needs a value", name);
  if (strcmp(name, "sync") == 0) {
    if (strcmp(value, "full") == 0)
      ctx->sync = MQ_SYNC_FULL;
    else if (strcmp(value, "normal") == 0)
      ctx->sync = MQ_SYNC_NORMAL;
    else if (strcmp(value, "off") == 0)
      ctx->sync = MQ_SYNC_OFF;
    else
      return cli_usage(NULL, "--sync takes full, normal or off, not \"%s\"", value);
    return CLI_EXIT_OK;
  }
  if (strcmp(name, "page-size") == 0) {
    int64_t bytes;
    int st = cli_parse_size(NULL, "--page-size", value, &bytes);
    if (st != CLI_EXIT_OK) return st;
    if (bytes < MQ_PAGE_SIZE_MIN || bytes > MQ_PAGE_SIZE_MAX || (bytes & (bytes - 1)))
      return cli_usage(NULL, "--page-size %s is not a power of two from %d to %d", value,
                       MQ_PAGE_SIZE_MIN, MQ_PAGE_SIZE_MAX);
    ctx->page_size = (int)bytes;
    return CLI_EXIT_OK;
  }
  /* busy-timeout */
  int64_t ms;
  int st = cli_parse_ms(NULL, "--busy-timeout", value, &ms);
  if (st != CLI_EXIT_OK) return st;
  if (ms > INT_MAX) return cli_usage(NULL, "--busy-timeout %s is too long", value);
  ctx->busy_timeout_ms = (int)ms;
  return CLI_EXIT_OK;
}

/* ---- a command's arguments ------------------------------------------------------ */

void cli_args_free(cli_args *a) {
  free(a->pos);
  for (size_t i = 0; i < CLI_MAX_OPTS; i++) free(a->multi[i]);
  memset(a, 0, sizeof *a);
}

int cli_args_parse(cli_ctx *ctx, int argc, char **argv, const cli_optspec *spec, size_t n,
                   cli_args *out) {
  memset(out, 0, sizeof *out);
  if (n > CLI_MAX_OPTS) return cli_error(CLI_EXIT_OTHER, "internal: too many options");
  out->pos = malloc(((size_t)argc + 1) * sizeof *out->pos);
  if (!out->pos) return cli_error(CLI_EXIT_OTHER, "out of memory");
  int dashdash = 0, st = CLI_EXIT_OK;
  for (int i = 0; i < argc && st == CLI_EXIT_OK; i++) {
    const char *a = argv[i];
    if (!dashdash && strcmp(a, "--") == 0) {
      dashdash = 1;
      continue;
    }
    if (dashdash || a[0] != '-' || a[1] == '\0') {
      out->pos[out->npos++] = a;
      continue;
    }
    if (a[1] != '-') {
      st = cli_usage(ctx, "unknown option %s (use -- before an argument that starts with -)", a);
      break;
    }
    const char *name = a + 2, *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    size_t j = 0;
    while (j < n && !(strlen(spec[j].name) == len && memcmp(spec[j].name, name, len) == 0)) j++;
    if (j == n) {
      char g[64];
      if (len >= sizeof g || !cli_global_known(name, len)) {
        st = cli_usage(ctx, "%s has no option --%.*s", ctx->cmd, (int)len, name);
        break;
      }
      memcpy(g, name, len);
      g[len] = '\0';
      const char *value = eq ? eq + 1 : NULL;
      if (!value && cli_global_takes_value(g)) {
        if (i + 1 >= argc) {
          st = cli_usage(ctx, "option --%s needs a value", g);
          break;
        }
        value = argv[++i];
      }
      st = cli_global_option(ctx, g, value);
      continue;
    }
    if (spec[j].kind == CLI_FLAG) {
      if (eq) st = cli_usage(ctx, "option --%s takes no value", spec[j].name);
      out->val[j] = "";
      continue;
    }
    const char *value = eq ? eq + 1 : NULL;
    if (!value) {
      if (i + 1 >= argc) {
        st = cli_usage(ctx, "option --%s needs a value", spec[j].name);
        break;
      }
      value = argv[++i];
    }
    out->val[j] = value;
    if (spec[j].kind == CLI_MULTI) {
      if (!out->multi[j] && !(out->multi[j] = malloc((size_t)argc * sizeof(char *)))) {
        st = cli_error(CLI_EXIT_OTHER, "out of memory");
        break;
      }
      out->multi[j][out->nmulti[j]++] = value;
    }
  }
  if (st != CLI_EXIT_OK) cli_args_free(out);
  return st;
}

/* ---- numbers --------------------------------------------------------------------- */

/* Parse a non-negative decimal prefix of s; *end gets the rest.  -1 on no
** digits or overflow. */
static int cli_digits(const char *s, int64_t *out, const char **end) {
  int64_t v = 0;
  const char *p = s;
  if (*p < '0' || *p > '9') return -1;
  for (; *p >= '0' && *p <= '9'; p++) {
    int d = *p - '0';
    if (v > (INT64_MAX - d) / 10) return -1;
    v = v * 10 + d;
  }
  *out = v;
  *end = p;
  return 0;
}

static int cli_scale(int64_t v, int64_t unit, int64_t *out) {
  if (v > INT64_MAX / unit) return -1;
  *out = v * unit;
  return 0;
}

int cli_parse_ms(cli_ctx *ctx, const char *opt, const char *s, int64_t *out) {
  int64_t v, unit = 0;
  const char *end;
  if (cli_digits(s, &v, &end) == 0) {
    if (*end == '\0' || strcmp(end, "ms") == 0)
      unit = 1;
    else if (strcmp(end, "s") == 0)
      unit = 1000;
    else if (strcmp(end, "m") == 0)
      unit = 60 * 1000;
    else if (strcmp(end, "h") == 0)
      unit = 3600 * 1000;
  }
  if (!unit || cli_scale(v, unit, out) != 0)
    return cli_usage(ctx, "%s takes a duration in ms (or with s, m, h), not \"%s\"", opt, s);
  return CLI_EXIT_OK;
}

int cli_parse_size(cli_ctx *ctx, const char *opt, const char *s, int64_t *out) {
  int64_t v, unit = 0;
  const char *end;
  if (cli_digits(s, &v, &end) == 0) {
    if (*end == '\0')
      unit = 1;
    else if (strcmp(end, "k") == 0 || strcmp(end, "K") == 0)
      unit = 1024;
    else if (strcmp(end, "M") == 0)
      unit = 1024 * 1024;
    else if (strcmp(end, "G") == 0)
      unit = 1024 * 1024 * 1024;
  }
  if (!unit || cli_scale(v, unit, out) != 0)
    return cli_usage(ctx, "%s takes a size in bytes (or with K, M, G), not \"%s\"", opt, s);
  return CLI_EXIT_OK;
}

int cli_parse_int(cli_ctx *ctx, const char *opt, const char *s, int64_t min, int64_t max,
                  int64_t *out) {
  int neg = s[0] == '-';
  int64_t v;
  const char *end;
  if (cli_digits(s + neg, &v, &end) != 0 || *end != '\0' || (neg ? -v : v) < min ||
      (neg ? -v : v) > max)
    return cli_usage(ctx, "%s takes a whole number from %lld to %lld, not \"%s\"", opt,
                     (long long)min, (long long)max, s);
  *out = neg ? -v : v;
  return CLI_EXIT_OK;
}

/* ---- standard input ----------------------------------------------------------- */

int cli_read_all(FILE *f, size_t limit, char **buf, size_t *len) {
  size_t cap = 64 * 1024, n = 0;
  char *b = malloc(cap + 1);
  *buf = NULL;
  *len = 0;
  if (!b) return cli_error(CLI_EXIT_OTHER, "out of memory reading standard input");
  for (;;) {
    if (n == cap) {
      /* Grow to at most limit + 1 bytes: one byte past the limit is enough
      ** to know the input is too long. */
      if (cap > limit) {
        free(b);
        return cli_error(CLI_EXIT_USAGE, "standard input is longer than %zu bytes", limit);
      }
      size_t ncap = cap > limit / 2 ? limit + 1 : cap * 2;
      char *nb = realloc(b, ncap + 1);
      if (!nb) {
        free(b);
        return cli_error(CLI_EXIT_OTHER, "out of memory reading standard input");
      }
      b = nb;
      cap = ncap;
    }
    size_t got = fread(b + n, 1, cap - n, f);
    n += got;
    if (got == 0) break;
  }
  if (ferror(f)) {
    int e = errno;
    free(b);
    return cli_error(CLI_EXIT_OTHER, "reading standard input: %s", e ? strerror(e) : "error");
  }
  if (n > limit) {
    free(b);
    return cli_error(CLI_EXIT_USAGE, "standard input is longer than %zu bytes", limit);
  }
  b[n] = '\0';
  *buf = b;
  *len = n;
  return CLI_EXIT_OK;
}
