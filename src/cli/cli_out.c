/*
** cli_out.c -- everything the `mq` tool writes about messages: a strict
** UTF-8 validator, a JSON encoder, base64, terminal-safe text and the
** message layouts for get, peek and export, and queue options as ls,
** stats and the export header show them.
**
** JSON strings must be valid UTF-8, and payloads and header values are
** arbitrary bytes, so every byte string goes through cli_utf8_valid before
** it is written as a JSON string; one that fails is written as base64
** under a "_base64" key instead (body_base64, headers_base64).  Nothing is
** ever replaced or dropped: an export read back by import gives the same
** bytes.  The validator rejects overlong forms, UTF-16 surrogates and code
** points above U+10FFFF, as RFC 3629 requires, because a lenient one would
** let bytes through that a strict JSON reader elsewhere refuses.
**
** Human output never writes a control byte from a message to the terminal:
** a payload with one is shown as base64, a header value with one gets \xNN
** escapes.  --raw is the only way to get the bytes themselves.
*/
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

/* ---- UTF-8 ------------------------------------------------------------------ */

size_t cli_utf8_prefix(const unsigned char *s, size_t len) {
  size_t i = 0;
  while (i < len) {
    unsigned c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t need;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c < 0xC2) return i;        /* a stray continuation, or overlong C0/C1 */
    if (c < 0xE0) {
      need = 1;
    } else if (c < 0xF0) {
      need = 2;
      if (c == 0xE0) lo = 0xA0; /* overlong */
      if (c == 0xED) hi = 0x9F; /* surrogates D800..DFFF */
    } else if (c < 0xF5) {
      need = 3;
      if (c == 0xF0) lo = 0x90; /* overlong */
      if (c == 0xF4) hi = 0x8F; /* above U+10FFFF */
    } else {
      return i;
    }
    if (len - i <= need) return i;
    if (s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t k = 2; k <= need; k++)
      if ((s[i + k] & 0xC0) != 0x80) return i;
    i += need + 1;
  }
  return len;
}

int cli_utf8_valid(const unsigned char *s, size_t len) { return cli_utf8_prefix(s, len) == len; }

int cli_is_text(const unsigned char *s, size_t len) {
  for (size_t i = 0; i < len; i++) {
    unsigned c = s[i];
    if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7F) return 0;
  }
  return cli_utf8_valid(s, len);
}

/* ---- JSON ----------------------------------------------------------------- */

void cli_json_string(FILE *f, const char *s, size_t len) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *p = (const unsigned char *)s;
  size_t run = 0; /* start of the bytes not yet written */
  fputc('"', f);
  for (size_t i = 0; i < len; i++) {
    unsigned c = p[i];
    const char *esc = NULL;
    char u[7];
    switch (c) {
      case '"':
        esc = "\\\"";
        break;
      case '\\':
        esc = "\\\\";
        break;
      case '\n':
        esc = "\\n";
        break;
      case '\r':
        esc = "\\r";
        break;
      case '\t':
        esc = "\\t";
        break;
      case '\b':
        esc = "\\b";
        break;
      case '\f':
        esc = "\\f";
        break;
      default:
        if (c < 0x20 || c == 0x7F) {
          u[0] = '\\';
          u[1] = 'u';
          u[2] = '0';
          u[3] = '0';
          u[4] = hex[c >> 4];
          u[5] = hex[c & 15];
          u[6] = '\0';
          esc = u;
        }
    }
    if (!esc) continue;
    fwrite(p + run, 1, i - run, f);
    fputs(esc, f);
    run = i + 1;
  }
  fwrite(p + run, 1, len - run, f);
  fputc('"', f);
}

void cli_jobj_begin(cli_jobj *o, FILE *f) {
  o->f = f;
  o->n = 0;
  fputc('{', f);
}

static void cli_jobj_key(cli_jobj *o, const char *key) {
  if (o->n++) fputc(',', o->f);
  cli_json_string(o->f, key, strlen(key));
  fputc(':', o->f);
}

void cli_jobj_int(cli_jobj *o, const char *key, int64_t v) {
  cli_jobj_key(o, key);
  fprintf(o->f, "%" PRId64, v);
}

void cli_jobj_double(cli_jobj *o, const char *key, double v) {
  cli_jobj_key(o, key);
  fprintf(o->f, "%.3f", v);
}

void cli_jobj_bool(cli_jobj *o, const char *key, int v) {
  cli_jobj_key(o, key);
  fputs(v ? "true" : "false", o->f);
}

