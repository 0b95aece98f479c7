/*
** mqi.h -- the internal header shared by the modules in src/.
**
** Nothing here is public.  Internal functions that more than one module uses
** are declared with MQI_API and named mqi_<module>_<verb>; in the modular
** build they are ordinary extern functions (hidden from the shared library
** by -fvisibility=hidden), and in the amalgamation mq.c they become static,
** so a program that drops mq.c in gets only the mq_* names.
**
** Layering (each layer may use only the ones before it):
**   os      -- clocks, files, futexes, randomness: the OS-specific bits
**   err     -- result codes, per-thread error messages, logging
**   gate    -- cross-process fairness and wake-ups in shared memory
**   store   -- the handle, the SQLite connection, its prepared statements
**   schema  -- creating and checking the on-disk format
**   commit  -- group commit: many callers' operations in one transaction
**   queue/put/get/settle/msg -- the queue operations of mq.h
**
** Concurrency model of a handle: every mutating call becomes an mqi_op that
** is queued on the handle.  One calling thread at a time (the leader) takes
** all queued ops, runs them inside one SQLite transaction and commits once,
** so concurrent callers share an fsync.  The SQLite connection is used only
** with store->dblock held.  Across processes, writers line up at the gate
** (a ticket lock in shared memory) before taking SQLite's write lock, so a
** busy writer cannot starve the others.
*/
#ifndef MQI_H
#define MQI_H

#ifndef MQI_API
#define MQI_API
#endif

#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "mq.h"

#if SQLITE_VERSION_NUMBER < 3037000
#error "mq needs SQLite 3.37 or newer (sqlite3_changes64, iif, UPDATE ... FROM)"
#endif

/* On-disk format identity: PRAGMA application_id and user_version. */
#define MQI_APPLICATION_ID 0x6D710A01 /* "mq" + 0x0A01 */
#define MQI_FORMAT_VERSION 3

/* Message states (mq_msg.state column).  A message in state INFLIGHT or
** DELAYED whose visible_at has passed is ready in all but name; the next
** get on its queue moves it to READY ("promotion"), so reads must treat it
** as ready too. */
#define MQI_READY 0
#define MQI_INFLIGHT 1
#define MQI_DELAYED 2
#define MQI_DEAD 3

/* Queue kinds (mq_queue.kind), reserved so topics need no format change. */
#define MQI_KIND_QUEUE 0
#define MQI_KIND_TOPIC 1
#define MQI_KIND_SUBSCRIPTION 2

/* A plain put keeps a payload in its mq_msg row (body_id 0) when its
** stored bytes and headers take at most this much, and at most a quarter
** of a page (store.c), so that the row never spills to overflow pages:
** leases rewrite the row, and then the payload with it.  Larger payloads
** and every topic's (shared by its subscriptions) go to mq_body. */
#define MQI_INLINE_MAX 1024

/* Payload codecs (mq_body.codec, mq_msg.codec). */
#define MQI_CODEC_RAW 0
#define MQI_CODEC_ZLIB 1

#define MQI_ERRMSG_MAX 512

/* t + d for a time and a non-negative duration, saturating instead of
** overflowing: a caller's INT64_MAX means "forever", never "long ago". */
static inline int64_t mqi_time_add(int64_t t, int64_t d) {
  return t > 0 && d > INT64_MAX - t ? INT64_MAX : t + d;
}

/* ---- os.c ---------------------------------------------------------------- */
MQI_API int64_t mqi_os_realtime_ms(void);
MQI_API int64_t mqi_os_monotonic_ms(void);
/* This boot's identity and the time since it (suspend included).  Returns
** MQ_ERROR when the platform has no boot id; *boot_ms is set regardless. */
MQI_API int mqi_os_boot(char *id, size_t cap, int64_t *boot_ms);
MQI_API int64_t mqi_os_boot_ms(void);
/* Test hook: pretend to be in boot id (NULL: the real one), with the boot
** clock and the wall clock moved by the given amounts.  Not thread-safe;
** for tests only. */
MQI_API void mqi_os_test_set_boot(const char *id, int64_t boot_shift_ms, int64_t real_shift_ms);
MQI_API uint64_t mqi_os_seed(void);
/* Free bytes on the file system holding path, or -1 if unknown. */
MQI_API int64_t mqi_os_free_bytes(const char *path);
/* Wait while *addr == expect, at most timeout_ms; works across processes
** when addr is in shared memory.  Spurious returns are allowed. */
MQI_API void mqi_os_futex_wait(uint32_t *addr, uint32_t expect, int64_t timeout_ms);
MQI_API void mqi_os_futex_wake(uint32_t *addr);
/* Prepare path for SQLite: refuse a symbolic link, create a missing file
** with exactly mode when create is set.  Returns MQ_OK or an MQ code with
** a message in err. */
MQI_API int mqi_os_prepare_file(const char *path, unsigned mode, int create, int readonly,
                                char *err, size_t errlen);
