/*
** fuzz_zmtp_cmd.c -- libFuzzer target for command, metadata and PLAIN
** parsing (and, through round trips, their encoders).
**
** The input is one command body exactly as the frame decoder hands it over
** (name-length, name, data), copied into an exact-size heap block so that
** AddressSanitizer sees any read past it.  The same bytes are also given to
** the metadata parser and to the legacy subscription parser directly, and
** every typed parser is called whatever the command's kind, since the
** engine may mis-dispatch and each parser must refuse what is not its own.
**
** Whatever parses must survive a round trip: re-encoding the parsed fields
** with the strict encoders gives back the input bytes exactly (or their
** meaningful prefix, where the parser documents that it ignores trailing
** bytes or cuts a PING context to 16).  A parser that accepted bytes its
** own encoder cannot reproduce would mean the two disagree about the
** format, which is a bug even if nothing crashed.
**
** A failed check calls abort().  tests/test_fuzz_corpus.c #includes this
** file to replay fuzz/corpus/fuzz_zmtp_cmd/ in ordinary CI.
*/
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "zmtp.h"

#define FZC_CHECK(cond) \
  do {                  \
    if (!(cond)) abort(); \
  } while (0)

/* Encode into out (cap bytes) and check that the frame's body is exactly
** want[0..want_len). */
static void fzc_same_body(const uint8_t *frame, size_t frame_len,
                          const uint8_t *want, size_t want_len) {
  size_t hl = want_len > 255 ? 9 : 2;
  FZC_CHECK(frame_len == hl + want_len);
  FZC_CHECK(frame[0] == (want_len > 255 ? 0x06 : 0x04));
  FZC_CHECK(memcmp(frame + hl, want, want_len) == 0);
}

/* Case-insensitive property name match (the names here are ASCII). */
static int fzc_name_is(const mqi_zmtp_prop *p, const char *lower) {
  size_t n = strlen(lower);
  if (p->name_len != n) return 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t ch = p->name[i];
    if (ch >= 'A' && ch <= 'Z') ch = (uint8_t)(ch - 'A' + 'a');
    if (ch != (uint8_t)lower[i]) return 0;
  }
  return 1;
}

static void fzc_metadata(const uint8_t *p, size_t n, uint8_t *out, size_t cap) {
  static mqi_zmtp_meta m;
  int rc = mqi_zmtp_meta_parse(p, n, &m);
  FZC_CHECK(rc == MQI_ZMTP_OK || rc == MQI_ZMTP_EPROTO ||
            rc == MQI_ZMTP_ESOCKTYPE || rc == MQI_ZMTP_ETOOBIG);
  if (rc != MQI_ZMTP_OK) return;
  FZC_CHECK(m.n_props <= MQI_ZMTP_META_MAX);
  if (m.socket_type != MQI_ZMTP_SOCKET_NONE) {
    const mqi_zmtp_prop *st = mqi_zmtp_meta_find(&m, "SOCKET-TYPE");
    FZC_CHECK(st != NULL);
    FZC_CHECK(mqi_zmtp_socket_from_name(st->value, st->value_len) == m.socket_type);
  }
  if (m.has_identity) FZC_CHECK(m.identity_len <= MQI_ZMTP_IDENTITY_MAX);
  /* The properties, re-encoded, are the input -- when every name is one the
  ** strict encoder accepts (the parser is more lenient). */
  size_t len = 0;
  rc = mqi_zmtp_meta_encode(out, cap, m.props, m.n_props, &len);
  if (rc == MQI_ZMTP_OK) {
    FZC_CHECK(len == n && memcmp(out, p, n) == 0);
  } else {
    FZC_CHECK(rc == MQI_ZMTP_EINVAL);
  }
}

