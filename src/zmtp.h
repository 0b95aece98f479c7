/*
** zmtp.h -- the pure ZMTP 3.x codec: greeting, framing, commands, metadata.
**
** This is the byte-level half of the ZeroMQ wire protocol (RFC 23 ZMTP 3.0,
** RFC 37 ZMTP 3.1, RFC 24 PLAIN) with none of the I/O: every function here
** is a pure function of its arguments, holds no global state, never blocks,
** never prints and never aborts, so the network engine can drive it from any
** event loop and the fuzzers can drive it from a byte string.  The engine
** owns sockets, timers and the handshake state machine; the codec only says
** what the bytes mean and whether they are acceptable.
**
** Invariants the rest of the library relies on:
**   - Peer input is never trusted: every length read from the wire is checked
**     against the bytes actually present and against the caller's limits
**     before it is used, and before any memory is allocated for it.  A
**     header that declares 2^62 bytes costs nothing but an error code.
**   - The frame decoder allocates only through one hook (mqi_zmtp_mem_fn),
**     and only exactly the body size it has just checked, so a caller can
**     hand out its own buffers and OOM is an error code, never a crash.
**   - Decoders are lenient where libzmq 4.3.4 is lenient (reserved flag
**     bits, MORE on a command, long encoding of small sizes, commands between
**     the frames of one multipart message, libzmq's malformed PLAIN ERROR);
**     encoders are strict and emit only what the RFCs allow, in the exact
**     spelling libzmq expects ("Socket-Type", "Identity").
**   - Views returned by parsers (names, values, topics) point into the input
**     buffer and live exactly as long as it does; nothing is copied.
**
** Results are the MQI_ZMTP_* codes below.  They are deliberately not mq.h
** codes, because the engine needs finer distinctions (need more input vs.
** malformed vs. over a limit) than the public API shows; mqi_zmtp_rc_to_mq()
** maps them when a ZMTP failure has to surface through the public API.
**
** Facts about libzmq quoted in comments were captured on the wire from
** libzmq 4.3.4 as shipped by Debian 12, the peer we must interoperate with.
*/
#ifndef MQI_ZMTP_H
#define MQI_ZMTP_H

#include "mqi.h"

/* ------------------------------------------------------------------------
** Result codes.  MQI_ZMTP_OK is 0; the others start at 100 so that a ZMTP
** code passed by mistake where an mq.h code is expected is easy to spot.
*/
#define MQI_ZMTP_OK 0
#define MQI_ZMTP_AGAIN 100    /* not an error: more input is needed */
#define MQI_ZMTP_FRAME 101    /* decoder: a complete frame was produced */
#define MQI_ZMTP_EPROTO 102   /* malformed peer input */
#define MQI_ZMTP_EVERSION 103 /* the peer does not speak ZMTP 3.x */
#define MQI_ZMTP_EMECH 104    /* the peer's security mechanism is not ours */
#define MQI_ZMTP_ESOCKTYPE 105 /* unknown or incompatible socket type */
#define MQI_ZMTP_ETOOBIG 106  /* a declared size is over a limit */
#define MQI_ZMTP_ETRUNC 107   /* the input ended inside a frame or message */
#define MQI_ZMTP_ENOMEM 108   /* the allocation hook returned NULL */
#define MQI_ZMTP_EINVAL 109   /* bad argument to an encoder or setter */
#define MQI_ZMTP_ESPACE 110   /* the output buffer is too small */

/* Static English text for a MQI_ZMTP_* code; never NULL. */
MQI_API const char *mqi_zmtp_rcstr(int rc);
/* The mq.h code to report for a MQI_ZMTP_* code: protocol violations are
** MQ_ECORRUPT (the peer's bytes are damaged), limits MQ_ETOOBIG, OOM
** MQ_ENOMEM, caller mistakes MQ_EINVAL; OK, AGAIN and FRAME are MQ_OK. */
MQI_API int mqi_zmtp_rc_to_mq(int rc);

/* ------------------------------------------------------------------------
** Security mechanisms and socket types.
*/
#define MQI_ZMTP_MECH_UNKNOWN (-1)
#define MQI_ZMTP_MECH_NULL 0
#define MQI_ZMTP_MECH_PLAIN 1
#define MQI_ZMTP_MECH_CURVE 2