/* Is path an empty file beside a -wal that holds frames? */
MQI_API int mqi_os_empty_beside_wal(const char *path);
/* Identity of the file for naming shared memory. */
MQI_API int mqi_os_file_id(const char *path, uint64_t *dev, uint64_t *ino);
/* Incremented in the child at every fork(); a handle remembers it. */
MQI_API unsigned mqi_os_fork_generation(void);
/* Name the calling thread (at most 15 characters) where the system can,
** so that `top -H` and profilers tell the library's threads apart. */
MQI_API void mqi_os_thread_name(const char *name);

/* ---- crc.c --------------------------------------------------------------- */
/* zlib's crc32(0, data, len): the checksum stored with every payload.  data
** may be NULL when len is 0.  Thread-safe. */
MQI_API uint32_t mqi_crc32(const void *data, size_t len);
/* Whether mqi_crc32 runs on this CPU's carry-less multiply (for tests). */
MQI_API int mqi_crc32_accelerated(void);

/* ---- err.c --------------------------------------------------------------- */
/* Record rc with a formatted message as the calling thread's last error on
** store, and return rc. */
MQI_API int mqi_err_set(const mq_store *store, int rc, const char *fmt, ...);
/* Copy a finished message into the calling thread's slot. */
MQI_API int mqi_err_copy(const mq_store *store, int rc, const char *msg);
/* Copy the message msg into dst of cap bytes (cap > 0), cut short if it
** must be at a character boundary, so that a short copy of a UTF-8 message
** (a path, a queue name) is still UTF-8. */
MQI_API void mqi_err_text(char *dst, size_t cap, const char *msg);
/* Map an SQLite result code to an MQ code. */
MQI_API int mqi_err_from_sqlite(int sqlite_rc);
MQI_API void mqi_log(mq_store *store, int level, const char *fmt, ...);
/* Validate a queue name; returns MQ_OK or MQ_EINVAL with a message. */
MQI_API int mqi_err_check_name(const mq_store *store, const char *what, const char *name);
/* Validate a name where a queue or a "topic/subscription" is accepted. */
MQI_API int mqi_err_check_qname(const mq_store *store, const char *name);

/* ---- vfs.c --------------------------------------------------------------- */
/* The VFS name the handle's writing connection opens its file with (vfs.c:
** SQLite's "unix" VFS, starting write-back of long sequential writes early),
** or NULL for SQLite's default: on other systems, or while another VFS is
** the default (an application's, a test's).  Thread-safe. */
MQI_API const char *mqi_vfs_name(void);
/* Write-back hints given so far in this process (tests read it). */
MQI_API uint64_t mqi_vfs_hints(void);

/* ---- gate.c -------------------------------------------------------------- */
typedef struct mqi_gate mqi_gate;
/* Open the gate shared by every handle on the file (dev, ino); falls back
** to a private gate (same-process wake-ups only) if shared memory cannot
** be had.  NULL only when out of memory. */
MQI_API mqi_gate *mqi_gate_open(uint64_t dev, uint64_t ino, unsigned mode);
MQI_API void mqi_gate_close(mqi_gate *g);
/* Release the gate in a child after fork(), leaving the shared object be. */
MQI_API void mqi_gate_forget(mqi_gate *g);
MQI_API int mqi_gate_is_shared(const mqi_gate *g);
/* Line up behind earlier writers; returns the ticket to pass to leave. */
MQI_API uint32_t mqi_gate_enter(mqi_gate *g);
MQI_API void mqi_gate_leave(mqi_gate *g, uint32_t ticket);
/* Wake-ups for waiting consumers: read the sequence, then wait for it to
** change; bump after a commit that may have made a message ready. */
MQI_API uint32_t mqi_gate_seq(mqi_gate *g);
MQI_API void mqi_gate_bump(mqi_gate *g);
MQI_API void mqi_gate_wait(mqi_gate *g, uint32_t seq, int64_t timeout_ms);