void cli_jobj_null(cli_jobj *o, const char *key) {
  cli_jobj_key(o, key);
  fputs("null", o->f);
}

void cli_jobj_str(cli_jobj *o, const char *key, const char *s, size_t len) {
  cli_jobj_key(o, key);
  cli_json_string(o->f, s, len);
}

void cli_jobj_base64(cli_jobj *o, const char *key, const void *data, size_t len) {
  cli_jobj_key(o, key);
  /* Encode in slices so a large payload needs no second copy. */
  char buf[4 * 1024 + 4];
  const unsigned char *p = data;
  fputc('"', o->f);
  for (size_t off = 0; off < len; off += 3 * 1024) {
    size_t n = len - off < 3 * 1024 ? len - off : 3 * 1024;
    cli_base64_encode(p + off, n, buf);
    fwrite(buf, 1, cli_base64_len(n), o->f);
  }
  fputc('"', o->f);
}

void cli_jobj_nested(cli_jobj *o, const char *key, cli_jobj *sub) {
  cli_jobj_key(o, key);
  cli_jobj_begin(sub, o->f);
}

void cli_jobj_close(cli_jobj *o) { fputc('}', o->f); }

void cli_jobj_end(cli_jobj *o) {
  fputc('}', o->f);
  fputc('\n', o->f);
}

/* ---- base64 ------------------------------------------------------------------ */

static const char cli_b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t cli_base64_len(size_t n) { return (n + 2) / 3 * 4; }

void cli_base64_encode(const void *data, size_t n, char *out) {
  const unsigned char *p = data;
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
    *out++ = cli_b64[v >> 18];
    *out++ = cli_b64[(v >> 12) & 63];
    *out++ = cli_b64[(v >> 6) & 63];
    *out++ = cli_b64[v & 63];
  }
  if (i < n) {
    uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
    *out++ = cli_b64[v >> 18];
    *out++ = cli_b64[(v >> 12) & 63];
    *out++ = i + 1 < n ? cli_b64[(v >> 6) & 63] : '=';
    *out++ = '=';
  }
}

static int cli_b64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

int cli_base64_decode(const char *s, size_t len, unsigned char *out, size_t *outlen) {
  const unsigned char *p = (const unsigned char *)s;
  size_t o = 0;
  if (len % 4) return -1;
  for (size_t i = 0; i < len; i += 4) {
    int last = i + 4 == len;
    int pad = last ? (p[i + 3] == '=') + (p[i + 2] == '=') : 0;
    if (pad == 1 && p[i + 2] == '=') return -1; /* "x=" followed by a data byte */
    int v[4];
    for (int k = 0; k < 4 - pad; k++)
      if ((v[k] = cli_b64_value(p[i + k])) < 0) return -1;
    for (int k = 4 - pad; k < 4; k++) v[k] = 0;
    uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
    /* The bits padding leaves over must be zero: one encoding per value. */
    if ((pad == 1 && (w & 0xFF)) || (pad == 2 && (w & 0xFFFF))) return -1;
    out[o++] = (unsigned char)(w >> 16);
    if (pad < 2) out[o++] = (unsigned char)(w >> 8);
    if (pad < 1) out[o++] = (unsigned char)w;
  }
  *outlen = o;
  return 0;
}

/* ---- human text ------------------------------------------------------------ */

void cli_print_safe(FILE *f, const char *s, size_t len) {
  const unsigned char *p = (const unsigned char *)s;
  if (cli_utf8_valid(p, len)) {
    for (size_t i = 0; i < len; i++) {
      if (p[i] < 0x20 || p[i] == 0x7F)
        fprintf(f, "\\x%02x", p[i]);
      else
        fputc(p[i], f);
    }
    return;
  }
  for (size_t i = 0; i < len; i++) {
    if (p[i] < 0x20 || p[i] >= 0x7F)
      fprintf(f, "\\x%02x", p[i]);
    else
      fputc(p[i], f);
  }
}

