/*
** fuzz_zmtp_frames.c -- libFuzzer target for the streaming frame decoder.
**
** Input layout: 5 configuration bytes, then the peer's byte stream.
**   byte 0  max_frame:   bit 7 set: 2^(b % 21), else b * 8   (0 .. 1 MiB)
**   byte 1  max_command: same encoding
**   byte 2  max_frames:  0 means 1024, else the value
**   byte 3  max_message: bit 7 set: 2^(b % 22), else b * 16
**   byte 4  bits 0-4: seed of the chunk sizes; bits 5-7: fail the n-th
**           allocation (0: never)
** Limits stay at or under a few MiB so that one run stays fast.
**
** The stream is decoded whole, in seeded random chunks and (when short) one
** byte at a time; the three runs must produce the same frames, the same
** final result and the same counters, whatever the split.  Every call to the
** memory hook is checked against the limits (nothing is ever allocated for
** a size over its limit) and balanced by a release (no leak, including on
** errors and at EOF).  The frames decoded are then re-encoded with the
** strict encoder and decoded again: the result must be identical, which
** ties the encoder and decoder to one definition of the format.  A run
** with a failing allocation must end in MQI_ZMTP_ENOMEM after a prefix of
** the same frames.
**
** A failed check calls abort().  tests/test_fuzz_corpus.c #includes this
** file to replay fuzz/corpus/fuzz_zmtp_frames/ in ordinary CI.
*/
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "zmtp.h"

#define FZF_CHECK(cond) \
  do {                  \
    if (!(cond)) abort(); \
  } while (0)

#define FZF_MAX_LOG 256 /* frames remembered per run for comparison */

typedef struct fzf_mem {
  const mqi_zmtp_limits *lim;
  long live;      /* allocations not yet released */
  int allocs;
  int fail_at;    /* 1-based allocation to fail; 0 never */
} fzf_mem;

static void *fzf_mem_fn(void *ctx, void *ptr, size_t size) {
  fzf_mem *m = ctx;
  if (size == 0) {
    if (ptr) m->live--;
    free(ptr);
    return NULL;
  }
  /* Nothing over a limit is ever requested. */
  uint64_t biggest = m->lim->max_frame > m->lim->max_command
                         ? m->lim->max_frame
                         : m->lim->max_command;
  FZF_CHECK(size <= biggest);
  FZF_CHECK(ptr == NULL);
  m->allocs++;
  if (m->fail_at && m->allocs == m->fail_at) return NULL;
  void *p = malloc(size);
  if (p) m->live++;
  return p;
}

typedef struct fzf_frame {
  unsigned flags;
  size_t size;
  uint32_t hash;
} fzf_frame;

typedef struct fzf_run {
  int rc;          /* last result of feed */
  int finish_rc;   /* result of finish at EOF */
  size_t n;        /* frames decoded */
  fzf_frame log[FZF_MAX_LOG];
  uint64_t n_frames, n_commands, n_interleaved;
  uint8_t *re;     /* the frames re-encoded (malloc'd), if requested */
  size_t re_len, re_cap;
} fzf_run;

static uint32_t fzf_hash(const uint8_t *p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
  return h;
}

static void fzf_reencode(fzf_run *r, const mqi_zmtp_frame *f) {
  size_t need = 0;
  int rc = mqi_zmtp_frame_encode(NULL, 0, f->flags, f->body, f->size, &need);
  FZF_CHECK(rc == MQI_ZMTP_ESPACE || (rc == MQI_ZMTP_OK && need == 0));
  FZF_CHECK(need == f->size + (f->size > 255 ? 9 : 2));
  if (r->re_len + need > r->re_cap) {
    size_t cap = (r->re_len + need) * 2;
    uint8_t *p = realloc(r->re, cap);
    FZF_CHECK(p != NULL);
    r->re = p;
    r->re_cap = cap;
  }
  size_t got = 0;
  rc = mqi_zmtp_frame_encode(r->re + r->re_len, r->re_cap - r->re_len, f->flags,
                             f->body, f->size, &got);
  FZF_CHECK(rc == MQI_ZMTP_OK && got == need);
  r->re_len += got;
}

