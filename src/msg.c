/*
** msg.c -- the message object a consumer holds, receipts, headers, and
** payload bodies' reference counts.
**
** An mq_msg is one allocation: the struct, then the payload, the encoded
** headers, a table of header pointers and the reason, so mq_msg_free is a
** single free() and the accessors never fail.  The payload is always
** followed by a NUL byte (not counted in its size), so mq_msg_data never
** returns NULL, even for an empty payload.
**
** Integrity: the CRC32 stored at put time is checked here, on the bytes
** after decompression, every time a payload is read.  A mismatch, a payload
** that does not decompress to its recorded size, or a size that disagrees
** with the stored bytes is MQ_ECORRUPT: damaged data is never handed out.
*/
#include "mqi.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

struct mq_msg {
  int64_t id;
  int64_t enqueued_at;
  int64_t visible_at;
  int64_t expires_at;
  int64_t body_id;
  int receives;
  int priority;
  size_t size;
  unsigned char *data;
  const char *reason;
  const char *subject;
  size_t n_headers;
  const char **headers; /* name, value, name, value, ... */
  char receipt[MQ_RECEIPT_MAX + 1];
};

int mqi_body_release(mq_store *s, mqi_op *op, int64_t body_id) {
  if (body_id == 0) return MQ_OK; /* the payload went with its message row */
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_BODY_DELETE_LAST);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, body_id);
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "deleting a payload");
  if (sqlite3_changes(s->db)) return MQ_OK;
  /* Shared with other messages (a topic's subscriptions): one fewer. */
  if (!(st = mqi_store_stmt(s, MQI_ST_BODY_UNREF)))
    return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, body_id);
  src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "releasing a payload");
  return MQ_OK;
}

int mqi_headers_encode(const mq_header *h, size_t n, char **out, size_t *len) {
  *out = NULL;
  *len = 0;
  if (n == 0) return MQ_OK;
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    if (!h[i].name || !h[i].value) return MQ_EINVAL;
    size_t nl = strlen(h[i].name);
    if (nl == 0 || nl > 255) return MQ_EINVAL;
    total += nl + 1 + strlen(h[i].value) + 1;
  }
  char *p = malloc(total);
  if (!p) return MQ_ENOMEM;
  size_t off = 0;
  for (size_t i = 0; i < n; i++) {
    size_t nl = strlen(h[i].name) + 1, vl = strlen(h[i].value) + 1;
    memcpy(p + off, h[i].name, nl);
    off += nl;
    memcpy(p + off, h[i].value, vl);
    off += vl;
  }
  *out = p;
  *len = total;
  return MQ_OK;
}

/* Count name\0value\0 pairs; -1 if the blob is not made of whole pairs. */
static long msg_count_headers(const char *h, size_t len) {
  long pairs = 0;
  size_t i = 0;
  while (i < len) {
    const char *z = memchr(h + i, 0, len - i);
    if (!z) return -1;
    size_t after_name = (size_t)(z - h) + 1;
    if (after_name == i + 1 || after_name >= len + 1) return -1;
    const char *z2 = memchr(h + after_name, 0, len - after_name);
    if (!z2) return -1;
    i = (size_t)(z2 - h) + 1;
    pairs++;
  }
  return pairs;
}

int64_t mqi_msg_body_size(sqlite3_stmt *st, int size_col, int crc_col, int data_col) {
  if (sqlite3_column_type(st, size_col) == SQLITE_NULL ||
      sqlite3_column_type(st, crc_col) == SQLITE_NULL ||
      sqlite3_column_type(st, data_col) == SQLITE_NULL)
    return -1;
  return sqlite3_column_int64(st, size_col);
}

