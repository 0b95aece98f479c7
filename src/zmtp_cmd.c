/*
** zmtp_cmd.c -- ZMTP commands: READY/ERROR (NULL), PING/PONG and
** SUBSCRIBE/CANCEL (3.1), the 3.0 legacy subscription messages, PLAIN's
** HELLO/WELCOME/INITIATE, metadata properties and the socket-type table.
**
** Every parser here takes a command body that the frame decoder has already
** bounded, and trusts nothing inside it: each length octet or word is
** compared with the bytes that remain before it is used, so a malformed
** command yields MQI_ZMTP_EPROTO and never a read past the body.  Parsers
** return views into the body instead of copies; the caller keeps the body
** alive while it uses them.
**
** Where the RFCs and libzmq 4.3.4 disagree we follow what interoperates:
**   - A command name is length-prefixed (the ABNF), not NUL-terminated or
**     space-padded (the prose of RFCs 23 and 24).
**   - Metadata names are matched case-insensitively on receipt (the RFC)
**     but sent in libzmq's exact spelling, because libzmq matches them
**     case-sensitively; Socket-Type values are compared exactly, as libzmq
**     compares them.
**   - libzmq's PLAIN server sends ERROR as `5e 'RROR' len reason` (a C++
**     "\x05ERROR" literal read as \x5e); it is accepted as ERROR, and may be
**     produced on request because libzmq PLAIN clients recognise only it.
**   - libzmq multiplies a PING's TTL by 100 into a uint16_t, so we never
**     send a TTL above 655 deciseconds, and it over-reads PINGs shorter
**     than the 2 TTL bytes; we reject those.
** Encoders are strict and write whole command frames, header included, so
** the engine can queue their output as is.
*/
#include <string.h>

#include "zmtp.h"

/* The libzmq 4.3.4 PLAIN ERROR prefix: name-length octet 0x5e, then the
** four letters that were meant to follow "\x05E". */
static const uint8_t zmtp_cmd_libzmq_error[5] = {0x5e, 'R', 'R', 'O', 'R'};

static const struct {
  const char *name;
  int kind;
} zmtp_cmd_names[] = {
    {"READY", MQI_ZMTP_CMD_READY},         {"ERROR", MQI_ZMTP_CMD_ERROR},
    {"PING", MQI_ZMTP_CMD_PING},           {"PONG", MQI_ZMTP_CMD_PONG},
    {"SUBSCRIBE", MQI_ZMTP_CMD_SUBSCRIBE}, {"CANCEL", MQI_ZMTP_CMD_CANCEL},
    {"HELLO", MQI_ZMTP_CMD_HELLO},         {"WELCOME", MQI_ZMTP_CMD_WELCOME},
    {"INITIATE", MQI_ZMTP_CMD_INITIATE},
};

/* ------------------------------------------------------------------------
** Socket types
*/
static const char *const zmtp_cmd_socket_names[] = {
    "PAIR", "PUB", "SUB", "REQ", "REP", "DEALER",
    "ROUTER", "PULL", "PUSH", "XPUB", "XSUB",
};
#define ZMTP_CMD_N_SOCKETS \
  ((int)(sizeof zmtp_cmd_socket_names / sizeof zmtp_cmd_socket_names[0]))
#define ZMTP_CMD_BIT(t) (1u << (t))

const char *mqi_zmtp_socket_name(int type) {
  if (type < 0 || type >= ZMTP_CMD_N_SOCKETS) return NULL;
  return zmtp_cmd_socket_names[type];
}

int mqi_zmtp_socket_from_name(const void *name, size_t len) {
  if (!name) return MQI_ZMTP_SOCKET_NONE;
  for (int t = 0; t < ZMTP_CMD_N_SOCKETS; t++) {
    const char *s = zmtp_cmd_socket_names[t];
    if (strlen(s) == len && memcmp(s, name, len) == 0) return t;
  }
  return MQI_ZMTP_SOCKET_NONE;
}