/* Socket types, numbered as libzmq numbers them so logs read the same. */
#define MQI_ZMTP_SOCKET_NONE (-1) /* the peer sent no Socket-Type */
#define MQI_ZMTP_SOCKET_PAIR 0
#define MQI_ZMTP_SOCKET_PUB 1
#define MQI_ZMTP_SOCKET_SUB 2
#define MQI_ZMTP_SOCKET_REQ 3
#define MQI_ZMTP_SOCKET_REP 4
#define MQI_ZMTP_SOCKET_DEALER 5
#define MQI_ZMTP_SOCKET_ROUTER 6
#define MQI_ZMTP_SOCKET_PULL 7
#define MQI_ZMTP_SOCKET_PUSH 8
#define MQI_ZMTP_SOCKET_XPUB 9
#define MQI_ZMTP_SOCKET_XSUB 10

/* The wire name of a socket type ("DEALER"), or NULL if type is unknown. */
MQI_API const char *mqi_zmtp_socket_name(int type);
/* The type whose wire name is exactly the len bytes at name (case matters,
** as it does to libzmq), or MQI_ZMTP_SOCKET_NONE. */
MQI_API int mqi_zmtp_socket_from_name(const void *name, size_t len);
/* MQI_ZMTP_OK if a socket of type ours may talk to a peer of type peer
** (the RFC 23 table), MQI_ZMTP_ESOCKTYPE otherwise (including NONE). */
MQI_API int mqi_zmtp_socket_check(int ours, int peer);

/* ------------------------------------------------------------------------
** Greeting: 64 bytes each way before anything else.
*/
#define MQI_ZMTP_GREETING_SIZE 64
#define MQI_ZMTP_MECH_SIZE 20 /* bytes 12..31: NUL-padded mechanism name */

/* Write our greeting: signature with zero padding, version 3.1, the
** mechanism, and the as-server bit (nonzero: we are the server of a
** PLAIN/CURVE handshake).  MQI_ZMTP_EINVAL for an unknown mechanism. */
MQI_API int mqi_zmtp_greeting_encode(uint8_t out[MQI_ZMTP_GREETING_SIZE],
                                     int mechanism, int as_server);

/* The incremental parser of the peer's greeting.  Fields are valid once
** `have` is past their offset (major: have > 10, minor/version: have > 11,
** mechanism: have >= 32, as_server: have > 32). */
typedef struct mqi_zmtp_greeting {
  uint8_t bytes[MQI_ZMTP_GREETING_SIZE];
  size_t have;      /* bytes received so far, 0..64 */
  int expect;       /* the mechanism we require, or MQI_ZMTP_MECH_UNKNOWN
                       to accept (and just report) any */
  int rc;           /* sticky: the first error, or MQI_ZMTP_OK */
  int major;        /* peer's version-major (>= 3 once accepted) */
  int minor;        /* peer's version-minor as sent */
  int version;      /* 30 for a 3.0 peer (minor 0), else 31 */
  int mechanism;    /* MQI_ZMTP_MECH_* the peer announced, or UNKNOWN */
  int as_server;    /* 1 if the peer set its as-server octet (libzmq never
                       does: roles come from local configuration) */
} mqi_zmtp_greeting;

/* Start parsing a greeting; expect is the mechanism we run (a mismatch is
** MQI_ZMTP_EMECH as soon as the 20 mechanism bytes are in). */
MQI_API void mqi_zmtp_greeting_init(mqi_zmtp_greeting *g, int expect);

/*
** Feed len bytes of the peer's stream.  Consumes at most the bytes still
** missing from the 64 and stores the count in *used (the rest belongs to
** the frames that follow).  Returns MQI_ZMTP_AGAIN while incomplete,
** MQI_ZMTP_OK once all 64 bytes are in and acceptable, or an error as soon
** as a deciding byte arrives: byte 0 != 0xFF or bit 0 of byte 9 clear
** (not ZMTP 3: EVERSION), byte 10 < 3 (EVERSION), bytes 12..31 not exactly
** the expected mechanism (EMECH).  Padding (1..8), as-server and filler are
** never validated.  Errors are sticky.
*/
MQI_API int mqi_zmtp_greeting_feed(mqi_zmtp_greeting *g, const void *data,
                                   size_t len, size_t *used);

