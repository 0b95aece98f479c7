/*
** zmtp_codec.c -- ZMTP 3.x greeting and framing: encode our bytes, decode
** the peer's, one byte or one megabyte at a time.
**
** Both decoders here are incremental state machines over whatever chunks the
** socket happens to deliver, because a TCP read boundary means nothing: a
** frame header may be split after any byte, and the greeting's deciding
** bytes (0, 9, 10) must be judged the moment they arrive so that an engine
** never waits for 64 bytes that a libzmq peer will not send until it has
** seen our byte 11.  The greeting parser also stops at exactly 64 bytes:
** whatever follows in the same read is the first frame.
**
** The frame decoder's one rule is "check, then allocate".  A frame's size is
** known only after its last size byte; at that moment it is compared with
** the limit for its kind (command or data frame) and with what is left of
** the message's byte and frame budget, and only then is exactly that many
** bytes requested from the caller's memory hook.  libzmq mallocs whatever a
** header declares (a 10-byte header made it reserve 8 GiB); we must not.
** Sizes of 2^63 and above are illegal on the wire and rejected outright, so
** the size arithmetic below never overflows a uint64_t.
**
** Message boundaries are tracked only through data frames: a command (PING
** from a libzmq peer that is mid-way through a large multipart message) is
** returned on its own and leaves the message's frame and byte counts as they
** were.  The decoder is lenient where libzmq is (reserved flag bits, MORE on
** a command, long form for small sizes) and counts each anomaly so that the
** engine can log it; the encoder is strict and refuses to produce any of
** them.
*/
#include <stdlib.h>
#include <string.h>

#include "zmtp.h"

/* Decoder states: which part of a frame the next input byte belongs to. */
#define ZMTP_CODEC_ST_FLAGS 0
#define ZMTP_CODEC_ST_SHORT 1
#define ZMTP_CODEC_ST_LONG 2
#define ZMTP_CODEC_ST_BODY 3

#define ZMTP_CODEC_FLAG_BITS (MQI_ZMTP_F_MORE | MQI_ZMTP_F_LONG | MQI_ZMTP_F_COMMAND)

/* ------------------------------------------------------------------------
** Result codes
*/
const char *mqi_zmtp_rcstr(int rc) {
  switch (rc) {
    case MQI_ZMTP_OK: return "ok";
    case MQI_ZMTP_AGAIN: return "more input needed";
    case MQI_ZMTP_FRAME: return "frame complete";
    case MQI_ZMTP_EPROTO: return "malformed ZMTP input";
    case MQI_ZMTP_EVERSION: return "peer does not speak ZMTP 3.x";
    case MQI_ZMTP_EMECH: return "security mechanism mismatch";
    case MQI_ZMTP_ESOCKTYPE: return "unknown or incompatible socket type";
    case MQI_ZMTP_ETOOBIG: return "ZMTP size over the configured limit";
    case MQI_ZMTP_ETRUNC: return "stream ended inside a frame or message";
    case MQI_ZMTP_ENOMEM: return "out of memory";
    case MQI_ZMTP_EINVAL: return "invalid argument";
    case MQI_ZMTP_ESPACE: return "output buffer too small";
    default: return "unknown ZMTP result code";
  }
}

int mqi_zmtp_rc_to_mq(int rc) {
  switch (rc) {
    case MQI_ZMTP_OK:
    case MQI_ZMTP_AGAIN:
    case MQI_ZMTP_FRAME: return MQ_OK;
    case MQI_ZMTP_ETOOBIG: return MQ_ETOOBIG;
    case MQI_ZMTP_ENOMEM: return MQ_ENOMEM;
    case MQI_ZMTP_EINVAL:
    case MQI_ZMTP_ESPACE: return MQ_EINVAL;
    case MQI_ZMTP_EPROTO:
    case MQI_ZMTP_EVERSION:
    case MQI_ZMTP_EMECH:
    case MQI_ZMTP_ESOCKTYPE:
    case MQI_ZMTP_ETRUNC: return MQ_EPROTO;
    default: return MQ_ERROR;
  }
}