void cli_format_time(int64_t ms, char *buf, size_t n) {
  time_t secs = (time_t)(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
  int frac = (int)(ms - (int64_t)secs * 1000);
  struct tm tm;
  if (!gmtime_r(&secs, &tm)) {
    snprintf(buf, n, "%" PRId64 "ms", ms);
    return;
  }
  /* strftime cannot write milliseconds; append them, clamped so the
  ** compiler can see the field is three digits. */
  size_t len = strftime(buf, n, "%Y-%m-%dT%H:%M:%S", &tm);
  if (len == 0 || len + 6 > n) {
    snprintf(buf, n, "%" PRId64 "ms", ms);
    return;
  }
  unsigned f = frac < 0 ? 0u : frac > 999 ? 999u : (unsigned)frac;
  buf[len] = '.';
  buf[len + 1] = (char)('0' + f / 100);
  buf[len + 2] = (char)('0' + f / 10 % 10);
  buf[len + 3] = (char)('0' + f % 10);
  buf[len + 4] = 'Z';
  buf[len + 5] = 0;
}

void cli_format_ms(int64_t ms, char *buf, size_t n) {
  if (ms != 0 && ms % 3600000 == 0)
    snprintf(buf, n, "%" PRId64 "h", ms / 3600000);
  else if (ms != 0 && ms % 60000 == 0)
    snprintf(buf, n, "%" PRId64 "m", ms / 60000);
  else if (ms != 0 && ms % 1000 == 0)
    snprintf(buf, n, "%" PRId64 "s", ms / 1000);
  else
    snprintf(buf, n, "%" PRId64, ms);
}

void cli_format_size(int64_t b, char *buf, size_t n) {
  if (b != 0 && b % (1024 * 1024 * 1024) == 0)
    snprintf(buf, n, "%" PRId64 "G", b / (1024 * 1024 * 1024));
  else if (b != 0 && b % (1024 * 1024) == 0)
    snprintf(buf, n, "%" PRId64 "M", b / (1024 * 1024));
  else if (b != 0 && b % 1024 == 0)
    snprintf(buf, n, "%" PRId64 "K", b / 1024);
  else
    snprintf(buf, n, "%" PRId64, b);
}

const char *cli_kind_name(int kind) {
  switch (kind) {
    case MQ_KIND_QUEUE:
      return "queue";
    case MQ_KIND_TOPIC:
      return "topic";
    case MQ_KIND_SUBSCRIPTION:
      return "subscription";
    default:
      return "unknown";
  }
}

/* ---- queue options ------------------------------------------------------------- */

/* Which options apply to a kind: a topic's visibility, max_receives and dlq
** are never used (its messages live in its subscriptions), so showing them
** would only mislead. */
static int cli_info_has(const mq_queue_info *info, int k) {
  if (info->kind != MQ_KIND_TOPIC) return 1;
  return k != CLI_QO_VISIBILITY && k != CLI_QO_MAX_RECEIVES && k != CLI_QO_DLQ;
}

static void cli_info_members(cli_jobj *o, const mq_queue_info *info, int all) {
  if (all || cli_info_has(info, CLI_QO_VISIBILITY))
    cli_jobj_int(o, "visibility_ms", info->visibility_ms);
  if (all || cli_info_has(info, CLI_QO_MAX_RECEIVES))
    cli_jobj_int(o, "max_receives", info->max_receives);
  if (all || cli_info_has(info, CLI_QO_DLQ)) {
    if (info->dlq[0])
      cli_jobj_str(o, "dlq", info->dlq, strlen(info->dlq));
    else
      cli_jobj_null(o, "dlq");
  }
  cli_jobj_int(o, "retention_ms", info->retention_ms);
  cli_jobj_int(o, "max_payload", (int64_t)info->max_payload);
  cli_jobj_int(o, "compress_above", (int64_t)info->compress_above);
  cli_jobj_int(o, "dedup_window_ms", info->dedup_window_ms);
}

void cli_options_json(cli_jobj *o, const mq_queue_info *info) { cli_info_members(o, info, 1); }

void cli_info_json(cli_jobj *o, const mq_queue_info *info) {
  const char *k = cli_kind_name(info->kind);
  cli_jobj_str(o, "kind", k, strlen(k));
  cli_info_members(o, info, 0);
  if (info->kind == MQ_KIND_SUBSCRIPTION) {
    size_t n = strlen(info->filter);
    if (cli_utf8_valid((const unsigned char *)info->filter, n))
      cli_jobj_str(o, "filter", info->filter, n);
    else
      cli_jobj_base64(o, "filter_base64", info->filter, n);
  }
}

void cli_info_human(FILE *f, const mq_queue_info *info) {
  char v[64];
  if (info->kind == MQ_KIND_SUBSCRIPTION && info->filter[0]) {
    /* Spaces escaped too, so that the pairs split on spaces. */
    fputs(" filter=", f);
    for (const char *p = info->filter; *p;) {
      size_t run = strcspn(p, " ");
      cli_print_safe(f, p, run);
      p += run;
      if (*p == ' ') {
        fputs("\\x20", f);
        p++;
      }
    }
  }
  if (cli_info_has(info, CLI_QO_VISIBILITY)) {
    cli_format_ms(info->visibility_ms, v, sizeof v);
    fprintf(f, " visibility=%s max_receives=%d", v, info->max_receives);
    if (info->dlq[0]) fprintf(f, " dlq=%s", info->dlq);
  }
  cli_format_ms(info->retention_ms, v, sizeof v);
  fprintf(f, " retention=%s", v);
  cli_format_size((int64_t)info->max_payload, v, sizeof v);
  fprintf(f, " max_payload=%s", v);
  cli_format_size((int64_t)info->compress_above, v, sizeof v);
  fprintf(f, " compress_above=%s", v);
  cli_format_ms(info->dedup_window_ms, v, sizeof v);
  fprintf(f, " dedup_window=%s", v);
}

const char *cli_state_name(int state) {
  switch (state) {
    case MQ_STATE_READY:
      return "ready";
    case MQ_STATE_INFLIGHT:
      return "inflight";
    case MQ_STATE_DELAYED:
      return "delayed";
    case MQ_STATE_DEAD:
      return "dead";
    default:
      return NULL;
  }
}

/* ---- messages ----------------------------------------------------------------- */

static int cli_headers_are_text(const mq_msg *m) {
  size_t n = mq_msg_header_count(m);
  for (size_t i = 0; i < n; i++) {
    const char *k = mq_msg_header_name(m, i), *v = mq_msg_header_value(m, i);
    if (!cli_utf8_valid((const unsigned char *)k, strlen(k)) ||
        !cli_utf8_valid((const unsigned char *)v, strlen(v)))
      return 0;
  }
  return 1;
}

/* The members every JSON layout shares: headers and body, each as text
** when they are valid UTF-8 (the body: and free of control bytes) and as
** base64 otherwise. */
static void cli_json_headers_body(cli_jobj *o, const mq_msg *m) {
  size_t n = mq_msg_header_count(m);
  cli_jobj h;
  int text = cli_headers_are_text(m);
  cli_jobj_nested(o, text ? "headers" : "headers_base64", &h);
  for (size_t i = 0; i < n; i++) {
    const char *k = mq_msg_header_name(m, i), *v = mq_msg_header_value(m, i);
    if (text) {
      cli_jobj_str(&h, k, v, strlen(v));
    } else {
      size_t klen = strlen(k);
      char *kb = malloc(cli_base64_len(klen) + 1);
      if (!kb) continue; /* the caller sees the gap; nothing else to do */
      cli_base64_encode(k, klen, kb);
      kb[cli_base64_len(klen)] = '\0';
      cli_jobj_base64(&h, kb, v, strlen(v));
      free(kb);
    }
  }
  cli_jobj_close(&h);
  const unsigned char *d = mq_msg_data(m);
  size_t len = mq_msg_size(m);
  if (cli_is_text(d, len))
    cli_jobj_str(o, "body", (const char *)d, len);
  else
    cli_jobj_base64(o, "body_base64", d, len);
}

/* The subject of a published message, when it has one. */
static void cli_json_subject(cli_jobj *o, const mq_msg *m) {
  const char *sj = mq_msg_subject(m);
  if (!sj) return;
  size_t n = strlen(sj);
  if (cli_utf8_valid((const unsigned char *)sj, n))
    cli_jobj_str(o, "subject", sj, n);
  else
    cli_jobj_base64(o, "subject_base64", sj, n);
}

static void cli_human_time(FILE *f, const char *label, int64_t ms) {
  char t[64];
  cli_format_time(ms, t, sizeof t);
  fprintf(f, "%s: %s\n", label, t);
}

void cli_print_msg(cli_ctx *ctx, const mq_msg *m) {
  FILE *f = stdout;
  const char *reason = mq_msg_reason(m);
  int64_t exp = mq_msg_expires_at(m);
  if (ctx->json) {
    cli_jobj o;
    cli_jobj_begin(&o, f);
    cli_jobj_int(&o, "id", mq_msg_id(m));
    cli_jobj_str(&o, "receipt", mq_msg_receipt(m), strlen(mq_msg_receipt(m)));
    cli_jobj_int(&o, "receives", mq_msg_receives(m));
    cli_jobj_int(&o, "priority", mq_msg_priority(m));
    cli_json_subject(&o, m);
    cli_jobj_int(&o, "enqueued_at", mq_msg_enqueued_at(m));
    cli_jobj_int(&o, "visible_at", mq_msg_visible_at(m));
    if (exp) cli_jobj_int(&o, "expires_at", exp);
    if (reason && cli_utf8_valid((const unsigned char *)reason, strlen(reason)))
      cli_jobj_str(&o, "reason", reason, strlen(reason));
    cli_jobj_int(&o, "size", (int64_t)mq_msg_size(m));
    cli_json_headers_body(&o, m);
    cli_jobj_end(&o);
    return;
  }
  fprintf(f, "id: %" PRId64 "\n", mq_msg_id(m));
  if (*mq_msg_receipt(m)) fprintf(f, "receipt: %s\n", mq_msg_receipt(m));
  fprintf(f, "receives: %d\n", mq_msg_receives(m));
  fprintf(f, "priority: %d\n", mq_msg_priority(m));
  if (mq_msg_subject(m)) {
    fputs("subject: ", f);
    cli_print_safe(f, mq_msg_subject(m), strlen(mq_msg_subject(m)));
    fputc('\n', f);
  }
  cli_human_time(f, "enqueued_at", mq_msg_enqueued_at(m));
  if (*mq_msg_receipt(m)) cli_human_time(f, "lease_until", mq_msg_visible_at(m));
  if (exp) cli_human_time(f, "expires_at", exp);
  if (reason) {
    fputs("reason: ", f);
    cli_print_safe(f, reason, strlen(reason));
    fputc('\n', f);
  }
  for (size_t i = 0, n = mq_msg_header_count(m); i < n; i++) {
    const char *k = mq_msg_header_name(m, i), *v = mq_msg_header_value(m, i);
    fputs("header: ", f);
    cli_print_safe(f, k, strlen(k));
    fputc('=', f);
    cli_print_safe(f, v, strlen(v));
    fputc('\n', f);
  }
  const unsigned char *d = mq_msg_data(m);
  size_t len = mq_msg_size(m);
  int ends_line = 0; /* a body that ends its own line needs no newline of ours */
  fprintf(f, "size: %zu\n", len);
  if (cli_is_text(d, len)) {
    fputs("body: ", f);
    fwrite(d, 1, len, f);
    ends_line = len && d[len - 1] == '\n';
  } else {
    fputs("body_base64: ", f);
    char buf[4 * 1024 + 4];
    for (size_t off = 0; off < len; off += 3 * 1024) {
      size_t k = len - off < 3 * 1024 ? len - off : 3 * 1024;
      cli_base64_encode(d + off, k, buf);
      fwrite(buf, 1, cli_base64_len(k), f);
    }
  }
  fputs(ends_line ? "\n" : "\n\n", f);
}

void cli_export_line(FILE *f, const mq_msg *m, int state, int64_t now) {
  cli_jobj o;
  int64_t vis = mq_msg_visible_at(m), exp = mq_msg_expires_at(m);
  const char *reason = mq_msg_reason(m);
  cli_jobj_begin(&o, f);
  cli_jobj_int(&o, "id", mq_msg_id(m));
  const char *sn = cli_state_name(state);
  if (sn) cli_jobj_str(&o, "state", sn, strlen(sn));
  cli_jobj_int(&o, "priority", mq_msg_priority(m));
  cli_json_subject(&o, m);
  cli_jobj_int(&o, "receives", mq_msg_receives(m));
  cli_jobj_int(&o, "enqueued_at", mq_msg_enqueued_at(m));
  cli_jobj_int(&o, "visible_at", vis);
  cli_jobj_int(
      &o, "delay_ms",
      (state == MQ_STATE_DELAYED || state == MQ_STATE_INFLIGHT) && vis > now ? vis - now : 0);
  if (exp) {
    cli_jobj_int(&o, "expires_at", exp);
    cli_jobj_int(&o, "ttl_ms", exp > now ? exp - now : 1);
  }
  if (reason && cli_utf8_valid((const unsigned char *)reason, strlen(reason)))
    cli_jobj_str(&o, "reason", reason, strlen(reason));
  cli_json_headers_body(&o, m);
  cli_jobj_end(&o);
}