/* ---- store.c ------------------------------------------------------------- */
/* Prepared statements, compiled on first use and kept for the handle. */
enum mqi_stmt_id {
  MQI_ST_BEGIN,
  MQI_ST_COMMIT,
  MQI_ST_ROLLBACK,
  MQI_ST_SAVEPOINT,
  MQI_ST_RELEASE,
  MQI_ST_ROLLBACK_TO,
  MQI_ST_QUEUE_BY_NAME,
  MQI_ST_QUEUE_BY_ID,
  MQI_ST_BODY_INSERT,
  MQI_ST_BODY_INSERT_ROWS, /* MQI_PUT_ROWS bodies in one statement */
  MQI_ST_BODY_GET,
  MQI_ST_BODY_DELETE_LAST,
  MQI_ST_BODY_UNREF,
  MQI_ST_MSG_INSERT,
  MQI_ST_MSG_INSERT_ROWS, /* MQI_PUT_ROWS messages in one statement */
  MQI_ST_MSG_PAYLOAD,     /* a payload kept in its mq_msg row; as MQI_ST_BODY_GET */
  MQI_ST_MSG_READY,
  MQI_ST_MSG_LEASE,
  MQI_ST_MSG_EXPIRED,
  MQI_ST_MSG_NEXT_EXPIRY,
  MQI_ST_MSG_DELETE,
  MQI_ST_MSG_OVERDUE,
  MQI_ST_MSG_PROMOTE,
  MQI_ST_MSG_NEXT_VISIBLE,
  MQI_ST_MSG_ACK,
  MQI_ST_MSG_NACK,
  MQI_ST_MSG_NACK_SET,
  MQI_ST_MSG_RELEASE,
  MQI_ST_MSG_TOUCH,
  MQI_ST_MSG_TO_DLQ,
  MQI_ST_MSG_TO_DEAD,
  MQI_ST_DEDUP_GET,
  MQI_ST_DEDUP_PUT,
  MQI_ST_DEDUP_SWEEP,
  MQI_ST_ID_GET,
  MQI_ST_ID_MAX,
  MQI_ST_ID_SET,
  MQI_ST_FREELIST,
  MQI_ST_FORMAT, /* the file's format version, checked by every write transaction */
  MQI_ST_PACK_ANY,
  MQI_ST_PACK_INSERT,
  MQI_ST_PACK_OLDEST,
  MQI_ST_PACK_DELETE,
  MQI_ST_COUNT
};

typedef struct mqi_op mqi_op;

/* A row of mq_queue as the operations use it (queue.c reads it). */
typedef struct mqi_queue {
  int64_t id;
  int kind;
  int64_t visibility_ms;
  int max_receives;
  int64_t dlq_id; /* 0: none */
  int64_t retention_ms;
  int64_t max_payload;
  int64_t compress_above;
  int64_t dedup_window_ms;
} mqi_queue;

struct mq_store {
  pthread_mutex_t lock;   /* guards the op queue and the leader flag */
  pthread_mutex_t dblock; /* guards db and everything used with it */
  pthread_mutex_t rdlock; /* guards rdb, and the read calls take turns on it */
  sqlite3 *rdb;           /* read-only connection of the read calls, or NULL */
  int rdb_off;            /* the path no longer names our file: read on db */
  int rd_main;            /* this read holds dblock and uses db */
  const mq_store *rd_prev; /* the read this one is inside, in its thread */
  sqlite3 *db;
  sqlite3_stmt *stmt[MQI_ST_COUNT];
  char *path;
  char *fullpath;    /* the name every open uses: absolute once SQLite resolved it */
  uint64_t dev, ino; /* the file's identity at open */
  int sync; /* MQ_SYNC_* */
  int readonly;
  int busy_timeout_ms;
  mq_clock_fn clock; /* NULL: boot clock + clock_offset */
  void *clock_ctx;
  int64_t clock_offset;
  mq_log_fn log;
  void *log_ctx;
  int64_t min_free_bytes;
  int page_size; /* for a new file; 0: SQLite's default */
  int64_t inline_max; /* the largest payload a put keeps in its mq_msg row */
  int64_t free_checked_at; /* monotonic ms of the last statvfs */
  int64_t free_bytes;
  unsigned fork_gen;
  mqi_gate *gate;
  uint64_t rng;        /* lease tokens; used under dblock */
  mqi_op *head, *tail; /* ops waiting for a leader */
  int queued;          /* how many */
  int leading;         /* a thread is running a batch */
  int last_batch;      /* ops in the previous batch */
  int broken;          /* a commit failed with an I/O error: reconnect first */
  int64_t next_id;     /* id sequence, valid when id_state != 0 */
  int id_state;        /* 0 not read in this transaction, 1 read, 2 advanced */
  /* The queue last found by an MQI_RUN_KEEPS_QUEUES op; valid until the
  ** transaction ends or any other op runs (queue.c, commit.c). */
  int qcache_valid;
  mqi_queue qcache;
  char qcache_name[MQ_NAME_MAX + 1];
  uint64_t puts_since_sweep;
  uint64_t reruns; /* batches run again with savepoints (commit.c; tests read it) */
  int packs_pending;   /* the transaction may hold packs to settle (pack.c) */
  int pack_log_failed; /* a failed settle was logged; quiet until one works */
};