/* ------------------------------------------------------------------------
** Greeting
*/

/* The mechanism field as it must appear on the wire: the name, NUL-padded
** to 20 bytes.  Comparison is over all 20 bytes, as libzmq does, so "null"
** and "NULL\0X..." are both mismatches. */
static const char *zmtp_codec_mech_name(int mechanism) {
  switch (mechanism) {
    case MQI_ZMTP_MECH_NULL: return "NULL";
    case MQI_ZMTP_MECH_PLAIN: return "PLAIN";
    case MQI_ZMTP_MECH_CURVE: return "CURVE";
    default: return NULL;
  }
}

static void zmtp_codec_mech_field(uint8_t field[MQI_ZMTP_MECH_SIZE],
                                  const char *name) {
  memset(field, 0, MQI_ZMTP_MECH_SIZE);
  memcpy(field, name, strlen(name));
}

static int zmtp_codec_mech_identify(const uint8_t *field) {
  static const int known[] = {MQI_ZMTP_MECH_NULL, MQI_ZMTP_MECH_PLAIN,
                              MQI_ZMTP_MECH_CURVE};
  uint8_t want[MQI_ZMTP_MECH_SIZE];
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
    zmtp_codec_mech_field(want, zmtp_codec_mech_name(known[i]));
    if (memcmp(field, want, MQI_ZMTP_MECH_SIZE) == 0) return known[i];
  }
  return MQI_ZMTP_MECH_UNKNOWN;
}

int mqi_zmtp_greeting_encode(uint8_t out[MQI_ZMTP_GREETING_SIZE],
                             int mechanism, int as_server) {
  const char *name = zmtp_codec_mech_name(mechanism);
  if (!out || !name) return MQI_ZMTP_EINVAL;
  /* Padding (bytes 1..8) and filler stay zero: libzmq puts its routing id
  ** length in the padding for ZMTP 1.0's sake, which we do not speak. */
  memset(out, 0, MQI_ZMTP_GREETING_SIZE);
  out[0] = 0xFF;
  out[9] = 0x7F;
  out[10] = 3;
  out[11] = 1;
  zmtp_codec_mech_field(out + 12, name);
  out[32] = as_server ? 1 : 0;
  return MQI_ZMTP_OK;
}

void mqi_zmtp_greeting_init(mqi_zmtp_greeting *g, int expect) {
  memset(g, 0, sizeof *g);
  /* An expectation that names no mechanism we know can never be met, so
  ** every peer is then a mismatch: failing closed beats accepting anyone. */
  g->expect = expect;
  g->rc = MQI_ZMTP_OK;
  g->mechanism = MQI_ZMTP_MECH_UNKNOWN;
}

/* Judge the byte just stored at offset at; returns MQI_ZMTP_OK or the
** error that byte decides. */
static int zmtp_codec_greeting_byte(mqi_zmtp_greeting *g, size_t at) {
  uint8_t b = g->bytes[at];
  switch (at) {
    case 0:
      /* Not 0xFF: an unversioned ZMTP 1.0 peer, or not ZMTP at all (an HTTP
      ** request, a TLS ClientHello).  libzmq waits here forever; we fail. */
      return b == 0xFF ? MQI_ZMTP_OK : MQI_ZMTP_EVERSION;
    case 9:
      /* libzmq checks only bit 0 (clear means ZMTP 1.0); so do we. */
      return (b & 1) ? MQI_ZMTP_OK : MQI_ZMTP_EVERSION;
    case 10:
      g->major = b;
      return b >= 3 ? MQI_ZMTP_OK : MQI_ZMTP_EVERSION;
    case 11:
      /* Minor 0 is a 3.0 peer (legacy subscription messages); anything
      ** else, including minors we have never heard of, is 3.1. */
      g->minor = b;
      g->version = b == 0 ? 30 : 31;
      return MQI_ZMTP_OK;
    case 12 + MQI_ZMTP_MECH_SIZE - 1:
      g->mechanism = zmtp_codec_mech_identify(g->bytes + 12);
      if (g->expect != MQI_ZMTP_MECH_UNKNOWN && g->mechanism != g->expect)
        return MQI_ZMTP_EMECH;
      return MQI_ZMTP_OK;
    case 32:
      g->as_server = b != 0;
      return MQI_ZMTP_OK;
    default:
      return MQI_ZMTP_OK; /* padding and filler: never validated */
  }
}

