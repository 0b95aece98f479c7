/*
** fuzz_zmtp_greeting.c -- libFuzzer target for the ZMTP greeting parser.
**
** Input layout: byte 0 configures the run (bits 0-1: the mechanism we
** expect, 3 = accept any; bits 2-7: seed of the chunk sizes), the rest is
** the peer's byte stream.  The stream is parsed three times -- whole, one
** byte at a time, and in seeded random chunks -- and the three parsers must
** agree on everything: the result, the bytes taken, every decoded field.
** That turns "did not crash" into "decided the same thing whatever the TCP
** split", which is the property the engine depends on.  On top, each
** outcome is checked against the rules it claims (OK means 64 bytes with a
** valid signature and major >= 3; an early error means the deciding byte
** really is bad), and our own greetings must parse back.
**
** A failed check calls abort(), which libFuzzer and the corpus replay test
** (tests/test_fuzz_corpus.c, which #includes this file) report as a crash.
*/
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "zmtp.h"

#define FZG_CHECK(cond) \
  do {                  \
    if (!(cond)) abort(); \
  } while (0)

typedef struct fzg_result {
  int rc;
  size_t taken;
  mqi_zmtp_greeting g;
} fzg_result;

/* Parse stream in chunks: chunk 0 = all at once, 1 = byte by byte, else
** pseudo-random sizes from seed. */
static void fzg_parse(const uint8_t *s, size_t n, int expect, int mode,
                      uint32_t seed, fzg_result *r) {
  size_t pos = 0;
  int rc = MQI_ZMTP_AGAIN;
  uint32_t x = seed * 2654435761u + 1;
  mqi_zmtp_greeting_init(&r->g, expect);
  while (pos < n) {
    size_t chunk = n - pos, used = 0;
    if (mode == 1) chunk = 1;
    if (mode == 2) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      size_t c = 1 + x % 23;
      if (c < chunk) chunk = c;
    }
    rc = mqi_zmtp_greeting_feed(&r->g, s + pos, chunk, &used);
    FZG_CHECK(used <= chunk);
    FZG_CHECK(r->g.have <= MQI_ZMTP_GREETING_SIZE);
    pos += used;
    if (rc != MQI_ZMTP_AGAIN) break;
    FZG_CHECK(used == chunk); /* AGAIN means everything was taken */
  }
  r->rc = rc;
  r->taken = pos;
}

static void fzg_same(const fzg_result *a, const fzg_result *b) {
  FZG_CHECK(a->rc == b->rc);
  FZG_CHECK(a->taken == b->taken);
  FZG_CHECK(a->g.have == b->g.have);
  FZG_CHECK(memcmp(a->g.bytes, b->g.bytes, a->g.have) == 0);
  FZG_CHECK(a->g.major == b->g.major && a->g.minor == b->g.minor);
  FZG_CHECK(a->g.version == b->g.version);
  FZG_CHECK(a->g.mechanism == b->g.mechanism);
  FZG_CHECK(a->g.as_server == b->g.as_server);
}

/* Check that the outcome of one parse is the one the rules require. */
static void fzg_judge(const uint8_t *s, size_t n, int expect,
                      const fzg_result *r) {
  const mqi_zmtp_greeting *g = &r->g;
  FZG_CHECK(r->taken == g->have);
  FZG_CHECK(r->taken <= n);
  FZG_CHECK(memcmp(g->bytes, s, g->have) == 0);
  if (r->rc == MQI_ZMTP_AGAIN) {
    FZG_CHECK(g->have == n && n < MQI_ZMTP_GREETING_SIZE);
  } else if (r->rc == MQI_ZMTP_OK) {
    FZG_CHECK(g->have == MQI_ZMTP_GREETING_SIZE);
    FZG_CHECK(s[0] == 0xFF && (s[9] & 1) && s[10] >= 3);
    FZG_CHECK(g->major == s[10] && g->minor == s[11]);
    FZG_CHECK(g->version == (s[11] == 0 ? 30 : 31));
    FZG_CHECK(g->as_server == (s[32] != 0));
    if (expect != MQI_ZMTP_MECH_UNKNOWN) FZG_CHECK(g->mechanism == expect);
    FZG_CHECK(mqi_zmtp_greeting_is_zmtp3(g));
  } else {
    /* An error is decided by the last byte taken, never later. */
    size_t at = g->have - 1;
    FZG_CHECK(g->have >= 1);
    FZG_CHECK(!mqi_zmtp_greeting_is_zmtp3(g));
    if (r->rc == MQI_ZMTP_EVERSION) {
      FZG_CHECK((at == 0 && s[0] != 0xFF) || (at == 9 && !(s[9] & 1)) ||
                (at == 10 && s[10] < 3));
    } else {
      FZG_CHECK(r->rc == MQI_ZMTP_EMECH);
      FZG_CHECK(at == 31 && expect != MQI_ZMTP_MECH_UNKNOWN);
      FZG_CHECK(g->mechanism != expect);
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const int mechs[4] = {MQI_ZMTP_MECH_NULL, MQI_ZMTP_MECH_PLAIN,
                               MQI_ZMTP_MECH_CURVE, MQI_ZMTP_MECH_UNKNOWN};
  fzg_result whole, bytes, chunks;
  if (size < 1) return 0;
  int expect = mechs[data[0] & 3];
  uint32_t seed = data[0] >> 2;
  const uint8_t *s = data + 1;
  size_t n = size - 1;

  fzg_parse(s, n, expect, 0, seed, &whole);
  fzg_parse(s, n, expect, 1, seed, &bytes);
  fzg_parse(s, n, expect, 2, seed, &chunks);
  fzg_same(&whole, &bytes);
  fzg_same(&whole, &chunks);
  fzg_judge(s, n, expect, &whole);

  /* Errors are sticky: more input changes nothing. */
  if (whole.rc != MQI_ZMTP_AGAIN) {
    size_t used = 99;
    int rc = mqi_zmtp_greeting_feed(&whole.g, s, n, &used);
    FZG_CHECK(rc == whole.rc && used == 0);
  }

  /* Our own greeting, with the input's as-server octet, must be accepted
  ** by a parser expecting the same mechanism, whatever follows it. */
  uint8_t own[MQI_ZMTP_GREETING_SIZE + 8];
  int mech = expect == MQI_ZMTP_MECH_UNKNOWN ? MQI_ZMTP_MECH_NULL : expect;
  FZG_CHECK(mqi_zmtp_greeting_encode(own, mech, n > 0 && s[0] & 1) == MQI_ZMTP_OK);
  memcpy(own + MQI_ZMTP_GREETING_SIZE, data, size < 8 ? size : 8);
  fzg_parse(own, MQI_ZMTP_GREETING_SIZE + (size < 8 ? size : 8), mech, 2, seed,
            &chunks);
  FZG_CHECK(chunks.rc == MQI_ZMTP_OK && chunks.taken == MQI_ZMTP_GREETING_SIZE);
  FZG_CHECK(chunks.g.mechanism == mech && chunks.g.version == 31);
  return 0;
}