/* The read calls (stats, info, lists, peek, scan, verify) use a second,
** read-only connection, opened on first use: a WAL reader never waits for
** the writer nor makes it wait, so a long scan does not hold up the
** handle's commits.  mqi_store_read locks it and sets *db (or sets the
** error and returns it); mqi_store_read_done unlocks it, closing it first
** if src says the file failed it (it is opened again next time), and
** ending the transaction a read began on db, if any. */
MQI_API int mqi_store_read(mq_store *s, sqlite3 **db);
MQI_API void mqi_store_read_done(mq_store *s, int src);
/* Inside a read: begin its transaction (one snapshot) and read the file's
** format version in it, which says where payloads are (MQI_PAYLOAD_V1/V2):
** a read-only handle can have opened a version 1 file that a writer
** upgrades while it runs.  Returns the SQLite code. */
MQI_API int mqi_store_snapshot(sqlite3 *db, int *format);
/* MQ_OK for a format this library reads; else MQ_EVERSION with the message
** set: a newer library upgraded the file while this handle had it open. */
MQI_API int mqi_store_format_ok(mq_store *s, int format);
/* Whether the calling thread is inside a read of s: 0 no, 1 on the
** reader, 2 on the handle's own connection (it then holds dblock). */
MQI_API int mqi_store_reading(const mq_store *s);
/* Check the handle before use: NULL, fork, read-only for writes. */
MQI_API int mqi_store_check(mq_store *s, int writes);
MQI_API sqlite3_stmt *mqi_store_stmt(mq_store *s, enum mqi_stmt_id id);
/* Run a statement without parameters (BEGIN, SAVEPOINT, ...): SQLITE_OK
** or the SQLite code. */
MQI_API int mqi_store_exec(mq_store *s, enum mqi_stmt_id id);
/* The same without sqlite3_reset and sqlite3_clear_bindings, for the
** statements run once per message: the caller binds every parameter and
** resets the statement after each step. */
MQI_API sqlite3_stmt *mqi_store_stmt_hot(mq_store *s, enum mqi_stmt_id id);
MQI_API int64_t mqi_store_now(mq_store *s);
/* Close and reopen the connection (under dblock): after an I/O error at
** commit, the connection's view of the file can no longer be trusted. */
MQI_API int mqi_store_reconnect(mq_store *s);
/* Take dblock for a read, reconnecting first if an earlier failure left
** the connection unusable.  On failure dblock is not held. */
MQI_API int mqi_store_lock(mq_store *s);
MQI_API uint64_t mqi_store_token(mq_store *s);
/* Inside an op: a new, never used message or body id. */
MQI_API int mqi_store_next_id(mq_store *s, mqi_op *op, int64_t *id);
/* The same, but at least floor (the sequence moves on past it). */
/* Inside an op: n consecutive ids, the first in *first. */
MQI_API int mqi_store_next_ids(mq_store *s, mqi_op *op, size_t n, int64_t *first);
MQI_API int mqi_store_next_id_from(mq_store *s, mqi_op *op, int64_t floor, int64_t *id);
/* Inside the transaction, before COMMIT: persist the id sequence. */
MQI_API int mqi_store_save_ids(mq_store *s);
/* Inside an op that would write incoming bytes of payload: MQ_EFULL, with
** op failed and marked MQI_OP_REFUSED, if the free-space floor is reached
** (cached for a short time). */
MQI_API int mqi_store_space_ok(mq_store *s, mqi_op *op, int64_t incoming);
/* Near the free-space floor: commits should keep the WAL short. */
MQI_API int mqi_store_low_space(mq_store *s);

/* ---- schema.c ------------------------------------------------------------ */
/* Check that db is an mq store of a format we read, creating the schema in
** a new, empty file.  Sets a message in err on failure. */
MQI_API int mqi_schema_open(sqlite3 *db, int readonly, int page_size, char *err, size_t errlen);
/* MQ_OK if this library reads format version; else MQ_EVERSION with a
** message naming file in err. */
MQI_API int mqi_schema_newer(const char *file, int64_t version, char *err, size_t errlen);

