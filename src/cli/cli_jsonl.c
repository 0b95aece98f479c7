/*
** cli_jsonl.c -- reading one line of the export format (JSON lines) back
** into a message for import.
**
** This is not a general JSON parser: it reads exactly one object per line
** whose members are the fields export writes (doc/cli.md), each with its
** type, and refuses everything else -- unknown or repeated fields, floats,
** trailing data, malformed UTF-8 or escapes -- with the column of the
** first problem.  Refusing an unknown field matters: a misspelt "bdy"
** would otherwise import an empty message and lose the real one.
**
** It also refuses what the library would refuse later (an empty header
** name, a NUL inside a header), because import checks every line before it
** writes any: a file that passes here can only fail on the store's side
** (disk full, a payload over the queue's limit).
**
** The first line of an export is a header naming the queue and its
** options (cli_header_parse); it is told from a message line by its first
** member, "queue" or "options", names a message line never uses.  It is
** read just as strictly, and its values are range-checked as the library
** would check them, so a bad header fails before anything is written.
**
** Memory: every decoded string is written into one arena of the line's
** length plus one, which always suffices because no string decodes to more
** bytes than its quoted, escaped form takes on the line.  Base64 is decoded
** in place inside the arena, since it only shrinks.
*/
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef struct cli_jp {
  const unsigned char *s;
  size_t len, pos;
  char *arena;
  size_t used;
  char *err;
  size_t errlen;
} cli_jp;

static int cli_jp_fail(cli_jp *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int cli_jp_fail(cli_jp *p, const char *fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  snprintf(p->err, p->errlen, "column %zu: %s", p->pos + 1, msg);
  return -1;
}

static void cli_jp_ws(cli_jp *p) {
  while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\r' ||
                             p->s[p->pos] == '\n'))
    p->pos++;
}

static int cli_jp_peek(cli_jp *p) { return p->pos < p->len ? p->s[p->pos] : -1; }

static int cli_jp_expect(cli_jp *p, int c, const char *what) {
  cli_jp_ws(p);
  if (cli_jp_peek(p) != c) return cli_jp_fail(p, "expected %s", what);
  p->pos++;
  return 0;
}

static int cli_jp_hex4(cli_jp *p, unsigned *out) {
  unsigned v = 0;
  if (p->len - p->pos < 4) return cli_jp_fail(p, "\\u needs four hex digits");
  for (int i = 0; i < 4; i++) {
    int c = p->s[p->pos + (size_t)i], d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F')
      d = c - 'A' + 10;
    else
      return cli_jp_fail(p, "\\u needs four hex digits");
    v = v << 4 | (unsigned)d;
  }
  p->pos += 4;
  *out = v;
  return 0;
}