int mqi_zmtp_socket_check(int ours, int peer) {
  unsigned ok;
  if (peer < 0 || peer >= ZMTP_CMD_N_SOCKETS) return MQI_ZMTP_ESOCKTYPE;
  switch (ours) {
    case MQI_ZMTP_SOCKET_REQ:
      ok = ZMTP_CMD_BIT(MQI_ZMTP_SOCKET_REP) | ZMTP_CMD_BIT(MQI_ZMTP_SOCKET_ROUTER);
      break;
    case MQI_ZMTP_SOCKET_REP:
      ok = ZMTP_CMD_BIT(MQI_ZMTP_SOCKET_REQ) | ZMTP_CMD_BIT(MQI_ZMTP_SOCKET_DEALER);
      break;
    case MQI_ZMTP_SOCKET_DEALER:
      ok = ZMTP_CMD_BIT(MQI_ZMTP_SOCKET_REP) | ZMTP_CMD_BIT(MQI_ZMTP_SOCKET_DEALER) |
           ZMTP_CMD_BIT(MQI_ZMTP_SOCKET_ROUTER);
      break;
    case MQI_ZMTP_SOCKET_ROUTER:
      ok = ZMTP_CMD_BIT(MQI_ZMTP_SOCKET_REQ) | ZMTP_CMD_BIT(MQI_ZMTP_SOCKET_DEALER) |
           ZMTP_CMD_BIT(MQI_ZMTP_SOCKET_ROUTER);
      break;
    case MQI_ZMTP_SOCKET_PUB:
    case MQI_ZMTP_SOCKET_XPUB:
      ok = ZMTP_CMD_BIT(MQI_ZMTP_SOCKET_SUB) | ZMTP_CMD_BIT(MQI_ZMTP_SOCKET_XSUB);
      break;
    case MQI_ZMTP_SOCKET_SUB:
    case MQI_ZMTP_SOCKET_XSUB:
      ok = ZMTP_CMD_BIT(MQI_ZMTP_SOCKET_PUB) | ZMTP_CMD_BIT(MQI_ZMTP_SOCKET_XPUB);
      break;
    case MQI_ZMTP_SOCKET_PUSH: ok = ZMTP_CMD_BIT(MQI_ZMTP_SOCKET_PULL); break;
    case MQI_ZMTP_SOCKET_PULL: ok = ZMTP_CMD_BIT(MQI_ZMTP_SOCKET_PUSH); break;
    case MQI_ZMTP_SOCKET_PAIR: ok = ZMTP_CMD_BIT(MQI_ZMTP_SOCKET_PAIR); break;
    default: return MQI_ZMTP_ESOCKTYPE;
  }
  return (ok & ZMTP_CMD_BIT(peer)) ? MQI_ZMTP_OK : MQI_ZMTP_ESOCKTYPE;
}