/* ---- commit.c ------------------------------------------------------------ */
/* What an op did, for the commit: */
#define MQI_OP_WAKE 0x1  /* may have made a message ready: wake waiters */
#define MQI_OP_WROTE 0x2 /* may have written: see MQI_RUN_REPEATABLE */
#define MQI_OP_REFUSED 0x4 /* MQ_EFULL from the free-space floor, nothing written */

/* How an op is to be run (mqi_commit_run's how): */
#define MQI_RUN_DURABLE 0x1 /* must survive power loss under FULL (put, ack) */
/* fn may run again from the start after the whole transaction is rolled
** back, and sets MQI_OP_WROTE before its first write.  A batch made only of
** such ops runs without a savepoint per op: while an op that fails has not
** written, there is nothing to undo, and otherwise the batch is rolled back
** and run again with savepoints. */
#define MQI_RUN_REPEATABLE 0x2
/* fn writes no mq_queue row, so its queue lookups may be served from the
** row an earlier op of the same transaction read (mqi_queue_find). */
#define MQI_RUN_KEEPS_QUEUES 0x4
/* fn writes packs or settles them itself (pack.c). */
#define MQI_RUN_PACK 0x8
/* fn reads queued messages (get, redrive): the batch settles packs before
** it, so that it sees packed messages as rows (pack.c).  If they cannot be
** settled, fn is not run and fails with the settle's code; the other ops
** of the batch -- acks, which free the space a full disk needs -- do not
** depend on room for a settle. */
#define MQI_RUN_SETTLE 0x10

typedef int (*mqi_op_fn)(mq_store *s, mqi_op *op);

struct mqi_op {
  mqi_op_fn fn;
  void *arg;
  int how;   /* MQI_RUN_* */
  int flags; /* MQI_OP_* set by fn as it goes */
  int rc;
  int finished; /* set by the leader that ran it, under wmu */
  int lead;     /* handed the leadership (under wmu): run the next batch */
  pthread_mutex_t wmu; /* the op's own: its waiter is woken without lock */
  pthread_cond_t wake;
  mqi_op *next;
  char err[MQI_ERRMSG_MAX];
};

/* Run fn in a (possibly shared) transaction and wait for its commit.
** how: MQI_RUN_* flags; with MQI_RUN_DURABLE the change is fsynced under
** MQ_SYNC_FULL (puts, acks); leases need not be.  Returns the op's code,
** MQ_EUNKNOWN if the commit's outcome is unknown.  The error message is
** copied to the calling thread. */
MQI_API int mqi_commit_run(mq_store *s, mqi_op_fn fn, void *arg, int how);
/* Inside an op: record an error and return rc. */
MQI_API int mqi_op_fail(mqi_op *op, int rc, const char *fmt, ...);
/* Inside an op: map an SQLite failure of step/prepare to an MQ code. */
MQI_API int mqi_op_sqlite(mq_store *s, mqi_op *op, int sqlite_rc, const char *what);

/* ---- queue.c ------------------------------------------------------------- */
/* Look a queue up by name inside an op; MQ_ENOTFOUND with a message. */
MQI_API int mqi_queue_find(mq_store *s, mqi_op *op, const char *name, mqi_queue *q);
/* Read names (column 1, NULLs skipped, the first skip bytes dropped) of
** an SQL query with an optional text binding ?1; *rows counts every row,
** so a caller can tell "no such parent" from "a parent with no children".
** The result is freed with mq_list_free. */
MQI_API int mqi_queue_names(mq_store *s, const char *sql, const char *bind, size_t skip,
                            char ***names, size_t *count, int *rows);
/* MQ_EINVAL if dlq would dead-letter what it receives from a queue with
** max_receives at once. */
MQI_API int mqi_queue_check_dlq(mq_store *s, mqi_op *op, const char *name, int max_receives,
                                const mqi_queue *dlq);
/* The same for calls that need messages: a topic is MQ_EINVAL. */
/* Look a queue up by id inside an op; MQ_ENOTFOUND (no message set). */
MQI_API int mqi_queue_by_id(mq_store *s, mqi_op *op, int64_t id, mqi_queue *q);
MQI_API int mqi_queue_find_holder(mq_store *s, mqi_op *op, const char *name, mqi_queue *q);
/* Create a queue-like row of the given kind (queue or topic). */
MQI_API int mqi_queue_create(mq_store *s, const char *name, int kind, const mq_queue_options *opts);
/* Inside an op: delete every message of queue qid (releasing payloads);
** with drop, also its dedup keys and the queue row itself. */
MQI_API int mqi_queue_clear(mq_store *s, mqi_op *op, int64_t qid, const char *name, int drop,
                            int64_t *deleted);
