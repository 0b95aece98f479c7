/*
** fuzz_zmtp_router.c -- libFuzzer target for the MQ1 request parser of the
** ROUTER endpoint (mqi_router_parse in src/zmtp_router.c).
**
** Input encoding: a sequence of frames, each a length then a body.  The
** length is one byte below 0xff, or 0xff followed by two bytes big-endian;
** a body cut short by the end of the input is the rest of the input.  At
** most FZR_FRAMES_MAX frames are read (enough for a PUT with more headers
** than the protocol allows).  Every non-empty body is copied into its own
** exact-size heap block, so AddressSanitizer sees any read past a frame,
** and every empty frame has a NULL body, as a decoder may hand over, so a
** memcmp or memchr on it would be caught by UBSan's nonnull check.
**
** The parser is pure, so the target checks what the handlers rely on and
** never recheck: an accepted request names a valid queue, numbers are in
** their ranges, frame indexes are in bounds, the header count and size
** the PUT handler allocates from are exact; a refusal carries a reason and,
** when answered in the verb's own form, the id to answer under.  Then a
** round trip: the accepted request, re-encoded canonically from the parsed
** fields, parses back to the same fields; a parser that read meaning its
** own re-encoding loses would be a bug even if nothing crashed.  The input
** frames are never modified.
**
** A failed check calls abort().  tests/test_fuzz_corpus.c #includes this
** file to replay fuzz/corpus/fuzz_zmtp_router/ in ordinary CI.
*/
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zmtp_net.h"

#define FZR_CHECK(cond)   \
  do {                    \
    if (!(cond)) abort(); \
  } while (0)

#define FZR_FRAMES_MAX 200

/* A frame list and the storage behind it. */
typedef struct fzr_msg {
  mqi_zmtp_frame f[FZR_FRAMES_MAX];
  size_t n;
} fzr_msg;

static void fzr_free(fzr_msg *m) {
  for (size_t i = 0; i < m->n; i++) free(m->f[i].body);
  m->n = 0;
}

/* Append a copy of body[0..len); NULL body for an empty frame. */
static void fzr_add(fzr_msg *m, const void *body, size_t len) {
  FZR_CHECK(m->n < FZR_FRAMES_MAX);
  mqi_zmtp_frame *f = &m->f[m->n++];
  f->flags = 0;
  f->size = len;
  f->body = NULL;
  if (len) {
    f->body = malloc(len);
    FZR_CHECK(f->body != NULL);
    memcpy(f->body, body, len);
  }
}

static void fzr_adds(fzr_msg *m, const char *s) { fzr_add(m, s, strlen(s)); }

static void fzr_addi(fzr_msg *m, int64_t v) {
  char buf[32];
  snprintf(buf, sizeof buf, "%" PRId64, v);
  fzr_adds(m, buf);
}

static void fzr_decode(const uint8_t *d, size_t size, fzr_msg *m) {
  size_t at = 0;
  m->n = 0;
  while (at < size && m->n < FZR_FRAMES_MAX) {
    size_t len = d[at++];
    if (len == 0xff) {
      len = 0;
      for (int k = 0; k < 2 && at < size; k++) len = len << 8 | d[at++];
    }
    if (len > size - at) len = size - at;
    fzr_add(m, d + at, len);
    at += len;
  }
}

/* 1..max printable bytes, no space: what rt_str accepts. */
static int fzr_token(const char *s, size_t max) {
  size_t n = strlen(s);
  if (n == 0 || n > max) return 0;
  for (size_t i = 0; i < n; i++)
    if (s[i] <= 0x20 || s[i] > 0x7e) return 0;
  return 1;
}

static int fzr_frame_is(const mqi_zmtp_frame *f, const char *s) {
  size_t n = strlen(s);
  return f->size == n && (n == 0 || memcmp(f->body, s, n) == 0);
}