int mqi_zmtp_greeting_feed(mqi_zmtp_greeting *g, const void *data, size_t len,
                           size_t *used) {
  const uint8_t *p = data;
  size_t n = 0;
  if (used) *used = 0;
  if (!g) return MQI_ZMTP_EINVAL;
  if (g->rc != MQI_ZMTP_OK) return g->rc;
  if (!p && len) return MQI_ZMTP_EINVAL;
  while (n < len && g->have < MQI_ZMTP_GREETING_SIZE) {
    size_t at = g->have;
    g->bytes[at] = p[n++];
    g->have++;
    int rc = zmtp_codec_greeting_byte(g, at);
    if (rc != MQI_ZMTP_OK) {
      g->rc = rc;
      if (used) *used = n;
      return rc;
    }
  }
  if (used) *used = n;
  return g->have == MQI_ZMTP_GREETING_SIZE ? MQI_ZMTP_OK : MQI_ZMTP_AGAIN;
}

int mqi_zmtp_greeting_is_zmtp3(const mqi_zmtp_greeting *g) {
  return g && g->rc == MQI_ZMTP_OK && g->have > 10;
}

/* ------------------------------------------------------------------------
** Frame decoder
*/
void mqi_zmtp_limits_init(mqi_zmtp_limits *l) {
  l->max_frame = (uint64_t)16 << 20;
  l->max_command = (uint64_t)64 << 10;
  l->max_message = (uint64_t)16 << 20;
  l->max_frames = 1024;
}

static void *zmtp_codec_default_mem(void *ctx, void *ptr, size_t size) {
  (void)ctx;
  if (size == 0) {
    free(ptr);
    return NULL;
  }
  return malloc(size);
}

void mqi_zmtp_decoder_init(mqi_zmtp_decoder *d, const mqi_zmtp_limits *limits,
                           mqi_zmtp_mem_fn mem, void *mem_ctx) {
  memset(d, 0, sizeof *d);
  if (limits)
    d->limits = *limits;
  else
    mqi_zmtp_limits_init(&d->limits);
  d->mem = mem ? mem : zmtp_codec_default_mem;
  d->mem_ctx = mem ? mem_ctx : NULL;
  d->state = ZMTP_CODEC_ST_FLAGS;
  d->rc = MQI_ZMTP_OK;
}

void mqi_zmtp_decoder_set_limits(mqi_zmtp_decoder *d,
                                 const mqi_zmtp_limits *limits) {
  if (d && limits) d->limits = *limits;
}

static void zmtp_codec_drop_body(mqi_zmtp_decoder *d) {
  if (d->body) d->mem(d->mem_ctx, d->body, 0);
  d->body = NULL;
  d->got = 0;
}

void mqi_zmtp_decoder_reset(mqi_zmtp_decoder *d) {
  if (!d) return;
  zmtp_codec_drop_body(d);
  d->state = ZMTP_CODEC_ST_FLAGS;
  d->rc = MQI_ZMTP_OK;
  d->flags = 0;
  d->size_have = 0;
  d->size = 0;
  d->msg_frames = 0;
  d->msg_bytes = 0;
}

int mqi_zmtp_decoder_in_message(const mqi_zmtp_decoder *d) {
  return d && d->msg_frames > 0;
}