/* The id for a new queue, topic or subscription: never one a dropped one had. */
MQI_API int mqi_queue_new_id(mq_store *s, mqi_op *op, int64_t *id);

/* ---- put.c --------------------------------------------------------------- */
/* Rows per multi-row INSERT of a batch of puts (store.c spells them out). */
#define MQI_PUT_ROWS 32

/* One message to store, checked and checksummed by the calling thread. */
typedef struct mqi_put_item {
  const void *data;
  size_t len;
  uint32_t crc;
  mq_put_options o;
  char *headers; /* encoded, owned: free() it */
  size_t headers_len;
  const char *subject; /* topics only */
} mqi_put_item;

MQI_API int mqi_put_prepare(mq_store *s, mqi_put_item *it, size_t index, const void *data,
                            size_t len, const mq_put_options *opts);
/* Inside an op: the id an earlier put with the item's dedup key got in q
** (0 if none, or no key), and remembering the key for a new id. */
MQI_API int mqi_put_dedup_find(mq_store *s, mqi_op *op, const mqi_queue *q, const mqi_put_item *it,
                               int64_t now, int64_t *id);
MQI_API int mqi_put_dedup_store(mq_store *s, mqi_op *op, const mqi_queue *q, const mqi_put_item *it,
                                int64_t now, int64_t id);
/* Inside an op: store the payload once, shared by refs messages; q gives
** max_payload and compression. */
MQI_API int mqi_put_body(mq_store *s, mqi_op *op, const mqi_queue *q, const mqi_put_item *it,
                         size_t index, int refs, int64_t body_id);
/* Inside an op: one message row in q for the body body_id, which must not
** be 0 (payloads kept in the message row are put.c's own); retention_ms
** (0: none) is an extra cap, e.g. the topic's. */
MQI_API int mqi_put_msg(mq_store *s, mqi_op *op, const mqi_queue *q, int64_t retention_ms,
                        int64_t body_id, const mqi_put_item *it, int64_t now, int64_t id);
/* Inside an op: mqi_put_msg for body_id in each of the n queues qs (a
** topic's subscriptions), MQI_PUT_ROWS rows per statement. */
MQI_API int mqi_put_fanout(mq_store *s, mqi_op *op, const mqi_queue *const *qs, size_t n,
                           int64_t retention_ms, int64_t body_id, const mqi_put_item *it,
                           int64_t now);
/* Forget dedup keys whose window has passed, now and then. */
MQI_API void mqi_put_sweep(mq_store *s, int64_t now);
/* Inside an op: the rows of n messages without options (ids first_id,
** first_id + 1, ..., enqueued at now), as a batch of plain puts writes
** them, compressed as q says; q's max_payload is not checked again. */
MQI_API int mqi_put_rows_at(mq_store *s, mqi_op *op, const mqi_queue *q, mqi_put_item *items,
                            size_t n, int64_t now, int64_t first_id);

/* ---- pack.c -------------------------------------------------------------- */
/* Store n messages in queue as packs (several messages per row), with one
** commit, durable as a put; items need only data, len, crc and headers.
** All or none; MQ_ETOOBIG/MQ_EINVAL as mq_put_batch for a bad entry. */
MQI_API int mqi_pack_put(mq_store *s, const char *queue, const mqi_put_item *items, size_t n);
/* Inside a transaction (commit.c): turn packs into ordinary message rows,
** oldest first, until at least max messages are done or none is left;
** *left says whether packs remain. */
MQI_API int mqi_pack_settle(mq_store *s, mqi_op *op, int64_t max, int *left);
/* Inside a transaction (commit.c): set s->packs_pending to whether any
** pack is stored, and *backlog to whether more than MQI_PACK_STEP
** messages may be.  MQ_OK, or the code with a message in msg: the
** transaction cannot go on. */
MQI_API int mqi_pack_check(mq_store *s, int *backlog, char *msg, size_t cap);
/* Messages settled per transaction when there are many: one transaction
** of a million rows spills SQLite's page cache and takes twice as long. */
#define MQI_PACK_STEP 4096
/* Inside a transaction: settle up to MQI_PACK_STEP messages; *left says
** whether packs remain.  A failure is logged. */
MQI_API int mqi_pack_settle_step(mq_store *s, int *left);
/* Settle every pack before the next op of the transaction, if any may be
** there.  MQ_OK, or the code of a failure, which is logged and leaves them
** for a later transaction; *redo then says whether the transaction is lost
** (SQLite rolls back on some errors): the caller must roll back and begin
** again. */
MQI_API int mqi_pack_settle_all(mq_store *s, int *redo);
/* Settle at most max messages in a transaction of their own (the server
** does it while its PULL endpoints are idle); MQ_OK and *left. */
MQI_API int mqi_pack_settle_some(mq_store *s, int64_t max, int *left);
/* Inside an op: forget the packs of queue qid (purge, drop); *deleted +=
** their messages, if deleted is not NULL. */
MQI_API int mqi_pack_clear(mq_store *s, mqi_op *op, int64_t qid, int64_t *deleted);

