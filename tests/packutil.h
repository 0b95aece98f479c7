/*
** packutil.h -- what the pack tests share: storing packs as a PULL
** endpoint does (mqi_pack_put), and counting the pack rows of a file.
*/
#ifndef MQ_PACKUTIL_H
#define MQ_PACKUTIL_H

#include <zlib.h>

#include "mqi.h"
#include "testutil.h"

/* n packed messages of len bytes each: "<tag>-<i>", padded with 'x'. */
static inline int pack_n(mq_store *s, const char *q, size_t n, size_t len, const char *tag) {
  mqi_put_item *it = calloc(n, sizeof *it);
  char *buf = malloc(n * (len ? len : 1));
  int rc = MQ_ENOMEM;
  if (it && buf) {
    for (size_t i = 0; i < n; i++) {
      char *p = buf + i * len;
      memset(p, 'x', len);
      if (len) { /* as snprintf(p, len, ...) would, without its truncation warning */
        char t[64];
        snprintf(t, sizeof t, "%s-%zu", tag, i);
        size_t w = strlen(t) < len - 1 ? strlen(t) : len - 1;
        memcpy(p, t, w);
        p[w] = '\0';
      }
      it[i].data = p;
      it[i].len = len;
      it[i].crc = (uint32_t)crc32_z(0L, (const Bytef *)p, len);
    }
    rc = mqi_pack_put(s, q, it, n);
  }
  free(it);
  free(buf);
  return rc;
}

/* Damage in a closed file: its oldest pack takes id as its first id, so
** that its ids collide with message id.  SQLITE_OK or the SQLite code. */
static inline int pack_take_id(const char *path, int64_t id) {
  char sql[160];
  snprintf(sql, sizeof sql, "UPDATE mq_pack SET id = %lld WHERE id = (SELECT min(id) FROM mq_pack)",
           (long long)id);
  return tu_sql_exec(path, sql);
}

static inline int64_t packs_in(const char *path) {
  return tu_sql_int(path, "SELECT count(*) FROM mq_pack");
}

#endif