static size_t cli_utf8_put(unsigned cp, char *o) {
  if (cp < 0x80) {
    o[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    o[0] = (char)(0xC0 | cp >> 6);
    o[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    o[0] = (char)(0xE0 | cp >> 12);
    o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (char)(0xF0 | cp >> 18);
  o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  o[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* A string: decoded into the arena, NUL-terminated; *out points at it.
** The line was checked to be valid UTF-8 as a whole, so raw bytes are
** copied as they are. */
static int cli_jp_string(cli_jp *p, char **out, size_t *outlen) {
  cli_jp_ws(p);
  if (cli_jp_peek(p) != '"') return cli_jp_fail(p, "expected a string");
  p->pos++;
  char *o = p->arena + p->used, *start = o;
  for (;;) {
    if (p->pos >= p->len) return cli_jp_fail(p, "unterminated string");
    unsigned c = p->s[p->pos];
    if (c == '"') {
      p->pos++;
      break;
    }
    if (c < 0x20) return cli_jp_fail(p, "control character U+%04X inside a string", c);
    if (c != '\\') {
      *o++ = (char)c;
      p->pos++;
      continue;
    }
    p->pos++;
    int e = cli_jp_peek(p);
    p->pos++;
    switch (e) {
      case '"':
        *o++ = '"';
        break;
      case '\\':
        *o++ = '\\';
        break;
      case '/':
        *o++ = '/';
        break;
      case 'b':
        *o++ = '\b';
        break;
      case 'f':
        *o++ = '\f';
        break;
      case 'n':
        *o++ = '\n';
        break;
      case 'r':
        *o++ = '\r';
        break;
      case 't':
        *o++ = '\t';
        break;
      case 'u': {
        unsigned cp, lo;
        if (cli_jp_hex4(p, &cp)) return -1;
        if (cp >= 0xDC00 && cp <= 0xDFFF)
          return cli_jp_fail(p, "\\u%04X is a low surrogate without a high one", cp);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
            return cli_jp_fail(p, "\\u%04X is a high surrogate without a low one", cp);
          p->pos += 2;
          if (cli_jp_hex4(p, &lo)) return -1;
          if (lo < 0xDC00 || lo > 0xDFFF)
            return cli_jp_fail(p, "\\u%04X after a high surrogate is not a low one", lo);
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        o += cli_utf8_put(cp, o);
        break;
      }
      default:
        p->pos--;
        return cli_jp_fail(p, "invalid escape in a string");
    }
  }
  *o = '\0';
  *out = start;
  *outlen = (size_t)(o - start);
  p->used += (size_t)(o - start) + 1;
  return 0;
}

static int cli_jp_null(cli_jp *p) {
  cli_jp_ws(p);
  if (p->len - p->pos >= 4 && memcmp(p->s + p->pos, "null", 4) == 0) {
    p->pos += 4;
    return 1;
  }
  return 0;
}

/* A whole number that fits int64; JSON's fractions and exponents are
** refused rather than rounded. */
static int cli_jp_int(cli_jp *p, int64_t *out) {
  cli_jp_ws(p);
  size_t start = p->pos;
  int neg = cli_jp_peek(p) == '-';
  if (neg) p->pos++;
  int c = cli_jp_peek(p);
  if (c < '0' || c > '9') return cli_jp_fail(p, "expected a whole number");
  uint64_t v = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  if (c == '0') {
    p->pos++;
  } else {
    while ((c = cli_jp_peek(p)) >= '0' && c <= '9') {
      if (v > (limit - (uint64_t)(c - '0')) / 10) {
        p->pos = start;
        return cli_jp_fail(p, "number out of range");
      }
      v = v * 10 + (uint64_t)(c - '0');
      p->pos++;
    }
  }
  c = cli_jp_peek(p);
  if (c == '.' || c == 'e' || c == 'E' || (c >= '0' && c <= '9'))
    return cli_jp_fail(p, "expected a whole number (no fraction, exponent or leading zero)");
  *out = neg ? (v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v) : (int64_t)v;
  return 0;
}

static int cli_jp_base64(cli_jp *p, char *s, size_t len, size_t *outlen) {
  if (cli_base64_decode(s, len, (unsigned char *)s, outlen) != 0)
    return cli_jp_fail(p, "not valid base64 (standard alphabet, with padding)");
  s[*outlen] = '\0';
  return 0;
}

static int cli_jp_header(cli_jp *p, cli_record *r, char *k, size_t klen, char *v, size_t vlen) {
  if (klen == 0 || klen > 255) return cli_jp_fail(p, "a header name must be 1 to 255 bytes");
  if (memchr(k, '\0', klen) || memchr(v, '\0', vlen))
    return cli_jp_fail(p, "a header name or value contains a NUL byte");
  if ((r->n_headers & (r->n_headers - 1)) == 0) {
    size_t cap = r->n_headers ? r->n_headers * 2 : 4;
    mq_header *h = realloc(r->headers, cap * sizeof *h);
    if (!h) return cli_jp_fail(p, "out of memory");
    r->headers = h;
  }
  r->headers[r->n_headers].name = k;
  r->headers[r->n_headers].value = v;
  r->n_headers++;
  return 0;
}

static int cli_jp_headers(cli_jp *p, cli_record *r, int base64) {
  if (cli_jp_expect(p, '{', "an object of header names and values")) return -1;
  cli_jp_ws(p);
  if (cli_jp_peek(p) == '}') {
    p->pos++;
    return 0;
  }
  for (;;) {
    char *k, *v;
    size_t klen, vlen;
    if (cli_jp_string(p, &k, &klen)) return -1;
    if (cli_jp_expect(p, ':', "':'")) return -1;
    if (cli_jp_string(p, &v, &vlen)) return -1;
    if (base64 && (cli_jp_base64(p, k, klen, &klen) || cli_jp_base64(p, v, vlen, &vlen))) return -1;
    if (cli_jp_header(p, r, k, klen, v, vlen)) return -1;
    cli_jp_ws(p);
    int c = cli_jp_peek(p);
    p->pos++;
    if (c == '}') return 0;
    if (c != ',') {
      p->pos--;
      return cli_jp_fail(p, "expected ',' or '}' in headers");
    }
  }
}

/* The fields of a line; the order is that of the bit in `seen`. */
static const char *const cli_fields[] = {"id",          "state",       "priority", "receives",
                                         "enqueued_at", "visible_at",  "delay_ms", "expires_at",
                                         "ttl_ms",      "reason",      "headers",  "headers_base64",
                                         "body",        "body_base64", "receipt",  "size",
                                         "subject",     "subject_base64"};
enum {
  F_ID,
  F_STATE,
  F_PRIORITY,
  F_RECEIVES,
  F_ENQUEUED,
  F_VISIBLE,
  F_DELAY,
  F_EXPIRES,
  F_TTL,
  F_REASON,
  F_HEADERS,
  F_HEADERS64,
  F_BODY,
  F_BODY64,
  F_RECEIPT,
  F_SIZE,
  F_SUBJECT,
  F_SUBJECT64,
  F_COUNT
};

static int cli_jp_field(cli_jp *p, cli_record *r, int f, int64_t *size) {
  int64_t v;
  char *s;
  size_t n;
  switch (f) {
    case F_ID:
    case F_RECEIVES:
    case F_ENQUEUED:
      if (cli_jp_null(p)) return 0;
      return cli_jp_int(p, &v); /* checked, not kept: see doc/cli.md */
    case F_SIZE:
      if (cli_jp_int(p, size)) return -1;
      if (*size < 0) return cli_jp_fail(p, "size is negative");
      return 0;
    case F_STATE:
      if (cli_jp_string(p, &s, &n)) return -1;
      for (int st = MQ_STATE_READY; st <= MQ_STATE_DEAD; st++)
        if (strcmp(s, cli_state_name(st)) == 0) {
          r->state = st;
          return 0;
        }
      return cli_jp_fail(p, "state must be ready, inflight, delayed or dead");
    case F_PRIORITY:
      if (cli_jp_int(p, &v)) return -1;
      if (v < INT_MIN || v > INT_MAX) return cli_jp_fail(p, "priority out of range");
      r->priority = v;
      return 0;
    case F_VISIBLE:
    case F_DELAY:
    case F_EXPIRES:
    case F_TTL:
      if (cli_jp_null(p)) return 0;
      if (cli_jp_int(p, &v)) return -1;
      if (v < 0) return cli_jp_fail(p, "%s is negative", cli_fields[f]);
      if (f == F_VISIBLE) r->has_visible_at = 1, r->visible_at = v;
      if (f == F_DELAY) r->has_delay = 1, r->delay_ms = v;
      if (f == F_EXPIRES && v) r->has_expires_at = 1, r->expires_at = v;
      if (f == F_TTL && v) r->has_ttl = 1, r->ttl_ms = v;
      return 0;
    case F_REASON:
    case F_RECEIPT:
    case F_SUBJECT:
      if (cli_jp_null(p)) return 0;
      return cli_jp_string(p, &s, &n); /* not kept: see doc/cli.md */
    case F_SUBJECT64:
      if (cli_jp_null(p)) return 0;
      if (cli_jp_string(p, &s, &n)) return -1;
      return cli_jp_base64(p, s, n, &n);
    case F_HEADERS:
    case F_HEADERS64:
      return cli_jp_headers(p, r, f == F_HEADERS64);
    case F_BODY:
    case F_BODY64:
      if (cli_jp_string(p, &s, &n)) return -1;
      if (f == F_BODY64 && cli_jp_base64(p, s, n, &n)) return -1;
      r->body = (unsigned char *)s;
      r->body_len = n;
      return 0;
    default:
      return cli_jp_fail(p, "internal: field %d", f);
  }
}

void cli_record_free(cli_record *r) {
  free(r->arena);
  free(r->headers);
  memset(r, 0, sizeof *r);
  r->state = -1;
}

int cli_record_parse(const char *line, size_t len, cli_record *r, char *err, size_t errlen) {
  memset(r, 0, sizeof *r);
  r->state = -1;
  cli_jp p = {(const unsigned char *)line, len, 0, NULL, 0, err, errlen};
  size_t good = cli_utf8_prefix(p.s, len);
  if (good != len) {
    p.pos = good;
    return cli_jp_fail(&p, "not valid UTF-8");
  }
  if (!(p.arena = r->arena = malloc(len + 1))) return cli_jp_fail(&p, "out of memory");
  unsigned seen = 0;
  int64_t size = -1;
  if (cli_jp_expect(&p, '{', "'{' at the start of the line")) goto fail;
  cli_jp_ws(&p);
  if (cli_jp_peek(&p) == '}') {
    p.pos++;
  } else {
    for (;;) {
      char *key;
      size_t klen;
      size_t at = p.pos;
      if (cli_jp_string(&p, &key, &klen)) goto fail;
      int f = 0;
      while (f < F_COUNT && (strlen(cli_fields[f]) != klen || strcmp(cli_fields[f], key) != 0)) f++;
      p.used -= klen + 1; /* keys are not kept */
      if (f == F_COUNT) {
        p.pos = at;
        cli_jp_fail(&p, "unknown field \"%.60s\"", key);
        goto fail;
      }
      if (seen & (1u << f)) {
        p.pos = at;
        cli_jp_fail(&p, "field \"%s\" appears twice", cli_fields[f]);
        goto fail;
      }
      seen |= 1u << f;
      if (cli_jp_expect(&p, ':', "':' after a field name")) goto fail;
      if (cli_jp_field(&p, r, f, &size)) goto fail;
      cli_jp_ws(&p);
      int c = cli_jp_peek(&p);
      if (c == '}') {
        p.pos++;
        break;
      }
      if (c != ',') {
        cli_jp_fail(&p, "expected ',' or '}'");
        goto fail;
      }
      p.pos++;
    }
  }
  cli_jp_ws(&p);
  if (p.pos != len) {
    cli_jp_fail(&p, "unexpected text after the object");
    goto fail;
  }
  if (((seen >> F_BODY) & 1) + ((seen >> F_BODY64) & 1) != 1) {
    cli_jp_fail(&p, "a line needs exactly one of \"body\" and \"body_base64\"");
    goto fail;
  }
  if (size >= 0 && (uint64_t)size != r->body_len) {
    cli_jp_fail(&p, "size %lld does not match the body's %zu bytes", (long long)size, r->body_len);
    goto fail;
  }
  return 0;
fail:
  cli_record_free(r);
  return -1;
}

/* ---- the export header ------------------------------------------------------ */

static const char *const cli_opt_fields[CLI_QUEUE_NOPTS] = {
    "visibility_ms",  "max_receives",   "dlq", "retention_ms", "max_payload",
    "compress_above", "dedup_window_ms"};

/* One member of "options": its value, range-checked as the library would,
** so that a header that passes here can only fail on the store's side. */
static int cli_jp_option(cli_jp *p, cli_header *h, int k) {
  int64_t v;
  char *s;
  size_t n;
  if (k == CLI_QO_DLQ) {
    if (cli_jp_null(p)) {
      h->o.dlq = NULL;
      return 0;
    }
    if (cli_jp_string(p, &s, &n)) return -1;
    if (n == 0 || n > MQ_NAME_MAX || memchr(s, '\0', n))
      return cli_jp_fail(p, "dlq must be a queue name of 1 to %d bytes, or null", MQ_NAME_MAX);
    h->o.dlq = s;
    return 0;
  }
  if (cli_jp_int(p, &v)) return -1;
  int64_t max = INT64_MAX, min = 0;
  if (k == CLI_QO_MAX_RECEIVES) max = INT_MAX;
  if (k == CLI_QO_MAX_PAYLOAD) min = 1, max = (int64_t)MQ_PAYLOAD_LIMIT;
  if (v < min || v > max)
    return cli_jp_fail(p, "%s must be from %lld to %lld", cli_opt_fields[k], (long long)min,
                       (long long)max);
  switch (k) {
    case CLI_QO_VISIBILITY:
      h->o.visibility_ms = v;
      break;
    case CLI_QO_MAX_RECEIVES:
      h->o.max_receives = (int)v;
      break;
    case CLI_QO_RETENTION:
      h->o.retention_ms = v;
      break;
    case CLI_QO_MAX_PAYLOAD:
      h->o.max_payload = (size_t)v;
      break;
    case CLI_QO_COMPRESS_ABOVE:
      if ((uint64_t)v > SIZE_MAX) return cli_jp_fail(p, "compress_above is too large");
      h->o.compress_above = (size_t)v;
      break;
    default:
      h->o.dedup_window_ms = v;
      break;
  }
  return 0;
}

/* An object of members; for each, names[] gives its index (unknown and
** repeated names are refused) and fn reads its value. */
static int cli_jp_members(cli_jp *p, const char *const *names, int nnames, cli_header *h,
                          int (*fn)(cli_jp *, cli_header *, int)) {
  unsigned seen = 0;
  if (cli_jp_expect(p, '{', "'{'")) return -1;
  cli_jp_ws(p);
  if (cli_jp_peek(p) == '}') {
    p->pos++;
    return 0;
  }
  for (;;) {
    char *key;
    size_t klen, at = p->pos;
    if (cli_jp_string(p, &key, &klen)) return -1;
    int k = 0;
    while (k < nnames && strcmp(names[k], key) != 0) k++;
    p->used -= klen + 1;
    if (k == nnames) {
      p->pos = at;
      return cli_jp_fail(p, "unknown field \"%.60s\" in the export header", key);
    }
    if (seen & (1u << k)) {
      p->pos = at;
      return cli_jp_fail(p, "field \"%s\" appears twice", names[k]);
    }
    seen |= 1u << k;
    if (cli_jp_expect(p, ':', "':' after a field name")) return -1;
    if (fn(p, h, k)) return -1;
    cli_jp_ws(p);
    int c = cli_jp_peek(p);
    if (c == '}') {
      p->pos++;
      return 0;
    }
    if (c != ',') return cli_jp_fail(p, "expected ',' or '}'");
    p->pos++;
  }
}

static int cli_jp_option_member(cli_jp *p, cli_header *h, int k) {
  if (cli_jp_option(p, h, k)) return -1;
  h->given |= 1u << k;
  return 0;
}

static int cli_jp_header_member(cli_jp *p, cli_header *h, int k) {
  if (k == 1) return cli_jp_members(p, cli_opt_fields, CLI_QUEUE_NOPTS, h, cli_jp_option_member);
  char *s;
  size_t n;
  if (cli_jp_string(p, &s, &n)) return -1;
  if (n == 0 || n > 2 * MQ_NAME_MAX + 1 || memchr(s, '\0', n))
    return cli_jp_fail(p, "queue must be a queue name");
  h->queue = s;
  return 0;
}

/* Whether the line's first member is named "queue" or "options": what
** tells a header from a message line, which never has either. */
static int cli_is_header(const unsigned char *s, size_t len) {
  size_t i = 0;
  while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r')) i++;
  if (i >= len || s[i++] != '{') return 0;
  while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r')) i++;
  return (len - i >= 7 && memcmp(s + i, "\"queue\"", 7) == 0) ||
         (len - i >= 9 && memcmp(s + i, "\"options\"", 9) == 0);
}

void cli_header_free(cli_header *h) {
  free(h->arena);
  memset(h, 0, sizeof *h);
}

int cli_header_parse(const char *line, size_t len, cli_header *h, char *err, size_t errlen) {
  static const char *const names[] = {"queue", "options"};
  memset(h, 0, sizeof *h);
  mq_queue_options_init(&h->o);
  if (!cli_is_header((const unsigned char *)line, len)) return 0;
  cli_jp p = {(const unsigned char *)line, len, 0, NULL, 0, err, errlen};
  size_t good = cli_utf8_prefix(p.s, len);
  if (good != len) {
    p.pos = good;
    return cli_jp_fail(&p, "not valid UTF-8");
  }
  if (!(p.arena = h->arena = malloc(len + 1))) return cli_jp_fail(&p, "out of memory");
  if (cli_jp_members(&p, names, 2, h, cli_jp_header_member) == 0) {
    cli_jp_ws(&p);
    if (p.pos == len) return 1;
    cli_jp_fail(&p, "unexpected text after the object");
  }
  cli_header_free(h);
  return -1;
}