/* ------------------------------------------------------------------------
** Helpers
*/
static int zmtp_cmd_is_alpha(uint8_t c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* Characters the RFC allows in a property name; checked when sending only
** (libzmq accepts anything, even an empty name, and so do we). */
static int zmtp_cmd_is_name_char(uint8_t c) {
  return zmtp_cmd_is_alpha(c) || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.' || c == '+';
}

static uint8_t zmtp_cmd_lower(uint8_t c) {
  return (c >= 'A' && c <= 'Z') ? (uint8_t)(c - 'A' + 'a') : c;
}

static int zmtp_cmd_name_is(const uint8_t *name, size_t len, const char *want) {
  size_t n = strlen(want);
  if (n != len) return 0;
  for (size_t i = 0; i < n; i++)
    if (zmtp_cmd_lower(name[i]) != zmtp_cmd_lower((uint8_t)want[i])) return 0;
  return 1;
}

static uint32_t zmtp_cmd_get32(const uint8_t *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
         ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static void zmtp_cmd_put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* Build the name-length octet and name of a command into prefix[0..256);
** *plen receives 1 + the name length.  Names are 1..255 letters. */
static int zmtp_cmd_prefix(const char *name, uint8_t prefix[256], size_t *plen) {
  size_t n = name ? strlen(name) : 0;
  if (n == 0 || n > 255) return MQI_ZMTP_EINVAL;
  for (size_t i = 0; i < n; i++)
    if (!zmtp_cmd_is_alpha((uint8_t)name[i])) return MQI_ZMTP_EINVAL;
  prefix[0] = (uint8_t)n;
  memcpy(prefix + 1, name, n);
  *plen = n + 1;
  return MQI_ZMTP_OK;
}

/*
** Lay out a command frame of prefix (name-length + name) and data_len more
** bytes: write the header and prefix into out and point *data at where the
** data goes.  *len always receives the frame's length; MQI_ZMTP_ESPACE
** (with nothing written) if it does not fit in cap.
*/
static int zmtp_cmd_frame(uint8_t *out, size_t cap, const uint8_t *prefix,
                          size_t prefix_len, size_t data_len, size_t *len,
                          uint8_t **data) {
  uint8_t hdr[MQI_ZMTP_HEADER_MAX];
  size_t hl = 0;
  *data = NULL;
  if (data_len > SIZE_MAX - MQI_ZMTP_HEADER_MAX - prefix_len)
    return MQI_ZMTP_EINVAL;
  size_t body = prefix_len + data_len;
  int rc = mqi_zmtp_frame_header_encode(hdr, MQI_ZMTP_F_COMMAND, body, &hl);
  if (rc != MQI_ZMTP_OK) return rc;
  *len = hl + body;
  if (!out || cap < hl + body) return MQI_ZMTP_ESPACE;
  memcpy(out, hdr, hl);
  memcpy(out + hl, prefix, prefix_len);
  *data = out + hl + prefix_len;
  return MQI_ZMTP_OK;
}

/* Lay out a named command frame (see zmtp_cmd_frame). */
static int zmtp_cmd_begin(uint8_t *out, size_t cap, const char *name,
                          size_t data_len, size_t *len, uint8_t **data) {
  uint8_t prefix[256];
  size_t plen = 0;
  *len = 0;
  int rc = zmtp_cmd_prefix(name, prefix, &plen);
  if (rc != MQI_ZMTP_OK) return rc;
  return zmtp_cmd_frame(out, cap, prefix, plen, data_len, len, data);
}

/* ------------------------------------------------------------------------
** Generic commands
*/
int mqi_zmtp_cmd_parse(const void *body, size_t len, mqi_zmtp_cmd *out) {
  const uint8_t *p = body;
  if (!out) return MQI_ZMTP_EINVAL;
  memset(out, 0, sizeof *out);
  if (!p || len == 0) return MQI_ZMTP_EPROTO;
  size_t nlen = p[0];
  int ok = nlen > 0 && nlen <= len - 1;
  for (size_t i = 0; ok && i < nlen; i++) ok = zmtp_cmd_is_alpha(p[1 + i]);
  if (!ok) {
    /* Only when the RFC reading is impossible do we try libzmq's ERROR, so
    ** that no well-formed command is ever misread as one. */
    if (len >= sizeof zmtp_cmd_libzmq_error &&
        memcmp(p, zmtp_cmd_libzmq_error, sizeof zmtp_cmd_libzmq_error) == 0) {
      out->kind = MQI_ZMTP_CMD_ERROR;
      out->name = p + 1;
      out->name_len = 4;
      out->data = p + 5;
      out->data_len = len - 5;
      out->libzmq_error = 1;
      return MQI_ZMTP_OK;
    }
    return MQI_ZMTP_EPROTO;
  }
  out->kind = MQI_ZMTP_CMD_UNKNOWN;
  out->name = p + 1;
  out->name_len = nlen;
  out->data = p + 1 + nlen;
  out->data_len = len - 1 - nlen;
  for (size_t k = 0; k < sizeof zmtp_cmd_names / sizeof zmtp_cmd_names[0]; k++) {
    const char *s = zmtp_cmd_names[k].name;
    if (strlen(s) == nlen && memcmp(s, p + 1, nlen) == 0) {
      out->kind = zmtp_cmd_names[k].kind;
      break;
    }
  }
  return MQI_ZMTP_OK;
}

int mqi_zmtp_cmd_encode(uint8_t *out, size_t cap, const char *name,
                        const void *data, size_t data_len, size_t *len) {
  uint8_t *at = NULL;
  if (!len) return MQI_ZMTP_EINVAL;
  *len = 0;
  if (!data && data_len) return MQI_ZMTP_EINVAL;
  int rc = zmtp_cmd_begin(out, cap, name, data_len, len, &at);
  if (rc == MQI_ZMTP_OK && data_len) memcpy(at, data, data_len);
  return rc;
}

/* ------------------------------------------------------------------------
** Metadata
*/
int mqi_zmtp_meta_parse(const void *data, size_t len, mqi_zmtp_meta *out) {
  const uint8_t *p = data;
  size_t pos = 0;
  if (!out) return MQI_ZMTP_EINVAL;
  memset(out, 0, sizeof *out);
  out->socket_type = MQI_ZMTP_SOCKET_NONE;
  if (!p && len) return MQI_ZMTP_EINVAL;
  while (pos < len) {
    mqi_zmtp_prop pr;
    size_t nlen = p[pos++];
    if (nlen > len - pos) return MQI_ZMTP_EPROTO;
    pr.name = p + pos;
    pr.name_len = nlen;
    pos += nlen;
    if (len - pos < 4) return MQI_ZMTP_EPROTO;
    uint32_t vlen = zmtp_cmd_get32(p + pos);
    pos += 4;
    if (vlen > MQI_ZMTP_VALUE_MAX || vlen > len - pos) return MQI_ZMTP_EPROTO;
    pr.value = p + pos;
    pr.value_len = vlen;
    pos += vlen;
    if (out->n_props == MQI_ZMTP_META_MAX) return MQI_ZMTP_ETOOBIG;
    out->props[out->n_props++] = pr;
    if (zmtp_cmd_name_is(pr.name, pr.name_len, "Socket-Type")) {
      int t = mqi_zmtp_socket_from_name(pr.value, pr.value_len);
      if (t == MQI_ZMTP_SOCKET_NONE) return MQI_ZMTP_ESOCKTYPE;
      /* libzmq checks every occurrence; a peer that is PUSH and PULL at
      ** once is lying about one of them. */
      if (out->socket_type != MQI_ZMTP_SOCKET_NONE && out->socket_type != t)
        return MQI_ZMTP_EPROTO;
      out->socket_type = t;
    } else if (zmtp_cmd_name_is(pr.name, pr.name_len, "Identity")) {
      if (pr.value_len > MQI_ZMTP_IDENTITY_MAX) return MQI_ZMTP_EPROTO;
      if (out->has_identity &&
          (out->identity_len != pr.value_len ||
           (pr.value_len && memcmp(out->identity, pr.value, pr.value_len))))
        return MQI_ZMTP_EPROTO;
      out->has_identity = 1;
      out->identity = pr.value;
      out->identity_len = pr.value_len;
    }
  }
  return MQI_ZMTP_OK;
}

const mqi_zmtp_prop *mqi_zmtp_meta_find(const mqi_zmtp_meta *m,
                                        const char *name) {
  if (!m || !name) return NULL;
  for (size_t i = 0; i < m->n_props && i < MQI_ZMTP_META_MAX; i++)
    if (zmtp_cmd_name_is(m->props[i].name, m->props[i].name_len, name))
      return &m->props[i];
  return NULL;
}

/* Validate properties we are about to send and add their encoded size to
** *size.  Names are 1..255 RFC name characters, values at most 2^31-1. */
static int zmtp_cmd_meta_size(const mqi_zmtp_prop *props, size_t n,
                              size_t *size) {
  if (n && !props) return MQI_ZMTP_EINVAL;
  for (size_t i = 0; i < n; i++) {
    const mqi_zmtp_prop *pr = &props[i];
    if (pr->name_len == 0 || pr->name_len > 255 || !pr->name)
      return MQI_ZMTP_EINVAL;
    for (size_t k = 0; k < pr->name_len; k++)
      if (!zmtp_cmd_is_name_char(pr->name[k])) return MQI_ZMTP_EINVAL;
    if (pr->value_len > MQI_ZMTP_VALUE_MAX || (!pr->value && pr->value_len))
      return MQI_ZMTP_EINVAL;
    size_t one = 1 + pr->name_len + 4 + pr->value_len;
    if (*size > SIZE_MAX / 2 - one) return MQI_ZMTP_EINVAL;
    *size += one;
  }
  return MQI_ZMTP_OK;
}

/* Write properties already validated by zmtp_cmd_meta_size; returns the
** position after them. */
static uint8_t *zmtp_cmd_meta_write(uint8_t *at, const mqi_zmtp_prop *props,
                                    size_t n) {
  for (size_t i = 0; i < n; i++) {
    const mqi_zmtp_prop *pr = &props[i];
    *at++ = (uint8_t)pr->name_len;
    memcpy(at, pr->name, pr->name_len);
    at += pr->name_len;
    zmtp_cmd_put32(at, (uint32_t)pr->value_len);
    at += 4;
    if (pr->value_len) memcpy(at, pr->value, pr->value_len);
    at += pr->value_len;
  }
  return at;
}

int mqi_zmtp_meta_encode(uint8_t *out, size_t cap, const mqi_zmtp_prop *props,
                         size_t n, size_t *len) {
  size_t size = 0;
  if (!len) return MQI_ZMTP_EINVAL;
  *len = 0;
  int rc = zmtp_cmd_meta_size(props, n, &size);
  if (rc != MQI_ZMTP_OK) return rc;
  *len = size;
  if (!out || cap < size) return MQI_ZMTP_ESPACE;
  zmtp_cmd_meta_write(out, props, n);
  return MQI_ZMTP_OK;
}

/* ------------------------------------------------------------------------
** READY / INITIATE
*/
static mqi_zmtp_prop zmtp_cmd_prop(const char *name, const void *value,
                                   size_t value_len) {
  mqi_zmtp_prop p;
  p.name = (const uint8_t *)name;
  p.name_len = strlen(name);
  p.value = value;
  p.value_len = value_len;
  return p;
}

int mqi_zmtp_ready_encode(uint8_t *out, size_t cap, int kind, int socket_type,
                          const void *identity, size_t identity_len,
                          const mqi_zmtp_prop *extra, size_t n_extra,
                          size_t *len) {
  mqi_zmtp_prop own[2];
  size_t n_own = 1, size = 0;
  uint8_t *at = NULL;
  const char *type_name = mqi_zmtp_socket_name(socket_type);
  if (!len) return MQI_ZMTP_EINVAL;
  *len = 0;
  if (kind != MQI_ZMTP_CMD_READY && kind != MQI_ZMTP_CMD_INITIATE)
    return MQI_ZMTP_EINVAL;
  if (!type_name || identity_len > MQI_ZMTP_IDENTITY_MAX ||
      (!identity && identity_len))
    return MQI_ZMTP_EINVAL;
  own[0] = zmtp_cmd_prop("Socket-Type", type_name, strlen(type_name));
  /* libzmq sends Identity (empty unless set) for exactly these types, and
  ** only ROUTER peers look at it. */
  if (socket_type == MQI_ZMTP_SOCKET_REQ ||
      socket_type == MQI_ZMTP_SOCKET_DEALER ||
      socket_type == MQI_ZMTP_SOCKET_ROUTER) {
    own[n_own++] = zmtp_cmd_prop("Identity", identity, identity_len);
  } else if (identity_len) {
    return MQI_ZMTP_EINVAL;
  }
  int rc = zmtp_cmd_meta_size(own, n_own, &size);
  if (rc == MQI_ZMTP_OK) rc = zmtp_cmd_meta_size(extra, n_extra, &size);
  if (rc != MQI_ZMTP_OK) return rc;
  rc = zmtp_cmd_begin(out, cap, kind == MQI_ZMTP_CMD_READY ? "READY" : "INITIATE",
                      size, len, &at);
  if (rc != MQI_ZMTP_OK) return rc;
  at = zmtp_cmd_meta_write(at, own, n_own);
  zmtp_cmd_meta_write(at, extra, n_extra);
  return MQI_ZMTP_OK;
}

int mqi_zmtp_ready_parse(const mqi_zmtp_cmd *c, mqi_zmtp_meta *out) {
  if (!c || !out) return MQI_ZMTP_EINVAL;
  if (c->kind != MQI_ZMTP_CMD_READY && c->kind != MQI_ZMTP_CMD_INITIATE) {
    memset(out, 0, sizeof *out);
    out->socket_type = MQI_ZMTP_SOCKET_NONE;
    return MQI_ZMTP_EPROTO;
  }
  return mqi_zmtp_meta_parse(c->data, c->data_len, out);
}

/* ------------------------------------------------------------------------
** ERROR
*/
int mqi_zmtp_error_encode(uint8_t *out, size_t cap, const void *reason,
                          size_t reason_len, int libzmq_form, size_t *len) {
  static const uint8_t rfc_prefix[6] = {5, 'E', 'R', 'R', 'O', 'R'};
  uint8_t *at = NULL;
  if (!len) return MQI_ZMTP_EINVAL;
  *len = 0;
  if (reason_len > MQI_ZMTP_REASON_MAX || (!reason && reason_len))
    return MQI_ZMTP_EINVAL;
  int rc = libzmq_form
               ? zmtp_cmd_frame(out, cap, zmtp_cmd_libzmq_error,
                                sizeof zmtp_cmd_libzmq_error, 1 + reason_len,
                                len, &at)
               : zmtp_cmd_frame(out, cap, rfc_prefix, sizeof rfc_prefix,
                                1 + reason_len, len, &at);
  if (rc != MQI_ZMTP_OK) return rc;
  at[0] = (uint8_t)reason_len;
  if (reason_len) memcpy(at + 1, reason, reason_len);
  return MQI_ZMTP_OK;
}

int mqi_zmtp_error_parse(const mqi_zmtp_cmd *c, const uint8_t **reason,
                         size_t *reason_len) {
  if (reason) *reason = NULL;
  if (reason_len) *reason_len = 0;
  if (!c || !reason || !reason_len) return MQI_ZMTP_EINVAL;
  if (c->kind != MQI_ZMTP_CMD_ERROR || c->data_len < 1) return MQI_ZMTP_EPROTO;
  size_t n = c->data[0];
  if (n > c->data_len - 1) return MQI_ZMTP_EPROTO;
  *reason = c->data + 1;
  *reason_len = n;
  return MQI_ZMTP_OK;
}

/* ------------------------------------------------------------------------
** PING / PONG
*/
int mqi_zmtp_ping_encode(uint8_t *out, size_t cap, unsigned ttl_ds,
                         const void *context, size_t context_len,
                         size_t *len) {
  uint8_t *at = NULL;
  if (!len) return MQI_ZMTP_EINVAL;
  *len = 0;
  if (context_len > MQI_ZMTP_PING_CONTEXT_MAX || (!context && context_len))
    return MQI_ZMTP_EINVAL;
  /* Clamped rather than refused: a long TTL is a wish, and 65.5 s is the
  ** longest libzmq can honour without wrapping to a few seconds. */
  if (ttl_ds > MQI_ZMTP_PING_TTL_MAX) ttl_ds = MQI_ZMTP_PING_TTL_MAX;
  int rc = zmtp_cmd_begin(out, cap, "PING", 2 + context_len, len, &at);
  if (rc != MQI_ZMTP_OK) return rc;
  at[0] = (uint8_t)(ttl_ds >> 8);
  at[1] = (uint8_t)ttl_ds;
  if (context_len) memcpy(at + 2, context, context_len);
  return MQI_ZMTP_OK;
}

int mqi_zmtp_ping_parse(const mqi_zmtp_cmd *c, unsigned *ttl_ds,
                        const uint8_t **context, size_t *context_len) {
  if (ttl_ds) *ttl_ds = 0;
  if (context) *context = NULL;
  if (context_len) *context_len = 0;
  if (!c || !ttl_ds || !context || !context_len) return MQI_ZMTP_EINVAL;
  if (c->kind != MQI_ZMTP_CMD_PING || c->data_len < 2) return MQI_ZMTP_EPROTO;
  *ttl_ds = ((unsigned)c->data[0] << 8) | c->data[1];
  *context = c->data + 2;
  *context_len = c->data_len - 2 > MQI_ZMTP_PING_CONTEXT_MAX
                     ? MQI_ZMTP_PING_CONTEXT_MAX
                     : c->data_len - 2;
  return MQI_ZMTP_OK;
}

int mqi_zmtp_pong_encode(uint8_t *out, size_t cap, const void *context,
                         size_t context_len, size_t *len) {
  if (!len) return MQI_ZMTP_EINVAL;
  *len = 0;
  if (context_len > MQI_ZMTP_PING_CONTEXT_MAX) return MQI_ZMTP_EINVAL;
  return mqi_zmtp_cmd_encode(out, cap, "PONG", context, context_len, len);
}

int mqi_zmtp_pong_parse(const mqi_zmtp_cmd *c, const uint8_t **context,
                        size_t *context_len) {
  if (context) *context = NULL;
  if (context_len) *context_len = 0;
  if (!c || !context || !context_len) return MQI_ZMTP_EINVAL;
  if (c->kind != MQI_ZMTP_CMD_PONG) return MQI_ZMTP_EPROTO;
  *context = c->data;
  *context_len = c->data_len > MQI_ZMTP_PING_CONTEXT_MAX
                     ? MQI_ZMTP_PING_CONTEXT_MAX
                     : c->data_len;
  return MQI_ZMTP_OK;
}

/* ------------------------------------------------------------------------
** SUBSCRIBE / CANCEL, and the 3.0 legacy messages
*/
int mqi_zmtp_sub_encode(uint8_t *out, size_t cap, int subscribe,
                        const void *topic, size_t topic_len, size_t *len) {
  if (!len) return MQI_ZMTP_EINVAL;
  *len = 0;
  return mqi_zmtp_cmd_encode(out, cap, subscribe ? "SUBSCRIBE" : "CANCEL",
                             topic, topic_len, len);
}

int mqi_zmtp_sub_parse(const mqi_zmtp_cmd *c, int *subscribe,
                       const uint8_t **topic, size_t *topic_len) {
  if (subscribe) *subscribe = 0;
  if (topic) *topic = NULL;
  if (topic_len) *topic_len = 0;
  if (!c || !subscribe || !topic || !topic_len) return MQI_ZMTP_EINVAL;
  if (c->kind != MQI_ZMTP_CMD_SUBSCRIBE && c->kind != MQI_ZMTP_CMD_CANCEL)
    return MQI_ZMTP_EPROTO;
  *subscribe = c->kind == MQI_ZMTP_CMD_SUBSCRIBE;
  *topic = c->data;
  *topic_len = c->data_len;
  return MQI_ZMTP_OK;
}

int mqi_zmtp_sub_legacy_encode(uint8_t *out, size_t cap, int subscribe,
                               const void *topic, size_t topic_len,
                               size_t *len) {
  uint8_t hdr[MQI_ZMTP_HEADER_MAX];
  size_t hl = 0;
  if (!len) return MQI_ZMTP_EINVAL;
  *len = 0;
  if ((!topic && topic_len) || topic_len > SIZE_MAX - 1 - MQI_ZMTP_HEADER_MAX)
    return MQI_ZMTP_EINVAL;
  int rc = mqi_zmtp_frame_header_encode(hdr, 0, (uint64_t)topic_len + 1, &hl);
  if (rc != MQI_ZMTP_OK) return rc;
  *len = hl + 1 + topic_len;
  if (!out || cap < *len) return MQI_ZMTP_ESPACE;
  memcpy(out, hdr, hl);
  out[hl] = subscribe ? 1 : 0;
  if (topic_len) memcpy(out + hl + 1, topic, topic_len);
  return MQI_ZMTP_OK;
}

int mqi_zmtp_sub_legacy_parse(const void *body, size_t len, int *subscribe,
                              const uint8_t **topic, size_t *topic_len) {
  const uint8_t *p = body;
  if (subscribe) *subscribe = 0;
  if (topic) *topic = NULL;
  if (topic_len) *topic_len = 0;
  if (!subscribe || !topic || !topic_len) return MQI_ZMTP_EINVAL;
  if (!p || len < 1 || p[0] > 1) return MQI_ZMTP_EPROTO;
  *subscribe = p[0] == 1;
  *topic = p + 1;
  *topic_len = len - 1;
  return MQI_ZMTP_OK;
}

/* ------------------------------------------------------------------------
** PLAIN: HELLO, WELCOME (INITIATE is ready_encode/ready_parse)
*/
int mqi_zmtp_hello_encode(uint8_t *out, size_t cap, const void *user,
                          size_t user_len, const void *pass, size_t pass_len,
                          size_t *len) {
  uint8_t *at = NULL;
  if (!len) return MQI_ZMTP_EINVAL;
  *len = 0;
  if (user_len > MQI_ZMTP_PLAIN_FIELD_MAX || pass_len > MQI_ZMTP_PLAIN_FIELD_MAX ||
      (!user && user_len) || (!pass && pass_len))
    return MQI_ZMTP_EINVAL;
  int rc = zmtp_cmd_begin(out, cap, "HELLO", 2 + user_len + pass_len, len, &at);
  if (rc != MQI_ZMTP_OK) return rc;
  *at++ = (uint8_t)user_len;
  if (user_len) memcpy(at, user, user_len);
  at += user_len;
  *at++ = (uint8_t)pass_len;
  if (pass_len) memcpy(at, pass, pass_len);
  return MQI_ZMTP_OK;
}

int mqi_zmtp_hello_parse(const mqi_zmtp_cmd *c, const uint8_t **user,
                         size_t *user_len, const uint8_t **pass,
                         size_t *pass_len) {
  if (user) *user = NULL;
  if (user_len) *user_len = 0;
  if (pass) *pass = NULL;
  if (pass_len) *pass_len = 0;
  if (!c || !user || !user_len || !pass || !pass_len) return MQI_ZMTP_EINVAL;
  if (c->kind != MQI_ZMTP_CMD_HELLO) return MQI_ZMTP_EPROTO;
  const uint8_t *p = c->data;
  size_t n = c->data_len, pos = 0;
  if (n < 1) return MQI_ZMTP_EPROTO;
  size_t ul = p[pos++];
  if (ul > n - pos) return MQI_ZMTP_EPROTO;
  const uint8_t *u = p + pos;
  pos += ul;
  if (n - pos < 1) return MQI_ZMTP_EPROTO;
  size_t pl = p[pos++];
  /* Exactly: libzmq's server refuses trailing bytes after the password. */
  if (pl != n - pos) return MQI_ZMTP_EPROTO;
  *user = u;
  *user_len = ul;
  *pass = p + pos;
  *pass_len = pl;
  return MQI_ZMTP_OK;
}

int mqi_zmtp_welcome_encode(uint8_t *out, size_t cap, size_t *len) {
  if (!len) return MQI_ZMTP_EINVAL;
  *len = 0;
  return mqi_zmtp_cmd_encode(out, cap, "WELCOME", NULL, 0, len);
}

int mqi_zmtp_welcome_parse(const mqi_zmtp_cmd *c) {
  if (!c) return MQI_ZMTP_EINVAL;
  if (c->kind != MQI_ZMTP_CMD_WELCOME || c->data_len != 0)
    return MQI_ZMTP_EPROTO;
  return MQI_ZMTP_OK;
}