/* Decode s[0..n) with the given chunking (0 whole, 1 bytes, 2 random). */
static void fzf_decode(const uint8_t *s, size_t n, const mqi_zmtp_limits *lim,
                       int mode, uint32_t seed, int fail_at, int reencode,
                       fzf_run *r) {
  mqi_zmtp_decoder d;
  fzf_mem mem = {lim, 0, 0, fail_at};
  uint32_t x = seed * 2654435761u + 7;
  size_t pos = 0;
  memset(r, 0, sizeof *r);
  r->rc = MQI_ZMTP_AGAIN;
  mqi_zmtp_decoder_init(&d, lim, fzf_mem_fn, &mem);
  while (pos < n) {
    size_t chunk = n - pos, used = 0;
    if (mode == 1) chunk = 1;
    if (mode == 2) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      size_t c = 1 + x % 97;
      if (c < chunk) chunk = c;
    }
    mqi_zmtp_frame f;
    int rc = mqi_zmtp_decoder_feed(&d, s + pos, chunk, &used, &f);
    FZF_CHECK(used <= chunk);
    pos += used;
    r->rc = rc;
    if (rc == MQI_ZMTP_FRAME) {
      FZF_CHECK((f.size == 0) == (f.body == NULL));
      FZF_CHECK(!(f.flags & ~(unsigned)(MQI_ZMTP_F_MORE | MQI_ZMTP_F_COMMAND)));
      FZF_CHECK(f.flags != (MQI_ZMTP_F_MORE | MQI_ZMTP_F_COMMAND));
      if (f.flags & MQI_ZMTP_F_COMMAND)
        FZF_CHECK(f.size <= lim->max_command);
      else
        FZF_CHECK(f.size <= lim->max_frame);
      FZF_CHECK(d.msg_frames <= lim->max_frames);
      FZF_CHECK(d.msg_bytes <= lim->max_message);
      if (r->n < FZF_MAX_LOG) {
        fzf_frame *l = &r->log[r->n];
        l->flags = f.flags;
        l->size = f.size;
        l->hash = fzf_hash(f.body, f.size);
      }
      r->n++;
      if (reencode) fzf_reencode(r, &f);
      mqi_zmtp_frame_release(&d, &f);
      continue;
    }
    if (rc != MQI_ZMTP_AGAIN) break;
    FZF_CHECK(used == chunk);
  }
  r->n_frames = d.n_frames;
  r->n_commands = d.n_commands;
  r->n_interleaved = d.n_interleaved;
  FZF_CHECK(d.n_frames + d.n_commands == r->n);
  int in_msg = mqi_zmtp_decoder_in_message(&d);
  /* The decoder's private state 0 is "at a frame boundary": peeking at it
  ** lets the target predict what finish must answer. */
  int mid_frame = d.state != 0;
  r->finish_rc = mqi_zmtp_decoder_finish(&d);
  if (r->rc != MQI_ZMTP_AGAIN && r->rc != MQI_ZMTP_FRAME)
    FZF_CHECK(r->finish_rc == r->rc);
  else
    FZF_CHECK(r->finish_rc ==
              ((in_msg || mid_frame) ? MQI_ZMTP_ETRUNC : MQI_ZMTP_OK));
  FZF_CHECK(mem.live == 0); /* everything went back to the hook */
  if (r->rc == MQI_ZMTP_ENOMEM) FZF_CHECK(fail_at && mem.allocs == fail_at);
}

static void fzf_same(const fzf_run *a, const fzf_run *b) {
  FZF_CHECK(a->rc == b->rc);
  FZF_CHECK(a->finish_rc == b->finish_rc);
  FZF_CHECK(a->n == b->n);
  FZF_CHECK(a->n_frames == b->n_frames && a->n_commands == b->n_commands);
  FZF_CHECK(a->n_interleaved == b->n_interleaved);
  size_t m = a->n < FZF_MAX_LOG ? a->n : FZF_MAX_LOG;
  FZF_CHECK(memcmp(a->log, b->log, m * sizeof a->log[0]) == 0);
}

static uint64_t fzf_limit(uint8_t b, unsigned max_shift, unsigned mul) {
  if (b & 0x80) return (uint64_t)1 << (b % max_shift);
  return (uint64_t)b * mul;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mqi_zmtp_limits lim;
  static fzf_run whole, other, again;
  if (size < 5) return 0;
  lim.max_frame = fzf_limit(data[0], 21, 8);
  lim.max_command = fzf_limit(data[1], 21, 8);
  lim.max_frames = data[2] ? data[2] : 1024;
  lim.max_message = fzf_limit(data[3], 22, 16);
  uint32_t seed = data[4] & 0x1f;
  int fail_at = data[4] >> 5;
  const uint8_t *s = data + 5;
  size_t n = size - 5;

  fzf_decode(s, n, &lim, 0, seed, 0, 1, &whole);
  fzf_decode(s, n, &lim, 2, seed, 0, 0, &other);
  fzf_same(&whole, &other);
  if (n <= 4096) {
    fzf_decode(s, n, &lim, 1, seed, 0, 0, &other);
    fzf_same(&whole, &other);
  }

  /* Re-encoded frames decode to the same frames (an error of the original
  ** stream is not re-encoded, so the copy ends cleanly or mid-message). */
  fzf_decode(whole.re, whole.re_len, &lim, 2, seed + 1, 0, 1, &again);
  FZF_CHECK(again.rc == (whole.n ? MQI_ZMTP_FRAME : MQI_ZMTP_AGAIN));
  FZF_CHECK(again.n == whole.n);
  FZF_CHECK(again.n_frames == whole.n_frames);
  FZF_CHECK(again.n_interleaved == whole.n_interleaved);
  size_t m = whole.n < FZF_MAX_LOG ? whole.n : FZF_MAX_LOG;
  FZF_CHECK(memcmp(again.log, whole.log, m * sizeof whole.log[0]) == 0);
  /* The strict encoder's output re-encodes to itself. */
  FZF_CHECK(again.re_len == whole.re_len);
  FZF_CHECK(whole.re_len == 0 || memcmp(again.re, whole.re, whole.re_len) == 0);
  free(whole.re);
  free(again.re);
  whole.re = again.re = NULL;

  /* OOM on the n-th allocation: an error code after a prefix of the frames,
  ** or the same run if there were fewer allocations. */
  if (fail_at) {
    fzf_decode(s, n, &lim, 2, seed, fail_at, 0, &other);
    if (other.rc == MQI_ZMTP_ENOMEM) {
      FZF_CHECK(other.n <= whole.n);
      size_t k = other.n < FZF_MAX_LOG ? other.n : FZF_MAX_LOG;
      FZF_CHECK(memcmp(other.log, whole.log, k * sizeof whole.log[0]) == 0);
    } else {
      fzf_same(&whole, &other);
    }
  }
  return 0;
}