/* ---- pack_read.c --------------------------------------------------------- */
#define MQI_PACK_MSGS 256 /* messages in a pack, at most */
/* The messages of a pack's data, at most MQI_PACK_MSGS items pointing into
** data (headers too: not to be freed).  Damaged framing makes the rest of
** the data one item whose CRC cannot match; *trailing is what is left past
** MQI_PACK_MSGS messages (damage too). */
MQI_API size_t mqi_pack_parse(const void *data, size_t len, mqi_put_item *items, size_t *trailing);
/* What is wrong with the data of a pack said to hold n messages: NULL
** if nothing, else a description (with *msg_id, the first bad message's
** id, where one is to blame); first_id is the pack's id, items room for
** MQI_PACK_MSGS. */
MQI_API const char *mqi_pack_damage(const void *data, size_t len, int64_t n, int64_t first_id,
                                    mqi_put_item *items, int64_t *msg_id);
/* Whether k messages from first_id have ids in 1..INT64_MAX. */
MQI_API int mqi_pack_ids_ok(int64_t first_id, size_t k);
/* A queue's packed messages in id order, inside a read transaction of db:
** open, then peek for the next one's id (SQLITE_ROW, SQLITE_DONE or an
** error code) and take it (MQ_OK, MQ_ECORRUPT for a payload that fails its
** checksum, MQ_ENOMEM), until done; close always.  Each message is as the
** row it settles into would read: ready, priority 0, no receives, expiring
** with the queue's retention; those past it are left out. */
typedef struct mqi_pack_cursor {
  sqlite3_stmt *st; /* the queue's packs, by id */
  int64_t retention_ms;
  int64_t first, enqueued; /* of the pack being read */
  unsigned char *data;     /* its data, copied */
  mqi_put_item *items;     /* MQI_PACK_MSGS of them */
  size_t k, at;            /* messages parsed, the next to take */
  int bad_ids;             /* the pack's ids do not fit (damage) */
} mqi_pack_cursor;
MQI_API int mqi_pack_cursor_open(mqi_pack_cursor *c, sqlite3 *db, int format, int64_t qid,
                                 int64_t retention_ms, int64_t now);
MQI_API int mqi_pack_cursor_peek(mqi_pack_cursor *c, int64_t *id);
MQI_API int mqi_pack_cursor_take(mqi_pack_cursor *c, mq_msg **out);
MQI_API void mqi_pack_cursor_close(mqi_pack_cursor *c);
/* Whether a merge of rows (a statement's last step, src) with packed
** messages (the cursor's last peek, psrc) goes on: something is left, and
** neither side failed. */
static inline int mqi_merge_more(int src, int psrc) {
  return (src == SQLITE_ROW || psrc == SQLITE_ROW) && (src == SQLITE_ROW || src == SQLITE_DONE) &&
         (psrc == SQLITE_ROW || psrc == SQLITE_DONE);
}

/* ---- msg.c --------------------------------------------------------------- */
/* Release one reference to a body, deleting it with the last one; nothing
** for body_id 0 (a payload kept in its message row). */
MQI_API int mqi_body_release(mq_store *s, mqi_op *op, int64_t body_id);
/* Build a message from a stored body; MQ_ECORRUPT if the payload fails its
** checksum or does not decompress. */
/* The size column of a body row as mqi_msg_build takes it: -1 (damage)
** when size, crc or data is NULL.  They are NOT NULL columns, so a NULL
** means the body is missing (an outer join) or was read through a damaged
** page -- where all-NULL columns would otherwise pass as an empty payload
** with the empty payload's checksum. */
MQI_API int64_t mqi_msg_body_size(sqlite3_stmt *st, int size_col, int crc_col, int data_col);
MQI_API int mqi_msg_build(int64_t id, int64_t enqueued_at, int receives, int priority,
                          const char *reason, const char *subject, int64_t size, uint32_t crc,
                          int codec, const void *headers, size_t headers_len, const void *data,
                          size_t data_len, mq_msg **out);