static void fzc_command(const uint8_t *p, size_t n, uint8_t *out, size_t cap) {
  mqi_zmtp_cmd c;
  size_t len = 0;
  int rc = mqi_zmtp_cmd_parse(p, n, &c);
  FZC_CHECK(rc == MQI_ZMTP_OK || rc == MQI_ZMTP_EPROTO);
  if (rc != MQI_ZMTP_OK) {
    /* A refused command still goes through every typed parser, which must
    ** refuse it too (kind is 0 after a failed parse). */
    FZC_CHECK(c.kind == MQI_ZMTP_CMD_UNKNOWN && c.data_len == 0);
  } else {
    FZC_CHECK(c.data != NULL);
    FZC_CHECK(c.data + c.data_len == p + n); /* data runs to the end */
    FZC_CHECK(c.name_len >= 1 && c.name_len <= 255);
  }

  /* The generic encoder reproduces every well-formed command exactly. */
  if (rc == MQI_ZMTP_OK && !c.libzmq_error) {
    char name[256];
    memcpy(name, c.name, c.name_len);
    name[c.name_len] = 0;
    FZC_CHECK(mqi_zmtp_cmd_encode(out, cap, name, c.data, c.data_len, &len) ==
              MQI_ZMTP_OK);
    fzc_same_body(out, len, p, n);
  }

  /* READY / INITIATE: our own READY for the peer's type, carrying the
  ** peer's other properties, parses back to the same facts. */
  {
    static mqi_zmtp_meta m, back;
    static mqi_zmtp_prop extra[MQI_ZMTP_META_MAX];
    int r = mqi_zmtp_ready_parse(&c, &m);
    if (c.kind != MQI_ZMTP_CMD_READY && c.kind != MQI_ZMTP_CMD_INITIATE)
      FZC_CHECK(r == MQI_ZMTP_EPROTO);
    if (r == MQI_ZMTP_OK && m.socket_type != MQI_ZMTP_SOCKET_NONE) {
      size_t ne = 0;
      for (size_t i = 0; i < m.n_props; i++)
        if (!fzc_name_is(&m.props[i], "socket-type") &&
            !fzc_name_is(&m.props[i], "identity"))
          extra[ne++] = m.props[i];
      int t = m.socket_type;
      int wants_id = t == MQI_ZMTP_SOCKET_REQ || t == MQI_ZMTP_SOCKET_DEALER ||
                     t == MQI_ZMTP_SOCKET_ROUTER;
      int e = mqi_zmtp_ready_encode(out, cap, c.kind, t,
                                    wants_id ? m.identity : NULL,
                                    wants_id ? m.identity_len : 0, extra, ne,
                                    &len);
      if (e == MQI_ZMTP_OK) {
        mqi_zmtp_cmd c2;
        size_t hl = out[0] == 0x06 ? 9 : 2;
        FZC_CHECK(mqi_zmtp_cmd_parse(out + hl, len - hl, &c2) == MQI_ZMTP_OK);
        FZC_CHECK(c2.kind == c.kind);
        FZC_CHECK(mqi_zmtp_ready_parse(&c2, &back) == MQI_ZMTP_OK);
        FZC_CHECK(back.socket_type == t && back.has_identity == wants_id);
        FZC_CHECK(back.n_props == ne + 1 + (size_t)wants_id);
        if (wants_id)
          FZC_CHECK(back.identity_len == m.identity_len &&
                    (m.identity_len == 0 ||
                     memcmp(back.identity, m.identity, m.identity_len) == 0));
      } else {
        FZC_CHECK(e == MQI_ZMTP_EINVAL); /* a name the RFC does not allow */
      }
    }
  }
  /* ERROR: the reason re-encodes to a prefix of the input (trailing bytes
  ** are ignored by design). */
  {
    const uint8_t *reason;
    size_t rl;
    int r = mqi_zmtp_error_parse(&c, &reason, &rl);
    if (r == MQI_ZMTP_OK) {
      FZC_CHECK(c.kind == MQI_ZMTP_CMD_ERROR && rl <= MQI_ZMTP_REASON_MAX);
      FZC_CHECK(mqi_zmtp_error_encode(out, cap, reason, rl, c.libzmq_error,
                                      &len) == MQI_ZMTP_OK);
      size_t want = (c.libzmq_error ? 5 : 6) + 1 + rl;
      FZC_CHECK(want <= n);
      fzc_same_body(out, len, p, want);
    } else {
      FZC_CHECK(r == MQI_ZMTP_EPROTO && reason == NULL && rl == 0);
    }
  }
  /* PING: TTL and (cut) context survive a round trip; the PONG is valid. */
  {
    unsigned ttl;
    const uint8_t *ctx;
    size_t cl;
    int r = mqi_zmtp_ping_parse(&c, &ttl, &ctx, &cl);
    if (r == MQI_ZMTP_OK) {
      FZC_CHECK(n >= 7 && cl <= MQI_ZMTP_PING_CONTEXT_MAX && ttl <= 65535);
      FZC_CHECK(ctx + cl <= p + n);
      FZC_CHECK(mqi_zmtp_ping_encode(out, cap, ttl, ctx, cl, &len) == MQI_ZMTP_OK);
      if (ttl <= MQI_ZMTP_PING_TTL_MAX) fzc_same_body(out, len, p, 7 + cl);
      FZC_CHECK(mqi_zmtp_pong_encode(out, cap, ctx, cl, &len) == MQI_ZMTP_OK);
    } else {
      FZC_CHECK(r == MQI_ZMTP_EPROTO && ctx == NULL);
    }
  }
  /* PONG */
  {
    const uint8_t *ctx;
    size_t cl;
    int r = mqi_zmtp_pong_parse(&c, &ctx, &cl);
    if (r == MQI_ZMTP_OK) {
      FZC_CHECK(cl <= MQI_ZMTP_PING_CONTEXT_MAX);
      FZC_CHECK(mqi_zmtp_pong_encode(out, cap, ctx, cl, &len) == MQI_ZMTP_OK);
      fzc_same_body(out, len, p, 5 + cl);
    } else {
      FZC_CHECK(r == MQI_ZMTP_EPROTO);
    }
  }
  /* SUBSCRIBE / CANCEL */
  {
    int sub;
    const uint8_t *t;
    size_t tl;
    int r = mqi_zmtp_sub_parse(&c, &sub, &t, &tl);
    if (r == MQI_ZMTP_OK) {
      FZC_CHECK(mqi_zmtp_sub_encode(out, cap, sub, t, tl, &len) == MQI_ZMTP_OK);
      fzc_same_body(out, len, p, n);
    } else {
      FZC_CHECK(r == MQI_ZMTP_EPROTO);
    }
  }
  /* PLAIN HELLO: exact length, so an exact round trip. */
  {
    const uint8_t *u, *pw;
    size_t ul, pl;
    int r = mqi_zmtp_hello_parse(&c, &u, &ul, &pw, &pl);
    if (r == MQI_ZMTP_OK) {
      FZC_CHECK(ul <= 255 && pl <= 255);
      FZC_CHECK(mqi_zmtp_hello_encode(out, cap, u, ul, pw, pl, &len) == MQI_ZMTP_OK);
      fzc_same_body(out, len, p, n);
    } else {
      FZC_CHECK(r == MQI_ZMTP_EPROTO && u == NULL && pw == NULL);
    }
  }
  /* PLAIN WELCOME */
  if (mqi_zmtp_welcome_parse(&c) == MQI_ZMTP_OK) {
    FZC_CHECK(mqi_zmtp_welcome_encode(out, cap, &len) == MQI_ZMTP_OK);
    fzc_same_body(out, len, p, n);
  }
}