/* True once bytes 0..10 are in and say ZMTP >= 3: from then on an engine
** that staged its own greeting may send the rest of it. */
MQI_API int mqi_zmtp_greeting_is_zmtp3(const mqi_zmtp_greeting *g);

/* ------------------------------------------------------------------------
** Frames.
*/
#define MQI_ZMTP_F_MORE 0x01
#define MQI_ZMTP_F_LONG 0x02
#define MQI_ZMTP_F_COMMAND 0x04
#define MQI_ZMTP_HEADER_MAX 9                   /* flags + 8 size bytes */
#define MQI_ZMTP_SIZE_LIMIT ((uint64_t)INT64_MAX) /* 2^63-1: the wire max */

/* Limits applied by the decoder, each before any allocation. */
typedef struct mqi_zmtp_limits {
  uint64_t max_frame;   /* largest data frame body; default 16 MiB */
  uint64_t max_command; /* largest command body; default 64 KiB */
  uint64_t max_message; /* largest sum of data frame bodies of one message;
                           default 16 MiB */
  uint32_t max_frames;  /* most data frames in one message; default 1024 */
} mqi_zmtp_limits;

MQI_API void mqi_zmtp_limits_init(mqi_zmtp_limits *l);

/*
** The memory hook, in the manner of lua_Alloc: mem(ctx, NULL, n) with n > 0
** returns n bytes or NULL; mem(ctx, p, 0) releases p and returns NULL.  The
** decoder calls it at most once per frame, with exactly the frame's body
** size, after every limit has been checked; a caller that owns a buffer can
** hand it out from here instead of allocating.
*/
typedef void *(*mqi_zmtp_mem_fn)(void *ctx, void *ptr, size_t size);

/* A decoded frame.  body is NULL exactly when size is 0; otherwise it came
** from the decoder's hook and is owned by the caller after MQI_ZMTP_FRAME
** (release it with mqi_zmtp_frame_release on the same decoder). */
typedef struct mqi_zmtp_frame {
  unsigned flags; /* MQI_ZMTP_F_MORE (data frames only) | F_COMMAND */
  size_t size;
  uint8_t *body;
} mqi_zmtp_frame;

typedef struct mqi_zmtp_decoder {
  mqi_zmtp_limits limits;
  mqi_zmtp_mem_fn mem;
  void *mem_ctx;
  int state;          /* private: where in a frame the next byte goes */
  int rc;             /* sticky error, or MQI_ZMTP_OK */
  unsigned flags;     /* private: flags byte of the frame being read */
  unsigned size_have; /* private: long size bytes read so far */
  uint64_t size;      /* private: declared body size of that frame */
  size_t got;         /* private: body bytes read so far */
  uint8_t *body;      /* private: body buffer of that frame, or NULL */
  uint32_t msg_frames; /* data frames of the message in progress */
  uint64_t msg_bytes;  /* their total body size */
  /* Counters for the engine's diagnostics; the decoder never resets them. */
  uint64_t n_frames;       /* data frames decoded */
  uint64_t n_commands;     /* command frames decoded */
  uint64_t n_reserved;     /* frames with reserved flag bits set */
  uint64_t n_command_more; /* commands with the MORE bit set */
  uint64_t n_interleaved;  /* commands inside a multipart message */
  uint64_t n_long_small;   /* long-form sizes below 256 */
} mqi_zmtp_decoder;

/* Start a decoder.  limits NULL: the defaults; mem NULL: malloc/free. */
MQI_API void mqi_zmtp_decoder_init(mqi_zmtp_decoder *d,
                                   const mqi_zmtp_limits *limits,
                                   mqi_zmtp_mem_fn mem, void *mem_ctx);
/* Change the limits; they apply from the next frame header on (the engine
** loosens them after the handshake). */
MQI_API void mqi_zmtp_decoder_set_limits(mqi_zmtp_decoder *d,
                                         const mqi_zmtp_limits *limits);