/* Every property of an accepted request that a handler relies on. */
static void fzr_check_ok(const mqi_zmtp_frame *f, size_t n, const mqi_router_req *q) {
  FZR_CHECK(q->error == NULL);
  FZR_CHECK(q->verb >= MQI_RT_PUT && q->verb <= MQI_RT_STOP);
  FZR_CHECK(q->arg == (size_t)(q->delim ? 3 : 2) && q->arg < n);
  FZR_CHECK(!q->delim || f[0].size == 0);
  FZR_CHECK(fzr_frame_is(&f[q->arg - 2], "MQ1"));
  FZR_CHECK(fzr_token(q->queue, MQ_NAME_MAX));
  size_t na = n - q->arg;
  switch (q->verb) {
    case MQI_RT_PUT: {
      FZR_CHECK(na >= 3 && (na - 3) % 2 == 0 && (na - 3) / 2 <= MQI_RT_HEADERS_MAX);
      FZR_CHECK(fzr_token(q->cid, MQI_RT_ID_MAX));
      FZR_CHECK(q->delay_ms >= 0 && q->ttl_ms >= 0);
      FZR_CHECK(q->priority >= -1000000000 && q->priority <= 1000000000);
      FZR_CHECK(q->producer[0] == 0 || fzr_token(q->producer, MQI_RT_ID_MAX));
      FZR_CHECK(q->subject[0] == 0 || fzr_token(q->subject, MQ_SUBJECT_MAX));
      size_t nh = 0, bytes = 0;
      for (size_t i = q->arg + 3; i + 1 < n; i += 2) {
        FZR_CHECK(f[i].size >= 1 && f[i].size <= 255);
        FZR_CHECK(!memchr(f[i].body, 0, f[i].size));
        FZR_CHECK(f[i + 1].size == 0 || !memchr(f[i + 1].body, 0, f[i + 1].size));
        if (f[i].body[0] != ':') {
          nh++;
          bytes += f[i].size + f[i + 1].size + 2;
        }
      }
      FZR_CHECK(nh == q->n_headers && bytes == q->header_bytes);
      break;
    }
    case MQI_RT_ACK:
    case MQI_RT_NACK:
    case MQI_RT_TOUCH:
      FZR_CHECK(fzr_token(q->receipt, MQ_RECEIPT_MAX));
      FZR_CHECK(q->ms >= 0 && q->ms <= INT64_MAX / 4);
      if (q->verb == MQI_RT_ACK) FZR_CHECK(na == 2 && q->ms == 0);
      if (q->verb == MQI_RT_TOUCH) FZR_CHECK(na == 3);
      if (q->verb == MQI_RT_NACK) FZR_CHECK(na >= 2 && na <= 4);
      FZR_CHECK(q->has_reason == (q->verb == MQI_RT_NACK && na == 4));
      if (q->has_reason) {
        const mqi_zmtp_frame *r = &f[q->arg + 3];
        FZR_CHECK(r->size <= MQI_RT_REASON_MAX);
        FZR_CHECK(r->size == 0 || !memchr(r->body, 0, r->size));
      }
      break;
    case MQI_RT_GET:
      FZR_CHECK(na >= 1 && na <= 3);
      FZR_CHECK(q->lease_ms >= 0 && q->lease_ms <= INT64_MAX / 4);
      FZR_CHECK(q->wait_ms >= 0 && q->wait_ms <= MQI_RT_WAIT_MAX_MS);
      break;
    case MQI_RT_CONSUME:
      FZR_CHECK(na == 2 || na == 3);
      FZR_CHECK(q->credit >= 0 && q->credit <= INT64_MAX / 4);
      FZR_CHECK(q->lease_ms >= 0 && q->lease_ms <= INT64_MAX / 4);
      break;
    case MQI_RT_STOP:
      FZR_CHECK(na == 1);
      break;
    default:
      FZR_CHECK(0);
  }
}