int mqi_msg_build(int64_t id, int64_t enqueued_at, int receives, int priority, const char *reason,
                  const char *subject, int64_t size, uint32_t crc, int codec, const void *headers,
                  size_t headers_len, const void *data, size_t data_len, mq_msg **out) {
  *out = NULL;
  if (size < 0 || (uint64_t)size > MQ_PAYLOAD_LIMIT) return MQ_ECORRUPT;
  if (codec == MQI_CODEC_RAW && (size_t)size != data_len) return MQ_ECORRUPT;
  if (codec != MQI_CODEC_RAW && codec != MQI_CODEC_ZLIB) return MQ_ECORRUPT;
  long nh = headers_len ? msg_count_headers(headers, headers_len) : 0;
  if (nh < 0) return MQ_ECORRUPT;
  size_t rlen = reason ? strlen(reason) + 1 : 0;
  size_t slen = subject ? strlen(subject) + 1 : 0;
  size_t hoff = sizeof(mq_msg);
  size_t ptroff = hoff + (size_t)nh * 2 * sizeof(char *);
  size_t doff = ptroff;
  size_t total = doff + (size_t)size + 1 + headers_len + rlen + slen;
  char *mem = malloc(total);
  if (!mem) return MQ_ENOMEM;
  mq_msg *m = (mq_msg *)mem;
  memset(m, 0, sizeof *m);
  m->id = id;
  m->enqueued_at = enqueued_at;
  m->receives = receives;
  m->priority = priority;
  m->size = (size_t)size;
  m->headers = (const char **)(mem + hoff);
  m->data = (unsigned char *)(mem + doff);
  if (codec == MQI_CODEC_RAW) {
    if (size) memcpy(m->data, data, (size_t)size);
  } else {
    uLongf dlen = (uLongf)size;
    int zrc = uncompress(m->data, &dlen, (const Bytef *)(data ? data : ""), (uLong)data_len);
    if (zrc != Z_OK || dlen != (uLongf)size) {
      free(mem);
      /* Out of memory is not damage: the payload must not be dead-lettered. */
      return zrc == Z_MEM_ERROR ? MQ_ENOMEM : MQ_ECORRUPT;
    }
  }
  m->data[size] = 0;
  if (mqi_crc32(m->data, (size_t)size) != crc) {
    free(mem);
    return MQ_ECORRUPT;
  }
  char *hcopy = (char *)m->data + size + 1;
  if (headers_len) memcpy(hcopy, headers, headers_len);
  m->n_headers = (size_t)nh;
  for (size_t i = 0, off = 0; i < (size_t)nh * 2; i++) {
    m->headers[i] = hcopy + off;
    off += strlen(hcopy + off) + 1;
  }
  if (reason) {
    char *r = hcopy + headers_len;
    memcpy(r, reason, rlen);
    m->reason = r;
  }
  if (subject) {
    char *sj = hcopy + headers_len + rlen;
    memcpy(sj, subject, slen);
    m->subject = sj;
  }
  *out = m;
  return MQ_OK;
}

void mqi_msg_set_times(mq_msg *m, int64_t visible_at, int64_t expires_at) {
  m->visible_at = visible_at;
  m->expires_at = expires_at;
}

void mqi_msg_set_body(mq_msg *m, int64_t body_id) { m->body_id = body_id; }

void mqi_msg_set_receipt(mq_msg *m, int64_t id, uint64_t lease) {
  snprintf(m->receipt, sizeof m->receipt, "%016" PRIx64 "%016" PRIx64, (uint64_t)id, lease);
}

static int msg_hex(const char *p, uint64_t *out) {
  uint64_t v = 0;
  for (int i = 0; i < 16; i++) {
    char c = p[i];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return MQ_EINVAL;
    v = v << 4 | (uint64_t)d;
  }
  *out = v;
  return MQ_OK;
}

int mqi_receipt_parse(const char *r, int64_t *id, uint64_t *lease) {
  uint64_t a, b;
  if (strlen(r) != 32 || msg_hex(r, &a) || msg_hex(r + 16, &b)) return MQ_EINVAL;
  if (a == 0 || a > INT64_MAX || b == 0) return MQ_EINVAL;
  *id = (int64_t)a;
  *lease = b;
  return MQ_OK;
}

int64_t mq_msg_id(const mq_msg *m) { return m ? m->id : 0; }
const void *mq_msg_data(const mq_msg *m) { return m ? (const void *)m->data : ""; }
size_t mq_msg_size(const mq_msg *m) { return m ? m->size : 0; }
const char *mq_msg_receipt(const mq_msg *m) { return m ? m->receipt : ""; }
int mq_msg_receives(const mq_msg *m) { return m ? m->receives : 0; }
int64_t mq_msg_enqueued_at(const mq_msg *m) { return m ? m->enqueued_at : 0; }
int mq_msg_priority(const mq_msg *m) { return m ? m->priority : 0; }
const char *mq_msg_reason(const mq_msg *m) { return m ? m->reason : NULL; }
const char *mq_msg_subject(const mq_msg *m) { return m ? m->subject : NULL; }
int64_t mq_msg_publish_id(const mq_msg *m) { return m ? (m->body_id ? m->body_id : m->id) : 0; }
int64_t mq_msg_visible_at(const mq_msg *m) { return m ? m->visible_at : 0; }
int64_t mq_msg_expires_at(const mq_msg *m) { return m ? m->expires_at : 0; }
size_t mq_msg_header_count(const mq_msg *m) { return m ? m->n_headers : 0; }

const char *mq_msg_header(const mq_msg *m, const char *name) {
  if (!m || !name) return NULL;
  for (size_t i = 0; i < m->n_headers; i++)
    if (strcmp(m->headers[2 * i], name) == 0) return m->headers[2 * i + 1];
  return NULL;
}

const char *mq_msg_header_name(const mq_msg *m, size_t i) {
  return m && i < m->n_headers ? m->headers[2 * i] : NULL;
}

const char *mq_msg_header_value(const mq_msg *m, size_t i) {
  return m && i < m->n_headers ? m->headers[2 * i + 1] : NULL;
}

void mq_msg_free(mq_msg *m) { free(m); }