int mqi_zmtp_decoder_finish(mqi_zmtp_decoder *d) {
  int rc;
  if (!d) return MQI_ZMTP_EINVAL;
  if (d->rc != MQI_ZMTP_OK)
    rc = d->rc;
  else if (d->state != ZMTP_CODEC_ST_FLAGS || d->msg_frames > 0)
    rc = MQI_ZMTP_ETRUNC;
  else
    rc = MQI_ZMTP_OK;
  mqi_zmtp_decoder_reset(d);
  return rc;
}

void mqi_zmtp_frame_release(mqi_zmtp_decoder *d, mqi_zmtp_frame *f) {
  if (!f) return;
  if (d && f->body) d->mem(d->mem_ctx, f->body, 0);
  f->body = NULL;
  f->size = 0;
  f->flags = 0;
}

/* Is the declared size of the frame being read acceptable?  Called once,
** right after its last size byte, before anything is allocated. */
static int zmtp_codec_check_size(const mqi_zmtp_decoder *d) {
  const mqi_zmtp_limits *l = &d->limits;
  uint64_t n = d->size;
  if (n > MQI_ZMTP_SIZE_LIMIT) return MQI_ZMTP_EPROTO;
  if (d->flags & MQI_ZMTP_F_COMMAND) {
    if (n > l->max_command) return MQI_ZMTP_ETOOBIG;
  } else {
    if (n > l->max_frame) return MQI_ZMTP_ETOOBIG;
    /* Written as a subtraction so it cannot overflow; msg_bytes may exceed
    ** max_message only if the limits were lowered mid-message. */
    if (d->msg_bytes > l->max_message || n > l->max_message - d->msg_bytes)
      return MQI_ZMTP_ETOOBIG;
  }
  if (n > (uint64_t)SIZE_MAX) return MQI_ZMTP_ETOOBIG;
  return MQI_ZMTP_OK;
}

/* Hand the finished frame to the caller and update the message state. */
static int zmtp_codec_emit(mqi_zmtp_decoder *d, mqi_zmtp_frame *out) {
  unsigned flags = d->flags & (MQI_ZMTP_F_MORE | MQI_ZMTP_F_COMMAND);
  out->flags = flags;
  out->size = (size_t)d->size;
  out->body = d->body;
  if (flags & MQI_ZMTP_F_COMMAND) {
    d->n_commands++;
    if (d->msg_frames > 0) d->n_interleaved++;
  } else {
    d->n_frames++;
    if (flags & MQI_ZMTP_F_MORE) {
      d->msg_frames++;
      d->msg_bytes += d->size; /* checked: stays <= max_message */
    } else {
      d->msg_frames = 0;
      d->msg_bytes = 0;
    }
  }
  d->body = NULL;
  d->got = 0;
  d->size = 0;
  d->size_have = 0;
  d->state = ZMTP_CODEC_ST_FLAGS;
  return MQI_ZMTP_FRAME;
}

/* The size is complete: check it, then get the body buffer (if any). */
static int zmtp_codec_begin_body(mqi_zmtp_decoder *d, mqi_zmtp_frame *out) {
  int rc = zmtp_codec_check_size(d);
  if (rc != MQI_ZMTP_OK) return rc;
  if (d->size == 0) return zmtp_codec_emit(d, out);
  d->body = d->mem(d->mem_ctx, NULL, (size_t)d->size);
  if (!d->body) return MQI_ZMTP_ENOMEM;
  d->got = 0;
  d->state = ZMTP_CODEC_ST_BODY;
  return MQI_ZMTP_AGAIN;
}