MQI_API void mqi_msg_set_receipt(mq_msg *m, int64_t id, uint64_t lease);
MQI_API void mqi_msg_set_times(mq_msg *m, int64_t visible_at, int64_t expires_at);
MQI_API void mqi_msg_set_body(mq_msg *m, int64_t body_id);
/* Parse a receipt made by mqi_msg_set_receipt. */
MQI_API int mqi_receipt_parse(const char *receipt, int64_t *id, uint64_t *lease);
/* Encode headers as name\0value\0 pairs; *out is malloc'd (NULL if none). */
MQI_API int mqi_headers_encode(const mq_header *h, size_t n, char **out, size_t *len);

/* ---- SQL shared by reads and writes ---------------------------------------- */
/* Conditions on a message m of queue q at time ?2, so that stats, peek,
** scan and redrive see a message as the next get would: LIVE, not past
** its expiry, swept or not; DUE, ready, or hidden and its time has come
** (the next get promotes it); SPENT, it has used up max_receives: visible,
** the next get dead-letters it instead of delivering it. */
#define MQI_SQL_LIVE "(m.expires_at IS NULL OR m.expires_at > ?2)"
#define MQI_SQL_DUE "(m.state = 0 OR (m.state IN (1,2) AND m.visible_at <= ?2))"
#define MQI_SQL_SPENT "(q.max_receives > 0 AND m.receives >= q.max_receives)"
/* The expiry of a message arriving at time `now` in the mq_queue row in
** scope: its retention from then, saturating as mqi_time_add does, or
** NULL (kept for good). */
#define MQI_SQL_RETAIN_FROM(now) \
  "iif(retention_ms > 0, min(" now ", 9223372036854775807 - retention_ms) + retention_ms, NULL)"

/* A payload column of message m (with its body b LEFT JOINed) in SQL, for
** a file of format version 1 and of version 2 on; MQI_PAYLOAD_COLS lists
** size, crc, codec, headers, data, the columns mqi_msg_build takes. */
#define MQI_PAYLOAD_V1(col) "b." col
#define MQI_PAYLOAD_V2(col) "iif(m.body_id, b." col ", m." col ")"
#define MQI_PAYLOAD_COLS(P) P("size") ", " P("crc") ", " P("codec") ", " P("headers") ", " P("data")

/* ---- settle.c ------------------------------------------------------------ */
/* Give leases back as if they had never been taken (ready now, receive
** count restored): for a server's leases that never reached a peer.
** Receipts no longer leased are skipped.  Not durable, like a nack. */
MQI_API int mqi_settle_release(mq_store *s, const char *queue, const char *const *receipts,
                               size_t n);

/* Nack n receipts of queue (no delay, no reason) in one transaction, not
** fsynced (as mq_nack).  Receipts whose lease is over are skipped; MQ_OK
** once the commit is done.  For giving back what a closing connection
** held without one commit per message. */
MQI_API int mqi_nack_batch(mq_store *s, const char *queue, const char *const *receipts, size_t n);

/* ---- get.c --------------------------------------------------------------- */
/* Move one message to the queue's dlq, or to the dead state without one. */
MQI_API int mqi_get_deadletter(mq_store *s, mqi_op *op, const mqi_queue *q, int64_t msg_id,
                               const char *reason);
/* mq_get_batch without a wait, leasing only what fits a byte budget: fit
** says what a message costs the caller (it sees the message with its
** receipt, may run on the thread that leads the commit, and must only
** read), and leasing stops before the message that would take the total
** past budget -- except that the first message may cost up to first, if
** that is more (SIZE_MAX: anything).  MQ_EMPTY with *over 0 when nothing
** is ready, with *over the cost of the next message when that one did not
** fit; what did not fit was not leased.  For callers that must not lease
** what they cannot send at once (the ROUTER's output limit). */
MQI_API int mqi_get_batch_fit(mq_store *s, const char *queue, int64_t visibility_ms, size_t max,
                              size_t (*fit)(const mq_msg *, const void *), const void *ctx,
                              size_t budget, size_t first, mq_msg **msgs, size_t *count,
                              size_t *over);

#endif /* MQI_H */