static void fzc_legacy(const uint8_t *p, size_t n, uint8_t *out, size_t cap) {
  int sub;
  const uint8_t *t;
  size_t tl, len = 0;
  int rc = mqi_zmtp_sub_legacy_parse(p, n, &sub, &t, &tl);
  if (rc != MQI_ZMTP_OK) {
    FZC_CHECK(rc == MQI_ZMTP_EPROTO && (n == 0 || p[0] > 1));
    return;
  }
  FZC_CHECK(mqi_zmtp_sub_legacy_encode(out, cap, sub, t, tl, &len) == MQI_ZMTP_OK);
  size_t hl = n > 255 ? 9 : 2;
  FZC_CHECK(len == hl + n && out[0] == (n > 255 ? 0x02 : 0x00));
  FZC_CHECK(memcmp(out + hl, p, n) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* Exact-size copies: any over-read is a heap-buffer-overflow report. */
  uint8_t *p = malloc(size ? size : 1);
  size_t cap = size + 64;
  uint8_t *out = malloc(cap);
  FZC_CHECK(p && out);
  if (size) memcpy(p, data, size);
  fzc_command(p, size, out, cap);
  fzc_metadata(p, size, out, cap);
  fzc_legacy(p, size, out, cap);
  /* The socket table is symmetric: if we may talk to them, they may talk
  ** to us (a cheap check that costs the fuzzer nothing). */
  if (size >= 2) {
    int a = data[0] % 12 - 1, b = data[1] % 12 - 1;
    FZC_CHECK(mqi_zmtp_socket_check(a, b) == mqi_zmtp_socket_check(b, a));
  }
  free(out);
  free(p);
  return 0;
}
