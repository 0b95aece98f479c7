/*
** pack_read.c -- reading packs (pack.c) as they are stored: the parser the
** settle uses, and the cursor through which peek and scan show packed
** messages without settling them.
**
** Reads never write: a read-only handle cannot, and a read-write handle's
** reads must not wait for its writers (mq.h).  So peek and scan merge a
** queue's packed messages with its rows, each as the row it will settle
** into would read: the pack's ids and enqueue time, priority 0, no
** receives, expiring with the queue's retention.
*/
#include "mqi.h"

#include <stdlib.h>
#include <string.h>

/* 0 and *v, or -1 past the end or beyond 64 bits. */
static int pack_varint_get(const unsigned char **p, const unsigned char *end, uint64_t *v) {
  uint64_t x = 0;
  for (int shift = 0; shift < 64 && *p < end; shift += 7) {
    unsigned char b = *(*p)++;
    x |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *v = x;
      return 0;
    }
  }
  return -1;
}

size_t mqi_pack_parse(const void *data, size_t len, mqi_put_item *items, size_t *trailing) {
  *trailing = 0;
  if (!data || !len) return 0; /* NULL + 0 is undefined */
  const unsigned char *p = data, *end = p + len;
  size_t k = 0;
  for (; k < MQI_PACK_MSGS && p < end; k++) {
    const unsigned char *start = p;
    uint64_t size, hlen;
    uint32_t crc = 0;
    int ok = pack_varint_get(&p, end, &size) == 0 && end - p >= 4;
    if (ok) {
      for (int b = 0; b < 4; b++) crc |= (uint32_t)p[b] << (8 * b);
      p += 4;
      ok = pack_varint_get(&p, end, &hlen) == 0 && hlen <= (uint64_t)(end - p) &&
           size <= (uint64_t)(end - p) - hlen;
    }
    mqi_put_item *it = &items[k];
    memset(it, 0, sizeof *it);
    mq_put_options_init(&it->o);
    if (!ok) {
      it->data = start;
      it->len = (size_t)(end - start);
      it->crc = ~mqi_crc32(start, it->len);
      return k + 1;
    }
    it->headers = hlen ? (char *)p : NULL; /* not owned here: never freed */
    it->headers_len = (size_t)hlen;
    p += hlen;
    it->data = p;
    it->len = (size_t)size;
    it->crc = crc;
    p += size;
  }
  *trailing = (size_t)(end - p);
  return k;
}

const char *mqi_pack_damage(const void *data, size_t len, int64_t n, int64_t first_id,
                            mqi_put_item *items, int64_t *msg_id) {
  *msg_id = 0;
  size_t trailing;
  size_t k = mqi_pack_parse(data, len, items, &trailing);
  const char *what = NULL;
  int ids_ok = mqi_pack_ids_ok(first_id, k);
  for (size_t i = 0; i < k && !what; i++) {
    if (mqi_crc32(items[i].data, items[i].len) != items[i].crc) {
      if (ids_ok) *msg_id = first_id + (int64_t)i;
      what = "a message fails its checksum";
    }
  }
  if (!what && trailing) what = "its framing is damaged";
  if (!what && !ids_ok) what = "has ids out of range";
  if (!what && (n < 1 || n > MQI_PACK_MSGS || (size_t)n != k)) what = "has a wrong message count";
  return what;
}

int mqi_pack_ids_ok(int64_t first_id, size_t k) {
  return first_id >= 1 && (k == 0 || (uint64_t)(k - 1) <= (uint64_t)(INT64_MAX - first_id));
}

/* ---- the cursor ------------------------------------------------------------ */

int mqi_pack_cursor_open(mqi_pack_cursor *c, sqlite3 *db, int format, int64_t qid,
                         int64_t retention_ms, int64_t now) {
  memset(c, 0, sizeof *c);
  c->retention_ms = retention_ms;
  if (format < 3) return SQLITE_OK; /* no packs before format 3 */
  int src = sqlite3_prepare_v2(db,
                               "SELECT id, enqueued_at, data FROM mq_pack WHERE queue_id = ?1"
                               " AND (?2 <= 0 OR ?2 > ?3 - enqueued_at) ORDER BY id",
                               -1, &c->st, NULL);
  if (src != SQLITE_OK) return src;
  sqlite3_bind_int64(c->st, 1, qid);
  sqlite3_bind_int64(c->st, 2, retention_ms);
  sqlite3_bind_int64(c->st, 3, now);
  c->items = malloc(MQI_PACK_MSGS * sizeof *c->items);
  return c->items ? SQLITE_OK : SQLITE_NOMEM;
}

int mqi_pack_cursor_peek(mqi_pack_cursor *c, int64_t *id) {
  while (c->at == c->k) {
    if (!c->st) return SQLITE_DONE;
    int src = sqlite3_step(c->st);
    if (src != SQLITE_ROW) return src;
    size_t len = (size_t)sqlite3_column_bytes(c->st, 2);
    free(c->data);
    c->data = len ? malloc(len) : NULL;
    if (len && !c->data) return SQLITE_NOMEM;
    if (len) memcpy(c->data, sqlite3_column_blob(c->st, 2), len);
    c->first = sqlite3_column_int64(c->st, 0);
    c->enqueued = sqlite3_column_int64(c->st, 1);
    size_t trailing;
    c->k = mqi_pack_parse(c->data, len, c->items, &trailing);
    c->at = 0;
    c->bad_ids = !mqi_pack_ids_ok(c->first, c->k);
  }
  /* A pack whose ids do not fit (damage) is read as corrupt messages. */
  *id = c->bad_ids ? c->first : c->first + (int64_t)c->at;
  return SQLITE_ROW;
}

int mqi_pack_cursor_take(mqi_pack_cursor *c, mq_msg **out) {
  const mqi_put_item *it = &c->items[c->at++];
  if (c->bad_ids) return MQ_ECORRUPT;
  int rc = mqi_msg_build(c->first + (int64_t)(c->at - 1), c->enqueued, 0, 0, NULL, NULL,
                         (int64_t)it->len, it->crc, MQI_CODEC_RAW, it->headers, it->headers_len,
                         it->data ? it->data : "", it->len, out);
  if (rc == MQ_OK)
    mqi_msg_set_times(*out, c->enqueued,
                      c->retention_ms > 0 ? mqi_time_add(c->enqueued, c->retention_ms) : 0);
  return rc;
}

void mqi_pack_cursor_close(mqi_pack_cursor *c) {
  sqlite3_finalize(c->st);
  free(c->items);
  free(c->data);
  memset(c, 0, sizeof *c);
}