int mqi_zmtp_decoder_feed(mqi_zmtp_decoder *d, const void *data, size_t len,
                          size_t *used, mqi_zmtp_frame *out) {
  const uint8_t *p = data;
  size_t i = 0;
  int rc = MQI_ZMTP_AGAIN;
  if (used) *used = 0;
  if (!d || !out) return MQI_ZMTP_EINVAL;
  if (d->rc != MQI_ZMTP_OK) return d->rc;
  if (!p && len) return MQI_ZMTP_EINVAL;
  while (i < len && rc == MQI_ZMTP_AGAIN) {
    switch (d->state) {
      case ZMTP_CODEC_ST_FLAGS: {
        unsigned f = p[i++];
        if (f & ~(unsigned)ZMTP_CODEC_FLAG_BITS) d->n_reserved++;
        f &= ZMTP_CODEC_FLAG_BITS;
        if (f & MQI_ZMTP_F_COMMAND) {
          if (f & MQI_ZMTP_F_MORE) {
            d->n_command_more++;
            f &= ~(unsigned)MQI_ZMTP_F_MORE;
          }
        } else if (d->msg_frames >= d->limits.max_frames) {
          rc = MQI_ZMTP_ETOOBIG; /* one frame too many, known already */
          break;
        }
        d->flags = f;
        d->size = 0;
        d->size_have = 0;
        d->state = (f & MQI_ZMTP_F_LONG) ? ZMTP_CODEC_ST_LONG
                                          : ZMTP_CODEC_ST_SHORT;
        break;
      }
      case ZMTP_CODEC_ST_SHORT:
        d->size = p[i++];
        rc = zmtp_codec_begin_body(d, out);
        break;
      case ZMTP_CODEC_ST_LONG:
        d->size = (d->size << 8) | p[i++];
        if (++d->size_have < 8) break;
        if (d->size < 256) d->n_long_small++;
        rc = zmtp_codec_begin_body(d, out);
        break;
      case ZMTP_CODEC_ST_BODY: {
        size_t want = (size_t)d->size - d->got;
        size_t n = len - i < want ? len - i : want;
        memcpy(d->body + d->got, p + i, n);
        d->got += n;
        i += n;
        if (d->got == (size_t)d->size) rc = zmtp_codec_emit(d, out);
        break;
      }
      default:
        rc = MQI_ZMTP_EINVAL; /* unreachable: the state is ours */
        break;
    }
  }
  if (used) *used = i;
  if (rc != MQI_ZMTP_AGAIN && rc != MQI_ZMTP_FRAME) {
    zmtp_codec_drop_body(d);
    d->rc = rc;
  }
  return rc;
}

/* ------------------------------------------------------------------------
** Frame encoder
*/
int mqi_zmtp_frame_header_encode(uint8_t out[MQI_ZMTP_HEADER_MAX],
                                 unsigned flags, uint64_t size, size_t *len) {
  if (len) *len = 0;
  if (!out || !len) return MQI_ZMTP_EINVAL;
  if (flags != 0 && flags != MQI_ZMTP_F_MORE && flags != MQI_ZMTP_F_COMMAND)
    return MQI_ZMTP_EINVAL;
  if (size > MQI_ZMTP_SIZE_LIMIT) return MQI_ZMTP_EINVAL;
  if (size <= 255) {
    out[0] = (uint8_t)flags;
    out[1] = (uint8_t)size;
    *len = 2;
  } else {
    out[0] = (uint8_t)(flags | MQI_ZMTP_F_LONG);
    for (int k = 0; k < 8; k++) out[1 + k] = (uint8_t)(size >> (56 - 8 * k));
    *len = 9;
  }
  return MQI_ZMTP_OK;
}

int mqi_zmtp_frame_encode(uint8_t *out, size_t cap, unsigned flags,
                          const void *body, size_t size, size_t *len) {
  uint8_t hdr[MQI_ZMTP_HEADER_MAX];
  size_t hl = 0;
  if (len) *len = 0;
  if (!len || (!body && size) || (!out && cap)) return MQI_ZMTP_EINVAL;
  if (size > SIZE_MAX - MQI_ZMTP_HEADER_MAX) return MQI_ZMTP_EINVAL;
  int rc = mqi_zmtp_frame_header_encode(hdr, flags, size, &hl);
  if (rc != MQI_ZMTP_OK) return rc;
  *len = hl + size;
  if (cap < hl + size) return MQI_ZMTP_ESPACE;
  memcpy(out, hdr, hl);
  if (size) memcpy(out + hl, body, size);
  return MQI_ZMTP_OK;
}