/*
** Feed len bytes (any split: one byte at a time works).  Consumes bytes up
** to the end of the first frame it completes, stores the count in *used
** and returns MQI_ZMTP_FRAME with *out filled; call again with the rest.
** Returns MQI_ZMTP_AGAIN when all len bytes were consumed without
** completing a frame, or an error (sticky; *out untouched):
**   ETOOBIG  a size over its limit (max_command for commands; max_frame,
**            max_message, max_frames for data frames), detected on the last
**            size byte, before allocating
**   EPROTO   a long size >= 2^63
**   ENOMEM   the hook returned NULL
** Commands between the frames of a multipart message are returned as they
** come and leave the message's state alone.  Reserved flag bits and MORE on
** a command are tolerated (and counted); a command never carries F_MORE
** in *out.
*/
MQI_API int mqi_zmtp_decoder_feed(mqi_zmtp_decoder *d, const void *data,
                                  size_t len, size_t *used,
                                  mqi_zmtp_frame *out);

/* True while a multipart message is incomplete (its last frame had MORE). */
MQI_API int mqi_zmtp_decoder_in_message(const mqi_zmtp_decoder *d);

/* The peer's stream ended: MQI_ZMTP_OK if it ended between messages,
** MQI_ZMTP_ETRUNC if inside a frame or a multipart message (the caller
** discards the partial message), or the sticky error.  Releases any partial
** body; the decoder is then as after reset. */
MQI_API int mqi_zmtp_decoder_finish(mqi_zmtp_decoder *d);

/* Release any partial body and start again at a frame boundary with no
** message in progress and no error.  Counters and limits are kept. */
MQI_API void mqi_zmtp_decoder_reset(mqi_zmtp_decoder *d);

/* Release a frame's body through d's hook and clear *f.  NULL-safe. */
MQI_API void mqi_zmtp_frame_release(mqi_zmtp_decoder *d, mqi_zmtp_frame *f);

/* Write a frame header for a body of size bytes: short form up to 255,
** long form above.  flags is 0, MQI_ZMTP_F_MORE or MQI_ZMTP_F_COMMAND;
** anything else (MORE on a command, reserved bits, F_LONG) and sizes over
** 2^63-1 are MQI_ZMTP_EINVAL.  *len receives 2 or 9. */
MQI_API int mqi_zmtp_frame_header_encode(uint8_t out[MQI_ZMTP_HEADER_MAX],
                                         unsigned flags, uint64_t size,
                                         size_t *len);

/* Write a whole frame (header + body) into out[0..cap).  *len receives the
** frame's length, also on MQI_ZMTP_ESPACE (so the caller can size out). */
MQI_API int mqi_zmtp_frame_encode(uint8_t *out, size_t cap, unsigned flags,
                                  const void *body, size_t size, size_t *len);

/* ------------------------------------------------------------------------
** Commands (zmtp_cmd.c).  A command frame's body is
**   name-len(1) name(1..255 ALPHA) data
** (length-prefixed: the ABNF is right, the prose of RFCs 23/24 is wrong).
** Encoders below write the whole command frame, header included; *len gets
** its length, also on MQI_ZMTP_ESPACE.
*/
#define MQI_ZMTP_CMD_UNKNOWN 0 /* well-formed, but not one we know */
#define MQI_ZMTP_CMD_READY 1
#define MQI_ZMTP_CMD_ERROR 2
#define MQI_ZMTP_CMD_PING 3
#define MQI_ZMTP_CMD_PONG 4
#define MQI_ZMTP_CMD_SUBSCRIBE 5
#define MQI_ZMTP_CMD_CANCEL 6
#define MQI_ZMTP_CMD_HELLO 7
#define MQI_ZMTP_CMD_WELCOME 8
#define MQI_ZMTP_CMD_INITIATE 9

#define MQI_ZMTP_PING_TTL_MAX 655 /* deciseconds: libzmq multiplies the TTL
                                     by 100 into a uint16_t, so 656+ wraps */
#define MQI_ZMTP_PING_CONTEXT_MAX 16
#define MQI_ZMTP_META_MAX 64     /* properties we accept in one command */
#define MQI_ZMTP_IDENTITY_MAX 255
#define MQI_ZMTP_VALUE_MAX 0x7FFFFFFFu /* a property value's wire maximum */
#define MQI_ZMTP_PLAIN_FIELD_MAX 255   /* PLAIN username and password */
#define MQI_ZMTP_REASON_MAX 255