/* The canonical encoding of an accepted request. */
static void fzr_encode(const mqi_zmtp_frame *f, size_t n, const mqi_router_req *q,
                       fzr_msg *out) {
  static const char *const names[] = {"", "PUT", "ACK", "NACK", "TOUCH", "GET", "CONSUME", "STOP"};
  size_t na = n - q->arg;
  out->n = 0;
  if (q->delim) fzr_add(out, NULL, 0);
  fzr_adds(out, "MQ1");
  fzr_adds(out, names[q->verb]);
  fzr_adds(out, q->queue);
  switch (q->verb) {
    case MQI_RT_PUT:
      fzr_adds(out, q->cid);
      fzr_add(out, f[q->arg + 2].body, f[q->arg + 2].size);
      /* Options once each, in a fixed order; user headers as they came. */
      if (q->delay_ms) fzr_adds(out, ":delay"), fzr_addi(out, q->delay_ms);
      if (q->ttl_ms) fzr_adds(out, ":ttl"), fzr_addi(out, q->ttl_ms);
      if (q->priority) fzr_adds(out, ":priority"), fzr_addi(out, q->priority);
      if (q->producer[0]) fzr_adds(out, ":producer"), fzr_adds(out, q->producer);
      if (q->subject[0]) fzr_adds(out, ":subject"), fzr_adds(out, q->subject);
      for (size_t i = q->arg + 3; i + 1 < n; i += 2)
        if (f[i].body[0] != ':') {
          fzr_add(out, f[i].body, f[i].size);
          fzr_add(out, f[i + 1].body, f[i + 1].size);
        }
      break;
    case MQI_RT_ACK:
    case MQI_RT_NACK:
    case MQI_RT_TOUCH:
      fzr_adds(out, q->receipt);
      if (na >= 3) fzr_addi(out, q->ms);
      if (q->has_reason) fzr_add(out, f[q->arg + 3].body, f[q->arg + 3].size);
      break;
    case MQI_RT_GET:
      if (na >= 2) fzr_addi(out, q->lease_ms);
      if (na >= 3) fzr_addi(out, q->wait_ms);
      break;
    case MQI_RT_CONSUME:
      fzr_addi(out, q->credit);
      if (na >= 3) fzr_addi(out, q->lease_ms);
      break;
    default:
      break;
  }
}

static void fzr_same(const mqi_router_req *a, const mqi_router_req *b) {
  FZR_CHECK(a->delim == b->delim && a->verb == b->verb && a->arg == b->arg);
  FZR_CHECK(strcmp(a->queue, b->queue) == 0 && strcmp(a->cid, b->cid) == 0);
  FZR_CHECK(strcmp(a->receipt, b->receipt) == 0);
  FZR_CHECK(a->lease_ms == b->lease_ms && a->wait_ms == b->wait_ms);
  FZR_CHECK(a->credit == b->credit && a->ms == b->ms && a->has_reason == b->has_reason);
  FZR_CHECK(a->delay_ms == b->delay_ms && a->ttl_ms == b->ttl_ms);
  FZR_CHECK(a->priority == b->priority);
  FZR_CHECK(strcmp(a->producer, b->producer) == 0 && strcmp(a->subject, b->subject) == 0);
  FZR_CHECK(a->n_headers == b->n_headers && a->header_bytes == b->header_bytes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static fzr_msg m, back;
  static mqi_router_req q, q2;
  fzr_decode(data, size, &m);
  int rc = mqi_router_parse(m.f, m.n, &q);
  FZR_CHECK(rc == MQI_RTP_OK || rc == MQI_RTP_ERR || rc == MQI_RTP_REFUSE);
  if (rc == MQI_RTP_OK) {
    fzr_check_ok(m.f, m.n, &q);
    fzr_encode(m.f, m.n, &q, &back);
    FZR_CHECK(mqi_router_parse(back.f, back.n, &q2) == MQI_RTP_OK);
    fzr_same(&q, &q2);
    fzr_free(&back);
  } else {
    FZR_CHECK(q.error != NULL && q.error[0] != '\0');
    if (rc == MQI_RTP_REFUSE) {
      FZR_CHECK(q.verb >= MQI_RT_PUT && q.verb <= MQI_RT_TOUCH);
      FZR_CHECK(q.verb == MQI_RT_PUT ? fzr_token(q.cid, MQI_RT_ID_MAX)
                                     : fzr_token(q.receipt, MQ_RECEIPT_MAX));
    }
  }
  /* Pure: the same frames give the same answer, and are left as they were. */
  FZR_CHECK(mqi_router_parse(m.f, m.n, &q2) == rc);
  FZR_CHECK(q2.verb == q.verb && q2.delim == q.delim);
  size_t at = 0;
  for (size_t i = 0; i < m.n; i++) {
    size_t len = data[at++];
    if (len == 0xff) {
      len = 0;
      for (int k = 0; k < 2 && at < size; k++) len = len << 8 | data[at++];
    }
    if (len > size - at) len = size - at;
    FZR_CHECK(m.f[i].size == len && (len == 0 || memcmp(m.f[i].body, data + at, len) == 0));
    at += len;
  }
  fzr_free(&m);
  return 0;
}
