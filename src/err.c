/*
** err.c -- result codes, error messages and logging.
**
** A handle may be shared by threads, so "the last error of the handle" would
** be whatever another thread did last.  Instead each thread keeps its own
** last message together with the handle it came from, and mq_errmsg(store)
** returns it only when it belongs to that handle: the message a caller reads
** is always about its own call.
*/
#include "mqi.h"

#include <stdio.h>
#include <string.h>

static _Thread_local struct {
  const mq_store *store;
  char msg[MQI_ERRMSG_MAX];
} err_tls;

const char *mq_errstr(int rc) {
  switch (rc) {
    case MQ_OK:
      return "not an error";
    case MQ_ERROR:
      return "internal error";
    case MQ_EINVAL:
      return "invalid argument";
    case MQ_ENOMEM:
      return "out of memory";
    case MQ_ENOTFOUND:
      return "no such queue";
    case MQ_EEXIST:
      return "queue exists with other options";
    case MQ_EMPTY:
      return "no message available";
    case MQ_ESTALE:
      return "stale receipt: the lease is over";
    case MQ_ETOOBIG:
      return "payload too large";
    case MQ_EFULL:
      return "disk or quota full";
    case MQ_EUNKNOWN:
      return "outcome unknown: I/O error during commit";
    case MQ_ECORRUPT:
      return "data is corrupt";
    case MQ_ENOTMQ:
      return "not an mq store";
    case MQ_EVERSION:
      return "store written by a newer mq format";
    case MQ_EBUSY:
      return "store is locked";
    case MQ_EIO:
      return "I/O error";
    case MQ_ECANTOPEN:
      return "cannot open the store file";
    case MQ_EMISUSE:
      return "library misuse";
    case MQ_EREADONLY:
      return "store is read-only";
    case MQ_EPROTO:
      return "protocol error";
    case MQ_ENET:
      return "network error";
    default:
      return "unknown result code";
  }
}

const char *mq_errmsg(const mq_store *store) {
  if (err_tls.store != store) return "";
  return err_tls.msg;
}

static int err_setv(const mq_store *store, int rc, const char *fmt, va_list ap) {
  err_tls.store = store;
  vsnprintf(err_tls.msg, sizeof err_tls.msg, fmt, ap);
  return rc;
}

int mqi_err_set(const mq_store *store, int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  err_setv(store, rc, fmt, ap);
  va_end(ap);
  return rc;
}

int mqi_err_copy(const mq_store *store, int rc, const char *msg) {
  err_tls.store = store;
  snprintf(err_tls.msg, sizeof err_tls.msg, "%s", msg && *msg ? msg : mq_errstr(rc));
  return rc;
}

void mqi_err_text(char *dst, size_t cap, const char *msg) {
  size_t n = strlen(msg);
  if (n >= cap) {
    n = cap - 1;
    while (n > 0 && ((unsigned char)msg[n] & 0xC0) == 0x80) n--; /* msg[n] starts a character */
  }
  memcpy(dst, msg, n);
  dst[n] = 0;
}

int mqi_err_from_sqlite(int sqlite_rc) {
  switch (sqlite_rc & 0xff) {
    case SQLITE_OK:
      return MQ_OK;
    case SQLITE_NOMEM:
      return MQ_ENOMEM;
    case SQLITE_FULL:
      return MQ_EFULL;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return MQ_EBUSY;
    case SQLITE_CORRUPT:
      return MQ_ECORRUPT;
    case SQLITE_NOTADB:
      return MQ_ENOTMQ;
    case SQLITE_IOERR:
      return MQ_EIO;
    case SQLITE_CANTOPEN:
      return MQ_ECANTOPEN;
    case SQLITE_READONLY:
      return MQ_EREADONLY;
    case SQLITE_MISUSE:
      return MQ_EMISUSE;
    case SQLITE_TOOBIG:
      return MQ_ETOOBIG;
    default:
      return MQ_ERROR;
  }
}

void mqi_log(mq_store *store, int level, const char *fmt, ...) {
  if (!store || !store->log) return;
  char buf[MQI_ERRMSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  store->log(store->log_ctx, level, buf);
}

int mqi_err_check_qname(const mq_store *store, const char *name) {
  const char *slash = name ? strchr(name, '/') : NULL;
  if (!slash) return mqi_err_check_name(store, "queue", name);
  char topic[MQ_NAME_MAX + 1];
  size_t n = (size_t)(slash - name);
  if (n > MQ_NAME_MAX)
    return mqi_err_set(store, MQ_EINVAL, "topic name in \"%.40s...\" is longer than %d bytes", name,
                       MQ_NAME_MAX);
  memcpy(topic, name, n);
  topic[n] = 0;
  int rc = mqi_err_check_name(store, "topic", topic);
  return rc != MQ_OK ? rc : mqi_err_check_name(store, "subscription", slash + 1);
}

int mqi_err_check_name(const mq_store *store, const char *what, const char *name) {
  if (!name) return mqi_err_set(store, MQ_EINVAL, "%s name is NULL", what);
  size_t n = strlen(name);
  if (n == 0) return mqi_err_set(store, MQ_EINVAL, "%s name is empty", what);
  if (n > MQ_NAME_MAX)
    return mqi_err_set(store, MQ_EINVAL, "%s name is %zu bytes; the limit is %d", what, n,
                       MQ_NAME_MAX);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)name[i];
    /* '/' is kept for topic/subscription paths; spaces and control bytes
    ** would make names ambiguous in the CLI and in logs. */
    if (c <= ' ' || c >= 0x7f || c == '/')
      return mqi_err_set(store, MQ_EINVAL,
                         "%s name \"%.40s\" has a byte 0x%02x that is not allowed "
                         "(printable ASCII without spaces or '/')",
                         what, name, c);
  }
  return MQ_OK;
}