typedef struct mqi_zmtp_cmd {
  int kind;             /* MQI_ZMTP_CMD_* */
  const uint8_t *name;  /* view into the body */
  size_t name_len;
  const uint8_t *data;  /* the bytes after the name (view; never NULL, it
                           points just past the name when data_len is 0) */
  size_t data_len;
  int libzmq_error;     /* 1 if this was libzmq's malformed "\x5eRROR" */
} mqi_zmtp_cmd;

/* Split a command body.  MQI_ZMTP_EPROTO for an empty body, a zero or
** overrunning name length, or a name with non-letters.  A well-formed name
** we do not know is MQI_ZMTP_OK with kind MQI_ZMTP_CMD_UNKNOWN.  Names are
** compared exactly.  libzmq's PLAIN ERROR (`5e 'RROR' len reason`, whose
** name length octet is wrong) is recognised as kind ERROR. */
MQI_API int mqi_zmtp_cmd_parse(const void *body, size_t len, mqi_zmtp_cmd *out);

/* Write a generic command: name is 1..255 letters, data may be NULL when
** data_len is 0. */
MQI_API int mqi_zmtp_cmd_encode(uint8_t *out, size_t cap, const char *name,
                                const void *data, size_t data_len,
                                size_t *len);

/* One metadata property; views into a buffer owned by someone else. */
typedef struct mqi_zmtp_prop {
  const uint8_t *name;
  size_t name_len;
  const uint8_t *value;
  size_t value_len;
} mqi_zmtp_prop;

/* Parsed metadata (READY, INITIATE). */
typedef struct mqi_zmtp_meta {
  int socket_type;          /* MQI_ZMTP_SOCKET_*, NONE when absent */
  int has_identity;
  const uint8_t *identity;  /* view; identity_len 0..255 */
  size_t identity_len;
  size_t n_props;           /* every property, in wire order */
  mqi_zmtp_prop props[MQI_ZMTP_META_MAX];
} mqi_zmtp_meta;

/*
** Parse a metadata block: *(name-len(1) name value-len(4, BE) value).  Every
** length is bounds-checked (EPROTO on any overrun, on trailing bytes, and on
** a value length >= 2^31).  Names are matched case-insensitively
** ("socket-type" is Socket-Type), values exactly: an unknown Socket-Type
** value is ESOCKTYPE, two Socket-Type (or Identity) properties that
** disagree are EPROTO, an Identity over 255 bytes is EPROTO, more than
** MQI_ZMTP_META_MAX properties is ETOOBIG.  Zero-length names and values
** are accepted, as libzmq accepts them.
*/
MQI_API int mqi_zmtp_meta_parse(const void *data, size_t len,
                                mqi_zmtp_meta *out);
/* The first property named name (case-insensitive), or NULL. */
MQI_API const mqi_zmtp_prop *mqi_zmtp_meta_find(const mqi_zmtp_meta *m,
                                                const char *name);
/* Write n properties as a metadata block (no frame header) into out.
** Names are 0..255 bytes, values at most MQI_ZMTP_VALUE_MAX (EINVAL). */
MQI_API int mqi_zmtp_meta_encode(uint8_t *out, size_t cap,
                                 const mqi_zmtp_prop *props, size_t n,
                                 size_t *len);

/*
** Write a READY (kind MQI_ZMTP_CMD_READY) or PLAIN INITIATE
** (MQI_ZMTP_CMD_INITIATE) command with our metadata, exactly as libzmq
** writes it: "Socket-Type" first; then "Identity" (identity_len bytes,
** possibly empty) for REQ, DEALER and ROUTER only; then the n_extra extra
** properties.  A nonempty identity for another type, an identity over 255
** bytes or an unknown socket type is EINVAL.
*/
MQI_API int mqi_zmtp_ready_encode(uint8_t *out, size_t cap, int kind,
                                  int socket_type, const void *identity,
                                  size_t identity_len,
                                  const mqi_zmtp_prop *extra, size_t n_extra,
                                  size_t *len);
/* Parse the metadata of a READY or INITIATE command (EPROTO for others). */
MQI_API int mqi_zmtp_ready_parse(const mqi_zmtp_cmd *c, mqi_zmtp_meta *out);

/* ERROR: reason is 0..255 bytes.  libzmq_form writes libzmq 4.3.4's PLAIN
** spelling (`5e 'RROR'`), which libzmq PLAIN clients need to report an AUTH
** failure; otherwise the RFC form `05 'ERROR'`. */
MQI_API int mqi_zmtp_error_encode(uint8_t *out, size_t cap, const void *reason,
                                  size_t reason_len, int libzmq_form,
                                  size_t *len);
/* The reason of an ERROR (either form).  EPROTO when the reason length
** overruns; trailing bytes after the reason are ignored, as libzmq does. */
MQI_API int mqi_zmtp_error_parse(const mqi_zmtp_cmd *c, const uint8_t **reason,
                                 size_t *reason_len);

/* PING with a TTL in deciseconds (values over MQI_ZMTP_PING_TTL_MAX are
** sent as MQI_ZMTP_PING_TTL_MAX) and a context of 0..16 bytes (EINVAL if
** longer). */
MQI_API int mqi_zmtp_ping_encode(uint8_t *out, size_t cap, unsigned ttl_ds,
                                 const void *context, size_t context_len,
                                 size_t *len);
/* A PING's TTL and context.  A body under the 2 TTL bytes is EPROTO (never
** an over-read); a context over 16 bytes is cut to its first 16, which is
** what a PONG echoes. */
MQI_API int mqi_zmtp_ping_parse(const mqi_zmtp_cmd *c, unsigned *ttl_ds,
                                const uint8_t **context, size_t *context_len);
/* PONG echoing a context of 0..16 bytes (EINVAL if longer). */
MQI_API int mqi_zmtp_pong_encode(uint8_t *out, size_t cap, const void *context,
                                 size_t context_len, size_t *len);
/* A PONG's context, cut to 16 bytes like a PING's. */
MQI_API int mqi_zmtp_pong_parse(const mqi_zmtp_cmd *c, const uint8_t **context,
                                size_t *context_len);

/* SUBSCRIBE (subscribe != 0) or CANCEL command with a topic of any length
** (the empty topic matches everything); for ZMTP 3.1 peers. */
MQI_API int mqi_zmtp_sub_encode(uint8_t *out, size_t cap, int subscribe,
                                const void *topic, size_t topic_len,
                                size_t *len);
/* The topic of a SUBSCRIBE or CANCEL command (EPROTO for other kinds). */
MQI_API int mqi_zmtp_sub_parse(const mqi_zmtp_cmd *c, int *subscribe,
                               const uint8_t **topic, size_t *topic_len);
/* The ZMTP 3.0 form: a one-frame data message "\x01topic" / "\x00topic". */
MQI_API int mqi_zmtp_sub_legacy_encode(uint8_t *out, size_t cap, int subscribe,
                                       const void *topic, size_t topic_len,
                                       size_t *len);
/* Parse a legacy subscription message body: EPROTO unless it is at least
** one byte and starts with 0 or 1. */
MQI_API int mqi_zmtp_sub_legacy_parse(const void *body, size_t len,
                                      int *subscribe, const uint8_t **topic,
                                      size_t *topic_len);

/* PLAIN HELLO: username and password of 0..255 bytes each. */
MQI_API int mqi_zmtp_hello_encode(uint8_t *out, size_t cap, const void *user,
                                  size_t user_len, const void *pass,
                                  size_t pass_len, size_t *len);
/* PLAIN HELLO fields; EPROTO unless the two length-prefixed fields fill
** the data exactly (no missing and no trailing bytes). */
MQI_API int mqi_zmtp_hello_parse(const mqi_zmtp_cmd *c, const uint8_t **user,
                                 size_t *user_len, const uint8_t **pass,
                                 size_t *pass_len);
/* PLAIN WELCOME, which carries no data. */
MQI_API int mqi_zmtp_welcome_encode(uint8_t *out, size_t cap, size_t *len);
/* MQI_ZMTP_OK for a WELCOME with no data, EPROTO otherwise. */
MQI_API int mqi_zmtp_welcome_parse(const mqi_zmtp_cmd *c);

#endif /* MQI_ZMTP_H */
