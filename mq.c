/*
** mq.c -- GENERATED FILE: DO NOT EDIT.
**
** This is the whole mq library in one C file (the "amalgamation").  It was
** generated from the modules in src/ by amalgamation/amalgamate.cmake, in
** the order given by amalgamation/order.txt.  Edit those sources instead and
** regenerate with:
**
**     cmake --build build --target amalgamation
**
** To use it, compile this file together with mq.h, for example
** `cc -std=c11 -c mq.c` and link with -lsqlite3 -lz -lpthread.  Internal
** functions are static here, so the only global symbols are the mq_* names
** of mq.h.
*/
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

/* Internal functions are static in the amalgamation.  Builds that link
** internal unit tests against it define MQI_API to nothing. */
#ifndef MQI_API
#ifdef __GNUC__
#define MQI_API static __attribute__((unused))
#else
#define MQI_API static
#endif
#endif

#include "mq.h"

/*** begin src/mqi.h ***/
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
/*** end src/mqi.h ***/

/*** begin src/os.c ***/
/*
** os.c -- the operating-system-specific bits: clocks, randomness, free
** space, futexes, file creation and fork detection.
**
** Everything that differs between platforms is kept here so the rest of the
** library is plain C over SQLite.  Linux gets futexes (cross-process
** wake-ups without polling); elsewhere the wait degrades to a short sleep,
** which is correct but slower to notice a put from another process.
**
** File creation is done here rather than by SQLite because SQLite creates
** the database with the process umask applied, and a queue file holds
** message bodies: it must be created with exactly the mode asked for
** (0600 by default), and a symbolic link in its place is refused.
*/
/* #include "mqi.h" -- inlined above */

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
#include <linux/futex.h>
#include <sys/random.h>
#include <sys/syscall.h>
#endif

/* Set by tests to simulate reboots and wall-clock steps (see mqi.h). */
static const char *os_test_boot_id;
static int64_t os_test_boot_shift_ms;
static int64_t os_test_real_shift_ms;

void mqi_os_test_set_boot(const char *id, int64_t boot_shift_ms, int64_t real_shift_ms) {
  os_test_boot_id = id;
  os_test_boot_shift_ms = boot_shift_ms;
  os_test_real_shift_ms = real_shift_ms;
}

int64_t mqi_os_realtime_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + os_test_real_shift_ms;
}

int64_t mqi_os_boot_ms(void) {
  struct timespec ts;
#ifdef CLOCK_BOOTTIME
  clock_gettime(CLOCK_BOOTTIME, &ts);
#else
  clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + os_test_boot_shift_ms;
}

int mqi_os_boot(char *id, size_t cap, int64_t *boot_ms) {
  *boot_ms = mqi_os_boot_ms();
  if (os_test_boot_id) {
    snprintf(id, cap, "%s", os_test_boot_id);
    return MQ_OK;
  }
  id[0] = 0;
#ifdef __linux__
  FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
  if (f) {
    if (!fgets(id, (int)cap, f)) id[0] = 0;
    fclose(f);
    id[strcspn(id, "\n")] = 0;
  }
#endif
  return id[0] ? MQ_OK : MQ_ERROR;
}

int64_t mqi_os_monotonic_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t mqi_os_seed(void) {
  uint64_t seed = 0;
#ifdef __linux__
  if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) == (ssize_t)sizeof seed && seed) return seed;
#endif
  /* Without getrandom, mix time, pid and an address: lease tokens only
  ** need to differ between deliveries, not to be secret. */
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ ((uint64_t)getpid() << 16) ^
         (uint64_t)(uintptr_t)&seed;
  return seed ? seed : 0x9E3779B97F4A7C15ULL;
}

int64_t mqi_os_free_bytes(const char *path) {
  struct statvfs sv;
  char dir[4096];
  const char *slash = strrchr(path, '/');
  if (!slash) {
    strcpy(dir, ".");
  } else {
    size_t n = (size_t)(slash - path);
    if (n == 0) n = 1;
    if (n >= sizeof dir) return -1;
    memcpy(dir, path, n);
    dir[n] = 0;
  }
  if (statvfs(dir, &sv) != 0) return -1;
  return (int64_t)sv.f_bavail * (int64_t)sv.f_frsize;
}

void mqi_os_futex_wait(uint32_t *addr, uint32_t expect, int64_t timeout_ms) {
  if (timeout_ms <= 0) return;
#ifdef __linux__
  struct timespec ts;
  ts.tv_sec = (time_t)(timeout_ms / 1000);
  ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
  /* Not FUTEX_PRIVATE: the word may live in memory shared between processes. */
  syscall(SYS_futex, addr, FUTEX_WAIT, expect, &ts, NULL, 0);
#else
  (void)addr;
  (void)expect;
  struct timespec ts = {0, (timeout_ms > 5 ? 5 : timeout_ms) * 1000000L};
  nanosleep(&ts, NULL);
#endif
}

void mqi_os_futex_wake(uint32_t *addr) {
#ifdef __linux__
  syscall(SYS_futex, addr, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
#else
  (void)addr;
#endif
}

int mqi_os_prepare_file(const char *path, unsigned mode, int create, int readonly, char *err,
                        size_t errlen) {
  struct stat st;
  if (lstat(path, &st) == 0) {
    if (S_ISLNK(st.st_mode)) {
      snprintf(err, errlen, "%s is a symbolic link; open the file it points to", path);
      return MQ_ECANTOPEN;
    }
    if (!S_ISREG(st.st_mode)) {
      snprintf(err, errlen, "%s is not a regular file", path);
      return MQ_ECANTOPEN;
    }
    return MQ_OK;
  }
  if (errno != ENOENT) {
    snprintf(err, errlen, "cannot stat %s: %s", path, strerror(errno));
    return MQ_ECANTOPEN;
  }
  if (!create || readonly) {
    snprintf(err, errlen, "%s does not exist", path);
    return MQ_ECANTOPEN;
  }
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t)mode);
  if (fd < 0) {
    if (errno == EEXIST) return MQ_OK; /* another process created it first */
    snprintf(err, errlen, "cannot create %s: %s", path, strerror(errno));
    return MQ_ECANTOPEN;
  }
  /* open() applied the umask; the caller asked for this exact mode. */
  if (fchmod(fd, (mode_t)mode) != 0) {
    snprintf(err, errlen, "cannot set mode %o on %s: %s", mode, path, strerror(errno));
    close(fd);
    unlink(path);
    return MQ_ECANTOPEN;
  }
  /* No SQLite connection of this process has the new file open yet, so
  ** closing this descriptor cannot drop anyone's POSIX locks. */
  close(fd);
  /* The new name must survive a power cut too, under any sync mode. */
  char dir[4096];
  const char *slash = strrchr(path, '/');
  size_t n = slash ? (size_t)(slash - path) : 0;
  if (n >= sizeof dir) n = 0;
  if (slash && n == 0) n = 1; /* "/file" */
  memcpy(dir, slash ? path : ".", slash ? n : 1);
  dir[slash ? n : 1] = 0;
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return MQ_OK;
}

int mqi_os_empty_beside_wal(const char *path) {
  struct stat st, wal;
  char w[4200];
  if (stat(path, &st) != 0 || st.st_size != 0) return 0;
  snprintf(w, sizeof w, "%s-wal", path);
  return stat(w, &wal) == 0 && wal.st_size > 32; /* more than a WAL header */
}

int mqi_os_file_id(const char *path, uint64_t *dev, uint64_t *ino) {
  struct stat st;
  if (stat(path, &st) != 0) return MQ_ECANTOPEN;
  *dev = (uint64_t)st.st_dev;
  *ino = (uint64_t)st.st_ino;
  return MQ_OK;
}

static unsigned os_fork_gen;
static pthread_once_t os_fork_once = PTHREAD_ONCE_INIT;

static void os_on_fork_child(void) { os_fork_gen++; }
static void os_fork_register(void) { pthread_atfork(NULL, NULL, os_on_fork_child); }

unsigned mqi_os_fork_generation(void) {
  pthread_once(&os_fork_once, os_fork_register);
  return __atomic_load_n(&os_fork_gen, __ATOMIC_RELAXED);
}

void mqi_os_thread_name(const char *name) {
#ifdef __linux__
  (void)pthread_setname_np(pthread_self(), name); /* a name is a courtesy */
#else
  (void)name;
#endif
}
/*** end src/os.c ***/

/*** begin src/crc.c ***/
/*
** crc.c -- the CRC-32 stored with every payload, with carry-less
** multiplication where the CPU has it.
**
** The checksum is zlib's crc32 (the IEEE 802.3 polynomial): the format
** stores it, so every implementation here must give zlib's result, which
** the tests check for every length and alignment.  It is computed at every
** put and checked at every read.  For the small messages a PULL endpoint
** takes by the million, zlib 1.2.13's crc32_z costs about 90 ns per 100
** bytes, mostly set-up per call: a quarter of a core at 3M messages/s.
** x86-64 CPUs have had PCLMULQDQ since 2010; folding 16 bytes per step with
** it (Gopal et al., "Fast CRC Computation for Generic Polynomials Using
** PCLMULQDQ Instruction", Intel, 2009) takes about 10 ns per 100 bytes.
** Other CPUs, and inputs under 16 bytes, use zlib.
*/
/* #include "mqi.h" -- inlined above */

#include <string.h>
#include <zlib.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CRC_CLMUL 1
#include <cpuid.h>
#include <immintrin.h>
#include <stdatomic.h>
#endif

#ifdef CRC_CLMUL
/* The fold constants, in the bit-reflected domain of zlib's CRC: x^k mod
** P(x), reflected and shifted left by one bit, for k = 4*128+32 and
** 4*128-32 (four lanes, 64 bytes ahead), 128+32 and 128-32 (one lane, 16
** bytes ahead) and 64; then floor(x^64 / P(x)) and P(x) itself, reflected
** (33 bits), for the final Barrett reduction.  In Python, with
** P = 0x104C11DB7, xmod(k) = x^k mod P by shift-and-xor, refl(v, b) = v's
** low b bits reversed: refl(xmod(k), 32) << 1 for the K's, refl(x^64 // P,
** 33) and refl(P, 33); tests/test_crc.c checks the results against zlib. */
#define CRC_K1 0x154442bd4LL
#define CRC_K2 0x1c6e41596LL
#define CRC_K3 0x1751997d0LL
#define CRC_K4 0x0ccaa009eLL
#define CRC_K5 0x163cd6124LL
#define CRC_MU 0x1f7011641LL
#define CRC_P 0x1db710641LL

#define CRC_TARGET __attribute__((target("pclmul,sse2")))

/* 16 bytes from anywhere: memcpy, not a cast to __m128i *, which C makes
** undefined for a misaligned address; it compiles to one unaligned load. */
CRC_TARGET static inline __m128i crc_load(const unsigned char *p) {
  __m128i v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* x times x^k (k's low half), plus x's high half times x^k' (k's high
** half): x moved that many bits further along the message. */
CRC_TARGET static inline __m128i crc_fold(__m128i x, __m128i k) {
  return _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11));
}

/* The CRC register (pre- and post-inversion are the caller's) after len
** bytes at p; len is a multiple of 16, at least 16. */
CRC_TARGET static uint32_t crc_clmul(uint32_t crc, const unsigned char *p, size_t len) {
  const __m128i k12 = _mm_set_epi64x(CRC_K2, CRC_K1);
  const __m128i k34 = _mm_set_epi64x(CRC_K4, CRC_K3);
  const __m128i low32 = _mm_set_epi32(0, 0, 0, -1);
  __m128i x = _mm_xor_si128(crc_load(p), _mm_cvtsi32_si128((int)crc));
  p += 16;
  len -= 16;
  if (len >= 48) {
    /* Four independent lanes keep the multiplier busy. */
    __m128i x1 = crc_load(p), x2 = crc_load(p + 16), x3 = crc_load(p + 32);
    p += 48;
    len -= 48;
    for (; len >= 64; p += 64, len -= 64) {
      x = _mm_xor_si128(crc_fold(x, k12), crc_load(p));
      x1 = _mm_xor_si128(crc_fold(x1, k12), crc_load(p + 16));
      x2 = _mm_xor_si128(crc_fold(x2, k12), crc_load(p + 32));
      x3 = _mm_xor_si128(crc_fold(x3, k12), crc_load(p + 48));
    }
    x = _mm_xor_si128(crc_fold(x, k34), x1);
    x = _mm_xor_si128(crc_fold(x, k34), x2);
    x = _mm_xor_si128(crc_fold(x, k34), x3);
  }
  for (; len >= 16; p += 16, len -= 16) x = _mm_xor_si128(crc_fold(x, k34), crc_load(p));
  /* 128 bits to 64, appending the 32 zero bits the CRC's definition
  ** multiplies the message by; then 64 to 32 bits. */
  x = _mm_xor_si128(_mm_clmulepi64_si128(k34, x, 0x01), _mm_srli_si128(x, 8));
  x = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x, low32), _mm_set_epi64x(0, CRC_K5), 0x00),
                    _mm_srli_si128(x, 4));
  /* Barrett reduction: the remainder of x by P without a division. */
  const __m128i mp = _mm_set_epi64x(CRC_MU, CRC_P);
  __m128i t = _mm_clmulepi64_si128(_mm_and_si128(x, low32), mp, 0x10);
  t = _mm_clmulepi64_si128(_mm_and_si128(t, low32), mp, 0x00);
  x = _mm_xor_si128(x, t);
  return (uint32_t)_mm_cvtsi128_si32(_mm_srli_si128(x, 4));
}

/* 0 not yet asked, 1 PCLMULQDQ present, 2 absent.  Asked once: CPUID traps
** to the hypervisor on a virtual machine. */
static _Atomic int crc_cpu;

static int crc_have_clmul(void) {
  int v = atomic_load_explicit(&crc_cpu, memory_order_relaxed);
  if (v == 0) {
    unsigned a = 0, b = 0, c = 0, d = 0;
    v = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_PCLMUL) ? 1 : 2;
    atomic_store_explicit(&crc_cpu, v, memory_order_relaxed);
  }
  return v == 1;
}
#endif

int mqi_crc32_accelerated(void) {
#ifdef CRC_CLMUL
  return crc_have_clmul();
#else
  return 0;
#endif
}

uint32_t mqi_crc32(const void *data, size_t len) {
  const unsigned char *p = data ? data : (const unsigned char *)"";
  uint32_t crc = 0;
#ifdef CRC_CLMUL
  if (len >= 16 && crc_have_clmul()) {
    size_t n = len & ~(size_t)15;
    crc = ~crc_clmul(0xffffffffu, p, n);
    p += n;
    len -= n;
  }
#endif
  return (uint32_t)crc32_z(crc, p, len); /* the tail of under 16 bytes */
}
/*** end src/crc.c ***/

/*** begin src/err.c ***/
/*
** err.c -- result codes, error messages and logging.
**
** A handle may be shared by threads, so "the last error of the handle" would
** be whatever another thread did last.  Instead each thread keeps its own
** last message together with the handle it came from, and mq_errmsg(store)
** returns it only when it belongs to that handle: the message a caller reads
** is always about its own call.
*/
/* #include "mqi.h" -- inlined above */

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
/*** end src/err.c ***/

/*** begin src/vfs.c ***/
/*
** vfs.c -- the writing connection's VFS: SQLite's own "unix" VFS, plus an
** early start on the disk writes that a long sequential write will need.
**
** A big commit writes megabytes to the WAL and fsyncs it; the checkpoint
** after it copies them into the file and fsyncs that.  Done as SQLite does
** it, the disk sits idle while SQLite writes into the page cache, and the
** thread then sits idle in fsync while the disk catches up: on the
** development VM a PULL endpoint taking 1000-byte messages spent 35-50 % of
** its time in fdatasync.  So when a file has been written sequentially for
** VFS_HINT bytes, that run is handed to the kernel with
** sync_file_range(SYNC_FILE_RANGE_WRITE), which starts writing it back and
** returns without waiting for those writes (it can block while the
** device's request queue is full): the disk works while SQLite goes on
** writing, and the fsync that follows finds little left to do
** (PostgreSQL's *_flush_after settings do the same).  bench_net: 1000-byte
** ingest +30-45 %; raw SQLite writing 8 MB transactions through this VFS,
** +25 %.
**
** Only sequential runs: a checkpoint of scattered pages (a settle, acks)
** hinted in 1 MiB slices ran 1.6 times slower, the disk getting the pages
** in pieces instead of sorted and merged by the fsync; such writes never
** make a run, so they are left as they were.  The hint changes nothing
** about what is durable when: SQLite still fsyncs whatever it fsynced;
** every byte hinted was written since the file's last xSync, so the next
** fsync of that file writes it anyway (and the kernel's own background
** write-back may write it at any time); and a write-back error is still
** reported by that fsync, because the hint never waits for the writes it
** starts and so reads no error state of the file.
**
** SQLite has no call that gives a file's descriptor.  Its unix VFS keeps it
** in the fourth member of its file object (os_unix.c, struct unixFile:
** pMethod, pVfs, pInode, h), unchanged since 3.7.  vfs_fd reads it there
** and uses it only if the second member is the unix VFS itself and the
** descriptor is open on the very file SQLite just opened (same device and
** inode, by fstat), so another layout costs the speed-up, never a hint to
** another file.  The VFS wraps only "unix" and is used only while "unix" is
** SQLite's default: an application (or a test) that made its own VFS the
** default gets it, untouched.  SQLite's VFS list keeps a pointer to this
** file's VFS object, so a destructor unregisters it before the memory can
** go (dlclose of libmq.so).  Linux only (sync_file_range); elsewhere
** mqi_vfs_name is NULL and SQLite's default VFS is used.
*/
/* #include "mqi.h" -- inlined above */

#include <stdatomic.h>
#include <stdio.h>

#ifdef __linux__
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>

#define VFS_HINT ((sqlite3_int64)1 << 20) /* a sequential run this long is written back */

typedef struct vfs_file {
  sqlite3_file base;
  sqlite3_file *real;    /* the unix VFS's file, in the memory right after this */
  int fd;                /* its descriptor; -1: no hints */
  sqlite3_int64 run_at;  /* the sequential run not yet hinted: [run_at, run_end) */
  sqlite3_int64 run_end; /* where the next write must start to extend it */
} vfs_file;

/* The start of os_unix.c's struct unixFile, up to the descriptor. */
typedef struct vfs_unix_head {
  const void *methods;
  void *vfs;
  void *inode;
  int h;
} vfs_unix_head;

static sqlite3_vfs *vfs_real; /* "unix" */
static sqlite3_vfs vfs_mq;
static char vfs_mq_name[40];
static pthread_once_t vfs_once = PTHREAD_ONCE_INIT;
static atomic_int vfs_live; /* 1 while vfs_mq is registered */
static atomic_uint_fast64_t vfs_hint_count;

#define VFS_REAL(f) (((vfs_file *)(f))->real)

static int vfs_close(sqlite3_file *f) { return VFS_REAL(f)->pMethods->xClose(VFS_REAL(f)); }

static int vfs_read(sqlite3_file *f, void *buf, int n, sqlite3_int64 off) {
  return VFS_REAL(f)->pMethods->xRead(VFS_REAL(f), buf, n, off);
}

static int vfs_write(sqlite3_file *f, const void *buf, int n, sqlite3_int64 off) {
  vfs_file *p = (vfs_file *)f;
  int rc = p->real->pMethods->xWrite(p->real, buf, n, off);
  if (rc != SQLITE_OK || p->fd < 0) return rc;
  if (off != p->run_end) p->run_at = off;
  p->run_end = off + n;
  if (p->run_end - p->run_at >= VFS_HINT) {
    if (sync_file_range(p->fd, p->run_at, p->run_end - p->run_at, SYNC_FILE_RANGE_WRITE) == 0)
      atomic_fetch_add_explicit(&vfs_hint_count, 1, memory_order_relaxed);
    else if (errno == ENOSYS || errno == EPERM || errno == EINVAL || errno == ESPIPE)
      p->fd = -1; /* a sandbox or a file system without it: stop asking */
    p->run_at = p->run_end;
  }
  return rc;
}

/* After a truncate or a sync, the bytes of the run so far are gone or
** clean: a run starts again with the next write. */
static int vfs_truncate(sqlite3_file *f, sqlite3_int64 size) {
  vfs_file *p = (vfs_file *)f;
  p->run_at = p->run_end = -1;
  return p->real->pMethods->xTruncate(p->real, size);
}

static int vfs_sync(sqlite3_file *f, int flags) {
  vfs_file *p = (vfs_file *)f;
  p->run_at = p->run_end;
  return p->real->pMethods->xSync(p->real, flags);
}

static int vfs_size(sqlite3_file *f, sqlite3_int64 *size) {
  return VFS_REAL(f)->pMethods->xFileSize(VFS_REAL(f), size);
}

static int vfs_lock(sqlite3_file *f, int level) {
  return VFS_REAL(f)->pMethods->xLock(VFS_REAL(f), level);
}

static int vfs_unlock(sqlite3_file *f, int level) {
  return VFS_REAL(f)->pMethods->xUnlock(VFS_REAL(f), level);
}

static int vfs_reserved(sqlite3_file *f, int *out) {
  return VFS_REAL(f)->pMethods->xCheckReservedLock(VFS_REAL(f), out);
}

static int vfs_fcntl(sqlite3_file *f, int op, void *arg) {
  return VFS_REAL(f)->pMethods->xFileControl(VFS_REAL(f), op, arg);
}

static int vfs_sector(sqlite3_file *f) { return VFS_REAL(f)->pMethods->xSectorSize(VFS_REAL(f)); }

static int vfs_device(sqlite3_file *f) {
  return VFS_REAL(f)->pMethods->xDeviceCharacteristics(VFS_REAL(f));
}

static int vfs_shm_map(sqlite3_file *f, int region, int size, int extend, void volatile **pp) {
  return VFS_REAL(f)->pMethods->xShmMap(VFS_REAL(f), region, size, extend, pp);
}

static int vfs_shm_lock(sqlite3_file *f, int offset, int n, int flags) {
  return VFS_REAL(f)->pMethods->xShmLock(VFS_REAL(f), offset, n, flags);
}

static void vfs_shm_barrier(sqlite3_file *f) { VFS_REAL(f)->pMethods->xShmBarrier(VFS_REAL(f)); }

static int vfs_shm_unmap(sqlite3_file *f, int del) {
  return VFS_REAL(f)->pMethods->xShmUnmap(VFS_REAL(f), del);
}

/* Memory-mapped reads are the unix VFS's own when its methods have them
** (version 3); without, SQLite reads with xRead, as when mmap is off. */
static int vfs_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp) {
  if (VFS_REAL(f)->pMethods->iVersion < 3) {
    *pp = NULL;
    return SQLITE_OK;
  }
  return VFS_REAL(f)->pMethods->xFetch(VFS_REAL(f), off, n, pp);
}

static int vfs_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p) {
  if (VFS_REAL(f)->pMethods->iVersion < 3) return SQLITE_OK;
  return VFS_REAL(f)->pMethods->xUnfetch(VFS_REAL(f), off, p);
}

/* Version 3, as the unix VFS's own methods have been since SQLite 3.7.17
** (mq needs 3.37): the shared memory calls and xFetch exist to forward to. */
static const sqlite3_io_methods vfs_methods = {
    3,           vfs_close,   vfs_read,     vfs_write,       vfs_truncate,  vfs_sync,
    vfs_size,    vfs_lock,    vfs_unlock,   vfs_reserved,    vfs_fcntl,     vfs_sector,
    vfs_device,  vfs_shm_map, vfs_shm_lock, vfs_shm_barrier, vfs_shm_unmap, vfs_fetch,
    vfs_unfetch,
};

/* The descriptor of real, opened on name, or -1 (see the top). */
static int vfs_fd(const sqlite3_file *real, const char *name) {
  vfs_unix_head head;
  struct stat a;
  memcpy(&head, real, sizeof head);
  if (head.vfs != (void *)vfs_real || head.h < 0) return -1; /* not unixFile's layout */
  uint64_t dev, ino;
  if (fstat(head.h, &a) != 0 || mqi_os_file_id(name, &dev, &ino) != MQ_OK) return -1;
  return (uint64_t)a.st_dev == dev && (uint64_t)a.st_ino == ino ? head.h : -1;
}

static int vfs_open(sqlite3_vfs *v, const char *name, sqlite3_file *f, int flags, int *out) {
  (void)v;
  /* The database and its WAL take the big sequential writes; the rest
  ** (temporary files, the -shm through xShmMap) is the unix VFS's own. */
  if (!name || !(flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL)))
    return vfs_real->xOpen(vfs_real, name, f, flags, out);
  vfs_file *p = (vfs_file *)f;
  p->real = (sqlite3_file *)(p + 1);
  p->fd = -1;
  p->run_at = p->run_end = 0;
  int rc = vfs_real->xOpen(vfs_real, name, p->real, flags, out);
  /* SQLite calls xClose after a failed xOpen if pMethods is set. */
  p->base.pMethods = p->real->pMethods ? &vfs_methods : NULL;
  if (rc == SQLITE_OK) p->fd = vfs_fd(p->real, name);
  return rc;
}

static int vfs_delete(sqlite3_vfs *v, const char *name, int dirsync) {
  (void)v;
  return vfs_real->xDelete(vfs_real, name, dirsync);
}

static int vfs_access(sqlite3_vfs *v, const char *name, int flags, int *out) {
  (void)v;
  return vfs_real->xAccess(vfs_real, name, flags, out);
}

static int vfs_full(sqlite3_vfs *v, const char *name, int n, char *out) {
  (void)v;
  return vfs_real->xFullPathname(vfs_real, name, n, out);
}

static void *vfs_dlopen(sqlite3_vfs *v, const char *name) {
  (void)v;
  return vfs_real->xDlOpen(vfs_real, name);
}

static void vfs_dlerror(sqlite3_vfs *v, int n, char *out) {
  (void)v;
  vfs_real->xDlError(vfs_real, n, out);
}

static void (*vfs_dlsym(sqlite3_vfs *v, void *lib, const char *sym))(void) {
  (void)v;
  return vfs_real->xDlSym(vfs_real, lib, sym);
}

static void vfs_dlclose(sqlite3_vfs *v, void *lib) {
  (void)v;
  vfs_real->xDlClose(vfs_real, lib);
}

static int vfs_random(sqlite3_vfs *v, int n, char *out) {
  (void)v;
  return vfs_real->xRandomness(vfs_real, n, out);
}

static int vfs_sleep(sqlite3_vfs *v, int us) {
  (void)v;
  return vfs_real->xSleep(vfs_real, us);
}

static int vfs_time(sqlite3_vfs *v, double *out) {
  (void)v;
  return vfs_real->xCurrentTime(vfs_real, out);
}

static int vfs_error(sqlite3_vfs *v, int n, char *out) {
  (void)v;
  return vfs_real->xGetLastError(vfs_real, n, out);
}

static int vfs_time64(sqlite3_vfs *v, sqlite3_int64 *out) {
  (void)v;
  return vfs_real->xCurrentTimeInt64(vfs_real, out);
}

static void vfs_init(void) {
  sqlite3_vfs *real = sqlite3_vfs_find("unix");
  /* The forwarding needs the unix VFS's version 2 calls, and its file
  ** object big enough to hold the members vfs_fd reads. */
  if (!real || real->iVersion < 2 || (size_t)real->szOsFile < sizeof(vfs_unix_head)) return;
  vfs_real = real;
  vfs_mq.iVersion = 2;
  vfs_mq.szOsFile = (int)sizeof(vfs_file) + real->szOsFile;
  vfs_mq.mxPathname = real->mxPathname;
  /* Named after its own address: two copies of mq.c in one process each
  ** open files through their own. */
  snprintf(vfs_mq_name, sizeof vfs_mq_name, "mq-%p", (void *)&vfs_mq);
  vfs_mq.zName = vfs_mq_name;
  vfs_mq.xOpen = vfs_open;
  vfs_mq.xDelete = vfs_delete;
  vfs_mq.xAccess = vfs_access;
  vfs_mq.xFullPathname = vfs_full;
  vfs_mq.xDlOpen = vfs_dlopen;
  vfs_mq.xDlError = vfs_dlerror;
  vfs_mq.xDlSym = vfs_dlsym;
  vfs_mq.xDlClose = vfs_dlclose;
  vfs_mq.xRandomness = vfs_random;
  vfs_mq.xSleep = vfs_sleep;
  vfs_mq.xCurrentTime = vfs_time;
  vfs_mq.xGetLastError = vfs_error;
  vfs_mq.xCurrentTimeInt64 = vfs_time64;
  if (sqlite3_vfs_register(&vfs_mq, 0) != SQLITE_OK)
    vfs_real = NULL;
  else
    atomic_store(&vfs_live, 1);
}

#ifdef __GNUC__
/* SQLite's VFS list points into this file's memory: unlink vfs_mq before
** that memory goes (dlclose of libmq.so, or of a plugin built with mq.c);
** otherwise the next sqlite3_vfs_find by name in the process crashes.
** Connections still open keep their own pointer to vfs_mq. */
__attribute__((destructor)) static void vfs_fini(void) {
  if (atomic_exchange(&vfs_live, 0)) sqlite3_vfs_unregister(&vfs_mq);
}
#endif

const char *mqi_vfs_name(void) {
  if (pthread_once(&vfs_once, vfs_init) != 0 || !vfs_real || !atomic_load(&vfs_live)) return NULL;
  return sqlite3_vfs_find(NULL) == vfs_real ? vfs_mq_name : NULL;
}

uint64_t mqi_vfs_hints(void) {
  return (uint64_t)atomic_load_explicit(&vfs_hint_count, memory_order_relaxed);
}

#else

const char *mqi_vfs_name(void) { return NULL; }

uint64_t mqi_vfs_hints(void) { return 0; }

#endif
/*** end src/vfs.c ***/

/*** begin src/gate.c ***/
/*
** gate.c -- fairness between writers and wake-ups for waiting consumers,
** shared by every process that has the same queue file open.
**
** SQLite's own busy handling sleeps with a growing back-off while the lock
** holder, back from its commit in microseconds, takes the lock again: a
** steady producer can starve a consumer completely.  So writers first take a
** ticket here and wait for their turn (a ticket lock on a futex), then take
** SQLite's write lock, which is then nearly always free.
**
** The gate is only an ordering hint; SQLite's locks alone keep the data
** safe.  That is what makes it robust.  Every ticket records its owner's
** pid, so when the ticket whose turn it is belongs to a process that was
** killed (holding it, or still waiting for it), any waiter skips it at once;
** if the owner cannot be told dead, the ticket is skipped after
** GATE_SKIP_MS anyway.  A compare-and-swap makes each ticket skipped at most
** once, and a writer whose ticket was skipped simply proceeds: SQLite's lock
** then decides.  Counters only ever move forward and the comparisons are
** done modulo 2^32, so stale or garbled shared memory costs at most a moment
** of unfairness, never a hang.
**
** The same shared page carries a sequence number bumped by every commit that
** may have made a message ready.  A consumer with nothing to get waits on
** it, so a put in any process wakes it at once, with no polling.
**
** The shared memory is a POSIX shm object named after the file's device and
** inode ("/mq-<dev>-<ino>"), removed when the last handle closes.  If it cannot be created (no /dev/shm, another
** user owns it), a private gate is used: everything still works, but waits
** notice another process's put only by timing out.
*/
/* #include "mqi.h" -- inlined above */

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GATE_MAGIC 0x6D714701u
#define GATE_CHECK_MS 10 /* how often a waiter checks the current owner */
#define GATE_SKIP_MS 250 /* how long waiters wait on a silent, live holder */
#define GATE_SHM_SIZE 4096
#define GATE_SLOTS 512 /* owners remembered; older tickets are unknown */

typedef struct gate_shared {
  _Atomic uint32_t magic;
  _Atomic uint32_t next;             /* next ticket to hand out */
  _Atomic uint32_t serving;          /* ticket whose turn it is */
  _Atomic uint32_t seq;              /* bumped when messages may have become ready */
  _Atomic uint32_t waiters;          /* consumers sleeping on seq (a hint) */
  _Atomic int32_t owner[GATE_SLOTS]; /* pid holding ticket t at t % GATE_SLOTS;
                                        0 = unknown */
} gate_shared;

_Static_assert(sizeof(gate_shared) <= GATE_SHM_SIZE, "the gate must fit its shared page");

struct mqi_gate {
  gate_shared *sh;
  int shared; /* sh is a shared mapping, not malloc'd */
  int fd;     /* the shm object, flock(LOCK_SH) held while open */
  char name[64];
};

/* Map the shared gate.  The object is removed by the last handle to close
** (anywhere): every handle holds a shared flock on it, and whoever can
** upgrade to an exclusive one at close is the last and unlinks it.  An
** opener that lost the race to such an unlink finds its object has no link
** left and starts again with a fresh one. */
static int gate_map(mqi_gate *g, uint64_t dev, uint64_t ino, unsigned mode) {
  snprintf(g->name, sizeof g->name, "/mq-%llx-%llx", (unsigned long long)dev,
           (unsigned long long)ino);
  for (int attempt = 0; attempt < 8; attempt++) {
    int fd = shm_open(g->name, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, (mode_t)mode);
    if (fd < 0) return -1;
    struct stat st;
    if (flock(fd, LOCK_SH) != 0 || fstat(fd, &st) != 0) {
      close(fd);
      return -1;
    }
    if (st.st_nlink == 0) { /* unlinked by a closer after our shm_open */
      close(fd);
      continue;
    }
    /* Someone else's object could feed us anything; only our own is used. */
    if ((st.st_uid != geteuid() && geteuid() != 0) ||
        (st.st_size < GATE_SHM_SIZE && ftruncate(fd, GATE_SHM_SIZE) != 0)) {
      close(fd);
      return -1;
    }
    void *p = mmap(NULL, GATE_SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      close(fd);
      return -1;
    }
    g->sh = p;
    g->fd = fd;
    /* A new object is zero-filled, which is a valid idle gate. */
    uint32_t zero = 0;
    atomic_compare_exchange_strong(&g->sh->magic, &zero, GATE_MAGIC);
    return 0;
  }
  return -1;
}

mqi_gate *mqi_gate_open(uint64_t dev, uint64_t ino, unsigned mode) {
  mqi_gate *g = calloc(1, sizeof *g);
  if (!g) return NULL;
  g->fd = -1;
  if (gate_map(g, dev, ino, mode) == 0) {
    g->shared = 1;
    return g;
  }
  g->sh = calloc(1, sizeof *g->sh);
  if (!g->sh) {
    free(g);
    return NULL;
  }
  return g;
}

void mqi_gate_forget(mqi_gate *g) {
  if (!g) return;
  /* In a child after fork() the descriptor shares the parent's flock:
  ** taking it exclusively would succeed and unlink the parent's live gate. */
  if (g->shared) {
    munmap(g->sh, GATE_SHM_SIZE);
    close(g->fd);
  } else {
    free(g->sh);
  }
  free(g);
}

void mqi_gate_close(mqi_gate *g) {
  if (!g) return;
  if (g->shared) {
    munmap(g->sh, GATE_SHM_SIZE);
    if (flock(g->fd, LOCK_EX | LOCK_NB) == 0) shm_unlink(g->name);
    close(g->fd);
  } else {
    free(g->sh);
  }
  free(g);
}

int mqi_gate_is_shared(const mqi_gate *g) { return g->shared; }

/* Is the owner of ticket cur known to be gone? */
static int gate_owner_dead(gate_shared *sh, uint32_t cur) {
  int32_t pid = atomic_load(&sh->owner[cur % GATE_SLOTS]);
  if (pid <= 0) return 0;
  return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

uint32_t mqi_gate_enter(mqi_gate *g) {
  gate_shared *sh = g->sh;
  uint32_t t = atomic_fetch_add(&sh->next, 1);
  atomic_store(&sh->owner[t % GATE_SLOTS], (int32_t)getpid());
  int64_t since = mqi_os_monotonic_ms();
  uint32_t last = atomic_load(&sh->serving);
  for (;;) {
    uint32_t cur = atomic_load(&sh->serving);
    if ((int32_t)(cur - t) >= 0) return t; /* our turn, or we were skipped */
    int64_t now = mqi_os_monotonic_ms();
    if (cur != last) {
      last = cur;
      since = now;
    }
    int64_t waited = now - since;
    if (waited >= GATE_CHECK_MS && (waited >= GATE_SKIP_MS || gate_owner_dead(sh, cur))) {
      /* Skip the ticket whose owner died (or went silent); the CAS makes
      ** sure it is skipped once however many waiters saw it. */
      atomic_compare_exchange_strong(&sh->serving, &cur, cur + 1);
      mqi_os_futex_wake((uint32_t *)&sh->serving);
      since = now;
      continue;
    }
    mqi_os_futex_wait((uint32_t *)&sh->serving, cur, GATE_CHECK_MS);
  }
}

void mqi_gate_leave(mqi_gate *g, uint32_t ticket) {
  gate_shared *sh = g->sh;
  uint32_t expect = ticket;
  atomic_store(&sh->owner[ticket % GATE_SLOTS], 0);
  /* If we were skipped, serving has moved on and is not ours to advance. */
  atomic_compare_exchange_strong(&sh->serving, &expect, ticket + 1);
  if (atomic_load(&sh->next) != ticket + 1) mqi_os_futex_wake((uint32_t *)&sh->serving);
}

uint32_t mqi_gate_seq(mqi_gate *g) { return atomic_load(&g->sh->seq); }

void mqi_gate_bump(mqi_gate *g) {
  atomic_fetch_add(&g->sh->seq, 1);
  if (atomic_load(&g->sh->waiters)) mqi_os_futex_wake((uint32_t *)&g->sh->seq);
}

void mqi_gate_wait(mqi_gate *g, uint32_t seq, int64_t timeout_ms) {
  gate_shared *sh = g->sh;
  atomic_fetch_add(&sh->waiters, 1);
  if (atomic_load(&sh->seq) == seq) mqi_os_futex_wait((uint32_t *)&sh->seq, seq, timeout_ms);
  atomic_fetch_sub(&sh->waiters, 1);
}
/*** end src/gate.c ***/

/*** begin src/store.c ***/
/*
** store.c -- the handle: opening and closing a queue file, the SQLite
** connection and its prepared statements, the clock, lease tokens and the
** free-space floor.
**
** Opening is careful about what it touches before it knows the file is
** ours: the file is created here with an exact mode (not by SQLite, which
** would apply the umask), a symbolic link is refused, and nothing is written
** to an existing file -- not even the switch to WAL mode -- until the
** schema check says it is an mq store of a format we read.
**
** The connection is opened in SQLite's multi-thread mode (no SQLite mutex):
** the handle's dblock serialises every use of it, which SQLite's own mutex
** would only duplicate.
*/
/* #include "mqi.h" -- inlined above */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STORE_DEFAULT_MIN_FREE ((int64_t)16 * 1024 * 1024)
#define STORE_FREE_RECHECK_MS 250
#define STORE_FREE_MARGIN ((int64_t)8 * 1024 * 1024) /* near the floor: read often */
#define STORE_PUT_OVERHEAD ((int64_t)16 * 1024)      /* pages a put touches */
#define STORE_OPEN_MIN_FREE ((int64_t)256 * 1024)    /* room for -shm and a WAL start */

/* The multi-row INSERTs of put.c: one statement stores MQI_PUT_ROWS rows.
** Each run of a statement has a fixed price (start, step, halt, reset):
** rows of 100 B went in at 1.1M/s this way against 0.6M/s one statement
** each.  Parameters are numbered in order, row after row, each row's in
** the order of the single-row statement. */
#define STORE_ROWS_2(r) r "," r
#define STORE_ROWS_8(r) STORE_ROWS_2(STORE_ROWS_2(STORE_ROWS_2(r)))
#define STORE_ROWS_32(r) STORE_ROWS_2(STORE_ROWS_2(STORE_ROWS_8(r)))
_Static_assert(MQI_PUT_ROWS == 32, "STORE_ROWS_32 spells out MQI_PUT_ROWS rows");

static const char *const store_sql[MQI_ST_COUNT] = {
    [MQI_ST_BEGIN] = "BEGIN IMMEDIATE",
    [MQI_ST_COMMIT] = "COMMIT",
    [MQI_ST_ROLLBACK] = "ROLLBACK",
    [MQI_ST_SAVEPOINT] = "SAVEPOINT mq_op",
    [MQI_ST_RELEASE] = "RELEASE mq_op",
    [MQI_ST_ROLLBACK_TO] = "ROLLBACK TO mq_op",
    [MQI_ST_QUEUE_BY_NAME] =
        "SELECT id, kind, visibility_ms, max_receives, dlq_id, retention_ms, max_payload,"
        " compress_above, dedup_window_ms FROM mq_queue WHERE name=?1",
    [MQI_ST_QUEUE_BY_ID] =
        "SELECT id, kind, visibility_ms, max_receives, dlq_id, retention_ms, max_payload,"
        " compress_above, dedup_window_ms FROM mq_queue WHERE id=?1",
    [MQI_ST_BODY_INSERT] =
        "INSERT INTO mq_body(refs, size, crc, codec, headers, data, subject, id)"
        " VALUES(?1,?2,?3,?4,?5,?6,?7,?8)",
    [MQI_ST_BODY_INSERT_ROWS] =
        "INSERT INTO mq_body(refs, size, crc, codec, headers, data, subject, id) "
        "VALUES" STORE_ROWS_32("(?,?,?,?,?,?,?,?)"),
    [MQI_ST_BODY_GET] = "SELECT size, crc, codec, headers, data, subject FROM mq_body WHERE id=?1",
    [MQI_ST_BODY_DELETE_LAST] = "DELETE FROM mq_body WHERE id=?1 AND refs<=1",
    [MQI_ST_BODY_UNREF] = "UPDATE mq_body SET refs=refs-1 WHERE id=?1",
    [MQI_ST_MSG_INSERT] =
        "INSERT INTO mq_msg(queue_id, body_id, state, priority, visible_at, receives,"
        " enqueued_at, expires_at, id, size, crc, codec, headers, data)"
        " VALUES(?1,?2,?3,?4,?5,0,?6,?7,?8,?9,?10,?11,?12,?13)",
    [MQI_ST_MSG_INSERT_ROWS] =
        "INSERT INTO mq_msg(queue_id, body_id, state, priority, visible_at, receives,"
        " enqueued_at, expires_at, id, size, crc, codec, headers, data)"
        " VALUES" STORE_ROWS_32("(?,?,?,?,?,0,?,?,?,?,?,?,?,?)"),
    [MQI_ST_MSG_PAYLOAD] =
        "SELECT size, crc, codec, headers, data, NULL FROM mq_msg WHERE id=?1",
    [MQI_ST_MSG_READY] =
        "SELECT id, body_id, priority, receives, enqueued_at, reason, expires_at FROM mq_msg"
        " WHERE queue_id=?1 AND state=0 ORDER BY priority DESC, id LIMIT ?2",
    [MQI_ST_MSG_LEASE] =
        "UPDATE mq_msg SET state=1, lease=?2, visible_at=?3, receives=receives+1 WHERE id=?1",
    [MQI_ST_MSG_EXPIRED] =
        "SELECT id, body_id FROM mq_msg WHERE queue_id=?1 AND expires_at<=?2 LIMIT 64",
    [MQI_ST_MSG_NEXT_EXPIRY] =
        "SELECT min(expires_at) FROM mq_msg WHERE queue_id=?1 AND expires_at IS NOT NULL",
    [MQI_ST_MSG_DELETE] = "DELETE FROM mq_msg WHERE id=?1",
    [MQI_ST_MSG_OVERDUE] =
        "SELECT id FROM mq_msg WHERE queue_id=?1 AND state IN (1,2) AND visible_at<=?2"
        " AND receives>=?3 LIMIT 64",
    [MQI_ST_MSG_PROMOTE] =
        "UPDATE mq_msg SET state=0 WHERE queue_id=?1 AND state IN (1,2) AND visible_at<=?2",
    [MQI_ST_MSG_NEXT_VISIBLE] =
        "SELECT min(visible_at) FROM mq_msg WHERE queue_id=?1 AND state IN (1,2)",
    /* A message past its expiry (?4, ?5: now) is gone to ack, nack and
    ** touch alike, whether or not a get has swept it yet. */
    [MQI_ST_MSG_ACK] =
        "SELECT body_id FROM mq_msg WHERE id=?1 AND queue_id=?2 AND lease=?3 AND state IN (0,1)"
        " AND (expires_at IS NULL OR expires_at>?4)",
    [MQI_ST_MSG_NACK] =
        "SELECT receives FROM mq_msg WHERE id=?1 AND queue_id=?2 AND lease=?3"
        " AND state IN (0,1) AND (expires_at IS NULL OR expires_at>?4)",
    [MQI_ST_MSG_TOUCH] =
        "UPDATE mq_msg SET visible_at=?4 WHERE id=?1 AND queue_id=?2 AND lease=?3"
        " AND state=1 AND visible_at>?5 AND (expires_at IS NULL OR expires_at>?5)",
    /* A dead letter expires by the retention of the queue that keeps it,
    ** from now (?3); see mqi_get_deadletter. */
    [MQI_ST_MSG_TO_DLQ] =
        "UPDATE mq_msg SET queue_id=?2, origin_id=queue_id, state=0, visible_at=?3,"
        " lease=NULL, reason=coalesce(?4, reason),"
        " expires_at=(SELECT " MQI_SQL_RETAIN_FROM("?3") " FROM mq_queue WHERE id=?2)"
        " WHERE id=?1",
    [MQI_ST_MSG_NACK_SET] =
        "UPDATE mq_msg SET state=?2, visible_at=?3, lease=NULL, reason=coalesce(?4, reason)"
        " WHERE id=?1",
    /* A lease given back as if never taken (mqi_settle_release). */
    [MQI_ST_MSG_RELEASE] =
        "UPDATE mq_msg SET state=0, visible_at=?4, lease=NULL, receives=max(receives-1, 0)"
        " WHERE id=?1 AND queue_id=?2 AND lease=?3 AND state=1",
    [MQI_ST_MSG_TO_DEAD] =
        "UPDATE mq_msg SET state=3, lease=NULL, reason=coalesce(?2, reason), expires_at=?3"
        " WHERE id=?1",
    [MQI_ST_DEDUP_GET] =
        "SELECT msg_id FROM mq_dedup WHERE queue_id=?1 AND key=?2 AND expires_at>?3",
    [MQI_ST_DEDUP_PUT] =
        "INSERT OR REPLACE INTO mq_dedup(queue_id, key, msg_id, expires_at)"
        " VALUES(?1,?2,?3,?4)",
    [MQI_ST_DEDUP_SWEEP] = "DELETE FROM mq_dedup WHERE expires_at<=?1",
    [MQI_ST_ID_GET] = "SELECT value FROM mq_meta WHERE key='next_id'",
    [MQI_ST_ID_MAX] =
        "SELECT max(coalesce((SELECT max(id) FROM mq_msg), 0),"
        " coalesce((SELECT max(id) FROM mq_body), 0),"
        " coalesce((SELECT max(id + n - 1) FROM mq_pack), 0)) + 1",
    [MQI_ST_ID_SET] = "INSERT OR REPLACE INTO mq_meta(key, value) VALUES('next_id', ?1)",
    [MQI_ST_FORMAT] = "PRAGMA user_version",
    /* Whether any, and whether more than MQI_PACK_STEP messages' worth. */
    [MQI_ST_PACK_ANY] = "SELECT count(*) FROM (SELECT 1 FROM mq_pack LIMIT 17)",
    [MQI_ST_PACK_INSERT] =
        "INSERT INTO mq_pack(id, queue_id, n, bytes, enqueued_at, data) VALUES(?1,?2,?3,?4,?5,?6)",
    [MQI_ST_PACK_OLDEST] =
        "SELECT id, queue_id, n, enqueued_at, data FROM mq_pack WHERE id > ?1 ORDER BY id LIMIT 1",
    [MQI_ST_PACK_DELETE] = "DELETE FROM mq_pack WHERE id=?1",
    [MQI_ST_FREELIST] =
        "SELECT freelist_count * page_size FROM pragma_freelist_count, pragma_page_size",
};

const char *mq_libversion(void) { return MQ_VERSION; }
const char *mq_sqlite_version(void) { return sqlite3_libversion(); }

void mq_store_options_init(mq_store_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->sync = MQ_SYNC_FULL;
  o->flags = MQ_OPEN_CREATE;
  o->mode = 0600;
  o->busy_timeout_ms = 10000;
  o->min_free_bytes = STORE_DEFAULT_MIN_FREE;
}

/* Read one integer or text value of mq_meta; 1 if found. */
static int store_meta_get(sqlite3 *db, const char *key, char *text, size_t cap, int64_t *num) {
  sqlite3_stmt *st = NULL;
  int found = 0;
  if (sqlite3_prepare_v2(db, "SELECT value FROM mq_meta WHERE key=?1", -1, &st, NULL) != SQLITE_OK)
    return 0;
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  if (sqlite3_step(st) == SQLITE_ROW) {
    found = 1;
    if (text) snprintf(text, cap, "%s", (const char *)sqlite3_column_text(st, 0));
    if (num) *num = sqlite3_column_int64(st, 0);
  }
  sqlite3_finalize(st);
  return found;
}

/*
** The default clock.  Store time is CLOCK_BOOTTIME plus an offset fixed
** once per boot and kept in mq_meta, so every process of this boot reads
** the same time, and stepping the wall clock (NTP, a user, a device with no
** RTC booting in 1970) moves nothing: a lease lasts its length, not an hour
** more or less.  In a new boot the offset is chosen so that time continues
** from max(wall clock, newest enqueue time) -- never backwards -- and leases
** taken before the reboot are ended, since their consumers died with it.
*/
/* The value sql reads (the enqueue time of a table's newest row: ids grow
** with time), or 0 if none. */
static int64_t store_newest(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st = NULL;
  int64_t v = 0;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

static int store_clock_init(mq_store *s, char *err, size_t errlen) {
  char boot[64], seen[64] = "";
  int64_t boot_ms, offset = 0;
  if (mqi_os_boot(boot, sizeof boot, &boot_ms) != MQ_OK) {
    /* No boot identity on this platform: anchor to the wall clock now. */
    s->clock_offset = mqi_os_realtime_ms() - boot_ms;
    return MQ_OK;
  }
  if (store_meta_get(s->db, "clock_boot", seen, sizeof seen, NULL) && strcmp(seen, boot) == 0 &&
      store_meta_get(s->db, "clock_offset", NULL, 0, &offset)) {
    s->clock_offset = offset;
    return MQ_OK;
  }
  int writes = !s->readonly;
  int src = writes ? sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) : SQLITE_OK;
  if (src != SQLITE_OK) goto fail;
  /* Another process of this boot may have just set it. */
  if (store_meta_get(s->db, "clock_boot", seen, sizeof seen, NULL) && strcmp(seen, boot) == 0 &&
      store_meta_get(s->db, "clock_offset", NULL, 0, &offset)) {
    s->clock_offset = offset;
    return sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK ? MQ_OK : MQ_EBUSY;
  }
  int64_t real = mqi_os_realtime_ms();
  /* Packed messages (format 3) were committed too: time goes on from them.
  ** A read-only handle of an older file has no mq_pack: nothing to add. */
  int64_t last = store_newest(s->db, "SELECT enqueued_at FROM mq_msg ORDER BY id DESC LIMIT 1");
  int64_t packed = store_newest(s->db, "SELECT enqueued_at FROM mq_pack ORDER BY id DESC LIMIT 1");
  if (packed > last) last = packed;
  sqlite3_stmt *st = NULL;
  s->clock_offset = (real > last ? real : last + 1) - boot_ms;
  if (!writes) return MQ_OK;
  src = seen[0]
            ? sqlite3_exec(s->db, "UPDATE mq_msg SET state = 0 WHERE state = 1", NULL, NULL, NULL)
            : SQLITE_OK;
  if (src == SQLITE_OK)
    src = sqlite3_prepare_v2(s->db,
                             "INSERT OR REPLACE INTO mq_meta VALUES('clock_boot', ?1),"
                             " ('clock_offset', ?2)",
                             -1, &st, NULL);
  if (src == SQLITE_OK) {
    sqlite3_bind_text(st, 1, boot, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, s->clock_offset);
    src = sqlite3_step(st);
    sqlite3_finalize(st);
    if (src == SQLITE_DONE) src = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
  }
  if (src == SQLITE_OK) return MQ_OK;
fail:
  snprintf(err, errlen, "%s: recording the clock of this boot: %s", s->path, sqlite3_errmsg(s->db));
  if (!sqlite3_get_autocommit(s->db)) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
  return mqi_err_from_sqlite(src);
}

static void store_free(mq_store *s) {
  for (int i = 0; i < MQI_ST_COUNT; i++) sqlite3_finalize(s->stmt[i]);
  if (s->rdb) sqlite3_close_v2(s->rdb);
  if (s->db) sqlite3_close(s->db);
  mqi_gate_close(s->gate);
  pthread_mutex_destroy(&s->lock);
  pthread_mutex_destroy(&s->dblock);
  pthread_mutex_destroy(&s->rdlock);
  free(s->fullpath);
  free(s->path);
  free(s);
}

/* Read the options the caller filled, honouring their declared size so an
** older caller's shorter struct keeps the defaults for newer fields. */
static int store_read_options(const mq_store_options *in, mq_store_options *o) {
  mq_store_options_init(o);
  if (!in) return MQ_OK;
  if (in->size < offsetof(mq_store_options, min_free_bytes) || in->size > sizeof *o)
    return mqi_err_set(NULL, MQ_EINVAL,
                       "mq_store_options.size is %zu: call mq_store_options_init first", in->size);
  memcpy(o, in, in->size);
  if (o->sync < MQ_SYNC_FULL || o->sync > MQ_SYNC_OFF)
    return mqi_err_set(NULL, MQ_EINVAL, "sync mode %d is not one of MQ_SYNC_*", o->sync);
  if (o->flags & ~(MQ_OPEN_CREATE | MQ_OPEN_READONLY))
    return mqi_err_set(NULL, MQ_EINVAL, "unknown open flags 0x%x", o->flags);
  if (o->mode & ~0777u || !(o->mode & 0600u) || (o->mode & 0600u) != 0600u)
    return mqi_err_set(NULL, MQ_EINVAL,
                       "file mode %o: must give the owner read and write and have no "
                       "bits beyond 0777",
                       o->mode);
  if (o->busy_timeout_ms < 0) return mqi_err_set(NULL, MQ_EINVAL, "busy_timeout_ms is negative");
  if (o->min_free_bytes < 0) return mqi_err_set(NULL, MQ_EINVAL, "min_free_bytes is negative");
  if (o->page_size != 0 && (o->page_size < MQ_PAGE_SIZE_MIN || o->page_size > MQ_PAGE_SIZE_MAX ||
                            (o->page_size & (o->page_size - 1))))
    return mqi_err_set(NULL, MQ_EINVAL, "page_size %d is not 0 or a power of two from %d to %d",
                       o->page_size, MQ_PAGE_SIZE_MIN, MQ_PAGE_SIZE_MAX);
  return MQ_OK;
}

static int store_pragmas(mq_store *s, char *err, size_t errlen) {
  char sql[200];
  /* MQ_SYNC_FULL runs the connection at NORMAL and fsyncs the WAL itself
  ** after each commit that must be durable (commit.c): leases then cost no
  ** fsync, with no PRAGMA switching per transaction. */
  /* MQ_SYNC_OFF runs at NORMAL too: in WAL mode NORMAL never fsyncs a
  ** commit either, but its checkpoints do fsync, and a checkpoint run by
  ** any handle must not weaken the durability other handles promised
  ** (synchronous=OFF would copy their fsynced WAL into the file unsynced
  ** and then reset the WAL). */
  const char *sync = "NORMAL";
  snprintf(sql, sizeof sql,
           "PRAGMA synchronous=%s; PRAGMA foreign_keys=OFF; PRAGMA journal_size_limit=67108864;",
           sync);
  int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
  /* The auto-checkpoint counts pages: scale it so that the WAL is folded
  ** into the file at the same ~4 MB whatever the page size (SQLite's 1000
  ** pages of 4 KiB), not 16 times later with 64 KiB pages. */
  sqlite3_stmt *st = NULL;
  if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(s->db, "PRAGMA page_size", -1, &st, NULL);
  if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    int64_t page = sqlite3_column_int64(st, 0);
    rc = sqlite3_wal_autocheckpoint(s->db, page > 0 ? (int)(4096000 / page) : 1000);
    s->inline_max = page / 4 < MQI_INLINE_MAX ? page / 4 : MQI_INLINE_MAX;
    /* The file had its page size already (an existing store, one another
    ** process created first, an SQLite file with no tables yet). */
    if (s->page_size && page != s->page_size)
      mqi_log(s, MQ_LOG_INFO, "%s: page_size %d not applied: the file's pages are %lld bytes",
              s->path, s->page_size, (long long)page);
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_OK) {
    snprintf(err, errlen, "setting up %s: %s", s->path, sqlite3_errmsg(s->db));
    return mqi_err_from_sqlite(rc);
  }
  return MQ_OK;
}

/* Whether name still names the file the handle opened. */
static int store_same_file(const mq_store *s, const char *name) {
  uint64_t dev = 0, ino = 0;
  return mqi_os_file_id(name, &dev, &ino) == MQ_OK && dev == s->dev && ino == s->ino;
}

/* Open the SQLite connection and check the file; on failure s->db may be
** left open for store_free to close. */
static int store_connect(mq_store *s, char *err, size_t errlen) {
  int flags = (s->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOMUTEX;
#ifdef SQLITE_OPEN_NOFOLLOW
  flags |= SQLITE_OPEN_NOFOLLOW;
#endif
  int src = sqlite3_open_v2(s->fullpath, &s->db, flags, s->readonly ? NULL : mqi_vfs_name());
  if (src != SQLITE_OK) {
    snprintf(err, errlen, "cannot open %s: %s", s->path,
             s->db ? sqlite3_errmsg(s->db) : "out of memory");
    return src == SQLITE_NOMEM ? MQ_ENOMEM : MQ_ECANTOPEN;
  }
  sqlite3_extended_result_codes(s->db, 1);
  sqlite3_busy_timeout(s->db, s->busy_timeout_ms);
  /* SQLite quietly opens a file it cannot write read-only; a caller who
  ** asked to write should hear it now, not at the first put. */
  if (!s->readonly && sqlite3_db_readonly(s->db, "main") == 1) {
    snprintf(err, errlen,
             "%s is not writable by this process; open it with MQ_OPEN_READONLY to read it",
             s->path);
    return MQ_EREADONLY;
  }
  /* Only the file the handle was opened on: a reconnect must not make a
  ** store of another file that has taken the name since (an empty one
  ** would get the schema before any later check could refuse it). */
  if (!store_same_file(s, s->fullpath)) {
    snprintf(err, errlen, "%s is no longer the file this handle opened", s->path);
    return MQ_ECANTOPEN;
  }
  int rc = mqi_schema_open(s->db, s->readonly, s->page_size, err, errlen);
  if (rc == MQ_OK && !s->readonly) rc = store_pragmas(s, err, errlen);
  /* The statements that end transactions are compiled now, so that no
  ** rollback can fail later for want of memory to compile it. */
  for (int id = MQI_ST_BEGIN; rc == MQ_OK && !s->readonly && id <= MQI_ST_ROLLBACK_TO; id++) {
    if (!mqi_store_stmt(s, (enum mqi_stmt_id)id)) {
      snprintf(err, errlen, "%s: preparing statements: %s", s->path, sqlite3_errmsg(s->db));
      rc = mqi_err_from_sqlite(sqlite3_errcode(s->db));
      if (rc == MQ_OK) rc = MQ_ERROR;
    }
  }
  return rc;
}

/* Close the handle's own connection (the caller holds the gate when the
** connection may have written). */
static void store_disconnect(mq_store *s) {
  for (int i = 0; i < MQI_ST_COUNT; i++) {
    sqlite3_finalize(s->stmt[i]);
    s->stmt[i] = NULL;
  }
  sqlite3_close_v2(s->db);
  s->db = NULL;
}

int mqi_store_reconnect(mq_store *s) {
  char err[MQI_ERRMSG_MAX] = "";
  store_disconnect(s);
  /* store_connect reaches only the file the handle opened: another one at
  ** the name would be written under a gate that is not its own. */
  int rc = store_connect(s, err, sizeof err);
  if (rc == MQ_OK) {
    s->broken = 0;
    mqi_log(s, MQ_LOG_WARN, "%s: reopened after an error that left the connection unusable",
            s->path);
  } else {
    store_disconnect(s); /* every call reconnects first (mqi_store_lock, commit) */
    s->broken = 1;
    mqi_log(s, MQ_LOG_ERROR, "%s: reopening failed: %s", s->path, err);
  }
  return rc;
}

/* The innermost read this thread is inside (a scan's callback runs there),
** chained through mq_store.rd_prev to the reads around it: a second read
** of one of those handles would wait for the first forever. */
static _Thread_local const mq_store *store_reading;

int mqi_store_reading(const mq_store *s) {
  for (const mq_store *p = store_reading; p; p = p->rd_prev)
    if (p == s) return s->rd_main ? 2 : 1;
  return 0;
}

/* Open the reader and check that it reached the file db has: a path can
** come to name another file (renamed over, restored from a backup); then
** s->rdb_off is set.  Returns the SQLite code, SQLITE_OK when s->rdb is
** open. */
static int store_open_reader(mq_store *s) {
  int flags = SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX;
#ifdef SQLITE_OPEN_NOFOLLOW
  flags |= SQLITE_OPEN_NOFOLLOW;
#endif
  int src = sqlite3_open_v2(s->fullpath, &s->rdb, flags, NULL);
  if (src == SQLITE_OK) src = sqlite3_busy_timeout(s->rdb, s->busy_timeout_ms);
  if (src == SQLITE_OK && !store_same_file(s, s->fullpath)) {
    s->rdb_off = 1;
    src = SQLITE_CANTOPEN;
  }
  if (src != SQLITE_OK) {
    sqlite3_close(s->rdb);
    s->rdb = NULL;
  }
  return src;
}

int mqi_store_read(mq_store *s, sqlite3 **db) {
  *db = NULL;
  if (mqi_store_reading(s))
    return mqi_err_set(s, MQ_EMISUSE,
                       "%s: a read call of this handle inside a scan or verify callback of it",
                       s->path);
  pthread_mutex_lock(&s->rdlock);
  if (!s->rdb && !s->rdb_off) {
    int src = store_open_reader(s);
    if (src != SQLITE_OK && !s->rdb_off) {
      pthread_mutex_unlock(&s->rdlock);
      int rc = mqi_err_set(s, mqi_err_from_sqlite(src), "%s: opening a reader: %s", s->path,
                           sqlite3_errstr(src));
      return rc == MQ_OK ? MQ_ERROR : rc;
    }
  }
  if (!s->rdb) {
    /* Our file is no longer at its path: read on the handle's own
    ** connection, which still has it open, as writes do. */
    int rc = mqi_store_lock(s);
    if (rc != MQ_OK) {
      pthread_mutex_unlock(&s->rdlock);
      return rc;
    }
    s->rd_main = 1;
  }
  *db = s->rd_main ? s->db : s->rdb;
  s->rd_prev = store_reading;
  store_reading = s;
  return MQ_OK;
}

int mqi_store_snapshot(sqlite3 *db, int *format) {
  *format = MQI_FORMAT_VERSION;
  int src = sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
  if (src != SQLITE_OK) return src;
  /* The first read of the transaction fixes its snapshot: the version is
  ** the one of the rows the caller reads next. */
  sqlite3_stmt *st = NULL;
  src = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
  if (src == SQLITE_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
    *format = sqlite3_column_int(st, 0);
    src = SQLITE_OK;
  }
  sqlite3_finalize(st);
  return src;
}

int mqi_store_format_ok(mq_store *s, int format) {
  char err[MQI_ERRMSG_MAX];
  int rc = mqi_schema_newer(s->path, format, err, sizeof err);
  return rc == MQ_OK ? MQ_OK : mqi_err_copy(s, rc, err);
}

/* End the read's transaction, if it has one.  Ending can still fail (out
** of memory): then roll back, and if even that fails, 1: the connection
** must not serve another call inside this transaction. */
static int store_read_end(sqlite3 *db) {
  if (!db || sqlite3_get_autocommit(db)) return 0;
  if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK) return 0;
  if (sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL) == SQLITE_OK) return 0;
  return !sqlite3_get_autocommit(db);
}

void mqi_store_read_done(mq_store *s, int src) {
  int code = src & 0xff;
  int stuck = store_read_end(s->rd_main ? s->db : s->rdb);
  store_reading = s->rd_prev;
  s->rd_prev = NULL;
  if (s->rd_main) {
    s->rd_main = 0;
    if (stuck) s->broken = 1;
    pthread_mutex_unlock(&s->dblock);
    pthread_mutex_unlock(&s->rdlock);
    return;
  }
  /* After an I/O error, or a transaction it could not end, the reader's
  ** view cannot be trusted: a fresh one next time. */
  if (s->rdb && (stuck || code == SQLITE_IOERR || code == SQLITE_CORRUPT ||
                 code == SQLITE_NOTADB || code == SQLITE_CANTOPEN)) {
    sqlite3_close_v2(s->rdb);
    s->rdb = NULL;
  }
  pthread_mutex_unlock(&s->rdlock);
}

int mqi_store_lock(mq_store *s) {
  pthread_mutex_lock(&s->dblock);
  if (!s->broken && s->db) return MQ_OK;
  uint32_t ticket = mqi_gate_enter(s->gate);
  int rc = mqi_store_reconnect(s);
  mqi_gate_leave(s->gate, ticket);
  if (rc == MQ_OK) return MQ_OK;
  pthread_mutex_unlock(&s->dblock);
  return mqi_err_set(s, rc,
                     "%s: the store could not be reopened after an error; close it and open it "
                     "again",
                     s->path);
}

int mq_store_open(const char *path, const mq_store_options *opts, mq_store **out) {
  mq_store_options o;
  char err[MQI_ERRMSG_MAX] = "";
  int rc;
  if (out) *out = NULL;
  if (!out) return mqi_err_set(NULL, MQ_EINVAL, "mq_store_open: out is NULL");
  if (!path || !*path) return mqi_err_set(NULL, MQ_EINVAL, "mq_store_open: path is empty");
  if ((rc = store_read_options(opts, &o)) != MQ_OK) return rc;
  int readonly = (o.flags & MQ_OPEN_READONLY) != 0;

  rc =
      mqi_os_prepare_file(path, o.mode, (o.flags & MQ_OPEN_CREATE) != 0, readonly, err, sizeof err);
  if (rc != MQ_OK) return mqi_err_copy(NULL, rc, err);

  mq_store *s = calloc(1, sizeof *s);
  if (!s) return mqi_err_set(NULL, MQ_ENOMEM, "out of memory opening %s", path);
  pthread_mutex_init(&s->lock, NULL);
  pthread_mutex_init(&s->dblock, NULL);
  pthread_mutex_init(&s->rdlock, NULL);
  s->path = strdup(path);
  s->fullpath = strdup(path); /* made absolute once SQLite has opened it */
  s->sync = o.sync;
  s->readonly = readonly;
  s->busy_timeout_ms = o.busy_timeout_ms;
  s->clock = o.clock;
  s->clock_ctx = o.clock_ctx;
  s->log = o.log;
  s->log_ctx = o.log_ctx;
  s->min_free_bytes = o.min_free_bytes;
  s->page_size = o.page_size;
  s->free_checked_at = INT64_MIN / 2;
  s->fork_gen = mqi_os_fork_generation();
  s->rng = mqi_os_seed();
  if (!s->path || !s->fullpath) {
    store_free(s);
    return mqi_err_set(NULL, MQ_ENOMEM, "out of memory opening %s", path);
  }

  /* SQLite maps the -shm file and writes through the mapping; with no free
  ** blocks left that write kills the process with SIGBUS instead of
  ** returning an error.  Refuse to open while the file system is that
  ** close to full: a clear error beats a dead process. */
  int64_t free_bytes = mqi_os_free_bytes(path);
  if (free_bytes >= 0 && free_bytes < STORE_OPEN_MIN_FREE) {
    snprintf(err, sizeof err,
             "the file system holding %s has only %lld bytes free; free some space "
             "before opening it",
             path, (long long)free_bytes);
    store_free(s);
    return mqi_err_copy(NULL, MQ_EFULL, err);
  }

  /* A main file emptied by damage next to a WAL full of commits would
  ** otherwise be taken for a new store, and the WAL thrown away. */
  if (mqi_os_empty_beside_wal(path)) {
    snprintf(err, sizeof err,
             "%s is empty but its -wal file is not: refusing to start a new store over "
             "what may be recoverable data",
             path);
    store_free(s);
    return mqi_err_copy(NULL, MQ_ECORRUPT, err);
  }

  /* The gate first: creating the schema and recording this boot's clock
  ** are writes, and every write goes through the gate. */
  uint64_t dev = 0, ino = 0;
  if (mqi_os_file_id(path, &dev, &ino) != MQ_OK) {
    snprintf(err, sizeof err, "cannot stat %s", path);
    rc = MQ_ECANTOPEN;
  } else if (!(s->gate = mqi_gate_open(dev, ino, o.mode))) {
    snprintf(err, sizeof err, "out of memory opening %s", path);
    rc = MQ_ENOMEM;
  } else {
    s->dev = dev;
    s->ino = ino;
    uint32_t ticket = mqi_gate_enter(s->gate);
    rc = store_connect(s, err, sizeof err);
    if (rc == MQ_OK && !s->clock) rc = store_clock_init(s, err, sizeof err);
    /* Later opens (the reader, a reconnect) must reach this very file even
    ** if the process changes directory: SQLite's absolute name of it. */
    const char *full = rc == MQ_OK ? sqlite3_db_filename(s->db, "main") : NULL;
    char *copy = full && *full ? strdup(full) : NULL;
    if (copy) {
      free(s->fullpath);
      s->fullpath = copy;
    } else if (full && *full) {
      snprintf(err, sizeof err, "out of memory opening %s", path);
      rc = MQ_ENOMEM;
    }
    /* A failed open closes inside the gate, as mq_store_close does: the
    ** close may checkpoint. */
    if (rc != MQ_OK) store_disconnect(s);
    mqi_gate_leave(s->gate, ticket);
  }
  if (rc != MQ_OK) {
    if (!*err) snprintf(err, sizeof err, "%s: %s", path, mq_errstr(rc));
    store_free(s);
    return mqi_err_copy(NULL, rc, err);
  }
  if (!mqi_gate_is_shared(s->gate))
    mqi_log(s, MQ_LOG_WARN,
            "%s: no shared memory for the writer gate; waits notice other processes' "
            "puts by polling",
            path);
  *out = s;
  return MQ_OK;
}

int mq_store_close(mq_store *s) {
  if (!s) return MQ_OK;
  int rc = MQ_OK;
  if (s->fork_gen != mqi_os_fork_generation()) {
    /* A connection must not be used across fork(), and closing it is a use:
    ** it could checkpoint or unlink the WAL under the parent.  The child
    ** gives the memory back and leaves SQLite's state alone. */
    s->db = NULL;
    s->rdb = NULL;
    memset(s->stmt, 0, sizeof s->stmt);
    mqi_gate_forget(s->gate);
    s->gate = NULL;
    store_free(s);
    return MQ_EMISUSE;
  }
  for (int i = 0; i < MQI_ST_COUNT; i++) {
    sqlite3_finalize(s->stmt[i]);
    s->stmt[i] = NULL;
  }
  /* The reader first: it never checkpoints, and db is then the last. */
  if (s->rdb) sqlite3_close_v2(s->rdb);
  s->rdb = NULL;
  /* sqlite3_close checkpoints and removes the WAL when this is the last
  ** connection; if that fails the WAL is still there and still valid.  It
  ** goes through the gate like every writer, so it never checkpoints while
  ** another mq connection writes (see the WAL-reset note in durability.md). */
  uint32_t ticket = s->gate ? mqi_gate_enter(s->gate) : 0;
  if (s->db && sqlite3_close(s->db) != SQLITE_OK) {
    rc = MQ_EBUSY;
    sqlite3_close_v2(s->db);
  }
  if (s->gate) mqi_gate_leave(s->gate, ticket);
  s->db = NULL;
  store_free(s);
  return rc;
}

int mqi_store_check(mq_store *s, int writes) {
  if (!s) return mqi_err_set(NULL, MQ_EINVAL, "store is NULL");
  if (s->fork_gen != mqi_os_fork_generation())
    return mqi_err_set(s, MQ_EMISUSE,
                       "%s: this handle was opened before fork(); open a new one in the child",
                       s->path);
  if (writes && s->readonly)
    return mqi_err_set(s, MQ_EREADONLY, "%s was opened read-only", s->path);
  return MQ_OK;
}

sqlite3_stmt *mqi_store_stmt_hot(mq_store *s, enum mqi_stmt_id id) {
  if (!s->stmt[id] && sqlite3_prepare_v3(s->db, store_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                                         &s->stmt[id], NULL) != SQLITE_OK)
    return NULL;
  return s->stmt[id];
}

sqlite3_stmt *mqi_store_stmt(mq_store *s, enum mqi_stmt_id id) {
  sqlite3_stmt *st = mqi_store_stmt_hot(s, id);
  if (st) {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
  }
  return st;
}

int mqi_store_exec(mq_store *s, enum mqi_stmt_id id) {
  sqlite3_stmt *st = mqi_store_stmt(s, id);
  if (!st) return sqlite3_errcode(s->db);
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  return src == SQLITE_DONE || src == SQLITE_ROW ? SQLITE_OK : src;
}

int64_t mq_store_now(mq_store *s) { return s ? mqi_store_now(s) : 0; }

int64_t mqi_store_now(mq_store *s) {
  if (s->clock) return s->clock(s->clock_ctx);
  return mqi_os_boot_ms() + s->clock_offset;
}

uint64_t mqi_store_token(mq_store *s) {
  /* xorshift64*: fast, never zero from a non-zero state. */
  uint64_t x = s->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  s->rng = x;
  uint64_t t = (x * 0x2545F4914F6CDD1DULL) >> 1; /* fits an SQLite integer */
  return t ? t : 1;
}

int mqi_store_next_id(mq_store *s, mqi_op *op, int64_t *id) {
  if (s->id_state == 0) {
    sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_ID_GET);
    if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
    int src = sqlite3_step(st);
    int found = src == SQLITE_ROW;
    if (found) s->next_id = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    if (src != SQLITE_ROW && src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "reading ids");
    if (!found) { /* a new store: start after anything already there */
      if (!(st = mqi_store_stmt(s, MQI_ST_ID_MAX)))
        return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
      src = sqlite3_step(st);
      s->next_id = src == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 1;
      sqlite3_reset(st);
      if (src != SQLITE_ROW) return mqi_op_sqlite(s, op, src, "reading ids");
    }
    if (s->next_id < 1) s->next_id = 1;
    s->id_state = 1;
  }
  *id = s->next_id++;
  s->id_state = 2;
  return MQ_OK;
}

int mqi_store_next_ids(mq_store *s, mqi_op *op, size_t n, int64_t *first) {
  int rc = mqi_store_next_id(s, op, first);
  if (rc == MQ_OK && n > 1) s->next_id += (int64_t)n - 1;
  return rc;
}

int mqi_store_next_id_from(mq_store *s, mqi_op *op, int64_t floor, int64_t *id) {
  int rc = mqi_store_next_id(s, op, id);
  if (rc == MQ_OK && *id < floor) {
    *id = floor;
    s->next_id = floor + 1;
  }
  return rc;
}

int mqi_store_save_ids(mq_store *s) {
  if (s->id_state != 2) return SQLITE_OK;
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_ID_SET);
  if (!st) return sqlite3_errcode(s->db);
  sqlite3_bind_int64(st, 1, s->next_id);
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  return src == SQLITE_DONE ? SQLITE_OK : src;
}

/* Room for new messages: free space on the file system, plus the pages
** acked messages left free inside the file, which SQLite reuses before it
** grows the file.  -1 if the file system cannot say. */
static int64_t store_free_bytes(mq_store *s) {
  int64_t fs = mqi_os_free_bytes(s->path);
  if (fs < 0) return -1;
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_FREELIST);
  if (st && sqlite3_step(st) == SQLITE_ROW) fs += sqlite3_column_int64(st, 0);
  if (st) sqlite3_reset(st);
  return fs;
}

int mqi_store_low_space(mq_store *s) {
  if (s->min_free_bytes <= 0) return 0;
  int64_t now = mqi_os_monotonic_ms();
  if (now - s->free_checked_at >= STORE_FREE_RECHECK_MS) {
    s->free_bytes = store_free_bytes(s);
    s->free_checked_at = now;
  }
  return s->free_bytes >= 0 && s->free_bytes < s->min_free_bytes + STORE_FREE_MARGIN;
}

int mqi_store_space_ok(mq_store *s, mqi_op *op, int64_t incoming) {
  if (s->min_free_bytes <= 0) return MQ_OK;
  int64_t now = mqi_os_monotonic_ms();
  /* statvfs is read at most every STORE_FREE_RECHECK_MS while far from the
  ** floor.  In between, every put takes a pessimistic guess of what it
  ** will use (its payload in the WAL and again in the file, and the pages
  ** around it) off the figure, so the figure only falls between readings:
  ** a producer faster than the readings still meets a fresh one before it
  ** can reach the floor. */
  if (now - s->free_checked_at >= STORE_FREE_RECHECK_MS ||
      s->free_bytes < s->min_free_bytes + STORE_FREE_MARGIN) {
    s->free_bytes = store_free_bytes(s);
    s->free_checked_at = now;
  }
  if (s->free_bytes < 0) return MQ_OK; /* unknown: SQLite will tell */
  int64_t need = 2 * incoming + STORE_PUT_OVERHEAD;
  if (s->free_bytes - need < s->min_free_bytes) {
    op->flags |= MQI_OP_REFUSED;
    return mqi_op_fail(op, MQ_EFULL,
                       "%s: free space is below the floor of %lld bytes; puts are refused "
                       "so that acks and checkpoints keep working",
                       s->path, (long long)s->min_free_bytes);
  }
  s->free_bytes -= need;
  return MQ_OK;
}

int mq_store_checkpoint(mq_store *s) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if (mqi_store_reading(s))
    return mqi_err_set(s, MQ_EMISUSE, "%s: a checkpoint inside a scan or verify callback of it",
                       s->path);
  /* The handle's own reader first: a snapshot of it would make the
  ** TRUNCATE wait out the busy timeout inside the gate, holding up every
  ** writer of the file. */
  pthread_mutex_lock(&s->rdlock);
  if ((rc = mqi_store_lock(s)) != MQ_OK) {
    pthread_mutex_unlock(&s->rdlock);
    return rc;
  }
  uint32_t ticket = mqi_gate_enter(s->gate);
  int src = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
  mqi_gate_leave(s->gate, ticket);
  if (src != SQLITE_OK)
    rc = mqi_err_set(s, mqi_err_from_sqlite(src), "checkpoint of %s: %s", s->path,
                     sqlite3_errmsg(s->db));
  pthread_mutex_unlock(&s->dblock);
  pthread_mutex_unlock(&s->rdlock);
  return rc;
}
/*** end src/store.c ***/

/*** begin src/schema.c ***/
/*
** schema.c -- the on-disk format: creating it in a new file and refusing
** files that are not ours or are newer than we understand.
**
** The file is an ordinary SQLite database (doc/format.md describes it):
**
**   mq_queue  one row per queue, topic or subscription (`kind`); a
**             subscription is named "topic/sub", points at its topic with
**             `parent_id` and keeps its subject filter in `filter`.
**   mq_body   the payload, written once and never updated: leases change
**             only the small mq_msg row, never the payload's pages.  `refs`
**             counts the mq_msg rows that share it (a topic publish stores
**             one body for every subscription).
**   mq_msg    one row per message in a queue: state, lease, visibility,
**             receive count.  A small payload of a plain put lives in
**             the row itself (body_id 0, format version 2): one b-tree
**             insert and delete fewer per message.  Ready messages are found through
**             mq_msg_queue in priority-then-FIFO order; leases and delays
**             that run out are found through the small partial index
**             mq_msg_timer, which holds only hidden messages.
**   mq_dedup  deduplication keys, remembered for the queue's window even
**             after the message itself is gone.
**   mq_meta   key/value facts about the store: who created it, the clock of
**             the current boot, and `next_id`, the id sequence.
**   mq_pack   messages a PULL endpoint stored several to a row (format
**             version 3), until a transaction turns them into mq_msg rows
**             (pack.c); the pack's id is its first message's.
**
** Ids are never reused, even after the newest message is acked (SQLite
** alone would hand out max(rowid)+1 again): they come from `next_id`, read
** once per transaction and written back once at its commit, which costs a
** fraction of AUTOINCREMENT's per-row bookkeeping.  A plain put uses one id
** for its message and its body; a publish uses one for the body (the
** publish id) and one per subscription's message.  A new queue, topic or
** subscription takes one too, so a dead letter's origin_id never comes to
** name a queue created after its own was dropped.
**
** PRAGMA application_id marks the file as an mq store and PRAGMA
** user_version carries the format version.  A file is checked before
** anything is written to it: a foreign database or a newer format is
** refused untouched.
*/
/* #include "mqi.h" -- inlined above */

#include <stdio.h>
#include <string.h>

/* The payload columns of mq_msg, added by format version 2.  A version 1
** file gets them by ALTER TABLE, which appends them: a created file lists
** them last too, so the two have the same columns in the same order.  No
** constraints, which ALTER TABLE could not add to existing rows: they are
** NULL in a row whose payload is in mq_body (body_id > 0).  C(name, type)
** is applied to each, with sep between. */
#define SCHEMA_INLINE_COLUMNS(C, sep) \
  C("size", "INTEGER") sep C("crc", "INTEGER") sep C("codec", "INTEGER") sep \
  C("headers", "BLOB") sep C("data", "BLOB")
#define SCHEMA_COLUMN_DEF(name, type) " " name " " type
#define SCHEMA_COLUMN_ADD(name, type) "ALTER TABLE mq_msg ADD COLUMN " name " " type ";"
#define SCHEMA_COLUMN_NAME(name, type) "'" name "'"
#define SCHEMA_COLUMN_ONE(name, type) +1
#define SCHEMA_INLINE_N (0 SCHEMA_INLINE_COLUMNS(SCHEMA_COLUMN_ONE, ))

/* Format version 3: packs (pack.c), added to older files as they are. */
#define SCHEMA_PACK_SQL                                                          \
  "CREATE TABLE mq_pack("                                                        \
  " id INTEGER PRIMARY KEY,"                                                     \
  " queue_id INTEGER NOT NULL,"                                                  \
  " n INTEGER NOT NULL,"                                                         \
  " bytes INTEGER NOT NULL,"                                                     \
  " enqueued_at INTEGER NOT NULL,"                                               \
  " data BLOB NOT NULL);"

static const char schema_sql[] =
    "CREATE TABLE mq_meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
    "CREATE TABLE mq_queue("
    " id INTEGER PRIMARY KEY,"
    " name TEXT NOT NULL UNIQUE,"
    " kind INTEGER NOT NULL DEFAULT 0,"
    " parent_id INTEGER,"
    " filter TEXT,"
    " visibility_ms INTEGER NOT NULL,"
    " max_receives INTEGER NOT NULL,"
    " dlq_id INTEGER,"
    " retention_ms INTEGER NOT NULL,"
    " max_payload INTEGER NOT NULL,"
    " compress_above INTEGER NOT NULL,"
    " dedup_window_ms INTEGER NOT NULL,"
    " created_at INTEGER NOT NULL);"
    "CREATE INDEX mq_queue_parent ON mq_queue(parent_id) WHERE parent_id IS NOT NULL;"
    "CREATE TABLE mq_body("
    " id INTEGER PRIMARY KEY,"
    " refs INTEGER NOT NULL,"
    " size INTEGER NOT NULL,"
    " crc INTEGER NOT NULL,"
    " codec INTEGER NOT NULL,"
    " headers BLOB,"
    " subject TEXT,"
    " data BLOB NOT NULL);"
    "CREATE TABLE mq_msg("
    " id INTEGER PRIMARY KEY,"
    " queue_id INTEGER NOT NULL,"
    " body_id INTEGER NOT NULL,"
    " state INTEGER NOT NULL,"
    " priority INTEGER NOT NULL,"
    " visible_at INTEGER NOT NULL,"
    " lease INTEGER,"
    " receives INTEGER NOT NULL,"
    " enqueued_at INTEGER NOT NULL,"
    " expires_at INTEGER,"
    " origin_id INTEGER,"
    " reason TEXT,"
    SCHEMA_INLINE_COLUMNS(SCHEMA_COLUMN_DEF, ",") ");"
    "CREATE INDEX mq_msg_queue ON mq_msg(queue_id, state, priority DESC, id);"
    "CREATE INDEX mq_msg_timer ON mq_msg(queue_id, visible_at) WHERE state IN (1,2);"
    "CREATE INDEX mq_msg_expiry ON mq_msg(queue_id, expires_at) WHERE expires_at IS NOT NULL;"
    "CREATE TABLE mq_dedup("
    " queue_id INTEGER NOT NULL,"
    " key TEXT NOT NULL,"
    " msg_id INTEGER NOT NULL,"
    " expires_at INTEGER NOT NULL,"
    " PRIMARY KEY(queue_id, key)) WITHOUT ROWID;"
    "CREATE INDEX mq_dedup_expiry ON mq_dedup(expires_at);"
    SCHEMA_PACK_SQL;

static int schema_int(sqlite3 *db, const char *sql, int64_t *out, int *src) {
  sqlite3_stmt *st = NULL;
  *src = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
  if (*src != SQLITE_OK) return -1;
  *src = sqlite3_step(st);
  if (*src == SQLITE_ROW) {
    *out = sqlite3_column_int64(st, 0);
    *src = SQLITE_OK;
  } else if (*src == SQLITE_DONE) {
    *out = 0;
    *src = SQLITE_OK;
  }
  sqlite3_finalize(st);
  return *src == SQLITE_OK ? 0 : -1;
}

/* Read the identity of the file without writing to it. */
static int schema_identity(sqlite3 *db, int64_t *app, int64_t *version, int64_t *objects, char *err,
                           size_t errlen) {
  int src;
  if (schema_int(db, "PRAGMA application_id", app, &src) ||
      schema_int(db, "PRAGMA user_version", version, &src) ||
      schema_int(db, "SELECT count(*) FROM sqlite_schema", objects, &src)) {
    int rc = mqi_err_from_sqlite(src);
    if (rc == MQ_ENOTMQ || rc == MQ_ECORRUPT)
      snprintf(err, errlen, "%s: %s", sqlite3_db_filename(db, "main"),
               rc == MQ_ENOTMQ ? "not an mq store (not an SQLite database)"
                               : "the database file is damaged");
    else
      snprintf(err, errlen, "reading %s: %s", sqlite3_db_filename(db, "main"), sqlite3_errmsg(db));
    return rc == MQ_OK ? MQ_ERROR : rc;
  }
  return MQ_OK;
}

int mqi_schema_newer(const char *file, int64_t version, char *err, size_t errlen) {
  if (version <= MQI_FORMAT_VERSION) return MQ_OK;
  snprintf(err, errlen, "%s has format version %lld; this library (mq %s) reads up to version %d",
           file, (long long)version, MQ_VERSION, MQI_FORMAT_VERSION);
  return MQ_EVERSION;
}

static int schema_check(sqlite3 *db, int64_t app, int64_t version, char *err, size_t errlen) {
  const char *file = sqlite3_db_filename(db, "main");
  if (app != MQI_APPLICATION_ID) {
    snprintf(err, errlen, "%s is an SQLite database of another application (application_id %lld)",
             file, (long long)app);
    return MQ_ENOTMQ;
  }
  int rc = mqi_schema_newer(file, version, err, errlen);
  if (rc != MQ_OK) return rc;
  if (version < 1) {
    snprintf(err, errlen, "%s has an invalid mq format version %lld", file, (long long)version);
    return MQ_ECORRUPT;
  }
  return MQ_OK;
}

static int schema_fail(sqlite3 *db, int src, const char *what, char *err, size_t errlen) {
  snprintf(err, errlen, "%s %s: %s", what, sqlite3_db_filename(db, "main"), sqlite3_errmsg(db));
  return mqi_err_from_sqlite(src);
}

/* Switch to WAL mode and check that it took: SQLite answers with the mode
** now in force and reports success even when it could not switch (no
** shared memory on this file system, say).  Without WAL, mq's durability
** (it fsyncs the WAL itself) and its concurrency do not hold. */
static int schema_wal(sqlite3 *db, char *err, size_t errlen) {
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
  char mode[16] = "";
  if (src == SQLITE_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
    snprintf(mode, sizeof mode, "%s", (const char *)sqlite3_column_text(st, 0));
    src = SQLITE_OK;
  }
  sqlite3_finalize(st);
  if (src != SQLITE_OK) return schema_fail(db, src, "switching to WAL", err, errlen);
  if (sqlite3_stricmp(mode, "wal") != 0) {
    snprintf(err, errlen, "%s cannot be put in WAL mode (it stays in \"%s\" mode); mq needs WAL",
             sqlite3_db_filename(db, "main"), mode);
    return MQ_ECANTOPEN;
  }
  return MQ_OK;
}

/* Bring a version 1 or 2 file to the current format in one transaction;
** a process that gets the lock after another did it finds nothing to do.
** Existing rows are not touched: ADD COLUMN only rewrites the schema, so
** this costs the same on a file of a billion messages as on an empty one. */
static int schema_upgrade(sqlite3 *db, char *err, size_t errlen) {
  int src = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
  if (src != SQLITE_OK) return schema_fail(db, src, "locking", err, errlen);
  int64_t version = 0, have = 0, packs = 0;
  if (schema_int(db, "PRAGMA user_version", &version, &src) == 0 && version >= 1 &&
      version < MQI_FORMAT_VERSION &&
      schema_int(db,
                 "SELECT count(*) FROM pragma_table_info('mq_msg')"
                 " WHERE name IN (" SCHEMA_INLINE_COLUMNS(SCHEMA_COLUMN_NAME, ",") ")",
                 &have, &src) == 0 &&
      schema_int(db, "SELECT count(*) FROM sqlite_schema WHERE name = 'mq_pack'", &packs,
                 &src) == 0) {
    /* A version 1 file may already have the columns (set back to version
    ** 1 by hand): then only the version is missing.  Some of them is
    ** damage no upgrade can mend. */
    if (have != 0 && have != SCHEMA_INLINE_N) {
      sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
      snprintf(err, errlen, "%s: format version %lld, but mq_msg has %lld of the %d columns of version 2",
               sqlite3_db_filename(db, "main"), (long long)version, (long long)have,
               SCHEMA_INLINE_N);
      return MQ_ECORRUPT;
    }
    char sql[768];
    snprintf(sql, sizeof sql, "%s%s PRAGMA user_version=%d;",
             have ? "" : SCHEMA_INLINE_COLUMNS(SCHEMA_COLUMN_ADD, ""),
             packs ? "" : SCHEMA_PACK_SQL, MQI_FORMAT_VERSION);
    src = sqlite3_exec(db, sql, NULL, NULL, NULL);
  }
  if (src == SQLITE_OK) src = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  if (src == SQLITE_OK) return MQ_OK;
  int rc = schema_fail(db, src, "upgrading the format of", err, errlen);
  sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
  return rc;
}

int mqi_schema_open(sqlite3 *db, int readonly, int page_size, char *err, size_t errlen) {
  int64_t app, version, objects;
  int rc = schema_identity(db, &app, &version, &objects, err, errlen);
  if (rc != MQ_OK) return rc;
  if (app != 0 || objects != 0 || version != 0) {
    rc = schema_check(db, app, version, err, errlen);
    if (rc != MQ_OK) return rc;
    if (readonly) return MQ_OK;
    if ((rc = schema_wal(db, err, errlen)) != MQ_OK) return rc;
    return version < MQI_FORMAT_VERSION ? schema_upgrade(db, err, errlen) : MQ_OK;
  }
  /* An empty database: make it a store.  Another process may be doing the
  ** same right now, so the check is repeated under the write lock. */
  if (readonly) {
    snprintf(err, errlen, "%s is empty, and a read-only open cannot create a store",
             sqlite3_db_filename(db, "main"));
    return MQ_ENOTMQ;
  }
  /* The page size must be set before the first write (switching to WAL
  ** writes the header); if another process created the file meanwhile,
  ** SQLite ignores it and the file keeps that process's choice. */
  if (page_size > 0) {
    char sql[40];
    snprintf(sql, sizeof sql, "PRAGMA page_size=%d", page_size);
    int src = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (src != SQLITE_OK) return schema_fail(db, src, "setting the page size of", err, errlen);
  }
  if ((rc = schema_wal(db, err, errlen)) != MQ_OK) return rc;
  int src = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
  if (src != SQLITE_OK) return schema_fail(db, src, "locking", err, errlen);
  rc = schema_identity(db, &app, &version, &objects, err, errlen);
  if (rc == MQ_OK && (app != 0 || objects != 0 || version != 0)) {
    rc = schema_check(db, app, version, err, errlen);
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
  }
  if (rc == MQ_OK) {
    char sql[160];
    src = sqlite3_exec(db, schema_sql, NULL, NULL, NULL);
    if (src == SQLITE_OK) {
      snprintf(sql, sizeof sql,
               "PRAGMA application_id=%d; PRAGMA user_version=%d;"
               "INSERT INTO mq_meta VALUES('created_by', 'mq " MQ_VERSION "');",
               MQI_APPLICATION_ID, MQI_FORMAT_VERSION);
      src = sqlite3_exec(db, sql, NULL, NULL, NULL);
    }
    if (src == SQLITE_OK) src = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    if (src != SQLITE_OK) rc = schema_fail(db, src, "creating the schema in", err, errlen);
  }
  if (rc != MQ_OK) sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
  return rc;
}
/*** end src/schema.c ***/

/*** begin src/commit.c ***/
/*
** commit.c -- group commit: the operations of many threads in one
** transaction and one fsync.
**
** Every mutating call (put, get, ack, ...) is wrapped in an mqi_op and
** queued on the handle.  If no thread is running a batch, the caller
** becomes the leader: it takes every queued op, runs them one after the
** other inside a single BEGIN IMMEDIATE ... COMMIT, and hands each its
** result.  Ops queued meanwhile wait for the next batch, whose leader is
** one of their own threads.  Under MQ_SYNC_FULL the fsync at COMMIT is
** therefore shared by everyone who arrived while the previous one ran: the
** durable rate is no longer one fsync per message.
**
** Each op of a batch runs inside its own savepoint, so one op's failure
** rolls back only that op.  MQ_EMPTY and MQ_ESTALE are answers, not
** failures: whatever the op did before giving them (dead-lettering a
** corrupt message, say) is kept.  A batch made only of ops that can be run
** again (puts: MQI_RUN_REPEATABLE) skips the savepoints, which cost two
** statements and a copy of every page an op touches: an op that fails
** before writing leaves nothing to undo, and one that fails after is
** handled by rolling the whole batch back and running it again, guarded.
**
** Leases need no fsync (losing one in a power cut only causes a
** redelivery).  Under MQ_SYNC_FULL the connection runs at synchronous=
** NORMAL and a batch that holds a put or an ack fsyncs the WAL after its
** COMMIT (commit_sync_wal); a batch of gets, nacks and touches does not.
** WAL frames are appended in order, so the next fsync covers them too.
**
** If COMMIT itself fails with an I/O error the outcome is unknown -- the
** commit record may have reached the disk -- and every op that would have
** succeeded gets MQ_EUNKNOWN, never a definite failure.
*/
/* #include "mqi.h" -- inlined above */

#include <sched.h>
#include <stdio.h>
#include <string.h>

#define COMMIT_GATHER_YIELDS 4

int mqi_op_fail(mqi_op *op, int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(op->err, sizeof op->err, fmt, ap);
  va_end(ap);
  return rc;
}

int mqi_op_sqlite(mq_store *s, mqi_op *op, int sqlite_rc, const char *what) {
  int rc = mqi_err_from_sqlite(sqlite_rc);
  if (rc == MQ_OK) rc = MQ_ERROR;
  return mqi_op_fail(op, rc, "%s: %s: %s (SQLite code %d)", s->path, what, sqlite3_errmsg(s->db),
                     sqlite_rc);
}

/* End the open transaction without keeping anything.  If even ROLLBACK
** fails (out of memory), closing the connection is the rollback of last
** resort: reconnect at once, so no half-done batch can be committed later
** by another call on this handle. */
static void commit_rollback(mq_store *s) {
  if (sqlite3_get_autocommit(s->db)) return;
  if (mqi_store_exec(s, MQI_ST_ROLLBACK) == SQLITE_OK || sqlite3_get_autocommit(s->db)) return;
  if (mqi_store_reconnect(s) != MQ_OK) s->broken = 1;
}

/* Make the commit just written durable: fsync the WAL, as SQLite's own
** synchronous=FULL does inside COMMIT.  This is done here instead, still
** inside the writer gate, so that commits carrying only leases (gets,
** nacks, touches) need no fsync and the connection never switches
** synchronous levels -- a switch costs a statement compile each time, and
** a cached switch statement does not reliably apply (SQLite applies that
** pragma when it is compiled).  Every mq write goes through the gate, so no
** mq consumer can act on the new rows before this returns; a plain read
** (peek, stats) may see them a moment early.  An error here means the
** outcome is unknown, exactly like a failed fsync inside COMMIT. */
static int commit_sync_wal(mq_store *s) {
  sqlite3_file *wal = NULL;
  if (sqlite3_file_control(s->db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal) != SQLITE_OK ||
      !wal || !wal->pMethods)
    return SQLITE_IOERR_FSYNC; /* cannot tell that it is durable */
  int src = wal->pMethods->xSync(wal, SQLITE_SYNC_NORMAL);
  return src == SQLITE_OK ? SQLITE_OK : SQLITE_IOERR_FSYNC;
}

static int commit_is_answer(int rc) { return rc == MQ_OK || rc == MQ_EMPTY || rc == MQ_ESTALE; }

/* Fail every op of the batch that has not failed on its own. */
static void commit_fail_all(mqi_op *batch, int rc, const char *msg) {
  for (mqi_op *op = batch; op; op = op->next) {
    if (!commit_is_answer(op->rc)) continue;
    op->rc = rc;
    snprintf(op->err, sizeof op->err, "%s", msg);
  }
}

/* Inside the transaction: a newer library may have upgraded the file
** since this handle opened it, and nothing may be written in a format this
** library does not know.  MQ_OK, or the code with a message in msg. */
static int commit_format_ok(mq_store *s, char *msg, size_t cap) {
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_FORMAT);
  int src = st ? sqlite3_step(st) : sqlite3_errcode(s->db);
  int64_t format = src == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  if (st) sqlite3_reset(st);
  if (src == SQLITE_ROW) return mqi_schema_newer(s->path, format, msg, cap);
  snprintf(msg, cap, "%s: reading the format version: %s", s->path, sqlite3_errmsg(s->db));
  int rc = mqi_err_from_sqlite(src);
  return rc == MQ_OK ? MQ_ERROR : rc;
}

/* Settle a backlog of packs (a burst a PULL endpoint took, or what it left
** when it stopped) in transactions of MQI_PACK_STEP messages, outside the
** batch's: it then settles only what is left.  A failure is logged, and
** left to the batch's own settle. */
static void commit_settle_backlog(mq_store *s, uint32_t *ticket) {
  char msg[MQI_ERRMSG_MAX];
  for (int left = 1; left;) {
    if (mqi_store_exec(s, MQI_ST_BEGIN) != SQLITE_OK) return;
    /* A damaged pack settles under fresh ids (pack.c): the id sequence is
    ** read in this transaction and saved with it, as in a batch's. */
    s->id_state = 0;
    int src = SQLITE_OK;
    if (commit_format_ok(s, msg, sizeof msg) != MQ_OK || mqi_pack_settle_step(s, &left) != MQ_OK ||
        mqi_store_save_ids(s) != SQLITE_OK ||
        (src = mqi_store_exec(s, MQI_ST_COMMIT)) != SQLITE_OK) {
      commit_rollback(s);
      /* As after any failed commit: never reuse this connection's state. */
      if ((src & 0xff) == SQLITE_IOERR) s->broken = 1;
      return;
    }
    /* Other processes' writers take their turn between the transactions:
    ** a backlog of millions takes seconds, longer than their busy timeout,
    ** and a writer whose turn never comes skips the gate and then meets
    ** SQLite's lock, taken again the moment it is released. */
    if (left) {
      mqi_gate_leave(s->gate, *ticket);
      *ticket = mqi_gate_enter(s->gate);
    }
  }
}

/* Whether an op of the batch failed for want of disk space: a refusal by
** the free-space floor, before writing anything, is not caused by the rows
** a settle wrote. */
static int commit_full(const mqi_op *batch) {
  for (const mqi_op *op = batch; op; op = op->next)
    if (op->rc == MQ_EFULL && !(op->flags & MQI_OP_REFUSED)) return 1;
  return 0;
}

static void commit_batch(mq_store *s, mqi_op *batch) {
  char msg[MQI_ERRMSG_MAX];
  int n = 0, need_sync = 0, lean = 1, reads = 0, backlog = 0, backlog_done = 0;
  int settle_rc = MQ_OK; /* why packs could not be settled in this batch */
  int settled = 0;       /* this transaction settled packs */
  for (mqi_op *op = batch; op; op = op->next) {
    n++;
    if (op->how & MQI_RUN_SETTLE) reads = 1;
    need_sync |= op->how & MQI_RUN_DURABLE;
    if (!(op->how & MQI_RUN_REPEATABLE)) lean = 0;
  }
  /* Savepoints only guard the other ops from one that fails half-way. */
  if (n == 1) lean = 0;

  pthread_mutex_lock(&s->dblock);
  uint32_t ticket = mqi_gate_enter(s->gate);
again:
  if ((s->broken || !s->db) && mqi_store_reconnect(s) != MQ_OK) {
    snprintf(msg, sizeof msg,
             "%s: the store could not be reopened after an I/O error; close it and "
             "open it again",
             s->path);
    for (mqi_op *op = batch; op; op = op->next) op->rc = MQ_EIO;
    for (mqi_op *op = batch; op; op = op->next) snprintf(op->err, sizeof op->err, "%s", msg);
    goto out;
  }
  int src = mqi_store_exec(s, MQI_ST_BEGIN);

  if (src != SQLITE_OK) {
    int rc = mqi_err_from_sqlite(src);
    snprintf(msg, sizeof msg, "%s: cannot begin a transaction: %s", s->path, sqlite3_errmsg(s->db));
    for (mqi_op *op = batch; op; op = op->next) op->rc = MQ_OK;
    commit_fail_all(batch, rc == MQ_OK ? MQ_ERROR : rc, msg);
    goto out;
  }

  s->id_state = 0;
  s->qcache_valid = 0;
  /* Ops that read messages see them as rows only (pack.c). */
  s->packs_pending = 0;
  settled = 0;
  int frc = commit_format_ok(s, msg, sizeof msg);
  if (frc == MQ_OK && reads && settle_rc == MQ_OK)
    frc = mqi_pack_check(s, &backlog, msg, sizeof msg);
  if (frc != MQ_OK) {
    commit_rollback(s);
    for (mqi_op *op = batch; op; op = op->next) op->rc = MQ_OK;
    commit_fail_all(batch, frc, msg);
    goto out;
  }
  if (backlog && !backlog_done) { /* nothing written yet */
    commit_rollback(s);
    commit_settle_backlog(s, &ticket);
    backlog_done = 1;
    goto again;
  }
  int any_kept = 0, guard = n > 1 && !lean;
  for (mqi_op *op = batch; op; op = op->next) {
    op->err[0] = 0;
    op->flags = 0;
    if (op->how & MQI_RUN_SETTLE) {
      if (settle_rc == MQ_OK) {
        int redo = 0;
        settled |= s->packs_pending;
        if ((settle_rc = mqi_pack_settle_all(s, &redo)) != MQ_OK && redo) {
          /* The settle took the transaction with it (a full disk, memory):
          ** the other ops, acks among them, run again without it. */
          commit_rollback(s);
          goto again;
        }
      }
      if (settle_rc != MQ_OK) {
        op->rc = mqi_op_fail(op, settle_rc, "%s: stored packs could not be turned into rows: %s",
                             s->path, mq_errstr(settle_rc));
        continue;
      }
    }
    if (guard && (src = mqi_store_exec(s, MQI_ST_SAVEPOINT)) != SQLITE_OK) {
      op->rc = mqi_op_sqlite(s, op, src, "savepoint");
      continue;
    }
    op->rc = op->fn(s, op);
    if (!(op->how & MQI_RUN_KEEPS_QUEUES)) s->qcache_valid = 0;
    if (lean && !commit_is_answer(op->rc) &&
        ((op->flags & MQI_OP_WROTE) || sqlite3_get_autocommit(s->db))) {
      /* Half of its work may be in the transaction, with no savepoint to
      ** take it out: drop the batch's work and run it again, guarded. */
      commit_rollback(s);
      lean = 0;
      s->reruns++;
      goto again;
    }
    if (guard) {
      /* If an op's own undo fails, its half-done work is in the
      ** transaction: nothing of this batch may be kept. */
      src = commit_is_answer(op->rc) ? SQLITE_OK : mqi_store_exec(s, MQI_ST_ROLLBACK_TO);
      if (src == SQLITE_OK) src = mqi_store_exec(s, MQI_ST_RELEASE);
      if (src != SQLITE_OK) {
        int rc = mqi_err_from_sqlite(src);
        snprintf(msg, sizeof msg, "%s: cannot undo a failed operation: %s", s->path,
                 sqlite3_errmsg(s->db));
        commit_rollback(s);
        for (mqi_op *o = batch; o; o = o->next) {
          o->rc = rc == MQ_OK ? MQ_ERROR : rc;
          snprintf(o->err, sizeof o->err, "%s", msg);
        }
        goto out;
      }
    }
    if (commit_is_answer(op->rc)) any_kept = 1;
  }

  if (settled && commit_full(batch)) {
    /* The rows a settle wrote may be what filled the disk: the ops that
    ** need no settle run again without it. */
    commit_rollback(s);
    settle_rc = MQ_EFULL;
    goto again;
  }
  if (!any_kept) {
    commit_rollback(s);
    goto out;
  }
  src = mqi_store_save_ids(s);
  if (src == SQLITE_OK) src = mqi_store_exec(s, MQI_ST_COMMIT);
  if (src == SQLITE_OK && need_sync && s->sync == MQ_SYNC_FULL) src = commit_sync_wal(s);
  if (src != SQLITE_OK && settled && (src & 0xff) == SQLITE_FULL) {
    commit_rollback(s);
    settle_rc = MQ_EFULL;
    goto again;
  }
  if (src != SQLITE_OK) {
    int code = src & 0xff;
    int rc = code == SQLITE_IOERR  ? MQ_EUNKNOWN
             : code == SQLITE_FULL ? MQ_EFULL
                                   : mqi_err_from_sqlite(src);
    snprintf(msg, sizeof msg, "%s: commit failed%s: %s (SQLite code %d)", s->path,
             rc == MQ_EUNKNOWN ? "; the change may or may not be durable" : "",
             sqlite3_errmsg(s->db), src);
    commit_rollback(s);
    /* After a failed fsync the kernel may have dropped the dirty pages and
    ** reports success next time (fsyncgate): never reuse this connection's
    ** state; reopen before the next transaction. */
    if (rc == MQ_EUNKNOWN) s->broken = 1;
    commit_fail_all(batch, rc == MQ_OK ? MQ_ERROR : rc, msg);
  } else {
    int wake = 0;
    for (mqi_op *op = batch; op; op = op->next)
      if (commit_is_answer(op->rc) && (op->flags & MQI_OP_WAKE)) wake = 1;
    if (wake) mqi_gate_bump(s->gate);
    /* Near the free-space floor the WAL must not grow towards the auto-
    ** checkpoint's 4 MiB: fold it into the file and cut it back now, so
    ** gets and acks keep working in the room the floor leaves. */
    if (mqi_store_low_space(s)) {
      /* Without waiting: a reader keeping the WAL only makes this copy what
      ** it can now, instead of stalling every writer behind the gate. */
      sqlite3_busy_timeout(s->db, 0);
      sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
      sqlite3_busy_timeout(s->db, s->busy_timeout_ms);
    }
  }
out:
  mqi_gate_leave(s->gate, ticket);
  pthread_mutex_unlock(&s->dblock);
}

/* Before taking a batch, give callers that were just released by the
** previous one a moment to come back: with several busy threads, the
** first of them to return would otherwise commit alone, and the others
** in the next batch, halving what each fsync carries.  Only when the last
** batch was bigger than what is queued now, and only briefly. */
static void commit_gather(mq_store *s) {
  for (int i = 0; i < COMMIT_GATHER_YIELDS && s->queued < s->last_batch; i++) {
    pthread_mutex_unlock(&s->lock);
    sched_yield();
    pthread_mutex_lock(&s->lock);
  }
}

int mqi_commit_run(mq_store *s, mqi_op_fn fn, void *arg, int how) {
  /* A scan reading on the handle's own connection (its file was replaced
  ** under its name) holds dblock: a write from its callback would wait
  ** for it forever. */
  if (mqi_store_reading(s) == 2)
    return mqi_err_set(s, MQ_EMISUSE,
                       "%s: a write inside a scan callback while the handle reads on its own "
                       "connection (another file has taken its name)",
                       s->path);
  mqi_op op;
  op.fn = fn;
  op.arg = arg;
  op.how = how;
  op.flags = 0;
  op.rc = MQ_OK;
  op.finished = 0;
  op.lead = 0;
  op.next = NULL;
  op.err[0] = 0;
  pthread_cond_init(&op.wake, NULL);
  pthread_mutex_init(&op.wmu, NULL);

  pthread_mutex_lock(&s->lock);
  if (s->tail)
    s->tail->next = &op;
  else
    s->head = &op;
  s->tail = &op;
  s->queued++;
  if (s->leading) {
    /* Someone is committing: wait until our op is done, or until the
    ** leadership is handed to us. */
    pthread_mutex_unlock(&s->lock);
    pthread_mutex_lock(&op.wmu);
    while (!op.finished && !op.lead) pthread_cond_wait(&op.wake, &op.wmu);
    pthread_mutex_unlock(&op.wmu);
    if (!op.finished) pthread_mutex_lock(&s->lock);
  } else {
    s->leading = 1;
  }
  if (!op.finished) {
    /* We lead; our op is queued, so it is in the batch we take. */
    commit_gather(s);
    mqi_op *batch = s->head;
    s->last_batch = s->queued;
    s->head = s->tail = NULL;
    s->queued = 0;
    pthread_mutex_unlock(&s->lock);
    commit_batch(s, batch);
    /* Hand over to the oldest waiter, or step down.  The heir stays in
    ** the queue, so it cannot return before it is told to lead. */
    pthread_mutex_lock(&s->lock);
    mqi_op *heir = s->head;
    if (!heir) s->leading = 0;
    pthread_mutex_unlock(&s->lock);
    /* Wake each waiter outside the handle's lock, through its op's own:
    ** woken under s->lock, every waiter first blocked on it again while
    ** the leader went on waking the others, a second sleep and wakeup
    ** each (bench_group, 8 threads under FULL: 1.4-1.6x the puts/s). */
    for (mqi_op *o = batch, *next; o; o = next) {
      next = o->next;
      if (o == &op) continue;
      pthread_mutex_lock(&o->wmu);
      o->finished = 1;
      pthread_cond_signal(&o->wake);
      pthread_mutex_unlock(&o->wmu); /* o may be gone after this */
    }
    if (heir) {
      pthread_mutex_lock(&heir->wmu);
      heir->lead = 1;
      pthread_cond_signal(&heir->wake);
      pthread_mutex_unlock(&heir->wmu);
    }
  }
  pthread_cond_destroy(&op.wake);
  pthread_mutex_destroy(&op.wmu);
  if (op.rc != MQ_OK && op.rc != MQ_EMPTY) mqi_err_copy(s, op.rc, op.err);
  return op.rc;
}
/*** end src/commit.c ***/

/*** begin src/queue.c ***/
/*
** queue.c -- queues as objects: create, drop, purge, list, stats, and the
** lookup every operation starts with.
**
** Queue options live in the mq_queue row and are read inside the same
** transaction as the operation that uses them, so a queue dropped or
** re-created by another process is never used with stale options.  The
** lookup is one probe of a unique index; in a group commit of many puts to
** one queue the row is read once per transaction and kept in the handle
** (valid only while the ops that follow write no mq_queue row).
*/
/* #include "mqi.h" -- inlined above */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mq_queue_options_init(mq_queue_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->visibility_ms = 30000;
  o->max_payload = 1024 * 1024;
  o->dedup_window_ms = 300000;
}

static void queue_row(sqlite3_stmt *st, mqi_queue *q) {
  q->id = sqlite3_column_int64(st, 0);
  q->kind = sqlite3_column_int(st, 1);
  q->visibility_ms = sqlite3_column_int64(st, 2);
  q->max_receives = sqlite3_column_int(st, 3);
  q->dlq_id = sqlite3_column_int64(st, 4);
  q->retention_ms = sqlite3_column_int64(st, 5);
  q->max_payload = sqlite3_column_int64(st, 6);
  q->compress_above = sqlite3_column_int64(st, 7);
  q->dedup_window_ms = sqlite3_column_int64(st, 8);
}

int mqi_queue_by_id(mq_store *s, mqi_op *op, int64_t id, mqi_queue *q) {
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_QUEUE_BY_ID);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing a queue lookup");
  sqlite3_bind_int64(st, 1, id);
  int src = sqlite3_step(st);
  if (src == SQLITE_ROW) queue_row(st, q);
  sqlite3_reset(st);
  if (src == SQLITE_ROW) return MQ_OK;
  return src == SQLITE_DONE ? MQ_ENOTFOUND : mqi_op_sqlite(s, op, src, "looking up a queue");
}

int mqi_queue_find(mq_store *s, mqi_op *op, const char *name, mqi_queue *q) {
  int cache = (op->how & MQI_RUN_KEEPS_QUEUES) != 0;
  if (cache && s->qcache_valid && strcmp(s->qcache_name, name) == 0) {
    *q = s->qcache;
    return MQ_OK;
  }
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_QUEUE_BY_NAME);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing a queue lookup");
  sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
  int src = sqlite3_step(st);
  if (src == SQLITE_ROW) {
    queue_row(st, q);
    sqlite3_reset(st);
    size_t len = strlen(name);
    if (cache && len < sizeof s->qcache_name) {
      memcpy(s->qcache_name, name, len + 1);
      s->qcache = *q;
      s->qcache_valid = 1;
    }
    return MQ_OK;
  }
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "looking up a queue");
  return mqi_op_fail(op, MQ_ENOTFOUND, "%s: no queue named \"%s\"", s->path, name);
}

int mqi_queue_check_dlq(mq_store *s, mqi_op *op, const char *name, int max_receives,
                        const mqi_queue *dlq) {
  /* Dead letters keep their receive count, so a dlq that allows no more
  ** deliveries than its source would dead-letter them again at once. */
  if (max_receives > 0 && dlq->max_receives > 0 && dlq->max_receives <= max_receives)
    return mqi_op_fail(op, MQ_EINVAL,
                       "%s: \"%s\": its dead-letter queue allows %d receives, and dead letters "
                       "arrive with the %d they already had; give the dlq max_receives 0 or more "
                       "than %d",
                       s->path, name, dlq->max_receives, max_receives, max_receives);
  return MQ_OK;
}

int mqi_queue_find_holder(mq_store *s, mqi_op *op, const char *name, mqi_queue *q) {
  int rc = mqi_queue_find(s, op, name, q);
  if (rc == MQ_OK && q->kind == MQI_KIND_TOPIC)
    return mqi_op_fail(op, MQ_EINVAL,
                       "%s: \"%s\" is a topic; its messages are in its subscriptions, "
                       "\"%s/SUB\"",
                       s->path, name, name);
  return rc;
}

/* Run one statement with up to three int64 bindings inside an op. */
static int queue_exec(mq_store *s, mqi_op *op, const char *sql, int n, int64_t a, int64_t b,
                      int64_t c, int64_t *changes) {
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
  if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "preparing");
  if (n > 0) sqlite3_bind_int64(st, 1, a);
  if (n > 1) sqlite3_bind_int64(st, 2, b);
  if (n > 2) sqlite3_bind_int64(st, 3, c);
  while ((src = sqlite3_step(st)) == SQLITE_ROW) {
  }
  sqlite3_finalize(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "updating");
  if (changes) *changes = sqlite3_changes64(s->db);
  return MQ_OK;
}

/* ---- create -------------------------------------------------------------- */

int mqi_queue_new_id(mq_store *s, mqi_op *op, int64_t *id) {
  /* Never an id a dropped queue had: dead letters remember the queue they
  ** came from (mq_msg.origin_id), and a redrive must not send them to a
  ** newer queue that SQLite's max(rowid) + 1 would give the same id.  So
  ** the id comes from the store's id sequence, which is never reused; and
  ** above every queue's, as libraries before 0.2.1 used max(rowid) + 1. */
  sqlite3_stmt *st = NULL;
  int64_t floor = 1;
  int src = sqlite3_prepare_v2(s->db, "SELECT coalesce(max(id), 0) + 1 FROM mq_queue", -1, &st,
                               NULL);
  if (src == SQLITE_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
    floor = sqlite3_column_int64(st, 0);
    src = SQLITE_OK;
  }
  sqlite3_finalize(st);
  if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "choosing a queue id");
  return mqi_store_next_id_from(s, op, floor, id);
}

typedef struct queue_create_arg {
  const char *name;
  int kind;
  mq_queue_options o;
} queue_create_arg;

static int queue_create_op(mq_store *s, mqi_op *op) {
  queue_create_arg *a = op->arg;
  mqi_queue dlq = {0}, old;
  int rc;
  if (a->o.dlq) {
    rc = mqi_queue_find(s, op, a->o.dlq, &dlq);
    if (rc == MQ_ENOTFOUND)
      return mqi_op_fail(op, MQ_EINVAL, "%s: dead-letter queue \"%s\" does not exist", s->path,
                         a->o.dlq);
    if (rc != MQ_OK) return rc;
    if (dlq.kind != MQI_KIND_QUEUE)
      return mqi_op_fail(op, MQ_EINVAL, "%s: dead-letter queue \"%s\" is a topic, not a queue",
                         s->path, a->o.dlq);
    if ((rc = mqi_queue_check_dlq(s, op, a->name, a->o.max_receives, &dlq)) != MQ_OK) return rc;
  }
  rc = mqi_queue_find(s, op, a->name, &old);
  if (rc == MQ_OK) {
    if (old.kind != a->kind)
      return mqi_op_fail(op, MQ_EEXIST, "%s: \"%s\" exists as a %s", s->path, a->name,
                         old.kind == MQI_KIND_TOPIC   ? "topic"
                         : old.kind == MQI_KIND_QUEUE ? "queue"
                                                      : "subscription");
    if (old.visibility_ms == a->o.visibility_ms && old.max_receives == a->o.max_receives &&
        old.dlq_id == dlq.id && old.retention_ms == a->o.retention_ms &&
        old.max_payload == (int64_t)a->o.max_payload &&
        old.compress_above == (int64_t)a->o.compress_above &&
        old.dedup_window_ms == a->o.dedup_window_ms)
      return MQ_OK;
    return mqi_op_fail(op, MQ_EEXIST, "%s: queue \"%s\" exists with other options", s->path,
                       a->name);
  }
  if (rc != MQ_ENOTFOUND) return rc;
  op->err[0] = 0;
  int64_t id;
  if ((rc = mqi_queue_new_id(s, op, &id)) != MQ_OK) return rc;
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(
      s->db,
      "INSERT INTO mq_queue(name, kind, visibility_ms, max_receives, dlq_id, retention_ms,"
      " max_payload, compress_above, dedup_window_ms, created_at, id)"
      " VALUES(?1, ?10, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?11)",
      -1, &st, NULL);
  if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "preparing queue creation");
  sqlite3_bind_text(st, 1, a->name, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, a->o.visibility_ms);
  sqlite3_bind_int(st, 3, a->o.max_receives);
  if (dlq.id)
    sqlite3_bind_int64(st, 4, dlq.id);
  else
    sqlite3_bind_null(st, 4);
  sqlite3_bind_int64(st, 5, a->o.retention_ms);
  sqlite3_bind_int64(st, 6, (int64_t)a->o.max_payload);
  sqlite3_bind_int64(st, 7, (int64_t)a->o.compress_above);
  sqlite3_bind_int64(st, 8, a->o.dedup_window_ms);
  sqlite3_bind_int64(st, 9, mqi_store_now(s));
  sqlite3_bind_int(st, 10, a->kind);
  sqlite3_bind_int64(st, 11, id);
  src = sqlite3_step(st);
  sqlite3_finalize(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "creating a queue");
  return MQ_OK;
}

int mqi_queue_create(mq_store *s, const char *name, int kind, const mq_queue_options *opts) {
  queue_create_arg a;
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_name(s, kind == MQI_KIND_TOPIC ? "topic" : "queue", name)) != MQ_OK)
    return rc;
  mq_queue_options_init(&a.o);
  if (opts) {
    if (opts->size < offsetof(mq_queue_options, dedup_window_ms) || opts->size > sizeof a.o)
      return mqi_err_set(s, MQ_EINVAL,
                         "mq_queue_options.size is %zu: call mq_queue_options_init first",
                         opts->size);
    memcpy(&a.o, opts, opts->size);
  }
  a.name = name;
  a.kind = kind;
  if (a.o.visibility_ms < 1)
    return mqi_err_set(s, MQ_EINVAL,
                       "queue \"%s\": visibility_ms must be at least 1 (a lease of 0 ms "
                       "would end as it starts)",
                       name);
  if (a.o.max_receives < 0)
    return mqi_err_set(s, MQ_EINVAL, "queue \"%s\": max_receives is negative", name);
  if (a.o.retention_ms < 0)
    return mqi_err_set(s, MQ_EINVAL, "queue \"%s\": retention_ms is negative", name);
  if (a.o.dedup_window_ms < 0)
    return mqi_err_set(s, MQ_EINVAL, "queue \"%s\": dedup_window_ms is negative", name);
  if (a.o.max_payload == 0 || a.o.max_payload > MQ_PAYLOAD_LIMIT)
    return mqi_err_set(s, MQ_EINVAL, "queue \"%s\": max_payload %zu is not in 1..%zu", name,
                       a.o.max_payload, MQ_PAYLOAD_LIMIT);
  if (a.o.dlq) {
    if ((rc = mqi_err_check_name(s, "dead-letter queue", a.o.dlq)) != MQ_OK) return rc;
    if (strcmp(a.o.dlq, name) == 0)
      return mqi_err_set(s, MQ_EINVAL, "queue \"%s\" cannot be its own dead-letter queue", name);
  }
  return mqi_commit_run(s, queue_create_op, &a, MQI_RUN_DURABLE);
}

int mq_queue_create(mq_store *s, const char *name, const mq_queue_options *opts) {
  return mqi_queue_create(s, name, MQI_KIND_QUEUE, opts);
}

/* ---- drop and purge -------------------------------------------------------- */

typedef struct queue_purge_arg {
  const char *name;
  int drop;
  int64_t deleted;
} queue_purge_arg;

static int queue_purge_op(mq_store *s, mqi_op *op) {
  queue_purge_arg *a = op->arg;
  mqi_queue q;
  int rc = mqi_queue_find(s, op, a->name, &q);
  if (rc != MQ_OK) return rc;
  if (a->drop && q.kind != MQI_KIND_QUEUE)
    return mqi_op_fail(op, MQ_EINVAL, "%s: \"%s\" is a %s; drop it with mq_%s_drop", s->path,
                       a->name, q.kind == MQI_KIND_TOPIC ? "topic" : "subscription",
                       q.kind == MQI_KIND_TOPIC ? "topic" : "subscription");
  if (q.kind == MQI_KIND_TOPIC) return mqi_queue_find_holder(s, op, a->name, &q);
  return mqi_queue_clear(s, op, q.id, a->name, a->drop, &a->deleted);
}

int mqi_queue_clear(mq_store *s, mqi_op *op, int64_t qid, const char *name, int drop,
                    int64_t *deleted) {
  int rc;
  mqi_queue q;
  q.id = qid;
  if (drop) {
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(s->db, "SELECT name FROM mq_queue WHERE dlq_id=?1 LIMIT 1", -1,
                                 &st, NULL);
    if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "preparing");
    sqlite3_bind_int64(st, 1, q.id);
    src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
      rc = mqi_op_fail(op, MQ_EINVAL,
                       "%s: queue \"%s\" is the dead-letter queue of \"%s\"; drop that first",
                       s->path, name, (const char *)sqlite3_column_text(st, 0));
      sqlite3_finalize(st);
      return rc;
    }
    sqlite3_finalize(st);
    if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "checking dead-letter users");
  }
  /* Bodies first, while the messages still say which bodies are theirs:
  ** a shared body loses one reference per message, an unshared one goes.
  ** Set-based through the queue's index: no scan of other queues. */
  rc = queue_exec(s, op,
                  "UPDATE mq_body SET refs = refs - x.n FROM"
                  " (SELECT body_id, count(*) AS n FROM mq_msg WHERE queue_id = ?1"
                  "  GROUP BY body_id) AS x WHERE mq_body.id = x.body_id",
                  1, q.id, 0, 0, NULL);
  if (rc == MQ_OK)
    rc = queue_exec(s, op,
                    "DELETE FROM mq_body WHERE refs <= 0 AND id IN"
                    " (SELECT body_id FROM mq_msg WHERE queue_id = ?1)",
                    1, q.id, 0, 0, NULL);
  if (rc == MQ_OK)
    rc = queue_exec(s, op, "DELETE FROM mq_msg WHERE queue_id = ?1", 1, q.id, 0, 0, deleted);
  /* Packs a failed settle left (pack.c), lest they settle after the purge. */
  if (rc == MQ_OK) rc = mqi_pack_clear(s, op, q.id, deleted);
  if (rc == MQ_OK && drop) {
    rc = queue_exec(s, op, "DELETE FROM mq_dedup WHERE queue_id = ?1", 1, q.id, 0, 0, NULL);
    if (rc == MQ_OK)
      rc = queue_exec(s, op, "DELETE FROM mq_queue WHERE id = ?1", 1, q.id, 0, 0, NULL);
  }
  return rc;
}

int mq_queue_drop(mq_store *s, const char *name) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_name(s, "queue", name)) != MQ_OK) return rc;
  queue_purge_arg a = {name, 1, 0};
  return mqi_commit_run(s, queue_purge_op, &a, MQI_RUN_DURABLE);
}

int mq_queue_purge(mq_store *s, const char *name, int64_t *deleted) {
  if (deleted) *deleted = 0;
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, name)) != MQ_OK) return rc;
  queue_purge_arg a = {name, 0, 0};
  rc = mqi_commit_run(s, queue_purge_op, &a, MQI_RUN_DURABLE);
  if (rc == MQ_OK && deleted) *deleted = a.deleted;
  return rc;
}

/* ---- list and stats (reads: no transaction of ours, no gate) --------------- */

void mq_list_free(char **names, size_t count) {
  if (!names) return;
  for (size_t i = 0; i < count; i++) free(names[i]);
  free(names);
}

int mqi_queue_names(mq_store *s, const char *sql, const char *bind, size_t skip, char ***names,
                    size_t *count, int *rows) {
  char **v = NULL;
  size_t n = 0, cap = 0;
  sqlite3_stmt *st = NULL;
  *rows = 0;
  sqlite3 *db;
  int rc = mqi_store_read(s, &db);
  if (rc != MQ_OK) return rc;
  int src = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
  if (src == SQLITE_OK && bind) sqlite3_bind_text(st, 1, bind, -1, SQLITE_STATIC);
  if (src == SQLITE_OK) {
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
      (*rows)++;
      const char *name = (const char *)sqlite3_column_text(st, 1);
      if (!name) continue; /* a row that only says its parent exists */
      if (n == cap) {
        size_t ncap = cap ? cap * 2 : 16;
        char **nv = realloc(v, ncap * sizeof *nv);
        if (!nv) {
          rc = MQ_ENOMEM;
          break;
        }
        v = nv;
        cap = ncap;
      }
      if (!(v[n] = strdup(name + skip))) {
        rc = MQ_ENOMEM;
        break;
      }
      n++;
    }
  }
  if (rc == MQ_ENOMEM)
    mqi_err_set(s, rc, "out of memory listing names");
  else if (src != SQLITE_DONE)
    rc = mqi_err_set(s, mqi_err_from_sqlite(src), "%s: listing: %s", s->path, sqlite3_errmsg(db));
  sqlite3_finalize(st);
  mqi_store_read_done(s, src);
  if (rc != MQ_OK) {
    mq_list_free(v, n);
    return rc;
  }
  *names = v;
  *count = n;
  return MQ_OK;
}

int mq_queue_list(mq_store *s, char ***names, size_t *count) {
  if (names) *names = NULL;
  if (count) *count = 0;
  int rc = mqi_store_check(s, 0);
  if (rc != MQ_OK) return rc;
  if (!names || !count) return mqi_err_set(s, MQ_EINVAL, "mq_queue_list: NULL output pointer");
  int rows;
  return mqi_queue_names(s, "SELECT id, name FROM mq_queue WHERE kind = 0 ORDER BY name", NULL, 0,
                         names, count, &rows);
}

/* Hidden messages whose time has come count as ready, and expired ones as
** gone, exactly as the next get would see them; a visible message that has
** used up max_receives counts as dead, as that get dead-letters it. */
#define QUEUE_STATS_SQL(P)                                                                      \
  "SELECT q.kind,"                                                                              \
  " sum(" MQI_SQL_DUE " AND NOT " MQI_SQL_SPENT "),"                                            \
  " sum(m.state = 1 AND m.visible_at > ?2),"                                                    \
  " sum(m.state = 2 AND m.visible_at > ?2),"                                                    \
  " sum(m.state = 3 OR (" MQI_SQL_DUE " AND " MQI_SQL_SPENT ")), count(m.id), min(m.enqueued_at)," \
  " sum(" P("size") ")"                                                                         \
  " FROM mq_queue q LEFT JOIN mq_msg m ON m.queue_id = q.id"                                    \
  "  AND " MQI_SQL_LIVE                                                                         \
  " LEFT JOIN mq_body b ON b.id = m.body_id"                                                    \
  " WHERE q.name = ?1 GROUP BY q.id"

/* Messages still in packs (pack.c), which reads do not settle: ready,
** unless past the retention.  A pack holds 1..256 messages of at most
** MQ_PAYLOAD_LIMIT bytes: damaged counts are bounded so, not summed into
** an overflow. */
#define QUEUE_PACK_STATS_SQL                                                  \
  "SELECT coalesce(sum(min(max(p.n, 1), 256)), 0), min(p.enqueued_at),"       \
  " coalesce(sum(min(max(p.bytes, 0), 68719476736)), 0)"                      \
  " FROM mq_pack p JOIN mq_queue q ON q.id = p.queue_id WHERE q.name = ?1"    \
  " AND (q.retention_ms <= 0 OR q.retention_ms > ?2 - p.enqueued_at)"

static int queue_pack_stats(sqlite3 *db, const char *name, int64_t now, mq_queue_stats *out) {
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(db, QUEUE_PACK_STATS_SQL, -1, &st, NULL);
  if (src == SQLITE_OK) {
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    src = sqlite3_step(st);
  }
  if (src == SQLITE_ROW) {
    int64_t n = sqlite3_column_int64(st, 0);
    out->ready += n;
    out->total += n;
    out->bytes += sqlite3_column_int64(st, 2);
    if (n && sqlite3_column_type(st, 1) != SQLITE_NULL) {
      int64_t age = now - sqlite3_column_int64(st, 1);
      if (age > out->oldest_age_ms) out->oldest_age_ms = age;
    }
    src = SQLITE_OK;
  }
  sqlite3_finalize(st);
  return src;
}

int mq_queue_stats_get(mq_store *s, const char *name, mq_queue_stats *out) {
  if (out) memset(out, 0, sizeof *out);
  int rc = mqi_store_check(s, 0);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, name)) != MQ_OK) return rc;
  if (!out) return mqi_err_set(s, MQ_EINVAL, "mq_queue_stats_get: out is NULL");
  sqlite3 *db;
  if ((rc = mqi_store_read(s, &db)) != MQ_OK) return rc;
  int64_t now = mqi_store_now(s);
  sqlite3_stmt *st = NULL;
  int format;
  int src = mqi_store_snapshot(db, &format);
  if (src == SQLITE_OK) rc = mqi_store_format_ok(s, format);
  if (src == SQLITE_OK && rc == MQ_OK)
    src = sqlite3_prepare_v2(
        db, format < 2 ? QUEUE_STATS_SQL(MQI_PAYLOAD_V1) : QUEUE_STATS_SQL(MQI_PAYLOAD_V2), -1,
        &st, NULL);
  if (src == SQLITE_OK && rc == MQ_OK) {
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    src = sqlite3_step(st);
  }
  if (rc != MQ_OK) {
    /* the message is set */
  } else if (src == SQLITE_ROW && sqlite3_column_int(st, 0) == MQI_KIND_TOPIC) {
    rc = mqi_err_set(s, MQ_EINVAL,
                     "%s: \"%s\" is a topic: see mq_topic_stats_get, or the stats of "
                     "\"%s/SUB\"",
                     s->path, name, name);
  } else if (src == SQLITE_ROW) {
    out->ready = sqlite3_column_int64(st, 1);
    out->inflight = sqlite3_column_int64(st, 2);
    out->delayed = sqlite3_column_int64(st, 3);
    out->dead = sqlite3_column_int64(st, 4);
    out->total = sqlite3_column_int64(st, 5);
    if (sqlite3_column_type(st, 6) != SQLITE_NULL) {
      int64_t age = now - sqlite3_column_int64(st, 6);
      out->oldest_age_ms = age > 0 ? age : 0;
    }
    out->bytes = sqlite3_column_int64(st, 7);
    if (format >= 3 && (src = queue_pack_stats(db, name, now, out)) != SQLITE_OK)
      rc = mqi_err_set(s, mqi_err_from_sqlite(src), "%s: reading stats of \"%s\": %s", s->path,
                       name, sqlite3_errmsg(db));
  } else if (src == SQLITE_DONE) {
    rc = mqi_err_set(s, MQ_ENOTFOUND, "%s: no queue named \"%s\"", s->path, name);
  } else {
    rc = mqi_err_set(s, mqi_err_from_sqlite(src), "%s: reading stats of \"%s\": %s", s->path, name,
                     sqlite3_errmsg(db));
  }
  sqlite3_finalize(st);
  mqi_store_read_done(s, src);
  return rc;
}

int mq_queue_info_get(mq_store *s, const char *name, mq_queue_info *out) {
  if (out) memset(out, 0, sizeof *out);
  int rc = mqi_store_check(s, 0);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, name)) != MQ_OK) return rc;
  if (!out) return mqi_err_set(s, MQ_EINVAL, "mq_queue_info_get: out is NULL");
  sqlite3 *db;
  if ((rc = mqi_store_read(s, &db)) != MQ_OK) return rc;
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(
      db,
      "SELECT q.kind, q.visibility_ms, q.max_receives, coalesce(d.name, ''), q.retention_ms,"
      " q.max_payload, q.compress_above, q.dedup_window_ms, coalesce(q.filter, ''),"
      " q.created_at FROM mq_queue q LEFT JOIN mq_queue d ON d.id = q.dlq_id WHERE q.name = ?1",
      -1, &st, NULL);
  if (src == SQLITE_OK) {
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    src = sqlite3_step(st);
  }
  if (src == SQLITE_ROW) {
    out->kind = sqlite3_column_int(st, 0);
    out->visibility_ms = sqlite3_column_int64(st, 1);
    out->max_receives = sqlite3_column_int(st, 2);
    snprintf(out->dlq, sizeof out->dlq, "%s", (const char *)sqlite3_column_text(st, 3));
    out->retention_ms = sqlite3_column_int64(st, 4);
    out->max_payload = (size_t)sqlite3_column_int64(st, 5);
    out->compress_above = (size_t)sqlite3_column_int64(st, 6);
    out->dedup_window_ms = sqlite3_column_int64(st, 7);
    snprintf(out->filter, sizeof out->filter, "%s", (const char *)sqlite3_column_text(st, 8));
    out->created_at = sqlite3_column_int64(st, 9);
  } else if (src == SQLITE_DONE) {
    rc = mqi_err_set(s, MQ_ENOTFOUND, "%s: no queue named \"%s\"", s->path, name);
  } else {
    rc = mqi_err_set(s, mqi_err_from_sqlite(src), "%s: reading \"%s\": %s", s->path, name,
                     sqlite3_errmsg(db));
  }
  sqlite3_finalize(st);
  mqi_store_read_done(s, src);
  return rc;
}
/*** end src/queue.c ***/

/*** begin src/put.c ***/
/*
** put.c -- putting messages: validation, checksums, compression,
** deduplication, and the rows a put writes.
**
** Everything that needs no database -- argument checks, the CRC32 of the
** payload, encoding headers -- is done by the calling thread before its op
** is queued, so the leader of a group commit spends its time only on what
** must be serialised.  A put writes one mq_msg row (the delivery state)
** and, when the payload is larger than s->inline_max, one mq_body row (the
** payload, never touched again); a smaller one goes in the mq_msg row.
**
** A batch is one op: all its messages are stored or none, and a bad entry
** fails the batch with that entry's error.  Its messages go in by
** MQI_PUT_ROWS at a time, one multi-row INSERT per table, which nearly
** doubles what one thread can store (each statement run has a fixed
** price), whenever the next MQI_PUT_ROWS entries have no dedup key; the
** others go one by one.
*/
/* #include "mqi.h" -- inlined above */

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define PUT_SWEEP_EVERY 1024 /* keyed puts between sweeps of old dedup keys */

void mq_put_options_init(mq_put_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
}

typedef struct put_arg {
  const char *queue;
  mqi_put_item *items;
  size_t n;
  int64_t *ids;
} put_arg;

int mqi_put_prepare(mq_store *s, mqi_put_item *it, size_t index, const void *data, size_t len,
                    const mq_put_options *opts) {
  mq_put_options_init(&it->o);
  it->data = data;
  it->len = len;
  it->headers = NULL;
  it->headers_len = 0;
  it->subject = NULL;
  if (!data && len)
    return mqi_err_set(s, MQ_EINVAL, "entry %zu: data is NULL but len is %zu", index, len);
  if (len > MQ_PAYLOAD_LIMIT)
    return mqi_err_set(s, MQ_ETOOBIG, "entry %zu: payload of %zu bytes is above the limit of %zu",
                       index, len, MQ_PAYLOAD_LIMIT);
  if (opts) {
    if (opts->size < offsetof(mq_put_options, n_headers) || opts->size > sizeof it->o)
      return mqi_err_set(s, MQ_EINVAL,
                         "entry %zu: mq_put_options.size is %zu: call mq_put_options_init first",
                         index, opts->size);
    memcpy(&it->o, opts, opts->size);
  }
  if (it->o.delay_ms < 0)
    return mqi_err_set(s, MQ_EINVAL, "entry %zu: delay_ms is negative", index);
  if (it->o.ttl_ms < 0) return mqi_err_set(s, MQ_EINVAL, "entry %zu: ttl_ms is negative", index);
  if (it->o.dedup_key) {
    size_t k = strlen(it->o.dedup_key);
    if (k == 0 || k > MQ_NAME_MAX)
      return mqi_err_set(s, MQ_EINVAL, "entry %zu: dedup_key must be 1..%d bytes", index,
                         MQ_NAME_MAX);
  }
  if (it->o.n_headers && !it->o.headers)
    return mqi_err_set(s, MQ_EINVAL, "entry %zu: n_headers is %zu but headers is NULL", index,
                       it->o.n_headers);
  int rc = mqi_headers_encode(it->o.headers, it->o.n_headers, &it->headers, &it->headers_len);
  if (rc != MQ_OK)
    return mqi_err_set(s, rc, "entry %zu: %s", index,
                       rc == MQ_ENOMEM ? "out of memory"
                                       : "a header name is NULL, empty or "
                                         "longer than 255 bytes, or a value is NULL");
  it->crc = mqi_crc32(data, len);
  return MQ_OK;
}

int mqi_put_dedup_find(mq_store *s, mqi_op *op, const mqi_queue *q, const mqi_put_item *it,
                       int64_t now, int64_t *id) {
  *id = 0;
  if (!it->o.dedup_key) return MQ_OK;
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_DEDUP_GET);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, q->id);
  sqlite3_bind_text(st, 2, it->o.dedup_key, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, now);
  int src = sqlite3_step(st);
  if (src == SQLITE_ROW) *id = sqlite3_column_int64(st, 0);
  sqlite3_reset(st);
  if (src != SQLITE_DONE && src != SQLITE_ROW)
    return mqi_op_sqlite(s, op, src, "reading a dedup key");
  return MQ_OK;
}

int mqi_put_dedup_store(mq_store *s, mqi_op *op, const mqi_queue *q, const mqi_put_item *it,
                        int64_t now, int64_t id) {
  if (!it->o.dedup_key) return MQ_OK;
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_DEDUP_PUT);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, q->id);
  sqlite3_bind_text(st, 2, it->o.dedup_key, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, id);
  sqlite3_bind_int64(st, 4, mqi_time_add(now, q->dedup_window_ms));
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "storing a dedup key");
  s->puts_since_sweep++;
  return MQ_OK;
}

/* A payload as it is stored: compressed only when that pays. */
typedef struct put_enc {
  const void *data;
  size_t len;
  int codec;
  unsigned char *z; /* the compressed copy, owned, or NULL */
} put_enc;

static int put_encode(mq_store *s, mqi_op *op, const mqi_queue *q, const mqi_put_item *it,
                      size_t index, put_enc *e) {
  e->data = it->data ? it->data : "";
  e->len = it->len;
  e->codec = MQI_CODEC_RAW;
  e->z = NULL;
  if ((int64_t)it->len > q->max_payload)
    return mqi_op_fail(op, MQ_ETOOBIG,
                       "%s: entry %zu: payload of %zu bytes is above the "
                       "max_payload of %lld",
                       s->path, index, it->len, (long long)q->max_payload);
  if (q->compress_above > 0 && (int64_t)it->len > q->compress_above) {
    uLongf zlen = compressBound((uLong)it->len);
    if ((e->z = malloc(zlen)) == NULL)
      return mqi_op_fail(op, MQ_ENOMEM, "out of memory compressing");
    if (compress2(e->z, &zlen, (const Bytef *)it->data, (uLong)it->len, Z_BEST_SPEED) == Z_OK &&
        zlen < it->len) {
      e->data = e->z;
      e->len = zlen;
      e->codec = MQI_CODEC_ZLIB;
    }
  }
  return MQ_OK;
}

/* Parameters per row of the INSERTs into mq_body and mq_msg (store.c). */
#define PUT_BODY_PARAMS 8
#define PUT_MSG_PARAMS 13

/* Whether the encoded payload goes in the message row (schema.c). */
static int put_inline(const mq_store *s, const mqi_put_item *it, const put_enc *e) {
  return (int64_t)(e->len + it->headers_len) <= s->inline_max;
}

static void put_bind_headers(sqlite3_stmt *st, int i, const mqi_put_item *it) {
  if (it->headers)
    sqlite3_bind_blob(st, i, it->headers, (int)it->headers_len, SQLITE_STATIC);
  else
    sqlite3_bind_null(st, i);
}

/* Bind one mq_body row from parameter o + 1 on (o is 0 for the single-row
** statement, PUT_BODY_PARAMS * row for the multi-row one).  Every
** parameter is bound, so the statements need no sqlite3_clear_bindings
** (mqi_store_stmt_hot). */
static void put_bind_body(sqlite3_stmt *st, int o, const mqi_put_item *it, const put_enc *e,
                          int refs, int64_t body_id) {
  sqlite3_bind_int(st, o + 1, refs);
  sqlite3_bind_int64(st, o + 2, (int64_t)it->len);
  sqlite3_bind_int64(st, o + 3, (int64_t)it->crc);
  sqlite3_bind_int(st, o + 4, e->codec);
  put_bind_headers(st, o + 5, it);
  sqlite3_bind_blob64(st, o + 6, e->data, e->len, SQLITE_STATIC);
  if (it->subject)
    sqlite3_bind_text(st, o + 7, it->subject, -1, SQLITE_STATIC);
  else
    sqlite3_bind_null(st, o + 7);
  sqlite3_bind_int64(st, o + 8, body_id);
}

/* Bind one mq_msg row from parameter o + 1 on, as put_bind_body; with its
** payload (e) when body_id is 0. */
static void put_bind_msg(sqlite3_stmt *st, int o, const mqi_queue *q, int64_t retention_ms,
                         int64_t body_id, const mqi_put_item *it, const put_enc *e, int64_t now,
                         int64_t id) {
  int64_t expires = 0;
  if (it->o.ttl_ms > 0) expires = mqi_time_add(now, it->o.ttl_ms);
  if (q->retention_ms > 0 && (!expires || mqi_time_add(now, q->retention_ms) < expires))
    expires = mqi_time_add(now, q->retention_ms);
  if (retention_ms > 0 && (!expires || mqi_time_add(now, retention_ms) < expires))
    expires = mqi_time_add(now, retention_ms);
  sqlite3_bind_int64(st, o + 1, q->id);
  sqlite3_bind_int64(st, o + 2, body_id);
  sqlite3_bind_int(st, o + 3, it->o.delay_ms > 0 ? MQI_DELAYED : MQI_READY);
  sqlite3_bind_int(st, o + 4, it->o.priority);
  sqlite3_bind_int64(st, o + 5, mqi_time_add(now, it->o.delay_ms));
  sqlite3_bind_int64(st, o + 6, now);
  if (expires)
    sqlite3_bind_int64(st, o + 7, expires);
  else
    sqlite3_bind_null(st, o + 7);
  sqlite3_bind_int64(st, o + 8, id);
  if (body_id) {
    for (int i = 9; i <= PUT_MSG_PARAMS; i++) sqlite3_bind_null(st, o + i);
    return;
  }
  sqlite3_bind_int64(st, o + 9, (int64_t)it->len);
  sqlite3_bind_int64(st, o + 10, (int64_t)it->crc);
  sqlite3_bind_int(st, o + 11, e->codec);
  put_bind_headers(st, o + 12, it);
  sqlite3_bind_blob64(st, o + 13, e->data, e->len, SQLITE_STATIC);
}

static int put_body_row(mq_store *s, mqi_op *op, const mqi_put_item *it, const put_enc *e,
                        int refs, int64_t body_id) {
  sqlite3_stmt *st = mqi_store_stmt_hot(s, MQI_ST_BODY_INSERT);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  put_bind_body(st, 0, it, e, refs, body_id);
  op->flags |= MQI_OP_WROTE; /* before the first write of a put */
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "storing a payload");
  return MQ_OK;
}

static int put_msg_row(mq_store *s, mqi_op *op, const mqi_queue *q, int64_t retention_ms,
                       int64_t body_id, const mqi_put_item *it, const put_enc *e, int64_t now,
                       int64_t id) {
  sqlite3_stmt *st = mqi_store_stmt_hot(s, MQI_ST_MSG_INSERT);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  put_bind_msg(st, 0, q, retention_ms, body_id, it, e, now, id);
  op->flags |= MQI_OP_WROTE;
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "storing a message");
  return MQ_OK;
}

int mqi_put_body(mq_store *s, mqi_op *op, const mqi_queue *q, const mqi_put_item *it, size_t index,
                 int refs, int64_t body_id) {
  put_enc e;
  int rc = put_encode(s, op, q, it, index, &e);
  if (rc == MQ_OK) rc = put_body_row(s, op, it, &e, refs, body_id);
  free(e.z);
  return rc;
}

int mqi_put_msg(mq_store *s, mqi_op *op, const mqi_queue *q, int64_t retention_ms, int64_t body_id,
                const mqi_put_item *it, int64_t now, int64_t id) {
  return put_msg_row(s, op, q, retention_ms, body_id, it, NULL, now, id);
}

int mqi_put_fanout(mq_store *s, mqi_op *op, const mqi_queue *const *qs, size_t n,
                   int64_t retention_ms, int64_t body_id, const mqi_put_item *it, int64_t now) {
  int64_t ids[MQI_PUT_ROWS];
  size_t i = 0;
  for (; n - i >= MQI_PUT_ROWS; i += MQI_PUT_ROWS) {
    sqlite3_stmt *st = mqi_store_stmt_hot(s, MQI_ST_MSG_INSERT_ROWS);
    if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
    for (size_t k = 0; k < MQI_PUT_ROWS; k++) {
      int rc = mqi_store_next_id(s, op, &ids[k]);
      if (rc != MQ_OK) {
        sqlite3_clear_bindings(st); /* no pointers into it kept */
        return rc;
      }
      put_bind_msg(st, PUT_MSG_PARAMS * (int)k, qs[i + k], retention_ms, body_id, it, NULL, now,
                   ids[k]);
    }
    int src = sqlite3_step(st);
    sqlite3_reset(st);
    if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "storing messages");
  }
  for (; i < n; i++) {
    int rc = mqi_store_next_id(s, op, &ids[0]);
    if (rc == MQ_OK) rc = mqi_put_msg(s, op, qs[i], retention_ms, body_id, it, now, ids[0]);
    if (rc != MQ_OK) return rc;
  }
  return MQ_OK;
}

void mqi_put_sweep(mq_store *s, int64_t now) {
  if (s->puts_since_sweep < PUT_SWEEP_EVERY) return;
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_DEDUP_SWEEP);
  if (st) {
    sqlite3_bind_int64(st, 1, now);
    sqlite3_step(st);
    sqlite3_reset(st);
  }
  s->puts_since_sweep = 0;
}

/* One message's rows; one id names the message and its body, if it has
** one. */
static int put_row_at(mq_store *s, mqi_op *op, const mqi_queue *q, const mqi_put_item *it,
                      size_t index, int64_t now, int64_t id) {
  put_enc e;
  int rc = put_encode(s, op, q, it, index, &e);
  if (rc != MQ_OK) return rc;
  int64_t body = put_inline(s, it, &e) ? 0 : id;
  if (body) rc = put_body_row(s, op, it, &e, 1, body);
  if (rc == MQ_OK) rc = put_msg_row(s, op, q, 0, body, it, &e, now, id);
  free(e.z);
  return rc;
}

static int put_one(mq_store *s, mqi_op *op, const mqi_queue *q, mqi_put_item *it, size_t index,
                   int64_t now, int64_t *id) {
  int rc = mqi_put_dedup_find(s, op, q, it, now, id);
  if (rc != MQ_OK || *id) return rc;
  if ((rc = mqi_store_next_id(s, op, id)) != MQ_OK) return rc;
  if ((rc = put_row_at(s, op, q, it, index, now, *id)) != MQ_OK) return rc;
  return mqi_put_dedup_store(s, op, q, it, now, *id);
}

/* The first of items[from, n) with a dedup key, or n: a keyed entry
** needs its own lookup before its insert, so only a run of unkeyed ones
** can go in the multi-row INSERTs. */
static size_t put_next_keyed(const mqi_put_item *items, size_t from, size_t n) {
  while (from < n && !items[from].o.dedup_key) from++;
  return from;
}

/* The bodies of put_rows: one multi-row INSERT when all MQI_PUT_ROWS
** payloads need one (none inline), else one INSERT each. */
static int put_rows_bodies(mq_store *s, mqi_op *op, const mqi_put_item *items, const put_enc *e,
                           const int64_t *bodies, const int64_t *ids) {
  size_t nb = 0;
  for (size_t k = 0; k < MQI_PUT_ROWS; k++) nb += bodies[k] != 0;
  if (nb < MQI_PUT_ROWS) {
    int rc = MQ_OK;
    for (size_t k = 0; k < MQI_PUT_ROWS && rc == MQ_OK; k++)
      if (bodies[k]) rc = put_body_row(s, op, &items[k], &e[k], 1, bodies[k]);
    return rc;
  }
  sqlite3_stmt *st = mqi_store_stmt_hot(s, MQI_ST_BODY_INSERT_ROWS);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  for (size_t k = 0; k < MQI_PUT_ROWS; k++)
    put_bind_body(st, PUT_BODY_PARAMS * (int)k, &items[k], &e[k], 1, ids[k]);
  op->flags |= MQI_OP_WROTE; /* before the first write of a put */
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "storing payloads");
  return MQ_OK;
}

/* MQI_PUT_ROWS puts without dedup keys, entries first.. of the batch: the
** same rows as put_one writes, with one statement per table.  The ids are
** taken, or with given, already in ids. */
static int put_rows(mq_store *s, mqi_op *op, const mqi_queue *q, mqi_put_item *items, size_t first,
                    int64_t now, int64_t *ids, int given) {
  put_enc e[MQI_PUT_ROWS];
  int64_t bodies[MQI_PUT_ROWS];
  size_t ne = 0;
  int rc = MQ_OK;
  for (; ne < MQI_PUT_ROWS; ne++) {
    if (!given && (rc = mqi_store_next_id(s, op, &ids[ne])) != MQ_OK) break;
    if ((rc = put_encode(s, op, q, &items[ne], first + ne, &e[ne])) != MQ_OK) break;
    bodies[ne] = put_inline(s, &items[ne], &e[ne]) ? 0 : ids[ne];
  }
  if (rc == MQ_OK) rc = put_rows_bodies(s, op, items, e, bodies, ids);
  sqlite3_stmt *st = NULL;
  if (rc == MQ_OK && !(st = mqi_store_stmt_hot(s, MQI_ST_MSG_INSERT_ROWS)))
    rc = mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  if (rc == MQ_OK) {
    for (size_t k = 0; k < MQI_PUT_ROWS; k++)
      put_bind_msg(st, PUT_MSG_PARAMS * (int)k, q, 0, bodies[k], &items[k], &e[k], now, ids[k]);
    op->flags |= MQI_OP_WROTE;
    int src = sqlite3_step(st);
    /* The bindings point into e[], freed below. */
    sqlite3_reset(st);
    if (src != SQLITE_DONE) rc = mqi_op_sqlite(s, op, src, "storing messages");
  }
  for (size_t k = 0; k < ne; k++) free(e[k].z);
  return rc;
}

int mqi_put_rows_at(mq_store *s, mqi_op *op, const mqi_queue *q, mqi_put_item *items,
                    size_t n, int64_t now, int64_t first_id) {
  mqi_queue any = *q;
  any.max_payload = INT64_MAX; /* checked when the messages were taken */
  int64_t ids[MQI_PUT_ROWS];
  size_t i = 0;
  int rc = MQ_OK;
  for (; n - i >= MQI_PUT_ROWS && rc == MQ_OK; i += MQI_PUT_ROWS) {
    for (size_t k = 0; k < MQI_PUT_ROWS; k++) ids[k] = first_id + (int64_t)(i + k);
    rc = put_rows(s, op, &any, &items[i], i, now, ids, 1);
  }
  for (; i < n && rc == MQ_OK; i++)
    rc = put_row_at(s, op, &any, &items[i], i, now, first_id + (int64_t)i);
  return rc;
}

static int64_t put_bytes(const mqi_put_item *items, size_t n) {
  int64_t total = 0;
  for (size_t i = 0; i < n; i++) total += (int64_t)items[i].len;
  return total;
}

static int put_op(mq_store *s, mqi_op *op) {
  put_arg *a = op->arg;
  mqi_queue q;
  int rc = mqi_queue_find(s, op, a->queue, &q);
  if (rc != MQ_OK) return rc;
  if (q.kind != MQI_KIND_QUEUE)
    return mqi_op_fail(op, MQ_EINVAL, "%s: \"%s\" is a %s: %s", s->path, a->queue,
                       q.kind == MQI_KIND_TOPIC ? "topic" : "subscription",
                       q.kind == MQI_KIND_TOPIC ? "use mq_publish" : "publish to its topic");
  if ((rc = mqi_store_space_ok(s, op, put_bytes(a->items, a->n))) != MQ_OK) return rc;
  int64_t now = mqi_store_now(s);
  size_t keyed = put_next_keyed(a->items, 0, a->n);
  for (size_t i = 0; i < a->n;) {
    if (keyed < i) keyed = put_next_keyed(a->items, i, a->n);
    if (keyed - i >= MQI_PUT_ROWS) {
      rc = put_rows(s, op, &q, &a->items[i], i, now, &a->ids[i], 0);
      i += MQI_PUT_ROWS;
    } else {
      rc = put_one(s, op, &q, &a->items[i], i, now, &a->ids[i]);
      i++;
    }
    if (rc != MQ_OK) return rc;
  }
  mqi_put_sweep(s, now);
  op->flags |= MQI_OP_WAKE;
  return MQ_OK;
}

static int put_run(mq_store *s, const char *queue, const mq_entry *entries, size_t n,
                   int64_t *ids) {
  mqi_put_item one;
  int64_t one_id;
  mqi_put_item *items = n == 1 ? &one : calloc(n, sizeof *items);
  int64_t *out = ids ? ids : n == 1 ? &one_id : calloc(n, sizeof *out);
  int rc = MQ_OK;
  size_t prepared = 0;
  if (!items || !out) {
    rc = mqi_err_set(s, MQ_ENOMEM, "out of memory for a batch of %zu", n);
    goto done;
  }
  for (; prepared < n; prepared++) {
    const mq_entry *e = &entries[prepared];
    rc = mqi_put_prepare(s, &items[prepared], prepared, e->data, e->len, e->opts);
    if (rc != MQ_OK) {
      free(items[prepared].headers);
      goto done;
    }
  }
  put_arg a = {queue, items, n, out};
  rc = mqi_commit_run(s, put_op, &a, MQI_RUN_DURABLE | MQI_RUN_REPEATABLE | MQI_RUN_KEEPS_QUEUES);
done:
  for (size_t i = 0; i < prepared; i++) free(items[i].headers);
  if (items && items != &one) free(items);
  if (out && out != ids && out != &one_id) free(out);
  if (rc != MQ_OK && ids)
    for (size_t i = 0; i < n; i++) ids[i] = 0;
  return rc;
}

int mq_put(mq_store *s, const char *queue, const void *data, size_t len, const mq_put_options *opts,
           int64_t *id) {
  if (id) *id = 0;
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  mq_entry e = {data, len, opts};
  return put_run(s, queue, &e, 1, id);
}

int mq_put_batch(mq_store *s, const char *queue, const mq_entry *entries, size_t n, int64_t *ids) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (n == 0) return MQ_OK;
  if (!entries) return mqi_err_set(s, MQ_EINVAL, "mq_put_batch: entries is NULL");
  return put_run(s, queue, entries, n, ids);
}
/*** end src/put.c ***/

/*** begin src/get.c ***/
/*
** get.c -- leasing messages: the next ready message, the timers that bring
** hidden messages back, dead-lettering, blocking waits, and peek.
**
** Time-driven changes (a lease running out, a delay ending, a TTL passing)
** are applied lazily by the next get on the queue, inside its own
** transaction, in this order: expired messages are deleted; messages whose
** lease ran out after their last allowed delivery are dead-lettered; every
** other hidden message whose time has come becomes ready.  Each step is one
** probe of a small partial index and costs next to nothing when there is
** nothing to do.  Reads (stats, peek) apply the same rules on the fly
** without writing, so they agree with what the next get would do.
**
** A message whose payload fails its checksum is never returned: it is
** dead-lettered with the reason "corrupt payload", logged, and the get goes
** on to the next message.
**
** A get that finds nothing may wait.  It reads the gate's sequence number
** before looking, and sleeps on it afterwards, so a put committed in
** between -- in this process or another -- is never missed.  The sleep is
** cut short when the next hidden message is due.
*/
/* #include "mqi.h" -- inlined above */

#include <stdlib.h>
#include <string.h>

#define GET_MAX_WAIT_SLICE_MS 1000 /* re-check at least this often */
#define GET_POLL_SLICE_MS 10       /* without a shared gate */

void mq_get_options_init(mq_get_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
}

/* A dead letter's expiry is the retention of the queue that keeps it (the
** dlq, or q itself without one) counted from now, or none: the TTL and the
** retention it was put with bounded its delivery, which is over, and must
** not delete it from under the operator who is to look at it. */
int mqi_get_deadletter(mq_store *s, mqi_op *op, const mqi_queue *q, int64_t msg_id,
                       const char *reason) {
  sqlite3_stmt *st;
  if (q->dlq_id) {
    if (!(st = mqi_store_stmt(s, MQI_ST_MSG_TO_DLQ)))
      return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
    sqlite3_bind_int64(st, 1, msg_id);
    sqlite3_bind_int64(st, 2, q->dlq_id);
    sqlite3_bind_int64(st, 3, mqi_store_now(s));
    if (reason) sqlite3_bind_text(st, 4, reason, -1, SQLITE_STATIC);
    op->flags |= MQI_OP_WAKE; /* consumers of the dlq */
  } else {
    if (!(st = mqi_store_stmt(s, MQI_ST_MSG_TO_DEAD)))
      return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
    sqlite3_bind_int64(st, 1, msg_id);
    if (reason) sqlite3_bind_text(st, 2, reason, -1, SQLITE_STATIC);
    if (q->retention_ms > 0)
      sqlite3_bind_int64(st, 3, mqi_time_add(mqi_store_now(s), q->retention_ms));
  }
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "dead-lettering a message");
  return MQ_OK;
}

/* Apply the queue's timers as of now (see the file comment). */
/* The earliest time stored in a partial index of the queue, or INT64_MAX. */
static int get_next_time(mq_store *s, mqi_op *op, enum mqi_stmt_id id, int64_t qid, int64_t *when) {
  sqlite3_stmt *st = mqi_store_stmt(s, id);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, qid);
  int src = sqlite3_step(st);
  *when = src == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL
              ? sqlite3_column_int64(st, 0)
              : INT64_MAX;
  sqlite3_reset(st);
  if (src != SQLITE_ROW) return mqi_op_sqlite(s, op, src, "reading timers");
  return MQ_OK;
}

/* Apply the queue's timers as of now (see the file comment).  Each kind of
** timer costs one probe of its partial index when nothing is due, which is
** the common case; the statements that change rows run only when needed. */
static int get_maintain(mq_store *s, mqi_op *op, const mqi_queue *q, int64_t now,
                        int64_t *next_hidden) {
  int64_t when;
  int src, rc = get_next_time(s, op, MQI_ST_MSG_NEXT_EXPIRY, q->id, &when);
  while (rc == MQ_OK && when <= now) {
    sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_MSG_EXPIRED);
    if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
    sqlite3_bind_int64(st, 1, q->id);
    sqlite3_bind_int64(st, 2, now);
    int64_t ids[64], bodies[64];
    int n = 0;
    while (n < 64 && (src = sqlite3_step(st)) == SQLITE_ROW) {
      ids[n] = sqlite3_column_int64(st, 0);
      bodies[n++] = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    if (n < 64 && src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "finding expired messages");
    for (int i = 0; rc == MQ_OK && i < n; i++) {
      if (!(st = mqi_store_stmt(s, MQI_ST_MSG_DELETE)))
        return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
      sqlite3_bind_int64(st, 1, ids[i]);
      src = sqlite3_step(st);
      sqlite3_reset(st);
      if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "deleting an expired message");
      rc = mqi_body_release(s, op, bodies[i]);
    }
    if (n < 64) break;
  }
  if (rc != MQ_OK) return rc;

  if ((rc = get_next_time(s, op, MQI_ST_MSG_NEXT_VISIBLE, q->id, next_hidden)) != MQ_OK) return rc;
  if (*next_hidden > now) return MQ_OK;

  if (q->max_receives > 0) {
    for (;;) {
      sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_MSG_OVERDUE);
      if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
      sqlite3_bind_int64(st, 1, q->id);
      sqlite3_bind_int64(st, 2, now);
      sqlite3_bind_int(st, 3, q->max_receives);
      int64_t ids[64];
      int n = 0;
      while (n < 64 && (src = sqlite3_step(st)) == SQLITE_ROW)
        ids[n++] = sqlite3_column_int64(st, 0);
      sqlite3_reset(st);
      if (n < 64 && src != SQLITE_DONE)
        return mqi_op_sqlite(s, op, src, "finding overdue messages");
      for (int i = 0; i < n; i++)
        if ((rc = mqi_get_deadletter(s, op, q, ids[i], NULL)) != MQ_OK) return rc;
      if (n < 64) break;
    }
  }

  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_MSG_PROMOTE);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, q->id);
  sqlite3_bind_int64(st, 2, now);
  src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "returning hidden messages");
  /* Everything due is ready now; what stays hidden is due later. */
  return get_next_time(s, op, MQI_ST_MSG_NEXT_VISIBLE, q->id, next_hidden);
}

typedef struct get_arg {
  const char *queue;
  int64_t visibility_ms; /* 0: the queue's */
  size_t max;
  mq_msg **msgs;
  size_t count;
  int64_t next_visible; /* when nothing was ready: when something will be */
  /* mqi_get_batch_fit: the byte budget (fit NULL: none). */
  size_t (*fit)(const mq_msg *, const void *);
  const void *fit_ctx;
  size_t budget, first, used, over;
} get_arg;

/* A candidate read from the ready index. */
typedef struct get_cand {
  int64_t id, body_id, enqueued_at, expires_at;
  int priority, receives;
  char *reason;
} get_cand;

/* Read one candidate's payload (from its body, or from its own row when
** body_id is 0) and build the message; MQ_ECORRUPT when the stored payload
** is damaged. */
static int get_load(mq_store *s, mqi_op *op, const get_cand *c, mq_msg **out) {
  sqlite3_stmt *st = mqi_store_stmt(s, c->body_id ? MQI_ST_BODY_GET : MQI_ST_MSG_PAYLOAD);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, c->body_id ? c->body_id : c->id);
  int src = sqlite3_step(st);
  if (src != SQLITE_ROW) {
    sqlite3_reset(st);
    if (src == SQLITE_DONE) return MQ_ECORRUPT; /* the body is missing */
    return mqi_op_sqlite(s, op, src, "reading a payload");
  }
  const void *data = sqlite3_column_blob(st, 4);
  size_t len = (size_t)sqlite3_column_bytes(st, 4);
  const void *hdr = sqlite3_column_blob(st, 3);
  size_t hlen = (size_t)sqlite3_column_bytes(st, 3);
  int rc = mqi_msg_build(c->id, c->enqueued_at, c->receives + 1, c->priority, c->reason,
                         (const char *)sqlite3_column_text(st, 5), mqi_msg_body_size(st, 0, 1, 4),
                         (uint32_t)sqlite3_column_int64(st, 1), sqlite3_column_int(st, 2), hdr,
                         hlen, data, len, out);
  sqlite3_reset(st);
  if (rc == MQ_ENOMEM) return mqi_op_fail(op, rc, "out of memory reading a message");
  return rc;
}

static int get_op(mq_store *s, mqi_op *op) {
  get_arg *a = op->arg;
  mqi_queue q;
  int rc = mqi_queue_find_holder(s, op, a->queue, &q);
  if (rc != MQ_OK) return rc;
  int64_t now = mqi_store_now(s);
  int64_t next_hidden;
  if ((rc = get_maintain(s, op, &q, now, &next_hidden)) != MQ_OK) return rc;
  int64_t vis = a->visibility_ms > 0 ? a->visibility_ms : q.visibility_ms;
  a->used = 0;
  a->over = 0;

  while (a->count < a->max) {
    size_t want = a->max - a->count;
    get_cand cands[32];
    size_t nc = 0;
    if (want > 32) want = 32;
    sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_MSG_READY);
    if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
    sqlite3_bind_int64(st, 1, q.id);
    sqlite3_bind_int64(st, 2, (int64_t)want);
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
      get_cand *c = &cands[nc++];
      c->id = sqlite3_column_int64(st, 0);
      c->body_id = sqlite3_column_int64(st, 1);
      c->priority = sqlite3_column_int(st, 2);
      c->receives = sqlite3_column_int(st, 3);
      c->enqueued_at = sqlite3_column_int64(st, 4);
      c->expires_at = sqlite3_column_int64(st, 6);
      const char *r = (const char *)sqlite3_column_text(st, 5);
      c->reason = r ? strdup(r) : NULL;
      if (r && !c->reason) {
        src = SQLITE_NOMEM; /* freed below with the others */
        break;
      }
    }
    sqlite3_reset(st);
    if (src != SQLITE_DONE) {
      rc = mqi_op_sqlite(s, op, src, "finding ready messages");
    }
    for (size_t i = 0; i < nc && rc == MQ_OK; i++) {
      get_cand *c = &cands[i];
      if (q.max_receives > 0 && c->receives >= q.max_receives) {
        rc = mqi_get_deadletter(s, op, &q, c->id, NULL);
        continue;
      }
      mq_msg *m = NULL;
      rc = get_load(s, op, c, &m);
      if (rc == MQ_ECORRUPT) {
        mqi_log(s, MQ_LOG_ERROR,
                "%s: queue \"%s\": message %lld has a corrupt payload; "
                "dead-lettered",
                s->path, a->queue, (long long)c->id);
        rc = mqi_get_deadletter(s, op, &q, c->id, "corrupt payload");
        continue;
      }
      if (rc != MQ_OK) break;
      uint64_t lease = mqi_store_token(s);
      /* The receipt is part of what the message costs the caller, so it is
      ** made before the cost is asked; a message that does not fit is
      ** dropped before its lease is written, so it was never leased. */
      mqi_msg_set_receipt(m, c->id, lease);
      if (a->fit) {
        size_t cost = a->fit(m, a->fit_ctx);
        size_t cap = a->count == 0 && a->first > a->budget ? a->first : a->budget;
        if (cost > cap - a->used) {
          a->over = cost;
          mq_msg_free(m);
          break;
        }
        a->used = cost > a->budget - a->used ? a->budget : a->used + cost;
      }
      if (!(st = mqi_store_stmt(s, MQI_ST_MSG_LEASE))) {
        mq_msg_free(m);
        rc = mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
        break;
      }
      sqlite3_bind_int64(st, 1, c->id);
      sqlite3_bind_int64(st, 2, (int64_t)lease);
      sqlite3_bind_int64(st, 3, mqi_time_add(now, vis));
      src = sqlite3_step(st);
      sqlite3_reset(st);
      if (src != SQLITE_DONE) {
        mq_msg_free(m);
        rc = mqi_op_sqlite(s, op, src, "leasing a message");
        break;
      }
      mqi_msg_set_times(m, mqi_time_add(now, vis), c->expires_at);
      mqi_msg_set_body(m, c->body_id);
      a->msgs[a->count++] = m;
    }
    for (size_t i = 0; i < nc; i++) free(cands[i].reason);
    if (rc != MQ_OK || a->over) break;
    if (nc < want) break; /* the queue has nothing more ready */
  }
  if (rc != MQ_OK) {
    /* The savepoint (or the whole transaction) is rolled back: the leases
    ** above never happened, so neither do the messages. */
    for (size_t i = 0; i < a->count; i++) {
      mq_msg_free(a->msgs[i]);
      a->msgs[i] = NULL;
    }
    a->count = 0;
    return rc;
  }
  if (a->count) return MQ_OK;

  /* Nothing was leased, so what maintenance saw hidden is still so. */
  a->next_visible = next_hidden == INT64_MAX ? 0 : next_hidden;
  return MQ_EMPTY;
}

int mq_get_batch(mq_store *s, const char *queue, const mq_get_options *opts, size_t max,
                 mq_msg **msgs, size_t *count) {
  if (count) *count = 0;
  if (msgs)
    for (size_t i = 0; i < max; i++) msgs[i] = NULL;
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (!msgs || !count) return mqi_err_set(s, MQ_EINVAL, "get: NULL output pointer");
  if (max == 0) return mqi_err_set(s, MQ_EINVAL, "get: max is 0");
  mq_get_options o;
  mq_get_options_init(&o);
  if (opts) {
    if (opts->size < offsetof(mq_get_options, wait_ms) || opts->size > sizeof o)
      return mqi_err_set(s, MQ_EINVAL, "mq_get_options.size is %zu: call mq_get_options_init first",
                         opts->size);
    memcpy(&o, opts, opts->size);
  }
  if (o.visibility_ms < 0) return mqi_err_set(s, MQ_EINVAL, "get: visibility_ms is negative");
  if (o.wait_ms < 0) return mqi_err_set(s, MQ_EINVAL, "get: wait_ms is negative");

  get_arg a = {.queue = queue, .visibility_ms = o.visibility_ms, .max = max, .msgs = msgs};
  int64_t deadline = mqi_time_add(mqi_os_monotonic_ms(), o.wait_ms);
  for (;;) {
    uint32_t seq = mqi_gate_seq(s->gate);
    a.count = 0;
    rc = mqi_commit_run(s, get_op, &a, MQI_RUN_SETTLE);
    if (rc != MQ_EMPTY) break;
    int64_t left = deadline - mqi_os_monotonic_ms();
    if (left <= 0) break;
    int64_t slice = mqi_gate_is_shared(s->gate) ? GET_MAX_WAIT_SLICE_MS : GET_POLL_SLICE_MS;
    if (a.next_visible && a.next_visible < INT64_MAX) {
      int64_t due = a.next_visible - mqi_store_now(s);
      if (due < slice) slice = due < 1 ? 1 : due;
    }
    if (slice > left) slice = left;
    mqi_gate_wait(s->gate, seq, slice);
  }
  if (rc == MQ_OK) {
    *count = a.count;
  } else {
    /* The op may have built messages for a transaction whose commit then
    ** failed: those leases never happened, so the messages go. */
    for (size_t i = 0; i < a.count; i++) {
      mq_msg_free(msgs[i]);
      msgs[i] = NULL;
    }
  }
  return rc;
}

int mqi_get_batch_fit(mq_store *s, const char *queue, int64_t visibility_ms, size_t max,
                      size_t (*fit)(const mq_msg *, const void *), const void *ctx, size_t budget,
                      size_t first, mq_msg **msgs, size_t *count, size_t *over) {
  *count = 0;
  *over = 0;
  for (size_t i = 0; i < max; i++) msgs[i] = NULL;
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (max == 0 || !fit || visibility_ms < 0)
    return mqi_err_set(s, MQ_EINVAL, "mqi_get_batch_fit: bad arguments");
  get_arg a = {.queue = queue, .visibility_ms = visibility_ms, .max = max, .msgs = msgs,
               .fit = fit, .fit_ctx = ctx, .budget = budget, .first = first};
  rc = mqi_commit_run(s, get_op, &a, MQI_RUN_SETTLE);
  if (rc == MQ_OK) {
    *count = a.count;
  } else {
    for (size_t i = 0; i < a.count; i++) {
      mq_msg_free(msgs[i]);
      msgs[i] = NULL;
    }
    if (rc == MQ_EMPTY) *over = a.over;
  }
  return rc;
}

int mq_get(mq_store *s, const char *queue, const mq_get_options *opts, mq_msg **out) {
  size_t n = 0;
  if (out) *out = NULL;
  if (!out) {
    int rc = mqi_store_check(s, 1);
    return rc != MQ_OK ? rc : mqi_err_set(s, MQ_EINVAL, "mq_get: out is NULL");
  }
  return mq_get_batch(s, queue, opts, 1, out, &n);
}

/* ---- peek: a read, no transaction of ours ---------------------------------- */

/* What the next get would deliver: a message that has used up max_receives
** is left out although visible, as that get dead-letters it instead. */
#define GET_PEEK_SQL(P)                                                                         \
  "SELECT m.id, m.priority, m.receives, m.enqueued_at, m.reason, " MQI_PAYLOAD_COLS(P)          \
  ", m.visible_at, m.expires_at, b.subject,"                                                    \
  " q.kind, m.body_id, q.id, q.retention_ms FROM mq_queue q"                                    \
  " LEFT JOIN mq_msg m ON m.queue_id = q.id"                                                    \
  "  AND " MQI_SQL_DUE " AND " MQI_SQL_LIVE                                                     \
  "  AND NOT " MQI_SQL_SPENT                                                                    \
  " LEFT JOIN mq_body b ON b.id = m.body_id"                                                    \
  " WHERE q.name = ?1 ORDER BY m.priority DESC, m.id LIMIT ?3"

/* The message of peek's current row. */
static int peek_row(sqlite3_stmt *st, mq_msg **m) {
  int rc = mqi_msg_build(
      sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 3), sqlite3_column_int(st, 2),
      sqlite3_column_int(st, 1), (const char *)sqlite3_column_text(st, 4),
      (const char *)sqlite3_column_text(st, 12),
      /* a missing body (NULL size) is damage, not an empty payload */
      mqi_msg_body_size(st, 5, 6, 9), (uint32_t)sqlite3_column_int64(st, 6),
      sqlite3_column_int(st, 7), sqlite3_column_blob(st, 8), (size_t)sqlite3_column_bytes(st, 8),
      sqlite3_column_blob(st, 9), (size_t)sqlite3_column_bytes(st, 9), m);
  if (rc == MQ_OK) {
    mqi_msg_set_times(*m, sqlite3_column_int64(st, 10), sqlite3_column_int64(st, 11));
    mqi_msg_set_body(*m, sqlite3_column_int64(st, 14));
  }
  return rc;
}

static void peek_corrupt(mq_store *s, const char *queue, int64_t id) {
  mqi_log(s, MQ_LOG_ERROR, "%s: queue \"%s\": message %lld has a corrupt payload", s->path, queue,
          (long long)id);
}

int mq_peek(mq_store *s, const char *queue, size_t max, mq_msg **msgs, size_t *count) {
  if (count) *count = 0;
  if (msgs)
    for (size_t i = 0; i < max; i++) msgs[i] = NULL;
  int rc = mqi_store_check(s, 0);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (!msgs || !count) return mqi_err_set(s, MQ_EINVAL, "mq_peek: NULL output pointer");
  if (max == 0) return MQ_OK;
  sqlite3 *db;
  if ((rc = mqi_store_read(s, &db)) != MQ_OK) return rc;
  int64_t now = mqi_store_now(s);
  sqlite3_stmt *st = NULL;
  mqi_pack_cursor pc;
  memset(&pc, 0, sizeof pc);
  size_t n = 0;
  int format;
  int src = mqi_store_snapshot(db, &format);
  if (src == SQLITE_OK) rc = mqi_store_format_ok(s, format);
  if (src == SQLITE_OK && rc == MQ_OK)
    src = sqlite3_prepare_v2(
        db, format < 2 ? GET_PEEK_SQL(MQI_PAYLOAD_V1) : GET_PEEK_SQL(MQI_PAYLOAD_V2), -1, &st, NULL);
  int found = 0;
  if (src == SQLITE_OK && rc == MQ_OK) {
    sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    /* A few extra rows leave room for corrupt ones being skipped. */
    sqlite3_bind_int64(st, 3, max > INT32_MAX ? INT32_MAX : (int64_t)max + 8);
    int psrc = SQLITE_DONE;
    int64_t pid = 0;
    src = sqlite3_step(st);
    if (src == SQLITE_ROW && sqlite3_column_int(st, 13) == MQI_KIND_TOPIC) {
      rc = mqi_err_set(s, MQ_EINVAL,
                       "%s: \"%s\" is a topic; peek at one of its subscriptions, \"%s/SUB\"",
                       s->path, queue, queue);
      src = SQLITE_DONE;
    } else if (src == SQLITE_ROW) {
      found = 1;
      psrc = mqi_pack_cursor_open(&pc, db, format, sqlite3_column_int64(st, 15),
                                  sqlite3_column_int64(st, 16), now);
      if (psrc == SQLITE_OK) psrc = mqi_pack_cursor_peek(&pc, &pid);
      if (sqlite3_column_type(st, 0) == SQLITE_NULL) src = SQLITE_DONE; /* no row is due */
    }
    /* Rows by priority, then id; packed messages have priority 0. */
    while (n < max && mqi_merge_more(src, psrc)) {
      mq_msg *m = NULL;
      int64_t id = pid;
      int prio = src == SQLITE_ROW ? sqlite3_column_int(st, 1) : 0;
      if (src == SQLITE_ROW &&
          (psrc != SQLITE_ROW || prio > 0 || (prio == 0 && sqlite3_column_int64(st, 0) < pid))) {
        id = sqlite3_column_int64(st, 0);
        rc = peek_row(st, &m);
        src = sqlite3_step(st);
      } else {
        rc = mqi_pack_cursor_take(&pc, &m);
        psrc = mqi_pack_cursor_peek(&pc, &pid);
      }
      if (rc == MQ_ECORRUPT) {
        peek_corrupt(s, queue, id);
        rc = MQ_OK;
        continue;
      }
      if (rc != MQ_OK) break;
      msgs[n++] = m;
    }
    if (src == SQLITE_ROW || src == SQLITE_DONE)
      src = psrc == SQLITE_ROW || psrc == SQLITE_DONE ? SQLITE_DONE : psrc;
  }
  if (rc == MQ_EINVAL || rc == MQ_EVERSION) {
    /* the message is set */
  } else if (rc == MQ_ENOMEM) {
    mqi_err_set(s, rc, "out of memory peeking");
  } else if (src != SQLITE_DONE && src != SQLITE_OK) {
    rc = mqi_err_set(s, mqi_err_from_sqlite(src), "%s: peeking \"%s\": %s", s->path, queue,
                     sqlite3_errmsg(db));
  } else if (!found) {
    rc = mqi_err_set(s, MQ_ENOTFOUND, "%s: no queue named \"%s\"", s->path, queue);
  }
  sqlite3_finalize(st);
  mqi_pack_cursor_close(&pc);
  mqi_store_read_done(s, src);
  if (rc != MQ_OK) {
    for (size_t i = 0; i < n; i++) {
      mq_msg_free(msgs[i]);
      msgs[i] = NULL;
    }
    return rc;
  }
  *count = n;
  return MQ_OK;
}
/*** end src/get.c ***/

/*** begin src/settle.c ***/
/*
** settle.c -- what a consumer does with a leased message: ack, nack, touch;
** and redrive, which settles dead letters by sending them back.
**
** A receipt names a message and one lease on it (mq_msg.lease).  Every
** statement here matches both, so a receipt from an earlier delivery can
** never touch a later one: that is the whole of stale-receipt detection.
** A lease that ran out but whose message was not delivered again still
** matches (its message is ready with the old lease value), so a slow
** consumer's ack is honoured as long as nobody else has the message --
** the SQS behaviour.  Nack and dead-lettering clear the lease.
**
** Acks are durable (fsynced under MQ_SYNC_FULL): an ack that returned MQ_OK
** must not bring the message back after a power cut.  Nack and touch are
** not: losing one only changes when the message is delivered again.
*/
/* #include "mqi.h" -- inlined above */

#include <stdlib.h>
#include <string.h>

typedef struct settle_arg {
  const char *queue;
  const char *const *receipts;
  int64_t *ids;
  uint64_t *leases;
  size_t n;
  int *results;
  int64_t delay_ms;      /* nack */
  const char *reason;    /* nack */
  int64_t visibility_ms; /* touch */
  int64_t max;           /* redrive */
  int64_t moved;         /* redrive */
} settle_arg;

/* Bind the receipt (?1 message id, ?3 lease) and its queue (?2): every
** statement that settles a lease matches all three. */
static void settle_bind_receipt(sqlite3_stmt *st, int64_t id, int64_t qid, uint64_t lease) {
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int64(st, 2, qid);
  sqlite3_bind_int64(st, 3, (int64_t)lease);
}

static int settle_stale(mq_store *s, mqi_op *op, const char *name, int64_t id) {
  return mqi_op_fail(op, MQ_ESTALE,
                     "%s: queue \"%s\": message %lld is not leased under this receipt "
                     "(acked already, expired, or delivered again)",
                     s->path, name, (long long)id);
}

static int settle_ack_one(mq_store *s, mqi_op *op, const char *name, const mqi_queue *q, int64_t id,
                          uint64_t lease, int64_t now) {
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_MSG_ACK);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  settle_bind_receipt(st, id, q->id, lease);
  sqlite3_bind_int64(st, 4, now);
  int src = sqlite3_step(st);
  int64_t body = src == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  sqlite3_reset(st);
  if (src != SQLITE_ROW && src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "finding a lease");
  if (src == SQLITE_DONE) return settle_stale(s, op, name, id);
  /* A plain DELETE by id: DELETE ... RETURNING would build a temporary
  ** table on every ack. */
  if (!(st = mqi_store_stmt(s, MQI_ST_MSG_DELETE)))
    return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, id);
  src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "deleting a message");
  return mqi_body_release(s, op, body);
}

static int settle_ack_op(mq_store *s, mqi_op *op) {
  settle_arg *a = op->arg;
  mqi_queue q;
  int rc = mqi_queue_find_holder(s, op, a->queue, &q);
  if (rc != MQ_OK) return rc;
  int64_t now = mqi_store_now(s);
  int last = MQ_OK;
  for (size_t i = 0; i < a->n; i++) {
    rc = settle_ack_one(s, op, a->queue, &q, a->ids[i], a->leases[i], now);
    if (rc != MQ_OK && rc != MQ_ESTALE) return rc;
    if (a->results) a->results[i] = rc;
    last = rc;
  }
  /* A single ack reports its own outcome; a batch succeeds as a whole and
  ** reports each receipt in results. */
  return a->n == 1 ? last : MQ_OK;
}

/* Parse every receipt before anything is queued: a malformed one is bad
** input and changes nothing. */
static int settle_parse(mq_store *s, settle_arg *a) {
  for (size_t i = 0; i < a->n; i++) {
    if (!a->receipts[i] || mqi_receipt_parse(a->receipts[i], &a->ids[i], &a->leases[i]) != MQ_OK)
      return a->n == 1
                 ? mqi_err_set(s, MQ_EINVAL, "\"%.40s\" is not a receipt of mq_get",
                               a->receipts[i] ? a->receipts[i] : "(null)")
                 : mqi_err_set(s, MQ_EINVAL, "receipt %zu (\"%.40s\") is not a receipt of mq_get",
                               i, a->receipts[i] ? a->receipts[i] : "(null)");
  }
  return MQ_OK;
}

/* Parse one receipt into a and run fn on it: the common end of ack, nack
** and touch, after each has checked its own arguments. */
static int settle_one(mq_store *s, const char *queue, const char *receipt, settle_arg *a,
                      mqi_op_fn fn, int durable) {
  int64_t id;
  uint64_t lease;
  a->queue = queue;
  a->receipts = &receipt;
  a->ids = &id;
  a->leases = &lease;
  a->n = 1;
  int rc = settle_parse(s, a);
  return rc != MQ_OK ? rc : mqi_commit_run(s, fn, a, durable ? MQI_RUN_DURABLE : 0);
}

/* The common end of the batch forms: parse n receipts of queue into a and
** run fn on them in one transaction.  A batch succeeds as a whole, so a
** lone receipt's MQ_ESTALE (the op's own answer for n == 1) is MQ_OK. */
static int settle_batch(mq_store *s, const char *fname, const char *queue,
                        const char *const *receipts, size_t n, settle_arg *a, mqi_op_fn fn,
                        int how) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (n == 0) return MQ_OK;
  if (!receipts) return mqi_err_set(s, MQ_EINVAL, "%s: receipts is NULL", fname);
  a->queue = queue;
  a->receipts = receipts;
  a->n = n;
  a->ids = malloc(n * sizeof *a->ids);
  a->leases = malloc(n * sizeof *a->leases);
  if (!a->ids || !a->leases)
    rc = mqi_err_set(s, MQ_ENOMEM, "out of memory settling %zu receipts", n);
  else if ((rc = settle_parse(s, a)) == MQ_OK)
    rc = mqi_commit_run(s, fn, a, how);
  if (n == 1 && rc == MQ_ESTALE) rc = MQ_OK;
  free(a->ids);
  free(a->leases);
  return rc;
}

int mq_ack(mq_store *s, const char *queue, const char *receipt) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  settle_arg a = {0};
  return settle_one(s, queue, receipt, &a, settle_ack_op, 1);
}

int mq_ack_batch(mq_store *s, const char *queue, const char *const *receipts, size_t n,
                 int *results) {
  settle_arg a = {0};
  a.results = results;
  return settle_batch(s, "mq_ack_batch", queue, receipts, n, &a, settle_ack_op, MQI_RUN_DURABLE);
}

/* ---- nack and touch -------------------------------------------------------- */

static int settle_nack_one(mq_store *s, mqi_op *op, const settle_arg *a, const mqi_queue *q,
                           int64_t id, uint64_t lease, int64_t now) {
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_MSG_NACK);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  settle_bind_receipt(st, id, q->id, lease);
  sqlite3_bind_int64(st, 4, now);
  int src = sqlite3_step(st);
  int receives = src == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
  sqlite3_reset(st);
  if (src != SQLITE_ROW && src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "reading a lease");
  if (receives < 0) return settle_stale(s, op, a->queue, id);
  if (q->max_receives > 0 && receives >= q->max_receives)
    return mqi_get_deadletter(s, op, q, id, a->reason);
  if (!(st = mqi_store_stmt(s, MQI_ST_MSG_NACK_SET)))
    return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int(st, 2, a->delay_ms > 0 ? MQI_DELAYED : MQI_READY);
  sqlite3_bind_int64(st, 3, mqi_time_add(now, a->delay_ms));
  if (a->reason)
    sqlite3_bind_text(st, 4, a->reason, -1, SQLITE_STATIC);
  else
    sqlite3_bind_null(st, 4);
  src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "releasing a message");
  op->flags |= MQI_OP_WAKE;
  return MQ_OK;
}

static int settle_nack_op(mq_store *s, mqi_op *op) {
  settle_arg *a = op->arg;
  mqi_queue q;
  int rc = mqi_queue_find_holder(s, op, a->queue, &q);
  if (rc != MQ_OK) return rc;
  int64_t now = mqi_store_now(s);
  for (size_t i = 0; i < a->n; i++) {
    rc = settle_nack_one(s, op, a, &q, a->ids[i], a->leases[i], now);
    /* In a batch a receipt whose lease is over is simply not ours to give
    ** back any more; a single nack reports it. */
    if (rc != MQ_OK && (rc != MQ_ESTALE || a->n == 1)) return rc;
  }
  return MQ_OK;
}

int mq_nack(mq_store *s, const char *queue, const char *receipt, int64_t delay_ms,
            const char *reason) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (delay_ms < 0) return mqi_err_set(s, MQ_EINVAL, "mq_nack: delay_ms is negative");
  if (reason && strlen(reason) > 1000)
    return mqi_err_set(s, MQ_EINVAL, "mq_nack: reason is longer than 1000 bytes");
  settle_arg a = {0};
  a.delay_ms = delay_ms;
  a.reason = reason;
  return settle_one(s, queue, receipt, &a, settle_nack_op, 0);
}

int mqi_nack_batch(mq_store *s, const char *queue, const char *const *receipts, size_t n) {
  settle_arg a = {0};
  return settle_batch(s, "mqi_nack_batch", queue, receipts, n, &a, settle_nack_op, 0);
}

static int settle_touch_op(mq_store *s, mqi_op *op) {
  settle_arg *a = op->arg;
  mqi_queue q;
  int rc = mqi_queue_find_holder(s, op, a->queue, &q);
  if (rc != MQ_OK) return rc;
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_MSG_TOUCH);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  int64_t now = mqi_store_now(s);
  settle_bind_receipt(st, a->ids[0], q.id, a->leases[0]);
  sqlite3_bind_int64(st, 4, mqi_time_add(now, a->visibility_ms));
  sqlite3_bind_int64(st, 5, now);
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "extending a lease");
  if (sqlite3_changes(s->db) == 0)
    return mqi_op_fail(op, MQ_ESTALE,
                       "%s: queue \"%s\": the lease of message %lld is over (or it expired)",
                       s->path, a->queue, (long long)a->ids[0]);
  return MQ_OK;
}

int mq_touch(mq_store *s, const char *queue, const char *receipt, int64_t visibility_ms) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (visibility_ms < 0) return mqi_err_set(s, MQ_EINVAL, "mq_touch: visibility_ms is negative");
  settle_arg a = {0};
  a.visibility_ms = visibility_ms;
  return settle_one(s, queue, receipt, &a, settle_touch_op, 0);
}

/* ---- release (the server's) ------------------------------------------------ */

/* As if the leases had never been taken (MQI_ST_MSG_RELEASE): ready at
** once, receive count as it was.  For messages a server leased but could
** not hand to any peer, which must not move towards the dead-letter queue
** for that. */
static int settle_release_op(mq_store *s, mqi_op *op) {
  settle_arg *a = op->arg;
  mqi_queue q;
  int rc = mqi_queue_find_holder(s, op, a->queue, &q);
  if (rc != MQ_OK) return rc;
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_MSG_RELEASE);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  int64_t now = mqi_store_now(s);
  int src = SQLITE_DONE;
  for (size_t i = 0; i < a->n && src == SQLITE_DONE; i++) {
    settle_bind_receipt(st, a->ids[i], q.id, a->leases[i]);
    sqlite3_bind_int64(st, 4, now);
    src = sqlite3_step(st);
    sqlite3_reset(st);
  }
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "releasing leases");
  op->flags |= MQI_OP_WAKE;
  return MQ_OK;
}

int mqi_settle_release(mq_store *s, const char *queue, const char *const *receipts, size_t n) {
  settle_arg a = {0};
  return settle_batch(s, "mqi_settle_release", queue, receipts, n, &a, settle_release_op, 0);
}

/* ---- redrive ---------------------------------------------------------------- */

static int settle_redrive_op(mq_store *s, mqi_op *op) {
  settle_arg *a = op->arg;
  mqi_queue q;
  int rc = mqi_queue_find_holder(s, op, a->queue, &q);
  if (rc != MQ_OK) return rc;
  int64_t now = mqi_store_now(s);
  int64_t limit = a->max > 0 ? a->max : INT64_MAX;
  /* Dead letters that came from another queue go back there if it still
  ** exists (queue ids are never reused: mqi_queue_new_id); this queue's own
  ** dead messages, and dead ones whose queue is gone, become ready here.
  ** Like a new put, each is kept by the retention of the queue it lands in,
  ** counted from now (saturating as mqi_time_add does); the TTL it was put
  ** with is not restored.  An expired dead letter is gone, not redriven. */
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(
      s->db,
      "UPDATE mq_msg SET queue_id = coalesce((SELECT id FROM mq_queue"
      "  WHERE id = mq_msg.origin_id), queue_id),"
      " expires_at = (SELECT " MQI_SQL_RETAIN_FROM("?2") " FROM mq_queue"
      "  WHERE id = coalesce((SELECT id FROM mq_queue WHERE id = mq_msg.origin_id),"
      "   mq_msg.queue_id)),"
      " origin_id = NULL, state = 0, receives = 0, visible_at = ?2, lease = NULL"
      " WHERE id IN (SELECT m.id FROM mq_msg m WHERE m.queue_id = ?1"
      "  AND " MQI_SQL_LIVE
      "  AND (m.state = 3 OR (m.origin_id IS NOT NULL"
      "   AND m.origin_id IN (SELECT id FROM mq_queue)"
      /* a dead letter someone is working on (a live lease) stays put */
      "   AND (m.state IN (0, 2) OR m.visible_at <= ?2)))"
      "  ORDER BY m.id LIMIT ?3)",
      -1, &st, NULL);
  if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "preparing");
  sqlite3_bind_int64(st, 1, q.id);
  sqlite3_bind_int64(st, 2, now);
  sqlite3_bind_int64(st, 3, limit);
  src = sqlite3_step(st);
  sqlite3_finalize(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "redriving");
  a->moved = sqlite3_changes64(s->db);
  if (a->moved) op->flags |= MQI_OP_WAKE;
  return MQ_OK;
}

int mq_redrive(mq_store *s, const char *queue, int64_t max, int64_t *moved) {
  if (moved) *moved = 0;
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (max < 0) return mqi_err_set(s, MQ_EINVAL, "mq_redrive: max is negative");
  settle_arg a = {0};
  a.queue = queue;
  a.max = max;
  rc = mqi_commit_run(s, settle_redrive_op, &a, MQI_RUN_DURABLE | MQI_RUN_SETTLE);
  if (rc == MQ_OK && moved) *moved = a.moved;
  return rc;
}
/*** end src/settle.c ***/

/*** begin src/pack.c ***/
/*
** pack.c -- packs: the messages of a PULL endpoint, many to a row.
**
** One row per message costs about a microsecond of SQLite work, more than
** a ZMTP peer takes to send a small message: a PULL endpoint that stored
** each message as a put could not keep up with its peers (bench/README).
** So the endpoint stores each batch as packs: up to MQI_PACK_MSGS messages
** in one mq_pack row, durable at its commit like any put (format 3).
**
** Ops that take messages see rows only: a transaction with a get or a
** redrive turns packs into ordinary mq_msg rows ("settles" them) before
** that op runs (commit.c, MQI_RUN_SETTLE), as a batch of plain puts would
** have written them.  The ids are taken when the pack is written, and a
** pack's row id is its first message's, so messages keep the order of
** their commits whenever they are settled; enqueued_at is the pack's, so
** ages and retention count from the commit too.  Other writes need no
** settle: puts take later ids, acks and touches act on leased rows, purge
** and drop delete a queue's packs with its rows.  Reads do not settle (a
** read-only handle cannot, a read-write one's reads must not wait for
** writers): peek and scan read packed messages in place (pack_read.c),
** stats count them, verify checks them.
**
** Settling is not fsynced: the packs it deletes and the rows it writes
** are one transaction, so a power cut keeps either the packs or the rows.
** A settle that fails (a full disk, say) is logged and undone, and the
** gets of its transaction fail with its code rather than answer "empty";
** its other ops run without it, so acks keep working.
**
** A pack's data is, per message: its size (varint), its CRC32 (4 bytes,
** little-endian), the size of its encoded headers (varint), the headers,
** the payload.  The CRC is the one a put computes, copied into the row, so
** a payload damaged in its pack is refused by every later read as any
** damaged row is (msg.c).  Damaged framing (a size past the end) makes the
** rest of the pack one message whose CRC cannot match: it is dead-lettered
** like any corrupt message instead of being lost or blocking the settle.
*/
/* #include "mqi.h" -- inlined above */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define PACK_BYTES (256 * 1024) /* a pack is closed past this many bytes */
#define PACK_VARINT_MAX 10

static size_t pack_varint_put(unsigned char *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = (unsigned char)(v | 0x80);
    v >>= 7;
  }
  p[n++] = (unsigned char)v;
  return n;
}

static size_t pack_entry_max(const mqi_put_item *it) {
  return 2 * PACK_VARINT_MAX + 4 + it->headers_len + it->len;
}

typedef struct pack_arg {
  const char *queue;
  const mqi_put_item *items;
  size_t n;
} pack_arg;

/* One pack of items[0..n) into q, encoded in buf (big enough). */
static int pack_write(mq_store *s, mqi_op *op, const mqi_queue *q, const mqi_put_item *items,
                      size_t n, unsigned char *buf, int64_t now) {
  int64_t first;
  int rc = mqi_store_next_ids(s, op, n, &first);
  if (rc != MQ_OK) return rc;
  size_t at = 0;
  int64_t bytes = 0;
  for (size_t i = 0; i < n; i++) {
    const mqi_put_item *it = &items[i];
    at += pack_varint_put(buf + at, it->len);
    for (int k = 0; k < 4; k++) buf[at++] = (unsigned char)(it->crc >> (8 * k));
    at += pack_varint_put(buf + at, it->headers_len);
    if (it->headers_len) memcpy(buf + at, it->headers, it->headers_len);
    at += it->headers_len;
    if (it->len) memcpy(buf + at, it->data, it->len);
    at += it->len;
    bytes += (int64_t)it->len;
  }
  sqlite3_stmt *st = mqi_store_stmt_hot(s, MQI_ST_PACK_INSERT);
  if (!st) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(st, 1, first);
  sqlite3_bind_int64(st, 2, q->id);
  sqlite3_bind_int64(st, 3, (int64_t)n);
  sqlite3_bind_int64(st, 4, bytes);
  sqlite3_bind_int64(st, 5, now);
  sqlite3_bind_blob64(st, 6, buf, at, SQLITE_STATIC);
  op->flags |= MQI_OP_WROTE;
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "storing a pack");
  return MQ_OK;
}

static int pack_put_op(mq_store *s, mqi_op *op) {
  const pack_arg *a = op->arg;
  mqi_queue q;
  int rc = mqi_queue_find(s, op, a->queue, &q);
  if (rc != MQ_OK) return rc;
  if (q.kind != MQI_KIND_QUEUE)
    return mqi_op_fail(op, MQ_EINVAL, "%s: \"%s\" is a %s, not a queue", s->path, a->queue,
                       q.kind == MQI_KIND_TOPIC ? "topic" : "subscription");
  int64_t total = 0;
  for (size_t i = 0; i < a->n; i++) {
    if ((int64_t)a->items[i].len > q.max_payload)
      return mqi_op_fail(op, MQ_ETOOBIG,
                         "%s: entry %zu: payload of %zu bytes is above the max_payload of %lld",
                         s->path, i, a->items[i].len, (long long)q.max_payload);
    total += (int64_t)a->items[i].len;
  }
  if ((rc = mqi_store_space_ok(s, op, total)) != MQ_OK) return rc;
  int64_t now = mqi_store_now(s);
  unsigned char *buf = NULL;
  size_t cap = 0;
  for (size_t i = 0; i < a->n && rc == MQ_OK;) {
    size_t k = 0, need = 0;
    while (i + k < a->n && k < MQI_PACK_MSGS && (k == 0 || need < PACK_BYTES))
      need += pack_entry_max(&a->items[i + k++]);
    if (need > cap) {
      unsigned char *p = realloc(buf, need);
      if (!p) {
        rc = mqi_op_fail(op, MQ_ENOMEM, "out of memory for a pack of %zu bytes", need);
        break;
      }
      buf = p;
      cap = need;
    }
    rc = pack_write(s, op, &q, &a->items[i], k, buf, now);
    i += k;
  }
  free(buf);
  if (rc != MQ_OK) return rc;
  s->packs_pending = 1;
  op->flags |= MQI_OP_WAKE; /* a waiting get settles and takes them */
  return MQ_OK;
}

int mqi_pack_put(mq_store *s, const char *queue, const mqi_put_item *items, size_t n) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (n == 0) return MQ_OK;
  if (!items) return mqi_err_set(s, MQ_EINVAL, "mqi_pack_put: items is NULL");
  for (size_t i = 0; i < n; i++)
    if ((!items[i].data && items[i].len) || items[i].len > MQ_PAYLOAD_LIMIT)
      return mqi_err_set(s, items[i].data ? MQ_ETOOBIG : MQ_EINVAL,
                         "entry %zu: a payload of %zu bytes%s", i, items[i].len,
                         items[i].data ? " is above the limit" : " with no data");
  pack_arg a = {queue, items, n};
  return mqi_commit_run(s, pack_put_op, &a,
                        MQI_RUN_DURABLE | MQI_RUN_REPEATABLE | MQI_RUN_KEEPS_QUEUES | MQI_RUN_PACK);
}

/* A pack's row, its data copied: the statement is reset before the pack's
** row is deleted. */
typedef struct pack_row {
  int64_t id, qid, n, enqueued;
  unsigned char *data;
  size_t len;
} pack_row;

static int pack_row_read(sqlite3_stmt *st, pack_row *r) {
  r->id = sqlite3_column_int64(st, 0);
  r->qid = sqlite3_column_int64(st, 1);
  r->n = sqlite3_column_int64(st, 2);
  r->enqueued = sqlite3_column_int64(st, 3);
  r->len = (size_t)sqlite3_column_bytes(st, 4);
  r->data = r->len ? malloc(r->len) : NULL;
  if (r->data) memcpy(r->data, sqlite3_column_blob(st, 4), r->len);
  sqlite3_reset(st);
  return r->len && !r->data ? MQ_ENOMEM : MQ_OK;
}

/* Settle one pack: its rows in, its row out.  With fresh, the messages
** take new ids instead of the pack's (see mqi_pack_settle). */
static int pack_settle_one(mq_store *s, mqi_op *op, const pack_row *r, mqi_put_item *items,
                           int64_t now, int fresh) {
  mqi_queue q;
  int rc = mqi_queue_by_id(s, op, r->qid, &q);
  if (rc == MQ_ENOTFOUND) {
    /* Only damage can leave such a row: a queue's purge and drop take its
    ** packs with them. */
    mqi_log(s, MQ_LOG_ERROR, "%s: pack %lld (%lld messages) names no queue; dropped", s->path,
            (long long)r->id, (long long)r->n);
    rc = MQ_OK;
  } else if (rc == MQ_OK &&
             !(q.retention_ms > 0 && mqi_time_add(r->enqueued, q.retention_ms) <= now)) {
    size_t trailing;
    size_t k = mqi_pack_parse(r->data, r->len, items, &trailing);
    if (trailing || (int64_t)k != r->n)
      mqi_log(s, MQ_LOG_ERROR,
              "%s: pack %lld: %zu messages where %lld were stored, %zu bytes "
              "left over",
              s->path, (long long)r->id, k, (long long)r->n, trailing);
    int64_t first = r->id, span = k ? (int64_t)k : 1;
    if (fresh)
      rc = mqi_store_next_ids(s, op, (size_t)span, &first);
    else if (!mqi_pack_ids_ok(first, (size_t)span))
      rc = mqi_op_fail(op, MQ_ECORRUPT, "%s: pack %lld: its ids are out of range", s->path,
                       (long long)r->id); /* damage: settled under new ids */
    if (rc == MQ_OK) rc = mqi_put_rows_at(s, op, &q, items, k, r->enqueued, first);
  }
  if (rc != MQ_OK) return rc;
  sqlite3_stmt *del = mqi_store_stmt(s, MQI_ST_PACK_DELETE);
  if (!del) return mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
  sqlite3_bind_int64(del, 1, r->id);
  int src = sqlite3_step(del);
  sqlite3_reset(del);
  return src == SQLITE_DONE ? MQ_OK : mqi_op_sqlite(s, op, src, "deleting a pack");
}

/* A pack that failed for another reason than a passing one (a full disk,
** memory, I/O, a lock) is damaged: it is set aside for this transaction,
** not allowed to hold back the packs after it. */
static int pack_transient(int rc) {
  return rc == MQ_ENOMEM || rc == MQ_EFULL || rc == MQ_EIO || rc == MQ_EBUSY;
}

/* Settle one pack in a savepoint of its own.  A pack that fails for any
** other reason than a passing one can only be damaged: its ids collide
** with rows, say.  It is settled again under new ids (its messages go to
** the back of the queue rather than be lost), and if even that fails it is
** set aside for this transaction (*aside), not allowed to hold back the
** packs after it. */
static int pack_settle_saved(mq_store *s, mqi_op *op, const pack_row *r, mqi_put_item *items,
                             int64_t now, int *aside) {
  int rc = MQ_OK;
  *aside = 0;
  for (int fresh = 0; fresh < 2; fresh++) {
    /* Savepoints of one name nest: these act on the innermost. */
    int src = mqi_store_exec(s, MQI_ST_SAVEPOINT);
    if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "savepoint");
    rc = pack_settle_one(s, op, r, items, now, fresh);
    if (rc != MQ_OK && sqlite3_get_autocommit(s->db)) return rc; /* the transaction is gone */
    if (rc != MQ_OK && (src = mqi_store_exec(s, MQI_ST_ROLLBACK_TO)) != SQLITE_OK)
      return mqi_op_sqlite(s, op, src, "undoing a pack");
    if ((src = mqi_store_exec(s, MQI_ST_RELEASE)) != SQLITE_OK)
      return mqi_op_sqlite(s, op, src, "savepoint");
    if (rc == MQ_OK || pack_transient(rc)) return rc;
    mqi_log(s, MQ_LOG_ERROR, "%s: pack %lld cannot be settled%s (%s)", s->path, (long long)r->id,
            fresh ? " under new ids either; it waits" : "; trying new ids", op->err);
    op->err[0] = '\0';
  }
  *aside = 1;
  return MQ_OK;
}

int mqi_pack_settle(mq_store *s, mqi_op *op, int64_t max, int *left) {
  int64_t now = mqi_store_now(s), done = 0, after = INT64_MIN;
  *left = 0;
  mqi_put_item *items = malloc(MQI_PACK_MSGS * sizeof *items);
  if (!items) return mqi_op_fail(op, MQ_ENOMEM, "out of memory settling packs");
  int rc = MQ_OK;
  for (;;) {
    sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_PACK_OLDEST);
    if (!st) {
      rc = mqi_op_sqlite(s, op, sqlite3_errcode(s->db), "preparing");
      break;
    }
    sqlite3_bind_int64(st, 1, after);
    int src = sqlite3_step(st);
    if (src != SQLITE_ROW || done >= max) {
      sqlite3_reset(st);
      if (src == SQLITE_ROW)
        *left = 1;
      else if (src != SQLITE_DONE)
        rc = mqi_op_sqlite(s, op, src, "reading a pack");
      break;
    }
    if (after != INT64_MIN && sqlite3_column_int64(st, 0) <= after) {
      /* Only a damaged b-tree answers so; going on would never end. */
      sqlite3_reset(st);
      rc = mqi_op_fail(op, MQ_ECORRUPT, "%s: the packs' table is damaged", s->path);
      break;
    }
    op->flags |= MQI_OP_WROTE;
    pack_row r;
    int aside = 0;
    rc = pack_row_read(st, &r);
    if (rc == MQ_OK)
      rc = pack_settle_saved(s, op, &r, items, now, &aside);
    else
      rc = mqi_op_fail(op, rc, "out of memory settling a pack of %zu bytes", r.len);
    free(r.data);
    if (rc != MQ_OK) break;
    /* Only settled packs count towards max: packs set aside stay, and the
    ** next call meets them again first; counted, enough of them would
    ** make every call end with *left and no progress (a caller looping
    ** on *left would never end).  The count is the stored one, bounded
    ** (damage). */
    if (!aside) done += r.n < 1 ? 1 : r.n > MQI_PACK_MSGS ? MQI_PACK_MSGS : r.n;
    after = r.id;
  }
  free(items);
  return rc;
}

int mqi_pack_clear(mq_store *s, mqi_op *op, int64_t qid, int64_t *deleted) {
  sqlite3_stmt *st = NULL;
  /* A damaged count is bounded as stats bound it, not summed into an
  ** overflow. */
  int src = sqlite3_prepare_v2(
      s->db, "DELETE FROM mq_pack WHERE queue_id = ?1 RETURNING min(max(n, 1), 256)", -1, &st,
      NULL);
  if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "preparing");
  sqlite3_bind_int64(st, 1, qid);
  while ((src = sqlite3_step(st)) == SQLITE_ROW)
    if (deleted) *deleted += sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return src == SQLITE_DONE ? MQ_OK : mqi_op_sqlite(s, op, src, "deleting packs");
}

int mqi_pack_check(mq_store *s, int *backlog, char *msg, size_t cap) {
  sqlite3_stmt *st = mqi_store_stmt(s, MQI_ST_PACK_ANY);
  int src = st ? sqlite3_step(st) : sqlite3_errcode(s->db);
  int64_t packs = src == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  if (st) sqlite3_reset(st);
  s->packs_pending = packs > 0;
  *backlog = packs > MQI_PACK_STEP / MQI_PACK_MSGS;
  if (src == SQLITE_ROW) return MQ_OK;
  snprintf(msg, cap, "%s: looking for packs: %s (SQLite code %d)", s->path, sqlite3_errmsg(s->db),
           src);
  int rc = mqi_err_from_sqlite(src);
  return rc == MQ_OK ? MQ_ERROR : rc;
}

static void pack_op_init(mqi_op *op) {
  op->how = MQI_RUN_PACK;
  op->flags = 0;
  op->rc = MQ_OK;
  op->err[0] = '\0';
}

static void pack_failed(mq_store *s, const mqi_op *op) {
  if (s->pack_log_failed) return;
  s->pack_log_failed = 1;
  mqi_log(s, MQ_LOG_WARN,
          "%s: packed messages could not be turned into rows (%s); trying again with the "
          "next transaction",
          s->path, op->err[0] ? op->err : "unknown error");
}

int mqi_pack_settle_all(mq_store *s, int *redo) {
  *redo = 0;
  if (!s->packs_pending) return MQ_OK;
  s->packs_pending = 0;
  mqi_op op;
  pack_op_init(&op);
  int src = mqi_store_exec(s, MQI_ST_SAVEPOINT);
  int rc = src != SQLITE_OK ? mqi_op_sqlite(s, &op, src, "savepoint")
                            : mqi_pack_settle(s, &op, INT64_MAX, &(int){0});
  if (rc != MQ_OK) {
    pack_failed(s, &op);
    /* Some errors (out of memory, a full disk) make SQLite roll the whole
    ** transaction back; and one whose undo fails must be rolled back. */
    *redo = sqlite3_get_autocommit(s->db) ||
            (src == SQLITE_OK && (mqi_store_exec(s, MQI_ST_ROLLBACK_TO) != SQLITE_OK ||
                                  mqi_store_exec(s, MQI_ST_RELEASE) != SQLITE_OK));
    return rc;
  }
  if ((src = mqi_store_exec(s, MQI_ST_RELEASE)) != SQLITE_OK) {
    *redo = 1;
    return mqi_op_sqlite(s, &op, src, "savepoint");
  }
  s->pack_log_failed = 0;
  return MQ_OK;
}

int mqi_pack_settle_step(mq_store *s, int *left) {
  mqi_op op;
  pack_op_init(&op);
  int rc = mqi_pack_settle(s, &op, MQI_PACK_STEP, left);
  if (rc != MQ_OK)
    pack_failed(s, &op);
  else
    s->pack_log_failed = 0;
  return rc;
}

typedef struct pack_some_arg {
  int64_t max;
  int left;
} pack_some_arg;

static int pack_some_op(mq_store *s, mqi_op *op) {
  pack_some_arg *a = op->arg;
  return mqi_pack_settle(s, op, a->max, &a->left);
}

int mqi_pack_settle_some(mq_store *s, int64_t max, int *left) {
  pack_some_arg a = {max, 0};
  *left = 0;
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  rc = mqi_commit_run(s, pack_some_op, &a, MQI_RUN_PACK);
  *left = a.left;
  return rc;
}
/*** end src/pack.c ***/

/*** begin src/pack_read.c ***/
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
/* #include "mqi.h" -- inlined above */

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
/*** end src/pack_read.c ***/

/*** begin src/msg.c ***/
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
/* #include "mqi.h" -- inlined above */

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
/*** end src/msg.c ***/

/*** begin src/inspect.c ***/
/*
** inspect.c -- reading a store without changing it: scanning every message
** of a queue (exports, backups), verifying the whole file, and the facts
** about the file as a whole.
**
** All run on the handle's read connection (mqi_store_read), scan and verify
** inside one read transaction so they see a single snapshot, and none takes
** the writer gate: other processes keep putting and getting while a scan
** runs, and so do this handle's other threads.  A read made from a scan or
** verify callback of the same handle returns MQ_EMISUSE (mq.h says why).
**
** Verification reports problems as text lines through a callback and goes
** on after each one, so a damaged store is described as a whole rather
** than by its first fault.
*/
/* #include "mqi.h" -- inlined above */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The visible state of a row as of now, as a get would see it. */
#define INSPECT_SCAN_SQL(P)                                                                     \
  "SELECT m.id, m.priority, m.receives, m.enqueued_at, m.reason, " MQI_PAYLOAD_COLS(P)          \
  ", m.visible_at, m.expires_at, m.state, b.subject, m.body_id"                                 \
  " FROM mq_msg m LEFT JOIN mq_body b ON b.id = m.body_id"                                      \
  " WHERE m.queue_id = ?1 AND " MQI_SQL_LIVE                                                    \
  " ORDER BY m.id"

/* A visible message that has used up max_receives is dead: the next get
** dead-letters it rather than deliver it. */
static int inspect_state(int state, int64_t visible_at, int receives, int max_receives,
                         int64_t now) {
  if ((state == MQI_INFLIGHT || state == MQI_DELAYED) && visible_at <= now) state = MQ_STATE_READY;
  if (state == MQ_STATE_READY && max_receives > 0 && receives >= max_receives)
    return MQ_STATE_DEAD;
  return state;
}

/* The message of the scan's current row, and its state. */
static int scan_row(sqlite3_stmt *st, int max_receives, int64_t now, mq_msg **m, int *state) {
  int rc = mqi_msg_build(
      sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 3), sqlite3_column_int(st, 2),
      sqlite3_column_int(st, 1), (const char *)sqlite3_column_text(st, 4),
      (const char *)sqlite3_column_text(st, 13), mqi_msg_body_size(st, 5, 6, 9),
      (uint32_t)sqlite3_column_int64(st, 6), sqlite3_column_int(st, 7), sqlite3_column_blob(st, 8),
      (size_t)sqlite3_column_bytes(st, 8), sqlite3_column_blob(st, 9),
      (size_t)sqlite3_column_bytes(st, 9), m);
  if (rc != MQ_OK) return rc;
  int64_t vis = sqlite3_column_int64(st, 10);
  mqi_msg_set_times(*m, vis, sqlite3_column_int64(st, 11));
  mqi_msg_set_body(*m, sqlite3_column_int64(st, 14));
  *state = inspect_state(sqlite3_column_int(st, 12), vis, sqlite3_column_int(st, 2), max_receives,
                         now);
  return MQ_OK;
}

int mq_queue_scan(mq_store *s, const char *queue, mq_scan_fn fn, void *ctx, int64_t *corrupt) {
  if (corrupt) *corrupt = 0;
  int rc = mqi_store_check(s, 0);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_qname(s, queue)) != MQ_OK) return rc;
  if (!fn) return mqi_err_set(s, MQ_EINVAL, "mq_queue_scan: fn is NULL");
  sqlite3 *db;
  if ((rc = mqi_store_read(s, &db)) != MQ_OK) return rc;
  int64_t now = mqi_store_now(s), bad = 0;
  sqlite3_stmt *st = NULL;
  mqi_pack_cursor pc;
  memset(&pc, 0, sizeof pc);
  int format;
  int src = mqi_store_snapshot(db, &format);
  int64_t qid = 0, retention_ms = 0;
  int max_receives = 0;
  if (src == SQLITE_OK) rc = mqi_store_format_ok(s, format);
  if (src == SQLITE_OK && rc == MQ_OK)
    src = sqlite3_prepare_v2(
        db, "SELECT id, kind, max_receives, retention_ms FROM mq_queue WHERE name=?1", -1, &st,
        NULL);
  if (src == SQLITE_OK && rc == MQ_OK) {
    sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
    src = sqlite3_step(st);
    if (src == SQLITE_ROW && sqlite3_column_int(st, 1) == MQI_KIND_TOPIC) {
      rc = mqi_err_set(s, MQ_EINVAL, "%s: \"%s\" is a topic; scan its subscriptions, \"%s/SUB\"",
                       s->path, queue, queue);
      src = SQLITE_OK;
    } else if (src == SQLITE_ROW) {
      qid = sqlite3_column_int64(st, 0);
      max_receives = sqlite3_column_int(st, 2);
      retention_ms = sqlite3_column_int64(st, 3);
      src = SQLITE_OK;
    } else if (src == SQLITE_DONE) {
      rc = mqi_err_set(s, MQ_ENOTFOUND, "%s: no queue named \"%s\"", s->path, queue);
      src = SQLITE_OK;
    }
    sqlite3_finalize(st);
    st = NULL;
  }
  if (src == SQLITE_OK && rc == MQ_OK)
    src = sqlite3_prepare_v2(db,
                             format < 2 ? INSPECT_SCAN_SQL(MQI_PAYLOAD_V1)
                                        : INSPECT_SCAN_SQL(MQI_PAYLOAD_V2),
                             -1, &st, NULL);
  if (src == SQLITE_OK && rc == MQ_OK)
    src = mqi_pack_cursor_open(&pc, db, format, qid, retention_ms, now);
  if (src == SQLITE_OK && rc == MQ_OK) {
    sqlite3_bind_int64(st, 1, qid);
    sqlite3_bind_int64(st, 2, now);
    /* Rows and packed messages, merged in id order. */
    int64_t pid = 0;
    int psrc = mqi_pack_cursor_peek(&pc, &pid);
    src = sqlite3_step(st);
    while (mqi_merge_more(src, psrc)) {
      mq_msg *m = NULL;
      int brc, state = MQ_STATE_READY;
      if (src == SQLITE_ROW && (psrc != SQLITE_ROW || sqlite3_column_int64(st, 0) < pid)) {
        brc = scan_row(st, max_receives, now, &m, &state);
        src = sqlite3_step(st);
      } else {
        brc = mqi_pack_cursor_take(&pc, &m);
        psrc = mqi_pack_cursor_peek(&pc, &pid);
      }
      if (brc == MQ_ECORRUPT) {
        bad++;
        continue;
      }
      if (brc != MQ_OK) {
        rc = mqi_err_set(s, brc, "out of memory scanning \"%s\"", queue);
        break;
      }
      int stop = fn(ctx, m, state);
      mq_msg_free(m);
      if (stop) break;
    }
    if (src == SQLITE_ROW || src == SQLITE_DONE) src = psrc == SQLITE_ROW ? SQLITE_DONE : psrc;
    if (src == SQLITE_DONE) src = SQLITE_OK;
  }
  if (src != SQLITE_OK && rc == MQ_OK)
    rc = mqi_err_set(s, mqi_err_from_sqlite(src), "%s: scanning \"%s\": %s", s->path, queue,
                     sqlite3_errmsg(db));
  sqlite3_finalize(st);
  mqi_pack_cursor_close(&pc);
  mqi_store_read_done(s, src);
  if (corrupt) *corrupt = bad;
  return rc;
}

/* ---- verify ------------------------------------------------------------------ */

typedef struct verify_ctx {
  mq_verify_fn fn;
  void *ctx;
  int64_t problems;
} verify_ctx;

static void verify_report(verify_ctx *v, const char *fmt, ...) {
  char line[MQI_ERRMSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  v->problems++;
  if (v->fn) v->fn(v->ctx, line);
}

/* Run a query whose every row is a problem, described by column 0; ?1,
** if the query has it, is the file's format version.  Returns the SQLite
** code of the query. */
static int verify_rows(sqlite3 *db, verify_ctx *v, const char *sql, int format) {
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
  if (src != SQLITE_OK) return src;
  if (sqlite3_bind_parameter_count(st) > 0) sqlite3_bind_int(st, 1, format);
  while ((src = sqlite3_step(st)) == SQLITE_ROW) {
    const char *text = (const char *)sqlite3_column_text(st, 0);
    verify_report(v, "%s", text ? text : "");
  }
  sqlite3_finalize(st);
  return src == SQLITE_DONE ? SQLITE_OK : src;
}

/* Every payload against its checksum: bodies, and from format 2 on the
** payloads kept in message rows (a missing body is reported apart). */
#define VERIFY_PAYLOADS_SQL(P, WHERE)                                                         \
  "SELECT m.id, q.name, " MQI_PAYLOAD_COLS(P) " FROM mq_msg m"                              \
  " LEFT JOIN mq_body b ON b.id = m.body_id"                                                \
  " LEFT JOIN mq_queue q ON q.id = m.queue_id WHERE " WHERE " ORDER BY m.id"

static int verify_payloads(sqlite3 *db, int format, verify_ctx *v) {
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(
      db,
      format < 2 ? VERIFY_PAYLOADS_SQL(MQI_PAYLOAD_V1, "b.id IS NOT NULL")
                 : VERIFY_PAYLOADS_SQL(MQI_PAYLOAD_V2, "(m.body_id = 0 OR b.id IS NOT NULL)"),
      -1, &st, NULL);
  if (src != SQLITE_OK) return src;
  while ((src = sqlite3_step(st)) == SQLITE_ROW) {
    mq_msg *m = NULL;
    int rc =
        mqi_msg_build(sqlite3_column_int64(st, 0), 0, 0, 0, NULL, NULL, mqi_msg_body_size(st, 2, 3, 6),
                      (uint32_t)sqlite3_column_int64(st, 3), sqlite3_column_int(st, 4),
                      sqlite3_column_blob(st, 5), (size_t)sqlite3_column_bytes(st, 5),
                      sqlite3_column_blob(st, 6), (size_t)sqlite3_column_bytes(st, 6), &m);
    mq_msg_free(m);
    if (rc == MQ_ECORRUPT) {
      const char *q = (const char *)sqlite3_column_text(st, 1);
      /* Columns that cannot be NULL for a stored payload are: it is gone. */
      verify_report(v,
                    mqi_msg_body_size(st, 2, 3, 6) < 0
                        ? "queue \"%s\": message %lld: has no payload (its size, checksum or "
                          "data is missing)"
                        : "queue \"%s\": message %lld: payload fails its checksum",
                    q ? q : "?", (long long)sqlite3_column_int64(st, 0));
    } else if (rc != MQ_OK) {
      sqlite3_finalize(st);
      return SQLITE_NOMEM;
    }
  }
  sqlite3_finalize(st);
  return src == SQLITE_DONE ? SQLITE_OK : src;
}

/* Every pack (format 3): its queue, its framing, its messages' checksums. */
static int verify_packs(sqlite3 *db, verify_ctx *v) {
  sqlite3_stmt *st = NULL;
  /* A pack's ids must be its own: a message or a later pack with one of
  ** them would collide when it settles. */
  int src = sqlite3_prepare_v2(
      db,
      "SELECT p.id, q.name, p.n, p.data,"
      " EXISTS (SELECT 1 FROM mq_msg m WHERE m.id BETWEEN p.id AND p.id + p.n - 1)"
      " OR EXISTS (SELECT 1 FROM mq_pack o WHERE o.id > p.id AND o.id < p.id + p.n)"
      " FROM mq_pack p LEFT JOIN mq_queue q ON q.id = p.queue_id ORDER BY p.id",
      -1, &st, NULL);
  mqi_put_item *items = src == SQLITE_OK ? malloc(MQI_PACK_MSGS * sizeof *items) : NULL;
  if (src == SQLITE_OK && !items) src = SQLITE_NOMEM;
  while (src == SQLITE_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
    src = SQLITE_OK;
    long long id = sqlite3_column_int64(st, 0), n = sqlite3_column_int64(st, 2);
    const char *q = (const char *)sqlite3_column_text(st, 1);
    int64_t bad = 0;
    const char *what = q ? mqi_pack_damage(sqlite3_column_blob(st, 3),
                                           (size_t)sqlite3_column_bytes(st, 3), n, id, items, &bad)
                         : "belongs to no queue";
    if (what && bad)
      verify_report(v, "queue \"%s\": pack %lld: message %lld fails its checksum", q, id,
                    (long long)bad);
    else if (what)
      verify_report(v, "queue \"%s\": pack %lld (%lld messages) %s", q ? q : "?", id, n, what);
    if (sqlite3_column_int(st, 4))
      verify_report(v, "queue \"%s\": pack %lld shares message ids with other messages",
                    q ? q : "?", id);
  }
  free(items);
  sqlite3_finalize(st);
  return src == SQLITE_DONE ? SQLITE_OK : src;
}

int mq_store_verify(mq_store *s, mq_verify_fn fn, void *ctx, int64_t *problems) {
  if (problems) *problems = 0;
  int rc = mqi_store_check(s, 0);
  if (rc != MQ_OK) return rc;
  verify_ctx v = {fn, ctx, 0};
  sqlite3 *db;
  if ((rc = mqi_store_read(s, &db)) != MQ_OK) return rc;
  int format;
  int src = mqi_store_snapshot(db, &format);
  if (src == SQLITE_OK && (rc = mqi_store_format_ok(s, format)) != MQ_OK) {
    mqi_store_read_done(s, src);
    return rc;
  }
  if (src == SQLITE_OK) {
    /* SQLite's own check first: if the b-trees are damaged, the rest may
    ** read garbage, but it still runs and reports what it can. */
    sqlite3_stmt *st = NULL;
    src = sqlite3_prepare_v2(db, "PRAGMA integrity_check(100)", -1, &st, NULL);
    int step = SQLITE_DONE;
    while (src == SQLITE_OK && (step = sqlite3_step(st)) == SQLITE_ROW) {
      const char *line = (const char *)sqlite3_column_text(st, 0);
      if (!line || strcmp(line, "ok") == 0) continue;
      /* A page that could not be read (I/O error, out of memory) is not
      ** damage: the check could not run, which is another answer. */
      const char *code = strstr(line, "error code=");
      int ec = code ? atoi(code + 11) & 0xff : 0;
      if (ec == SQLITE_IOERR || ec == SQLITE_NOMEM) {
        step = ec;
        break;
      }
      verify_report(&v, "file: %s", line);
    }
    if (src == SQLITE_OK && step != SQLITE_DONE) src = step;
    sqlite3_finalize(st);
  }
  if (src == SQLITE_OK)
    src = verify_rows(db, &v,
                      "SELECT 'message ' || m.id || ' belongs to no queue (queue id '"
                      " || m.queue_id || ')' FROM mq_msg m"
                      " WHERE m.queue_id NOT IN (SELECT id FROM mq_queue)",
                      format);
  if (src == SQLITE_OK)
    src = verify_rows(db, &v,
                      "SELECT 'queue \"' || coalesce(q.name, '?') || '\": message ' || m.id"
                      " || ' has no payload (body ' || m.body_id || ' is missing)'"
                      " FROM mq_msg m LEFT JOIN mq_queue q ON q.id = m.queue_id"
                      " WHERE m.body_id NOT IN (SELECT id FROM mq_body)"
                      " AND (m.body_id != 0 OR ?1 < 2)",
                      format);
  if (src == SQLITE_OK)
    src = verify_rows(db, &v,
                      "SELECT 'payload ' || b.id || ' counts ' || b.refs || ' references but "
                      "has ' || count(m.id) FROM mq_body b LEFT JOIN mq_msg m"
                      " ON m.body_id = b.id GROUP BY b.id HAVING b.refs != count(m.id)",
                      format);
  if (src == SQLITE_OK)
    src = verify_rows(db, &v,
                      "SELECT 'message ' || id || ' has an invalid state ' || state"
                      " FROM mq_msg WHERE state NOT IN (0,1,2,3)",
                      format);
  if (src == SQLITE_OK) src = verify_payloads(db, format, &v);
  if (src == SQLITE_OK && format >= 3) src = verify_packs(db, &v);
  if (src != SQLITE_OK) {
    int code = mqi_err_from_sqlite(src);
    if (code == MQ_ECORRUPT) {
      verify_report(&v, "file: %s", sqlite3_errmsg(db));
      rc = MQ_ECORRUPT;
    } else {
      rc = mqi_err_set(s, code == MQ_OK ? MQ_ERROR : code, "%s: verifying: %s", s->path,
                       sqlite3_errmsg(db));
    }
  } else if (v.problems) {
    rc = mqi_err_set(s, MQ_ECORRUPT, "%s: %lld problem(s) found", s->path, (long long)v.problems);
  }
  mqi_store_read_done(s, src);
  if (problems) *problems = v.problems;
  return rc;
}

int mq_store_info_get(mq_store *s, mq_store_info *out) {
  if (out) memset(out, 0, sizeof *out);
  int rc = mqi_store_check(s, 0);
  if (rc != MQ_OK) return rc;
  if (!out) return mqi_err_set(s, MQ_EINVAL, "mq_store_info_get: out is NULL");
  sqlite3 *db;
  if ((rc = mqi_store_read(s, &db)) != MQ_OK) return rc;
  sqlite3_stmt *st = NULL;
  /* One statement, one snapshot. */
  int src = sqlite3_prepare_v2(db,
                               "SELECT (SELECT user_version FROM pragma_user_version),"
                               " (SELECT page_size FROM pragma_page_size),"
                               " (SELECT page_count FROM pragma_page_count),"
                               " (SELECT freelist_count FROM pragma_freelist_count),"
                               " (SELECT value FROM mq_meta WHERE key = 'created_by'),"
                               " (SELECT count(*) FROM mq_queue WHERE kind = 0),"
                               " (SELECT count(*) FROM mq_queue WHERE kind = 1),"
                               " (SELECT count(*) FROM mq_queue WHERE kind = 2)",
                               -1, &st, NULL);
  if (src == SQLITE_OK) src = sqlite3_step(st);
  if (src == SQLITE_ROW) {
    out->format_version = sqlite3_column_int(st, 0);
    out->page_size = sqlite3_column_int(st, 1);
    out->file_bytes = sqlite3_column_int64(st, 2) * out->page_size;
    out->free_bytes = sqlite3_column_int64(st, 3) * out->page_size;
    const unsigned char *by = sqlite3_column_text(st, 4);
    snprintf(out->created_by, sizeof out->created_by, "%s", by ? (const char *)by : "");
    out->queues = sqlite3_column_int64(st, 5);
    out->topics = sqlite3_column_int64(st, 6);
    out->subscriptions = sqlite3_column_int64(st, 7);
    src = SQLITE_OK;
  } else {
    rc = mqi_err_set(s, mqi_err_from_sqlite(src), "%s: reading the store's facts: %s", s->path,
                     sqlite3_errmsg(db));
    if (rc == MQ_OK) rc = MQ_ERROR;
  }
  sqlite3_finalize(st);
  if (rc == MQ_OK) {
    /* The unix VFS names the WAL after the file SQLite opened. */
    const char *file = sqlite3_db_filename(db, "main");
    size_t n = file ? strlen(file) : 0;
    char *wal = n ? malloc(n + 5) : NULL;
    struct stat sb;
    if (wal) {
      memcpy(wal, file, n);
      memcpy(wal + n, "-wal", 5);
      if (stat(wal, &sb) == 0) out->wal_bytes = (int64_t)sb.st_size;
      free(wal);
    }
  }
  mqi_store_read_done(s, src);
  if (rc != MQ_OK) memset(out, 0, sizeof *out);
  return rc;
}
/*** end src/inspect.c ***/

/*** begin src/topic.c ***/
/*
** topic.c -- topics, durable subscriptions, subject filters and publish.
**
** A topic is an mq_queue row of kind TOPIC that never holds messages
** itself.  Each subscription is an mq_queue row of kind SUBSCRIPTION named
** "topic/sub", with parent_id pointing at the topic and its filter in
** `filter`.  Publishing stores the payload once (mq_body.refs = number of
** matching subscriptions) and one small mq_msg row per matching
** subscription, all in the publisher's transaction: a crash leaves either
** every delivery or none.  From then on a subscription is a queue, so
** leases, acks, dead letters and waits need no code of their own here, and
** the payload goes away when the last subscription has acked it.
**
** Matching walks the filter and the subject level by level, with no
** allocation; a publish tests every subscription of the topic, so its cost
** grows with their number (bench/ measures it with thousands).
*/
/* #include "mqi.h" -- inlined above */

#include <stdlib.h>
#include <string.h>

/* ---- subject matching ---------------------------------------------------- */

static int topic_is_sep(char c) { return c == '.' || c == '/'; }

/* The level starting at p: its length; *next is past its separator, or NULL
** when it was the last level. */
static size_t topic_level(const char *p, const char **next) {
  size_t n = 0;
  while (p[n] && !topic_is_sep(p[n])) n++;
  *next = p[n] ? p + n + 1 : NULL;
  return n;
}

static int topic_is_wild(const char *lv, size_t n) {
  return n == 1 && (lv[0] == '*' || lv[0] == '+' || lv[0] == '>' || lv[0] == '#');
}

/* 0 if filter is well formed, -1 if not. */
static int topic_check_filter(const char *f) {
  if (!f || !*f) return 0;
  if (strlen(f) > MQ_SUBJECT_MAX) return -1;
  for (const char *p = f; p;) {
    const char *next;
    size_t n = topic_level(p, &next);
    for (size_t i = 0; i < n; i++) {
      unsigned char c = (unsigned char)p[i];
      if (c < 0x20 || c == 0x7f) return -1;
      /* A wildcard must be a whole level: "a*" would be ambiguous. */
      if ((c == '*' || c == '>' || c == '#') && n != 1) return -1;
    }
    if (n == 1 && (p[0] == '>' || p[0] == '#') && next) return -1;
    p = next;
  }
  return 0;
}

static int topic_check_subject(const char *sj) {
  if (!sj) return 0;
  if (strlen(sj) > MQ_SUBJECT_MAX) return -1;
  for (const char *p = sj; p;) {
    const char *next;
    size_t n = topic_level(p, &next);
    for (size_t i = 0; i < n; i++) {
      unsigned char c = (unsigned char)p[i];
      if (c < 0x20 || c == 0x7f) return -1;
      /* No filter could name a level such as "c#" or "a*b" (a filter level
      ** with these in it is malformed), so no subscription could select it
      ** by name; '+' inside a level is text on both sides ("c++"). */
      if (c == '*' || c == '>' || c == '#') return -1;
    }
    /* A lone '+' would match differently than it reads. */
    if (topic_is_wild(p, n)) return -1;
    p = next;
  }
  return 0;
}

static int topic_match(const char *f, const char *sj) {
  if (!f || !*f) return 1;
  if (sj && !*sj) sj = NULL; /* an empty subject has no levels */
  const char *fp = f, *sp = sj;
  while (fp) {
    const char *fnext, *snext = NULL;
    size_t fn = topic_level(fp, &fnext);
    if (fn == 1 && fp[0] == '#') return 1;
    if (fn == 1 && fp[0] == '>') return sp != NULL;
    if (!sp) return 0;
    size_t sn = topic_level(sp, &snext);
    if (!(fn == 1 && (fp[0] == '*' || fp[0] == '+')) && (fn != sn || memcmp(fp, sp, fn) != 0))
      return 0;
    fp = fnext;
    sp = snext;
  }
  return sp == NULL;
}

int mq_subject_matches(const char *filter, const char *subject) {
  if (topic_check_filter(filter) != 0) return -1;
  return topic_match(filter, subject);
}

/* ---- topics and subscriptions ------------------------------------------ */

int mq_topic_create(mq_store *s, const char *topic, const mq_queue_options *opts) {
  return mqi_queue_create(s, topic, MQI_KIND_TOPIC, opts);
}

static int topic_find(mq_store *s, mqi_op *op, const char *name, mqi_queue *q) {
  int rc = mqi_queue_find(s, op, name, q);
  if (rc == MQ_ENOTFOUND)
    return mqi_op_fail(op, MQ_ENOTFOUND, "%s: no topic named \"%s\"", s->path, name);
  if (rc == MQ_OK && q->kind != MQI_KIND_TOPIC)
    return mqi_op_fail(op, MQ_EINVAL, "%s: \"%s\" is a queue, not a topic", s->path, name);
  return rc;
}

typedef struct topic_arg {
  const char *topic;
  const char *sub;
  char path[2 * MQ_NAME_MAX + 2]; /* "topic/sub" */
  const char *filter;
  mq_queue_options o;
  /* publish */
  mqi_put_item *items;
  size_t n;
  int64_t *ids;
  int64_t delivered;
} topic_arg;

static int topic_drop_op(mq_store *s, mqi_op *op) {
  topic_arg *a = op->arg;
  mqi_queue t;
  int rc = topic_find(s, op, a->topic, &t);
  if (rc != MQ_OK) return rc;
  sqlite3_stmt *st = NULL;
  int src =
      sqlite3_prepare_v2(s->db, "SELECT id, name FROM mq_queue WHERE parent_id=?1", -1, &st, NULL);
  if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "preparing");
  sqlite3_bind_int64(st, 1, t.id);
  /* Collect first: clearing a subscription deletes rows of this table. */
  int64_t *ids = NULL;
  size_t n = 0, cap = 0;
  while ((src = sqlite3_step(st)) == SQLITE_ROW) {
    if (n == cap) {
      int64_t *nid = realloc(ids, (cap ? cap * 2 : 16) * sizeof *nid);
      if (!nid) {
        src = SQLITE_NOMEM;
        break;
      }
      ids = nid;
      cap = cap ? cap * 2 : 16;
    }
    ids[n++] = sqlite3_column_int64(st, 0);
  }
  sqlite3_finalize(st);
  if (src != SQLITE_DONE) {
    free(ids);
    return src == SQLITE_NOMEM ? mqi_op_fail(op, MQ_ENOMEM, "out of memory dropping a topic")
                               : mqi_op_sqlite(s, op, src, "listing subscriptions");
  }
  for (size_t i = 0; i < n && rc == MQ_OK; i++)
    rc = mqi_queue_clear(s, op, ids[i], a->topic, 1, NULL);
  free(ids);
  if (rc == MQ_OK) rc = mqi_queue_clear(s, op, t.id, a->topic, 1, NULL);
  return rc;
}

int mq_topic_drop(mq_store *s, const char *topic) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_name(s, "topic", topic)) != MQ_OK) return rc;
  topic_arg a = {0};
  a.topic = topic;
  return mqi_commit_run(s, topic_drop_op, &a, MQI_RUN_DURABLE);
}

/* List names from mq_queue: topics (parent 0) or the subscriptions of one. */
static int topic_list(mq_store *s, const char *topic, char ***names, size_t *count) {
  if (names) *names = NULL;
  if (count) *count = 0;
  int rc = mqi_store_check(s, 0);
  if (rc != MQ_OK) return rc;
  if (topic && (rc = mqi_err_check_name(s, "topic", topic)) != MQ_OK) return rc;
  if (!names || !count) return mqi_err_set(s, MQ_EINVAL, "list: NULL output pointer");
  int rows;
  rc = mqi_queue_names(
      s,
      topic ? "SELECT t.id, s.name FROM mq_queue t LEFT JOIN mq_queue s ON s.parent_id = t.id"
              " WHERE t.name = ?1 AND t.kind = 1 ORDER BY s.name"
            : "SELECT id, name FROM mq_queue WHERE kind = 1 ORDER BY name",
      topic, topic ? strlen(topic) + 1 : 0, names, count, &rows);
  if (rc == MQ_OK && topic && rows == 0) {
    mq_list_free(*names, *count);
    *names = NULL;
    *count = 0;
    return mqi_err_set(s, MQ_ENOTFOUND, "%s: no topic named \"%s\"", s->path, topic);
  }
  return rc;
}

int mq_topic_list(mq_store *s, char ***names, size_t *count) {
  return topic_list(s, NULL, names, count);
}

int mq_subscription_list(mq_store *s, const char *topic, char ***names, size_t *count) {
  if (!topic) {
    if (names) *names = NULL;
    if (count) *count = 0;
    int rc = mqi_store_check(s, 0);
    return rc != MQ_OK ? rc : mqi_err_set(s, MQ_EINVAL, "mq_subscription_list: topic is NULL");
  }
  return topic_list(s, topic, names, count);
}

static int topic_sub_create_op(mq_store *s, mqi_op *op) {
  topic_arg *a = op->arg;
  mqi_queue t, dlq = {0}, old;
  int rc = topic_find(s, op, a->topic, &t);
  if (rc != MQ_OK) return rc;
  if (a->o.dlq) {
    rc = mqi_queue_find(s, op, a->o.dlq, &dlq);
    if (rc == MQ_ENOTFOUND || (rc == MQ_OK && dlq.kind != MQI_KIND_QUEUE))
      return mqi_op_fail(op, MQ_EINVAL, "%s: dead-letter queue \"%s\" is not a queue", s->path,
                         a->o.dlq);
    if (rc != MQ_OK) return rc;
    if ((rc = mqi_queue_check_dlq(s, op, a->path, a->o.max_receives, &dlq)) != MQ_OK) return rc;
  }
  rc = mqi_queue_find(s, op, a->path, &old);
  if (rc == MQ_OK) {
    /* Same subscription again: fine if nothing differs. */
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(s->db, "SELECT coalesce(filter, '') FROM mq_queue WHERE id=?1", -1,
                                 &st, NULL);
    if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "preparing");
    sqlite3_bind_int64(st, 1, old.id);
    int same_filter =
        sqlite3_step(st) == SQLITE_ROW &&
        strcmp((const char *)sqlite3_column_text(st, 0), a->filter ? a->filter : "") == 0;
    sqlite3_finalize(st);
    if (same_filter && old.visibility_ms == a->o.visibility_ms &&
        old.max_receives == a->o.max_receives && old.dlq_id == dlq.id &&
        old.retention_ms == a->o.retention_ms)
      return MQ_OK;
    return mqi_op_fail(op, MQ_EEXIST,
                       "%s: subscription \"%s\" exists with another filter or "
                       "options",
                       s->path, a->path);
  }
  if (rc != MQ_ENOTFOUND) return rc;
  op->err[0] = 0;
  int64_t id;
  if ((rc = mqi_queue_new_id(s, op, &id)) != MQ_OK) return rc;
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(
      s->db,
      "INSERT INTO mq_queue(name, kind, parent_id, filter, visibility_ms, max_receives, dlq_id,"
      " retention_ms, max_payload, compress_above, dedup_window_ms, created_at, id)"
      " VALUES(?1, 2, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
      -1, &st, NULL);
  if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "preparing");
  sqlite3_bind_text(st, 1, a->path, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, t.id);
  if (a->filter && *a->filter) sqlite3_bind_text(st, 3, a->filter, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 4, a->o.visibility_ms);
  sqlite3_bind_int(st, 5, a->o.max_receives);
  if (dlq.id) sqlite3_bind_int64(st, 6, dlq.id);
  sqlite3_bind_int64(st, 7, a->o.retention_ms);
  sqlite3_bind_int64(st, 8, t.max_payload);
  sqlite3_bind_int64(st, 9, t.compress_above);
  sqlite3_bind_int64(st, 10, t.dedup_window_ms);
  sqlite3_bind_int64(st, 11, mqi_store_now(s));
  sqlite3_bind_int64(st, 12, id);
  src = sqlite3_step(st);
  sqlite3_finalize(st);
  if (src != SQLITE_DONE) return mqi_op_sqlite(s, op, src, "creating a subscription");
  return MQ_OK;
}

static int topic_path(mq_store *s, topic_arg *a, const char *topic, const char *sub) {
  int rc = mqi_err_check_name(s, "topic", topic);
  if (rc == MQ_OK) rc = mqi_err_check_name(s, "subscription", sub);
  if (rc != MQ_OK) return rc;
  a->topic = topic;
  a->sub = sub;
  strcpy(a->path, topic);
  strcat(a->path, "/");
  strcat(a->path, sub);
  return MQ_OK;
}

int mq_subscription_create(mq_store *s, const char *topic, const char *sub, const char *filter,
                           const mq_queue_options *opts) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  topic_arg a = {0};
  if ((rc = topic_path(s, &a, topic, sub)) != MQ_OK) return rc;
  if (topic_check_filter(filter) != 0)
    return mqi_err_set(s, MQ_EINVAL,
                       "filter \"%.60s\" is malformed: wildcards ('*', '+', '>', '#') must be "
                       "whole levels, '>' and '#' only last, at most %d bytes, no control "
                       "characters",
                       filter, MQ_SUBJECT_MAX);
  a.filter = filter;
  mq_queue_options_init(&a.o);
  if (opts) {
    if (opts->size < offsetof(mq_queue_options, dedup_window_ms) || opts->size > sizeof a.o)
      return mqi_err_set(s, MQ_EINVAL,
                         "mq_queue_options.size is %zu: call mq_queue_options_init first",
                         opts->size);
    memcpy(&a.o, opts, opts->size);
  }
  if (a.o.visibility_ms < 1 || a.o.max_receives < 0 || a.o.retention_ms < 0)
    return mqi_err_set(s, MQ_EINVAL,
                       "subscription \"%s\": visibility_ms must be at least 1, max_receives "
                       "and retention_ms not negative",
                       a.path);
  if (a.o.dlq && (rc = mqi_err_check_name(s, "dead-letter queue", a.o.dlq)) != MQ_OK) return rc;
  return mqi_commit_run(s, topic_sub_create_op, &a, MQI_RUN_DURABLE);
}

static int topic_sub_drop_op(mq_store *s, mqi_op *op) {
  topic_arg *a = op->arg;
  mqi_queue t, q;
  int rc = topic_find(s, op, a->topic, &t);
  if (rc != MQ_OK) return rc;
  rc = mqi_queue_find(s, op, a->path, &q);
  if (rc == MQ_ENOTFOUND)
    return mqi_op_fail(op, MQ_ENOTFOUND, "%s: topic \"%s\" has no subscription \"%s\"", s->path,
                       a->topic, a->sub);
  if (rc != MQ_OK) return rc;
  return mqi_queue_clear(s, op, q.id, a->path, 1, NULL);
}

int mq_subscription_drop(mq_store *s, const char *topic, const char *sub) {
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  topic_arg a = {0};
  if ((rc = topic_path(s, &a, topic, sub)) != MQ_OK) return rc;
  return mqi_commit_run(s, topic_sub_drop_op, &a, MQI_RUN_DURABLE);
}

/* ---- publish --------------------------------------------------------------- */

typedef struct topic_sub {
  mqi_queue q;
  char *filter;
  int hit; /* matches the message being published */
} topic_sub;

static int topic_publish_op(mq_store *s, mqi_op *op) {
  topic_arg *a = op->arg;
  /* The op may run again in the same call (a batch whose settle failed
  ** is run again without it, commit.c): count this run's only. */
  a->delivered = 0;
  mqi_queue t;
  int rc = topic_find(s, op, a->topic, &t);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_store_space_ok(s, op, 0)) != MQ_OK) return rc;
  /* Size is checked whether or not anyone listens: the answer to a bad
  ** publish must not depend on which subscriptions exist. */
  for (size_t i = 0; i < a->n; i++)
    if ((int64_t)a->items[i].len > t.max_payload)
      return mqi_op_fail(op, MQ_ETOOBIG,
                         "%s: entry %zu: payload of %zu bytes is above the topic's max_payload "
                         "of %lld",
                         s->path, i, a->items[i].len, (long long)t.max_payload);
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(s->db,
                               "SELECT id, retention_ms, filter FROM mq_queue"
                               " WHERE parent_id = ?1 AND kind = 2",
                               -1, &st, NULL);
  if (src != SQLITE_OK) return mqi_op_sqlite(s, op, src, "preparing");
  sqlite3_bind_int64(st, 1, t.id);
  topic_sub *subs = NULL;
  size_t ns = 0, cap = 0;
  while ((src = sqlite3_step(st)) == SQLITE_ROW) {
    if (ns == cap) {
      topic_sub *nsubs = realloc(subs, (cap ? cap * 2 : 16) * sizeof *nsubs);
      if (!nsubs) {
        src = SQLITE_NOMEM;
        break;
      }
      subs = nsubs;
      cap = cap ? cap * 2 : 16;
    }
    topic_sub *u = &subs[ns];
    memset(u, 0, sizeof *u);
    u->q.id = sqlite3_column_int64(st, 0);
    u->q.retention_ms = sqlite3_column_int64(st, 1);
    const char *f = (const char *)sqlite3_column_text(st, 2);
    if (f && !(u->filter = strdup(f))) {
      src = SQLITE_NOMEM;
      break;
    }
    ns++;
  }
  sqlite3_finalize(st);
  int64_t now = mqi_store_now(s);
  const mqi_queue **hits = NULL; /* the subscriptions one message goes to */
  if (src == SQLITE_DONE && ns && !(hits = malloc(ns * sizeof *hits))) src = SQLITE_NOMEM;
  if (src != SQLITE_DONE)
    rc = src == SQLITE_NOMEM ? mqi_op_fail(op, MQ_ENOMEM, "out of memory publishing")
                             : mqi_op_sqlite(s, op, src, "reading subscriptions");
  for (size_t i = 0; rc == MQ_OK && i < a->n; i++) {
    mqi_put_item *it = &a->items[i];
    int64_t body = 0, id = 0;
    rc = mqi_put_dedup_find(s, op, &t, it, now, &id);
    if (rc != MQ_OK || id) {
      a->ids[i] = id;
      continue;
    }
    int matches = 0;
    for (size_t k = 0; k < ns; k++)
      matches += subs[k].hit = topic_match(subs[k].filter, it->subject);
    if (matches == 0) {
      a->ids[i] = 0; /* nobody listens: nothing to store */
      continue;
    }
    size_t nh = 0;
    for (size_t k = 0; k < ns; k++)
      if (subs[k].hit) hits[nh++] = &subs[k].q;
    rc = mqi_store_next_id(s, op, &body);
    if (rc == MQ_OK) rc = mqi_put_body(s, op, &t, it, i, matches, body);
    if (rc == MQ_OK) rc = mqi_put_fanout(s, op, hits, nh, t.retention_ms, body, it, now);
    a->delivered += (int64_t)nh;
    if (rc == MQ_OK) rc = mqi_put_dedup_store(s, op, &t, it, now, body);
    a->ids[i] = body;
  }
  for (size_t k = 0; k < ns; k++) free(subs[k].filter);
  free(subs);
  free(hits);
  if (rc != MQ_OK) return rc;
  mqi_put_sweep(s, now);
  if (a->delivered) op->flags |= MQI_OP_WAKE;
  return MQ_OK;
}

int mq_publish_batch(mq_store *s, const char *topic, const mq_pub_entry *entries, size_t n,
                     int64_t *ids, int64_t *delivered) {
  if (delivered) *delivered = 0;
  if (ids && entries)
    for (size_t i = 0; i < n; i++) ids[i] = 0;
  int rc = mqi_store_check(s, 1);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_name(s, "topic", topic)) != MQ_OK) return rc;
  if (n == 0) return MQ_OK;
  if (!entries) return mqi_err_set(s, MQ_EINVAL, "mq_publish_batch: entries is NULL");
  topic_arg a = {0};
  a.topic = topic;
  a.n = n;
  a.items = calloc(n, sizeof *a.items);
  a.ids = ids ? ids : calloc(n, sizeof *a.ids);
  size_t prepared = 0;
  if (!a.items || !a.ids) {
    rc = mqi_err_set(s, MQ_ENOMEM, "out of memory publishing %zu messages", n);
    goto done;
  }
  for (; prepared < n; prepared++) {
    const mq_pub_entry *e = &entries[prepared];
    rc = mqi_put_prepare(s, &a.items[prepared], prepared, e->data, e->len, e->opts);
    if (rc == MQ_OK && topic_check_subject(e->subject) != 0)
      rc = mqi_err_set(s, MQ_EINVAL,
                       "entry %zu: subject \"%.60s\" is malformed: at most %d bytes, no control "
                       "characters, no '*', '>' or '#', no level that is only '+'",
                       prepared, e->subject, MQ_SUBJECT_MAX);
    if (rc != MQ_OK) {
      free(a.items[prepared].headers);
      goto done;
    }
    a.items[prepared].subject = e->subject;
  }
  rc = mqi_commit_run(s, topic_publish_op, &a, MQI_RUN_DURABLE);
  if (rc == MQ_OK && delivered) *delivered = a.delivered;
done:
  for (size_t i = 0; i < prepared; i++) free(a.items[i].headers);
  free(a.items);
  if (a.ids != ids) free(a.ids);
  if (rc != MQ_OK && ids)
    for (size_t i = 0; i < n; i++) ids[i] = 0;
  return rc;
}

int mq_publish(mq_store *s, const char *topic, const char *subject, const void *data, size_t len,
               const mq_put_options *opts, int64_t *id, int64_t *delivered) {
  mq_pub_entry e = {subject, data, len, opts};
  if (id) *id = 0;
  return mq_publish_batch(s, topic, &e, 1, id, delivered);
}

/* The deliveries of topic t that subscribers can still get: an expired one
** is gone (mq_queue_stats_get leaves it out too), and so is a payload that
** only such deliveries share. */
#define TOPIC_LIVE                                                                            \
  "(SELECT body_id FROM mq_msg WHERE queue_id IN"                                             \
  "  (SELECT id FROM mq_queue WHERE parent_id = t.id)"                                        \
  " AND (expires_at IS NULL OR expires_at > ?2))"
#define TOPIC_STATS_SQL                                                                       \
  "SELECT (SELECT count(*) FROM mq_queue WHERE parent_id = t.id),"                            \
  " (SELECT count(*) FROM " TOPIC_LIVE "),"                                                   \
  " (SELECT count(*) FROM mq_body WHERE id IN " TOPIC_LIVE "),"                               \
  " (SELECT coalesce(sum(size), 0) FROM mq_body WHERE id IN " TOPIC_LIVE ")"                  \
  " FROM mq_queue t WHERE t.name = ?1 AND t.kind = 1"

int mq_topic_stats_get(mq_store *s, const char *topic, mq_topic_stats *out) {
  if (out) memset(out, 0, sizeof *out);
  int rc = mqi_store_check(s, 0);
  if (rc != MQ_OK) return rc;
  if ((rc = mqi_err_check_name(s, "topic", topic)) != MQ_OK) return rc;
  if (!out) return mqi_err_set(s, MQ_EINVAL, "mq_topic_stats_get: out is NULL");
  sqlite3 *db;
  if ((rc = mqi_store_read(s, &db)) != MQ_OK) return rc;
  int64_t now = mqi_store_now(s);
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(db, TOPIC_STATS_SQL, -1, &st, NULL);
  if (src == SQLITE_OK) {
    sqlite3_bind_text(st, 1, topic, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    src = sqlite3_step(st);
  }
  if (src == SQLITE_ROW) {
    out->subscriptions = sqlite3_column_int64(st, 0);
    out->messages = sqlite3_column_int64(st, 1);
    out->payloads = sqlite3_column_int64(st, 2);
    out->bytes = sqlite3_column_int64(st, 3);
  } else if (src == SQLITE_DONE) {
    rc = mqi_err_set(s, MQ_ENOTFOUND, "%s: no topic named \"%s\"", s->path, topic);
  } else {
    rc = mqi_err_set(s, mqi_err_from_sqlite(src), "%s: topic stats: %s", s->path,
                     sqlite3_errmsg(db));
  }
  sqlite3_finalize(st);
  mqi_store_read_done(s, src);
  return rc;
}
/*** end src/topic.c ***/

/*** begin src/zmtp.h ***/
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

/* #include "mqi.h" -- inlined above */

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
/*** end src/zmtp.h ***/

/*** begin src/zmtp_codec.c ***/
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

/* #include "zmtp.h" -- inlined above */

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
/*** end src/zmtp_codec.c ***/

/*** begin src/zmtp_cmd.c ***/
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

/* #include "zmtp.h" -- inlined above */

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
/*** end src/zmtp_cmd.c ***/

/*** begin src/zmtp_net.h ***/
/*
** zmtp_net.h -- the ZMTP network engine: sockets (zmtp_net.c), one
** connection's state machine (zmtp_conn.c) and the server that serves
** queues to ZeroMQ peers (zmtp_server.c, zmtp_router.c).
**
** Layering, bottom up: the pure codec (zmtp.h) knows bytes; a connection
** (mqi_zconn) owns one non-blocking TCP socket and drives the codec through
** the greeting, the NULL or PLAIN handshake and the traffic that follows,
** with its timers (handshake timeout, heartbeats); the server owns the
** listeners, the poll(2) loop and every connection, and turns complete
** messages into calls of the public queue API of mq.h on its store.  A
** connection never calls into the store and never decides what a message
** means; the server never touches a socket except through a connection.
**
** Time: connections never read a clock.  Every call that may fire a timer
** takes `now` (milliseconds on the server's clock: monotonic by default,
** injectable for tests through mqi_server_test_clock), so the handshake
** timeout and the heartbeats can be tested without sleeping.
**
** Nothing here is public; the amalgamation makes it all static.
*/
#ifndef MQI_ZMTP_NET_H
#define MQI_ZMTP_NET_H

#include <stdatomic.h>
#include <sys/socket.h>

/* #include "zmtp.h" -- inlined above */

/* ---- zmtp_net.c: addresses, listeners, accept, the wake pipe -------------- */

#define MQI_NET_NAME_MAX 80 /* "tcp://[ffff:...]:65535" and a NUL */

/* Parse "tcp://HOST:PORT" where HOST is a dotted IPv4 address, an IPv6
** address in brackets, "*" (every IPv4 address) or "localhost"
** (127.0.0.1), and PORT is 0..65535 (0: the kernel picks one).  Returns
** MQ_OK or MQ_EINVAL with a reason in err. */
MQI_API int mqi_net_parse(const char *endpoint, struct sockaddr_storage *ss, socklen_t *len,
                          char *err, size_t errlen);
/* A non-blocking, close-on-exec listening socket bound to ss with
** SO_REUSEADDR (so a restarted server gets its port back while old
** connections sit in TIME_WAIT).  MQ_OK with *fd, or MQ_ENET with err. */
MQI_API int mqi_net_listen(const struct sockaddr_storage *ss, socklen_t len, int *fd, char *err,
                           size_t errlen);
/* "tcp://ADDR:PORT" of the socket's local end into buf. */
MQI_API int mqi_net_local_name(int fd, char *buf, size_t cap);
/* Accept one connection: a non-blocking, close-on-exec socket with
** TCP_NODELAY, and the peer's "ADDR:PORT" in peer.  Returns the socket or
** -1 with errno (EAGAIN when none is waiting). */
MQI_API int mqi_net_accept(int lfd, char *peer, size_t cap);
/* Start a non-blocking TCP connect (close-on-exec, TCP_NODELAY) to ss.
** Returns 0 when already connected, 1 when in progress (wait for POLLOUT,
** then ask mqi_net_connect_result), -1 with errno on failure; *fd is the
** socket in the first two cases, -1 otherwise. */
MQI_API int mqi_net_connect(const struct sockaddr_storage *ss, socklen_t len, int *fd);
/* How a connect in progress ended: 0 connected, else the errno value. */
MQI_API int mqi_net_connect_result(int fd);
/* A non-blocking pipe whose read end wakes poll(2): fds[0] read, fds[1]
** write.  MQ_OK or MQ_ENET. */
MQI_API int mqi_net_pipe(int fds[2]);
/* Write one byte to the pipe.  Async-signal-safe; keeps errno. */
MQI_API void mqi_net_pipe_poke(int wfd);
/* Read everything from the pipe's read end. */
MQI_API void mqi_net_pipe_drain(int rfd);

/* ---- zmtp_conn.c: one ZMTP connection ----------------------------------- */

/* Connection states, in the order a connection goes through them. */
#define MQI_ZC_GREETING 0  /* exchanging the 64-byte greetings */
#define MQI_ZC_HANDSHAKE 1 /* mechanism commands (READY; HELLO/INITIATE) */
#define MQI_ZC_ACTIVE 2    /* both READYs done: messages may flow */
#define MQI_ZC_CLOSING 3   /* flushing a final ERROR, then closing */
#define MQI_ZC_DEAD 4      /* the socket is closed; free it */

/* Results of mqi_zconn_input. */
#define MQI_ZC_OK 0     /* read what the socket had (or the budget) */
#define MQI_ZC_PAUSED 1 /* the message handler asked to stop for now */
#define MQI_ZC_CLOSED 2 /* the connection is dead */

/* Check PLAIN credentials (raw bytes, any content); return 1 to accept. */
typedef int (*mqi_zconn_auth_fn)(void *ctx, const uint8_t *user, size_t user_len,
                                 const uint8_t *pass, size_t pass_len, const char *peer);

typedef struct mqi_zconn_config {
  int socket_type;             /* ours: MQI_ZMTP_SOCKET_PULL, _PUSH, _ROUTER */
  int mechanism;               /* MQI_ZMTP_MECH_NULL or _PLAIN (we serve) */
  mqi_zconn_auth_fn auth;      /* PLAIN: required */
  void *auth_ctx;
  int64_t heartbeat_ms;        /* PING when nothing came for this long; 0 off */
  int64_t heartbeat_timeout_ms; /* close when nothing comes this long after */
  int64_t handshake_timeout_ms; /* 0: none */
  mqi_zmtp_limits limits;      /* for traffic after the handshake */
  size_t out_limit;            /* most bytes queued for output; see send */
  int client;                  /* we connected: PLAIN client role */
  const char *plain_user;      /* client with PLAIN: credentials sent in */
  const char *plain_password;  /* HELLO (owned by the caller, outlive us) */
} mqi_zconn_config;

/* One frame of an outgoing message. */
typedef struct mqi_zpart {
  const void *data;
  size_t len;
} mqi_zpart;

typedef struct mqi_zconn mqi_zconn;

/* Called with each complete message: n >= 1 frames.  The callee may take a
** frame's body (and then must set parts[i].body to NULL and free it with
** free()); the rest are released after the call.  Return 0 to go on,
** nonzero to stop reading this connection for now (mqi_zconn_input then
** returns MQI_ZC_PAUSED and keeps the unread bytes). */
typedef int (*mqi_zconn_msg_fn)(void *ctx, mqi_zconn *c, mqi_zmtp_frame *parts, size_t n);

/* Take over socket fd (non-blocking) of a peer at address peer, and queue
** our greeting.  The config is copied.  MQ_OK or MQ_ENOMEM (fd is then
** still the caller's). */
MQI_API int mqi_zconn_new(int fd, const char *peer, const mqi_zconn_config *cfg, int64_t now,
                          mqi_zconn **out);
/* Close the socket (if still open) and free everything.  NULL-safe. */
MQI_API void mqi_zconn_free(mqi_zconn *c);
/* Close now, for reason why (kept for mqi_zconn_reason). */
MQI_API void mqi_zconn_close(mqi_zconn *c, const char *why);

MQI_API int mqi_zconn_fd(const mqi_zconn *c);
MQI_API int mqi_zconn_state(const mqi_zconn *c);
/* Why the connection closed ("" while it is open). */
MQI_API const char *mqi_zconn_reason(const mqi_zconn *c);
MQI_API const char *mqi_zconn_peer(const mqi_zconn *c);
/* The peer's Socket-Type (valid once ACTIVE). */
MQI_API int mqi_zconn_peer_type(const mqi_zconn *c);
/* The peer's Identity property (may be empty), valid once ACTIVE. */
MQI_API const uint8_t *mqi_zconn_identity(const mqi_zconn *c, size_t *len);
/* The PLAIN user name the peer authenticated as ("" for NULL). */
MQI_API const char *mqi_zconn_user(const mqi_zconn *c);
/* Nonzero when the connection ended because the peer sent ERROR (for a
** client: the server refused our credentials). */
MQI_API int mqi_zconn_peer_error(const mqi_zconn *c);

/*
** Read from the socket (at most about budget bytes) and process what came:
** greeting, handshake commands, PING (answered with PONG), and messages,
** which go to fn.  Bytes left over when fn pauses are kept and processed
** first by the next call.  Returns MQI_ZC_OK, MQI_ZC_PAUSED or
** MQI_ZC_CLOSED (the reason is in mqi_zconn_reason).
*/
MQI_API int mqi_zconn_input(mqi_zconn *c, int64_t now, size_t budget, mqi_zconn_msg_fn fn,
                            void *ctx);
/* Bytes read from the socket but not processed yet (after a pause). */
MQI_API size_t mqi_zconn_buffered(const mqi_zconn *c);

/*
** Queue a message of n >= 1 frames for the peer.  Only while ACTIVE
** (MQI_ZMTP_EINVAL otherwise: nothing may precede the peer's READY).
** MQI_ZMTP_ESPACE when output is already pending and this message would
** take it past out_limit (a message alone may be larger: it is queued when
** nothing is pending).  MQI_ZMTP_ENOMEM.  Nothing is written yet: see
** mqi_zconn_flush.
*/
MQI_API int mqi_zconn_send(mqi_zconn *c, const mqi_zpart *parts, size_t n);
/* Write queued bytes until the socket would block.  MQI_ZC_OK or
** MQI_ZC_CLOSED. */
MQI_API int mqi_zconn_flush(mqi_zconn *c, int64_t now);
/* Bytes queued and not yet handed to the kernel. */
MQI_API size_t mqi_zconn_pending(const mqi_zconn *c);
/* Totals since the connection began: bytes queued, and bytes handed to the
** kernel.  A message queued when `queued` was Q and ending at Q' has left
** us once `written` >= Q'. */
MQI_API uint64_t mqi_zconn_queued(const mqi_zconn *c);
MQI_API uint64_t mqi_zconn_written(const mqi_zconn *c);

/* Fire due timers: handshake timeout, heartbeat PING, peer silent past
** the heartbeat timeout or its own TTL, the end of CLOSING.  Returns
** MQI_ZC_OK or MQI_ZC_CLOSED. */
MQI_API int mqi_zconn_tick(mqi_zconn *c, int64_t now);
/* When mqi_zconn_tick must run next (INT64_MAX: no timer). */
MQI_API int64_t mqi_zconn_deadline(const mqi_zconn *c);
/* Tell the connection whether its owner has stopped reading it (held) for
** reasons of its own, such as backpressure.  While held, the peer is not
** timed out for silence (its PONGs wait unread in the kernel), and we
** still PING it, which keeps a libzmq peer from timing us out (any traffic
** cancels its timeout).  When the hold ends, the peer's timers resume as
** if the time held had not passed.  A write that fails while held (the
** peer closed) does not close the connection: what it sent is read up to
** its close once the hold ends. */
MQI_API void mqi_zconn_hold(mqi_zconn *c, int held, int64_t now);

/* ---- zmtp_server.c: the server's insides, shared with zmtp_router.c ---- */

#define MQI_EP_PULL 0
#define MQI_EP_PUSH 1
#define MQI_EP_ROUTER 2

/* One message of a PULL endpoint's batch: payload (NULL when len is 0)
** and, for a multipart message, the frame sizes. */
typedef struct mqi_srv_item {
  void *data;
  size_t len;
  char *frames; /* "3,0,12": the zmtp-frames header (malloc'd), or NULL */
  uint32_t crc; /* of data, computed by the loop: the commit thread is the busier */
  int heap;     /* data is malloc'd, not in one of the batch's chunks */
} mqi_srv_item;

/* ---- zmtp_batch.c: a PULL endpoint's messages read and not yet committed */
typedef struct mqi_srv_chunk mqi_srv_chunk;
typedef struct mqi_srv_batch {
  mqi_srv_item *items;
  size_t n, cap;
  size_t bytes;          /* the items' payload bytes */
  mqi_srv_chunk *chunks; /* memory of the small payloads, freed with the batch */
} mqi_srv_batch;

/* Chunks freed by batches, for the next ones (a few MiB at most). */
typedef struct mqi_srv_pool {
  mqi_srv_chunk *free;
  size_t n;
} mqi_srv_pool;

/* Add the message of n frames (their bodies concatenated) with its CRC.
** May take parts' bodies (set to NULL); the caller releases the rest.
** Returns MQ_OK, or MQ_ENOMEM with no item added (and parts untouched;
** chunk space it used is freed with the batch). */
MQI_API int mqi_batch_add(mqi_srv_batch *b, mqi_srv_pool *pool, mqi_zmtp_frame *parts, size_t n);
/* Free the first k items (committed); their chunk memory stays with the
** batch until it is freed. */
MQI_API void mqi_batch_drop(mqi_srv_batch *b, size_t k);
/* Put front's items before b's, in one batch left in *b; front is left
** empty.  MQ_ENOMEM leaves both as they were. */
MQI_API int mqi_batch_prepend(mqi_srv_batch *b, mqi_srv_batch *front);
/* Free everything, keeping chunks in pool (NULL: none kept); the batch is
** empty again (all zero is empty). */
MQI_API void mqi_batch_free(mqi_srv_batch *b, mqi_srv_pool *pool);
MQI_API void mqi_batch_pool_free(mqi_srv_pool *pool);

/* What mq_server_endpoint_stats reports.  Only the loop thread writes
** them (the commit thread's results are counted when the loop collects
** them); any thread may read them while the server runs, hence atomics. */
typedef struct mqi_srv_counts {
  _Atomic int64_t in, bytes_in, dropped, out, bytes_out, acks;
  _Atomic int64_t conns, conns_total, refused, auth_failed;
} mqi_srv_counts;

/* Add v to one of the counters above. */
#define MQI_SRV_COUNT(counter, v) \
  atomic_fetch_add_explicit(&(counter), (int64_t)(v), memory_order_relaxed)

typedef struct mqi_srv_ep {
  int kind;                      /* MQI_EP_* */
  char queue[MQ_NAME_MAX + 1];   /* "" for ROUTER */
  int topic;                     /* PULL into a topic: publish */
  int fd;                        /* the listening socket */
  char name[MQI_NET_NAME_MAX];   /* where it listens */
  mqi_srv_batch batch;           /* PULL: messages read and not yet committed */
  int failing;                   /* the last commit failed: retry, read nothing */
  int64_t retry_at;              /* monotonic ms */
  int64_t backoff;
  /* PUSH: the next connection in turn, where the next look for ready
  ** connections starts, the mean size of a message sent (for how many
  ** fit a connection's output), and when to look at the queue. */
  size_t rr, scan;
  size_t avg_size;
  int64_t renew_retry;           /* monotonic ms: renewals failed, retry then; 0 */
  int renew_failing;             /* said so in the log */
  int64_t empty_until;           /* monotonic ms; 0: look now */
  /* Listening: 0, or accept(2) failed (out of descriptors) and the socket
  ** is not polled until then (server clock). */
  int64_t accept_after;
  /* Connecting endpoints (fd is then -1): we connect to addr and keep
  ** reconnecting.  Times are on the server's clock (mqi_server_now). */
  int connect;
  int cfd;                       /* the socket being connected, or -1 */
  int live;                      /* a connection of this endpoint exists */
  int failures;                  /* in a row: the backoff's exponent */
  struct sockaddr_storage addr;
  socklen_t addrlen;
  int64_t next_try;              /* when to connect again */
  int64_t connect_deadline;      /* when the connect in progress fails */
  int64_t up_since;              /* when the connection became ACTIVE; 0 */
  mqi_srv_counts count;
} mqi_srv_ep;

/* A PUSH egress message queued on a connection and not yet acked. */
typedef struct mqi_srv_pend {
  uint64_t end; /* mqi_zconn_queued() right after it */
  size_t size;  /* its payload bytes, for the endpoint's counters */
  int64_t visible_at; /* the end of its lease, store clock */
  int64_t lease_ms;   /* the lease's length: renewed for as long again */
  char receipt[MQ_RECEIPT_MAX + 1];
} mqi_srv_pend;

typedef struct mqi_rt_conn mqi_rt_conn;   /* zmtp_router.c */
typedef struct mqi_rt_state mqi_rt_state; /* zmtp_router.c */

typedef struct mqi_srv_conn {
  mq_server *srv;
  mqi_zconn *z;
  size_t ep;        /* index into the server's endpoints */
  uint64_t serial;  /* for logs */
  int was_active;
  /* PUSH egress: messages written to the connection, oldest first. */
  mqi_srv_pend *pend;
  size_t pend_head, pend_len, pend_cap;
  int64_t renew_at; /* store clock: the earliest of their lease renewals */
  mqi_rt_conn *rt;  /* ROUTER state, owned by zmtp_router.c */
} mqi_srv_conn;

struct mq_server {
  mq_store *store;
  mq_server_options opt;
  char *plain_user, *plain_password;
  size_t plain_user_len, plain_password_len;
  mqi_srv_ep *eps;
  size_t neps, epcap;
  mqi_srv_conn **conns;
  size_t nconns, conncap;
  void *pfds; /* struct pollfd[], reused across turns */
  size_t pfdcap;
  uint64_t serial;
  size_t turn;
  int wake[2];
  _Atomic int stop;
  int running;
  int64_t (*clock)(void *);
  void *clock_ctx;
  size_t out_limit;
  mqi_rt_state *rt;
  uint64_t rng;  /* xorshift state for the reconnect jitter */
  int freeing;   /* mq_server_free runs: no reconnects scheduled */
  /* The PULL commit thread and its one job (zmtp_server.c).  cjob: 0 idle,
  ** 1 handed over, 2 done, and the cjob_* fields: under cmu.  cbusy: the
  ** loop's own note that a job is out (read by the loop thread only). */
  pthread_t committer;
  int cstarted, csync, cquit, cjob, cjob_rc, cjob_topic, cbusy;
  char cjob_queue[MQ_NAME_MAX + 1];
  pthread_mutex_t cmu;
  pthread_cond_t ccv;
  size_t cjob_ep, cnext;
  size_t cjob_dropped, cjob_dropped_bytes; /* of the job's batch: refused by the queue */
  size_t cjob_done; /* of the job's batch: settled before a failure */
  mqi_srv_batch cjob_batch; /* the commit thread's alone while cjob is 1 */
  mqi_srv_pool pool;        /* the loop's: chunks for the next batches */
  mqi_put_item *pi;         /* the committer's: a batch as mqi_pack_put takes it */
  size_t picap;
  char cjob_err[256];
};

/* The server's protocol clock (monotonic unless a test replaced it). */
MQI_API int64_t mqi_server_now(mq_server *s);
/* Queue a message on a connection; a peer that lets its output grow past
** the limit (it does not read) is disconnected.  Returns MQI_ZMTP_OK or
** the send error (the message was not queued). */
MQI_API int mqi_server_send(mq_server *s, mqi_srv_conn *sc, const mqi_zpart *parts, size_t n);
/* A put reached queue: look at it again for egress at once. */
MQI_API void mqi_server_kick(mq_server *s, const char *queue);

/* ---- zmtp_router.c: the MQ1 request protocol of a ROUTER endpoint -------- */
MQI_API int mqi_router_new(mq_server *s);
MQI_API void mqi_router_free(mq_server *s);
/* A request arrived on sc (frames as the connection delivered them).
** Returns nonzero to pause reading sc (too much work queued this turn). */
MQI_API int mqi_router_message(mq_server *s, mqi_srv_conn *sc, mqi_zmtp_frame *parts, size_t n);
/* sc finished its handshake (identity handover). */
MQI_API void mqi_router_ready(mq_server *s, mqi_srv_conn *sc);
/* Do the turn's work: commit puts and send their ACKs, settle, serve GETs
** and CONSUME windows. */
MQI_API void mqi_router_work(mq_server *s);
/* sc is going away: give back what it holds. */
MQI_API void mqi_router_conn_gone(mq_server *s, mqi_srv_conn *sc);
/* When the router wants a turn even if no socket is ready (monotonic ms,
** INT64_MAX: never). */
MQI_API int64_t mqi_router_wake(mq_server *s);
/* A put reached queue: consumers waiting on it may look again. */
MQI_API void mqi_router_kick(mq_server *s, const char *queue);

/* ---- zmtp_router.c: MQ1 request parsing, a pure function (fuzzed) -------- */
#define MQI_RT_ID_MAX 64      /* client_msg_id and :producer, in bytes */
#define MQI_RT_HEADERS_MAX 64 /* user headers of one PUT */
#define MQI_RT_WAIT_MAX_MS 3600000
#define MQI_RT_REASON_MAX 1000

/* Verbs (mqi_router_req.verb). */
enum {
  MQI_RT_PUT = 1,
  MQI_RT_ACK,
  MQI_RT_NACK,
  MQI_RT_TOUCH,
  MQI_RT_GET,
  MQI_RT_CONSUME,
  MQI_RT_STOP
};

/* What mqi_router_parse returns: the request is sound (OK); it is refused
** with "ERR 400 error" (ERR: no verb, no id to answer under); or it is
** refused in the verb's own reply form, "ACK cid 400" or "DONE receipt
** 400", because the id (cid or receipt) was read before the fault. */
enum { MQI_RTP_OK = 0, MQI_RTP_ERR = 1, MQI_RTP_REFUSE = 2 };

/* One parsed request.  Strings are NUL-terminated copies; payload, headers
** and the NACK reason stay in the frames and are named by index, so the
** struct is valid only as long as the frames it was parsed from. */
typedef struct mqi_router_req {
  int delim;  /* a leading empty frame is to be echoed in replies */
  int verb;   /* MQI_RT_*; 0 when the verb was not understood */
  size_t arg; /* index of the first argument frame (the queue) */
  char queue[MQ_NAME_MAX + 1];
  char cid[MQI_RT_ID_MAX + 1];         /* PUT */
  char receipt[MQ_RECEIPT_MAX + 1];    /* ACK, NACK, TOUCH */
  int64_t lease_ms, wait_ms;           /* GET, CONSUME (lease only) */
  int64_t credit;                      /* CONSUME */
  int64_t ms;                          /* NACK delay, TOUCH visibility */
  int has_reason;                      /* NACK: frame arg + 3 is the reason */
  int64_t delay_ms, ttl_ms;            /* PUT options */
  int priority;                        /* PUT option */
  char producer[MQI_RT_ID_MAX + 1];    /* PUT option; "" when not given */
  char subject[MQ_SUBJECT_MAX + 1];    /* PUT option; "" when not given */
  size_t n_headers, header_bytes;      /* PUT user headers: count, NUL-ended size */
  const char *error;                   /* static text when refused */
} mqi_router_req;

/* Parse one MQ1 request of n frames into *out.  Touches nothing but *out:
** no allocation, no store, no connection, so a fuzzer can drive it.  Every
** length and number is checked here; the handler only allocates and acts.
** The PUT payload is frame out->arg + 2, its headers follow in name/value
** pairs (names starting with ':' are the options already parsed). */
MQI_API int mqi_router_parse(const mqi_zmtp_frame *parts, size_t n, mqi_router_req *out);

/* ---- test hooks ------------------------------------------------------------ */

/* Replace the server's clock (protocol timers: handshake, heartbeats,
** reconnects; ROUTER lease counts and GET waits) with fn; NULL restores
** the monotonic clock.  For tests. */
MQI_API void mqi_server_test_clock(mq_server *s, int64_t (*fn)(void *), void *ctx);
/* Set the per-connection output limit (default 4 MiB).  For tests. */
MQI_API void mqi_server_test_out_limit(mq_server *s, size_t bytes);

#endif /* MQI_ZMTP_NET_H */
/*** end src/zmtp_net.h ***/

/*** begin src/zmtp_net.c ***/
/*
** zmtp_net.c -- the socket layer of the network engine: endpoint strings,
** listening sockets, accept, and the self-pipe that wakes the poll loop.
**
** Everything here is a thin, careful wrapper over POSIX sockets, kept in
** one file so that the rest of the engine never sees a sockaddr.  The rules
** it enforces:
**   - Every descriptor is created non-blocking and close-on-exec in the same
**     call (accept4, pipe2, SOCK_NONBLOCK), so a fork+exec elsewhere in the
**     host program never inherits a socket of ours and nothing ever blocks
**     the loop.
**   - Endpoints are numeric: "tcp://HOST:PORT" with an IPv4 address, an IPv6
**     address in brackets, "*" (all IPv4 addresses, as libzmq reads it) or
**     "localhost".  No name resolution, so binding never waits on DNS.
**   - Listeners set SO_REUSEADDR: a restarted server must get its port back
**     at once although its old connections linger in TIME_WAIT, because
**     libzmq peers keep reconnecting to that very port.
**   - mqi_net_pipe_poke is async-signal-safe (one write(2), errno kept), so
**     mq_server_stop may be called from a signal handler.
*/
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* #include "zmtp_net.h" -- inlined above */

#define NET_BACKLOG 128

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static int
net_fail(char *err, size_t errlen, int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (err && errlen) vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  return rc;
}

/* Parse a decimal port 0..65535 that fills s exactly. */
static int net_port(const char *s, unsigned *port) {
  unsigned v = 0;
  if (!*s || strlen(s) > 5) return -1;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9') return -1;
    v = v * 10 + (unsigned)(*p - '0');
  }
  if (v > 65535) return -1;
  *port = v;
  return 0;
}

int mqi_net_parse(const char *endpoint, struct sockaddr_storage *ss, socklen_t *len, char *err,
                  size_t errlen) {
  char host[64];
  const char *rest, *colon;
  unsigned port = 0;
  if (err && errlen) err[0] = '\0';
  if (!endpoint || !ss || !len) return net_fail(err, errlen, MQ_EINVAL, "endpoint is NULL");
  memset(ss, 0, sizeof *ss);
  if (strncmp(endpoint, "tcp://", 6) != 0)
    return net_fail(err, errlen, MQ_EINVAL, "endpoint \"%.100s\" does not start with tcp://",
                    endpoint);
  rest = endpoint + 6;
  if (rest[0] == '[') {
    const char *rb = strchr(rest, ']');
    if (!rb || rb[1] != ':')
      return net_fail(err, errlen, MQ_EINVAL, "endpoint \"%.100s\": expected [IPV6]:PORT",
                      endpoint);
    size_t n = (size_t)(rb - rest - 1);
    if (n == 0 || n >= sizeof host)
      return net_fail(err, errlen, MQ_EINVAL, "endpoint \"%.100s\": bad IPv6 address", endpoint);
    memcpy(host, rest + 1, n);
    host[n] = '\0';
    colon = rb + 1;
  } else {
    colon = strrchr(rest, ':');
    size_t n = colon ? (size_t)(colon - rest) : 0;
    if (!colon || n == 0 || n >= sizeof host)
      return net_fail(err, errlen, MQ_EINVAL, "endpoint \"%.100s\": expected HOST:PORT", endpoint);
    memcpy(host, rest, n);
    host[n] = '\0';
  }
  if (net_port(colon + 1, &port) != 0)
    return net_fail(err, errlen, MQ_EINVAL, "endpoint \"%.100s\": bad port \"%.20s\"", endpoint,
                    colon + 1);
  if (rest[0] == '[') {
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
      return net_fail(err, errlen, MQ_EINVAL, "endpoint \"%.100s\": bad IPv6 address \"%s\"",
                      endpoint, host);
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
    *len = sizeof *a6;
    return MQ_OK;
  }
  struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
  a4->sin_family = AF_INET;
  a4->sin_port = htons((uint16_t)port);
  *len = sizeof *a4;
  if (strcmp(host, "*") == 0) {
    a4->sin_addr.s_addr = htonl(INADDR_ANY);
  } else if (strcmp(host, "localhost") == 0) {
    a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  } else if (inet_pton(AF_INET, host, &a4->sin_addr) != 1) {
    return net_fail(err, errlen, MQ_EINVAL,
                    "endpoint \"%.100s\": \"%s\" is not an IPv4 address, [IPv6], * or localhost",
                    endpoint, host);
  }
  return MQ_OK;
}

int mqi_net_listen(const struct sockaddr_storage *ss, socklen_t len, int *fd, char *err,
                   size_t errlen) {
  int one = 1;
  *fd = -1;
  int s = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s < 0) return net_fail(err, errlen, MQ_ENET, "socket: %s", strerror(errno));
  if (setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      (ss->ss_family == AF_INET6 &&
       setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0)) {
    int e = errno;
    close(s);
    return net_fail(err, errlen, MQ_ENET, "setsockopt: %s", strerror(e));
  }
  if (bind(s, (const struct sockaddr *)ss, len) != 0) {
    int e = errno;
    close(s);
    return net_fail(err, errlen, MQ_ENET, "bind: %s", strerror(e));
  }
  if (listen(s, NET_BACKLOG) != 0) {
    int e = errno;
    close(s);
    return net_fail(err, errlen, MQ_ENET, "listen: %s", strerror(e));
  }
  *fd = s;
  return MQ_OK;
}

/* "ADDR:PORT" ("[ADDR]:PORT" for IPv6) of a socket address. */
static void net_addr_name(const struct sockaddr_storage *ss, char *buf, size_t cap) {
  char a[INET6_ADDRSTRLEN];
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &a6->sin6_addr, a, sizeof a);
    snprintf(buf, cap, "[%s]:%u", a, (unsigned)ntohs(a6->sin6_port));
  } else if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a4 = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &a4->sin_addr, a, sizeof a);
    snprintf(buf, cap, "%s:%u", a, (unsigned)ntohs(a4->sin_port));
  } else {
    snprintf(buf, cap, "?");
  }
}

int mqi_net_local_name(int fd, char *buf, size_t cap) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  /* Room for the longest address (a scoped IPv6 one with its port is
  ** about 70 bytes) with "tcp://" in front, and no more: a compiler that
  ** sees the whole of mq.c can then prove the name is never cut short. */
  char addr[MQI_NET_NAME_MAX - sizeof "tcp://" + 1];
  memset(&ss, 0, sizeof ss);
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return MQ_ENET;
  net_addr_name(&ss, addr, sizeof addr);
  snprintf(buf, cap, "tcp://%s", addr);
  return MQ_OK;
}

int mqi_net_accept(int lfd, char *peer, size_t cap) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  int one = 1;
  memset(&ss, 0, sizeof ss);
  int s = accept4(lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (s < 0) return -1;
  /* Small frames (READY, PONG, ACK replies) must not wait for Nagle. */
  (void)setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (peer && cap) net_addr_name(&ss, peer, cap);
  return s;
}

int mqi_net_connect(const struct sockaddr_storage *ss, socklen_t len, int *fd) {
  int one = 1;
  *fd = -1;
  int s = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  (void)setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(s, (const struct sockaddr *)ss, len) == 0) {
    *fd = s;
    return 0;
  }
  /* EINTR on a non-blocking connect means it goes on in the background,
  ** like EINPROGRESS; retrying it would give EALREADY. */
  if (errno == EINPROGRESS || errno == EINTR) {
    *fd = s;
    return 1;
  }
  int e = errno;
  close(s);
  errno = e;
  return -1;
}

int mqi_net_connect_result(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno ? errno : EIO;
  return err;
}

int mqi_net_pipe(int fds[2]) {
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    fds[0] = fds[1] = -1;
    return MQ_ENET;
  }
  return MQ_OK;
}

void mqi_net_pipe_poke(int wfd) {
  int saved = errno;
  char b = 1;
  /* A full pipe already holds a wake-up: EAGAIN is success here. */
  ssize_t n = write(wfd, &b, 1);
  (void)n;
  errno = saved;
}

void mqi_net_pipe_drain(int rfd) {
  char buf[256];
  /* Bounded: the pipe holds at most its capacity, and pokes that race with
  ** this loop leave a byte behind for the next poll, which is harmless. */
  for (int i = 0; i < 64; i++) {
    ssize_t n = read(rfd, buf, sizeof buf);
    if (n <= 0) break;
  }
}
/*** end src/zmtp_net.c ***/

/*** begin src/zmtp_conn.c ***/
/*
** zmtp_conn.c -- one ZMTP 3.x connection over a non-blocking TCP socket:
** greeting, NULL or PLAIN handshake, traffic, heartbeats.  A connection we
** accepted is the PLAIN server; one we opened (cfg.client) is the PLAIN
** client: HELLO after the greeting, then INITIATE after the WELCOME, and
** the connection is ACTIVE at the server's READY.  Under NULL the two
** roles are the same, since NULL is symmetric.
**
** A connection moves GREETING -> HANDSHAKE -> ACTIVE, and ends DEAD
** (directly, or through CLOSING when a final ERROR must reach the peer).
** The rules that make it interoperate with libzmq 4.3.4 (see the research
** notes, section 0) are enforced here and nowhere else:
**   - Our whole 64-byte greeting is queued the moment the connection exists;
**     the peer's greeting is judged byte by byte, so a libzmq peer that sends
**     10 bytes and waits for our byte 11 never deadlocks with us.
**   - No message frame ever precedes the peer's READY (or, with PLAIN, its
**     INITIATE): mqi_zconn_send refuses until the state is ACTIVE.  libzmq
**     fails the handshake for good when a message overtakes its own READY.
**   - ERROR is sent only when PLAIN authentication fails.  Every other
**     problem (bad greeting, wrong socket type, malformed command, frame over
**     the limit, silence) is a plain close, because a protocol error makes a
**     connecting libzmq socket stop reconnecting forever.
**   - Before the handshake is over the decoder's limits are the command
**     limit, whatever the frame says it is, so an unauthenticated peer can
**     make us allocate at most 64 KiB; limits are applied before allocation
**     by the codec.
**   - PINGs are answered at any time, also between the frames of a
**     multipart message (libzmq sends them there); the message's frames are
**     collected across them untouched.
** A connection never reads a clock and never calls the store: its caller
** passes `now` and receives complete messages through a callback, which can
** pause reading (TCP backpressure) by returning nonzero.
*/
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* #include "zmtp_net.h" -- inlined above */

#define ZCONN_IBUF (64 * 1024)    /* one recv(2) at most */
#define ZCONN_CLOSE_GRACE_MS 1000 /* how long a final ERROR may take to leave */
#define ZCONN_CMD_MAX 600         /* our largest command frame (ERROR) */

struct mqi_zconn {
  int fd;
  int state;
  mqi_zconn_config cfg;
  char peer[MQI_NET_NAME_MAX];
  char why[200];
  /* Timers, on the caller's clock. */
  int64_t created;
  int64_t last_recv;
  int64_t last_ping;     /* when we last sent a PING */
  int64_t ping_deadline; /* 0, or when silence after our PING kills us */
  int64_t ttl_deadline;  /* 0, or when silence after the peer's PING does */
  int64_t close_deadline;
  int held;           /* the caller does not read us now (mqi_zconn_hold) */
  int64_t held_since; /* when the hold began */
  int wdead;          /* a write failed while held: only reading goes on */
  /* Handshake. */
  mqi_zmtp_greeting greet;
  int hs_step; /* PLAIN server: 0 = HELLO expected, 1 = INITIATE expected;
                  client: 0 = WELCOME expected, 1 = READY expected */
  int peer_error; /* the peer sent ERROR */
  int peer_type;
  uint8_t identity[MQI_ZMTP_IDENTITY_MAX];
  size_t identity_len;
  char user[MQI_ZMTP_PLAIN_FIELD_MAX + 1];
  /* Input: bytes read but not processed, and the message being collected. */
  mqi_zmtp_decoder dec;
  uint8_t *ibuf;
  size_t ipos, ilen;
  mqi_zmtp_frame *parts;
  size_t nparts, partcap;
  /* Output: obuf[ohead..olen) is pending. */
  uint8_t *obuf;
  size_t ohead, olen, ocap;
  uint64_t queued, written;
  int shut_wr;
};

/* ------------------------------------------------------------------------
** Life cycle
*/
static void zconn_drop_parts(mqi_zconn *c) {
  for (size_t i = 0; i < c->nparts; i++) mqi_zmtp_frame_release(&c->dec, &c->parts[i]);
  c->nparts = 0;
}

void mqi_zconn_close(mqi_zconn *c, const char *why) {
  if (!c || c->state == MQI_ZC_DEAD) return;
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  c->state = MQI_ZC_DEAD;
  snprintf(c->why, sizeof c->why, "%s", why ? why : "closed");
  zconn_drop_parts(c);
  mqi_zmtp_decoder_reset(&c->dec);
  c->ipos = c->ilen = 0;
  c->ohead = c->olen = 0;
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int
zconn_fail(mqi_zconn *c, const char *fmt, ...) {
  char buf[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  mqi_zconn_close(c, buf);
  return MQI_ZC_CLOSED;
}

/* Make room for n more output bytes; returns where they go, or NULL. */
static uint8_t *zconn_reserve(mqi_zconn *c, size_t n) {
  if (c->ohead > 0 && c->ohead == c->olen) c->ohead = c->olen = 0;
  if (c->ocap - c->olen < n && c->ohead > 0) {
    memmove(c->obuf, c->obuf + c->ohead, c->olen - c->ohead);
    c->olen -= c->ohead;
    c->ohead = 0;
  }
  if (c->ocap - c->olen < n) {
    if (n > SIZE_MAX / 2 - c->olen) return NULL;
    size_t cap = c->ocap ? c->ocap : 4096;
    while (cap - c->olen < n) cap *= 2;
    uint8_t *p = realloc(c->obuf, cap);
    if (!p) return NULL;
    c->obuf = p;
    c->ocap = cap;
  }
  return c->obuf + c->olen;
}

/* Queue bytes that must go out (greeting, commands).  A failure to find
** memory for a few hundred bytes ends the connection. */
static int zconn_queue(mqi_zconn *c, const void *data, size_t n) {
  if (c->wdead) return MQI_ZC_OK; /* nobody to say it to */
  uint8_t *at = zconn_reserve(c, n);
  if (!at) return zconn_fail(c, "out of memory for output");
  memcpy(at, data, n);
  c->olen += n;
  c->queued += n;
  return MQI_ZC_OK;
}

int mqi_zconn_new(int fd, const char *peer, const mqi_zconn_config *cfg, int64_t now,
                  mqi_zconn **out) {
  uint8_t greeting[MQI_ZMTP_GREETING_SIZE];
  mqi_zmtp_limits hs;
  *out = NULL;
  mqi_zconn *c = calloc(1, sizeof *c);
  if (!c) return MQ_ENOMEM;
  c->ibuf = malloc(ZCONN_IBUF);
  if (!c->ibuf) {
    free(c);
    return MQ_ENOMEM;
  }
  c->fd = fd;
  c->state = MQI_ZC_GREETING;
  c->cfg = *cfg;
  snprintf(c->peer, sizeof c->peer, "%s", peer ? peer : "?");
  c->created = c->last_recv = c->last_ping = now;
  c->peer_type = MQI_ZMTP_SOCKET_NONE;
  mqi_zmtp_greeting_init(&c->greet, cfg->mechanism);
  /* Until the peer is known, every frame is held to the command limit. */
  hs = cfg->limits;
  hs.max_frame = hs.max_command;
  hs.max_message = hs.max_command;
  hs.max_frames = 1;
  mqi_zmtp_decoder_init(&c->dec, &hs, NULL, NULL);
  mqi_zmtp_greeting_encode(greeting, cfg->mechanism,
                           !cfg->client && cfg->mechanism != MQI_ZMTP_MECH_NULL);
  if (zconn_queue(c, greeting, sizeof greeting) != MQI_ZC_OK) {
    c->fd = -1; /* still the caller's */
    mqi_zconn_free(c);
    return MQ_ENOMEM;
  }
  *out = c;
  return MQ_OK;
}

void mqi_zconn_free(mqi_zconn *c) {
  if (!c) return;
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  zconn_drop_parts(c);
  mqi_zmtp_decoder_reset(&c->dec);
  free(c->parts);
  free(c->ibuf);
  free(c->obuf);
  free(c);
}

int mqi_zconn_fd(const mqi_zconn *c) { return c->fd; }
int mqi_zconn_state(const mqi_zconn *c) { return c->state; }
const char *mqi_zconn_reason(const mqi_zconn *c) { return c->why; }
const char *mqi_zconn_peer(const mqi_zconn *c) { return c->peer; }
int mqi_zconn_peer_type(const mqi_zconn *c) { return c->peer_type; }
const char *mqi_zconn_user(const mqi_zconn *c) { return c->user; }
int mqi_zconn_peer_error(const mqi_zconn *c) { return c->peer_error; }
size_t mqi_zconn_buffered(const mqi_zconn *c) { return c->ilen - c->ipos; }
size_t mqi_zconn_pending(const mqi_zconn *c) { return c->olen - c->ohead; }
uint64_t mqi_zconn_queued(const mqi_zconn *c) { return c->queued; }
uint64_t mqi_zconn_written(const mqi_zconn *c) { return c->written; }

const uint8_t *mqi_zconn_identity(const mqi_zconn *c, size_t *len) {
  *len = c->identity_len;
  return c->identity;
}

/* ------------------------------------------------------------------------
** Handshake
*/
static int zconn_send_ready(mqi_zconn *c) {
  uint8_t buf[ZCONN_CMD_MAX];
  size_t n = 0;
  int rc = mqi_zmtp_ready_encode(buf, sizeof buf, MQI_ZMTP_CMD_READY, c->cfg.socket_type, NULL, 0,
                                 NULL, 0, &n);
  if (rc != MQI_ZMTP_OK) return zconn_fail(c, "cannot encode READY: %s", mqi_zmtp_rcstr(rc));
  return zconn_queue(c, buf, n);
}

/* The peer's metadata (READY or INITIATE): check its socket type against
** ours, keep its Identity, and open the connection for messages. */
static int zconn_accept_meta(mqi_zconn *c, const mqi_zmtp_cmd *cmd) {
  mqi_zmtp_meta meta;
  int rc = mqi_zmtp_ready_parse(cmd, &meta);
  if (rc != MQI_ZMTP_OK) return zconn_fail(c, "bad metadata: %s", mqi_zmtp_rcstr(rc));
  if (mqi_zmtp_socket_check(c->cfg.socket_type, meta.socket_type) != MQI_ZMTP_OK) {
    const char *theirs = mqi_zmtp_socket_name(meta.socket_type);
    return zconn_fail(c, "peer socket type %s cannot talk to our %s", theirs ? theirs : "(none)",
                      mqi_zmtp_socket_name(c->cfg.socket_type));
  }
  c->peer_type = meta.socket_type;
  c->identity_len = meta.identity_len;
  if (meta.identity_len) memcpy(c->identity, meta.identity, meta.identity_len);
  c->state = MQI_ZC_ACTIVE;
  mqi_zmtp_decoder_set_limits(&c->dec, &c->cfg.limits);
  return MQI_ZC_OK;
}

/* PLAIN HELLO: check the credentials; WELCOME, or ERROR and close. */
static int zconn_plain_hello(mqi_zconn *c, int64_t now, const mqi_zmtp_cmd *cmd) {
  const uint8_t *user, *pass;
  size_t ulen, plen, n = 0;
  uint8_t buf[ZCONN_CMD_MAX];
  int rc = mqi_zmtp_hello_parse(cmd, &user, &ulen, &pass, &plen);
  if (rc != MQI_ZMTP_OK) return zconn_fail(c, "malformed PLAIN HELLO");
  for (size_t i = 0; i < ulen; i++) c->user[i] = user[i] ? (char)user[i] : '?';
  c->user[ulen] = '\0';
  if (!c->cfg.auth || !c->cfg.auth(c->cfg.auth_ctx, user, ulen, pass, plen, c->peer)) {
    /* libzmq's own spelling of ERROR: a libzmq PLAIN client recognises
    ** only that one and then reports AUTH 400 to its application; either
    ** spelling stops it from reconnecting with the same credentials. */
    rc = mqi_zmtp_error_encode(buf, sizeof buf, "400", 3, 1, &n);
    if (rc != MQI_ZMTP_OK || zconn_queue(c, buf, n) != MQI_ZC_OK)
      return zconn_fail(c, "authentication failed");
    snprintf(c->why, sizeof c->why, "PLAIN authentication failed for user \"%.64s\"", c->user);
    c->state = MQI_ZC_CLOSING;
    c->close_deadline = now + ZCONN_CLOSE_GRACE_MS;
    return MQI_ZC_OK;
  }
  rc = mqi_zmtp_welcome_encode(buf, sizeof buf, &n);
  if (rc != MQI_ZMTP_OK) return zconn_fail(c, "cannot encode WELCOME");
  c->hs_step = 1;
  return zconn_queue(c, buf, n);
}

/* PLAIN client: our HELLO, sent as soon as the greetings are done. */
static int zconn_plain_send_hello(mqi_zconn *c) {
  uint8_t buf[ZCONN_CMD_MAX];
  size_t n = 0;
  const char *u = c->cfg.plain_user ? c->cfg.plain_user : "";
  const char *p = c->cfg.plain_password ? c->cfg.plain_password : "";
  int rc = mqi_zmtp_hello_encode(buf, sizeof buf, u, strlen(u), p, strlen(p), &n);
  if (rc != MQI_ZMTP_OK) return zconn_fail(c, "cannot encode HELLO");
  int r = zconn_queue(c, buf, n); /* closes the connection when it fails */
  memset(buf, 0, sizeof buf);     /* the password */
  return r;
}

/* PLAIN client: WELCOME, then INITIATE with our metadata; then READY. */
static int zconn_plain_client(mqi_zconn *c, const mqi_zmtp_cmd *cmd) {
  if (c->hs_step == 0) {
    uint8_t buf[ZCONN_CMD_MAX];
    size_t n = 0;
    if (cmd->kind != MQI_ZMTP_CMD_WELCOME || mqi_zmtp_welcome_parse(cmd) != MQI_ZMTP_OK)
      return zconn_fail(c, "expected PLAIN WELCOME, got \"%.*s\"", (int)cmd->name_len,
                        (const char *)cmd->name);
    int rc = mqi_zmtp_ready_encode(buf, sizeof buf, MQI_ZMTP_CMD_INITIATE, c->cfg.socket_type,
                                   NULL, 0, NULL, 0, &n);
    if (rc != MQI_ZMTP_OK) return zconn_fail(c, "cannot encode INITIATE");
    c->hs_step = 1;
    return zconn_queue(c, buf, n);
  }
  if (cmd->kind != MQI_ZMTP_CMD_READY)
    return zconn_fail(c, "expected READY, got \"%.*s\"", (int)cmd->name_len,
                      (const char *)cmd->name);
  return zconn_accept_meta(c, cmd);
}

/* One frame during the handshake.  Like libzmq we do not insist on the
** COMMAND flag here: a data frame carrying a READY body is a READY. */
static int zconn_handshake(mqi_zconn *c, int64_t now, const mqi_zmtp_frame *f) {
  mqi_zmtp_cmd cmd;
  if (mqi_zmtp_cmd_parse(f->body, f->size, &cmd) != MQI_ZMTP_OK)
    return zconn_fail(c, "malformed command during the handshake");
  if (cmd.kind == MQI_ZMTP_CMD_ERROR) {
    const uint8_t *r = NULL;
    size_t rl = 0;
    mqi_zmtp_error_parse(&cmd, &r, &rl);
    c->peer_error = 1;
    return zconn_fail(c, "peer sent ERROR \"%.*s\"", (int)(rl > 64 ? 64 : rl),
                      r ? (const char *)r : "");
  }
  if (c->cfg.mechanism == MQI_ZMTP_MECH_NULL) {
    if (cmd.kind != MQI_ZMTP_CMD_READY)
      return zconn_fail(c, "expected READY, got \"%.*s\"", (int)cmd.name_len,
                        (const char *)cmd.name);
    return zconn_accept_meta(c, &cmd);
  }
  if (c->cfg.client) return zconn_plain_client(c, &cmd);
  if (c->hs_step == 0) {
    if (cmd.kind != MQI_ZMTP_CMD_HELLO)
      return zconn_fail(c, "expected PLAIN HELLO, got \"%.*s\"", (int)cmd.name_len,
                        (const char *)cmd.name);
    return zconn_plain_hello(c, now, &cmd);
  }
  if (cmd.kind != MQI_ZMTP_CMD_INITIATE)
    return zconn_fail(c, "expected PLAIN INITIATE, got \"%.*s\"", (int)cmd.name_len,
                      (const char *)cmd.name);
  int r = zconn_accept_meta(c, &cmd);
  /* PLAIN: the server's READY is the last word; the client has sent all of
  ** its handshake already, so messages may follow it at once. */
  return r == MQI_ZC_OK ? zconn_send_ready(c) : r;
}

/* ------------------------------------------------------------------------
** Traffic
*/
static int zconn_command(mqi_zconn *c, int64_t now, const mqi_zmtp_frame *f) {
  mqi_zmtp_cmd cmd;
  /* After the handshake libzmq ignores what it does not understand, even
  ** malformed commands; being stricter would only break peers. */
  if (mqi_zmtp_cmd_parse(f->body, f->size, &cmd) != MQI_ZMTP_OK) return MQI_ZC_OK;
  if (cmd.kind == MQI_ZMTP_CMD_PING) {
    unsigned ttl = 0;
    const uint8_t *ctx = NULL;
    size_t ctx_len = 0, n = 0;
    uint8_t buf[ZCONN_CMD_MAX];
    if (mqi_zmtp_ping_parse(&cmd, &ttl, &ctx, &ctx_len) != MQI_ZMTP_OK) return MQI_ZC_OK;
    if (ttl > 0) c->ttl_deadline = now + (int64_t)ttl * 100;
    if (mqi_zmtp_pong_encode(buf, sizeof buf, ctx, ctx_len, &n) != MQI_ZMTP_OK) return MQI_ZC_OK;
    return zconn_queue(c, buf, n);
  }
  if (cmd.kind == MQI_ZMTP_CMD_ERROR) {
    const uint8_t *r = NULL;
    size_t rl = 0;
    mqi_zmtp_error_parse(&cmd, &r, &rl);
    c->peer_error = 1;
    return zconn_fail(c, "peer sent ERROR \"%.*s\"", (int)(rl > 64 ? 64 : rl),
                      r ? (const char *)r : "");
  }
  return MQI_ZC_OK; /* PONG, a second READY, SUBSCRIBE, unknown: ignored */
}

/* A frame the decoder produced; *f is ours to release. */
static int zconn_frame(mqi_zconn *c, int64_t now, mqi_zmtp_frame *f, mqi_zconn_msg_fn fn,
                       void *ctx) {
  int r;
  if (c->state == MQI_ZC_HANDSHAKE) {
    r = zconn_handshake(c, now, f);
    /* The HELLO body holds a password: do not leave it in freed memory. */
    if (f->body) memset(f->body, 0, f->size);
    mqi_zmtp_frame_release(&c->dec, f);
    return r;
  }
  if (c->state != MQI_ZC_ACTIVE) {
    mqi_zmtp_frame_release(&c->dec, f);
    return MQI_ZC_OK;
  }
  if (f->flags & MQI_ZMTP_F_COMMAND) {
    r = zconn_command(c, now, f);
    mqi_zmtp_frame_release(&c->dec, f);
    return r;
  }
  if (c->nparts == c->partcap) {
    size_t cap = c->partcap ? c->partcap * 2 : 4;
    mqi_zmtp_frame *p = realloc(c->parts, cap * sizeof *p);
    if (!p) {
      mqi_zmtp_frame_release(&c->dec, f);
      return zconn_fail(c, "out of memory for a message of %zu frames", c->nparts + 1);
    }
    c->parts = p;
    c->partcap = cap;
  }
  c->parts[c->nparts++] = *f;
  if (f->flags & MQI_ZMTP_F_MORE) return MQI_ZC_OK;
  size_t n = c->nparts;
  int pause = fn ? fn(ctx, c, c->parts, n) : 0;
  if (c->state == MQI_ZC_DEAD) return MQI_ZC_CLOSED; /* the handler closed us */
  zconn_drop_parts(c);
  return pause ? MQI_ZC_PAUSED : MQI_ZC_OK;
}

/* Process buffered input until it is used up, the handler pauses, or the
** connection dies. */
static int zconn_process(mqi_zconn *c, int64_t now, mqi_zconn_msg_fn fn, void *ctx) {
  while (c->ipos < c->ilen) {
    const uint8_t *p = c->ibuf + c->ipos;
    size_t n = c->ilen - c->ipos, used = 0;
    if (c->state == MQI_ZC_GREETING) {
      int rc = mqi_zmtp_greeting_feed(&c->greet, p, n, &used);
      c->ipos += used;
      if (rc == MQI_ZMTP_AGAIN) continue;
      if (rc == MQI_ZMTP_EMECH)
        return zconn_fail(c, "security mechanism mismatch (the peer does not use %s)",
                          c->cfg.mechanism == MQI_ZMTP_MECH_NULL ? "NULL" : "PLAIN");
      if (rc != MQI_ZMTP_OK) return zconn_fail(c, "greeting: %s", mqi_zmtp_rcstr(rc));
      c->state = MQI_ZC_HANDSHAKE;
      /* NULL is symmetric and libzmq sends READY at once; so do we.  With
      ** PLAIN the client speaks first (HELLO), the server only after it. */
      if (c->cfg.mechanism == MQI_ZMTP_MECH_NULL && zconn_send_ready(c) != MQI_ZC_OK)
        return MQI_ZC_CLOSED;
      if (c->cfg.mechanism == MQI_ZMTP_MECH_PLAIN && c->cfg.client &&
          zconn_plain_send_hello(c) != MQI_ZC_OK)
        return MQI_ZC_CLOSED;
      continue;
    }
    if (c->state != MQI_ZC_HANDSHAKE && c->state != MQI_ZC_ACTIVE) {
      c->ipos = c->ilen; /* CLOSING: whatever else the peer says is moot */
      break;
    }
    mqi_zmtp_frame f;
    int rc = mqi_zmtp_decoder_feed(&c->dec, p, n, &used, &f);
    c->ipos += used;
    if (rc == MQI_ZMTP_AGAIN) continue;
    if (rc != MQI_ZMTP_FRAME) return zconn_fail(c, "frame: %s", mqi_zmtp_rcstr(rc));
    int r = zconn_frame(c, now, &f, fn, ctx);
    if (r != MQI_ZC_OK) return r;
  }
  if (c->ipos == c->ilen) c->ipos = c->ilen = 0;
  return c->state == MQI_ZC_DEAD ? MQI_ZC_CLOSED : MQI_ZC_OK;
}

/* CLOSING: read and discard until the peer closes, so that our ERROR is
** not overtaken by a reset caused by unread input. */
static int zconn_drain(mqi_zconn *c) {
  for (int i = 0; i < 16; i++) {
    ssize_t n = recv(c->fd, c->ibuf, ZCONN_IBUF, 0);
    if (n > 0) continue;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return MQI_ZC_OK;
    char why[sizeof c->why];
    memcpy(why, c->why, sizeof why);
    mqi_zconn_close(c, why);
    return MQI_ZC_CLOSED;
  }
  return MQI_ZC_OK;
}

int mqi_zconn_input(mqi_zconn *c, int64_t now, size_t budget, mqi_zconn_msg_fn fn, void *ctx) {
  if (c->state == MQI_ZC_DEAD) return MQI_ZC_CLOSED;
  if (c->state == MQI_ZC_CLOSING) return zconn_drain(c);
  int r = zconn_process(c, now, fn, ctx);
  if (r != MQI_ZC_OK) return r;
  size_t got = 0;
  while (got < budget) {
    ssize_t n = recv(c->fd, c->ibuf, ZCONN_IBUF, 0);
    if (n > 0) {
      got += (size_t)n;
      c->ipos = 0;
      c->ilen = (size_t)n;
      /* Any traffic proves the peer alive (a PING in it re-arms its TTL). */
      c->last_recv = now;
      c->ping_deadline = 0;
      c->ttl_deadline = 0;
      r = zconn_process(c, now, fn, ctx);
      if (r != MQI_ZC_OK) return r;
      if (c->state == MQI_ZC_CLOSING) return MQI_ZC_OK;
      continue;
    }
    if (n == 0) {
      int mid = mqi_zmtp_decoder_finish(&c->dec) != MQI_ZMTP_OK || c->nparts > 0;
      return zconn_fail(c, mid ? "peer closed the connection inside a message"
                           : c->state == MQI_ZC_ACTIVE ? "peer closed the connection"
                                                       : "peer closed during the handshake");
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return MQI_ZC_OK;
    return zconn_fail(c, "recv: %s", strerror(errno));
  }
  return MQI_ZC_OK;
}

int mqi_zconn_send(mqi_zconn *c, const mqi_zpart *parts, size_t n) {
  uint8_t hdr[MQI_ZMTP_HEADER_MAX];
  size_t hl = 0, total = 0;
  if (c->state != MQI_ZC_ACTIVE || c->wdead || n == 0) return MQI_ZMTP_EINVAL;
  for (size_t i = 0; i < n; i++) {
    size_t one = (parts[i].len <= 255 ? 2 : 9) + parts[i].len;
    if (parts[i].len > SIZE_MAX / 4 || total > SIZE_MAX / 4 - one) return MQI_ZMTP_EINVAL;
    total += one;
  }
  size_t pending = mqi_zconn_pending(c);
  if (pending > 0 && pending + total > c->cfg.out_limit) return MQI_ZMTP_ESPACE;
  uint8_t *at = zconn_reserve(c, total);
  if (!at) return MQI_ZMTP_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    unsigned flags = i + 1 < n ? MQI_ZMTP_F_MORE : 0;
    mqi_zmtp_frame_header_encode(hdr, flags, parts[i].len, &hl);
    memcpy(at, hdr, hl);
    at += hl;
    if (parts[i].len) memcpy(at, parts[i].data, parts[i].len);
    at += parts[i].len;
  }
  c->olen += total;
  c->queued += total;
  return MQI_ZMTP_OK;
}

int mqi_zconn_flush(mqi_zconn *c, int64_t now) {
  (void)now;
  if (c->state == MQI_ZC_DEAD) return MQI_ZC_CLOSED;
  while (c->ohead < c->olen) {
    ssize_t n = send(c->fd, c->obuf + c->ohead, c->olen - c->ohead, MSG_NOSIGNAL);
    if (n > 0) {
      c->ohead += (size_t)n;
      c->written += (uint64_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return MQI_ZC_OK;
    /* Held, the peer may have closed after sending what we have not read
    ** yet: keep that, to be read up to the peer's close once the hold ends,
    ** and write nothing more. */
    if (c->held) {
      c->wdead = 1;
      c->ohead = c->olen = 0;
      return MQI_ZC_OK;
    }
    return zconn_fail(c, "send: %s", n < 0 ? strerror(errno) : "no progress");
  }
  c->ohead = c->olen = 0;
  if (c->state == MQI_ZC_CLOSING && !c->shut_wr) {
    /* The ERROR is out: tell the peer we are done and wait for its close. */
    shutdown(c->fd, SHUT_WR);
    c->shut_wr = 1;
  }
  return MQI_ZC_OK;
}

/* ------------------------------------------------------------------------
** Timers
*/
static int64_t zconn_next_ping(const mqi_zconn *c) {
  if (c->cfg.heartbeat_ms <= 0 || (c->ping_deadline && !c->held)) return INT64_MAX;
  int64_t base = c->last_recv > c->last_ping ? c->last_recv : c->last_ping;
  return base + c->cfg.heartbeat_ms;
}

int64_t mqi_zconn_deadline(const mqi_zconn *c) {
  int64_t d = INT64_MAX;
  switch (c->state) {
    case MQI_ZC_GREETING:
    case MQI_ZC_HANDSHAKE:
      if (c->cfg.handshake_timeout_ms > 0) d = c->created + c->cfg.handshake_timeout_ms;
      break;
    case MQI_ZC_CLOSING:
      d = c->close_deadline;
      break;
    case MQI_ZC_ACTIVE:
      d = zconn_next_ping(c);
      if (c->held) break;
      if (c->ping_deadline && c->ping_deadline < d) d = c->ping_deadline;
      if (c->ttl_deadline && c->ttl_deadline < d) d = c->ttl_deadline;
      break;
    default:
      break;
  }
  return d;
}

int mqi_zconn_tick(mqi_zconn *c, int64_t now) {
  switch (c->state) {
    case MQI_ZC_DEAD:
      return MQI_ZC_CLOSED;
    case MQI_ZC_GREETING:
    case MQI_ZC_HANDSHAKE:
      if (c->cfg.handshake_timeout_ms > 0 && now - c->created >= c->cfg.handshake_timeout_ms)
        return zconn_fail(c, "handshake not finished within %lld ms",
                          (long long)c->cfg.handshake_timeout_ms);
      return MQI_ZC_OK;
    case MQI_ZC_CLOSING:
      if (now >= c->close_deadline) {
        char why[sizeof c->why];
        memcpy(why, c->why, sizeof why);
        mqi_zconn_close(c, why);
        return MQI_ZC_CLOSED;
      }
      return MQI_ZC_OK;
    default:
      break;
  }
  /* Held, we cannot tell a silent peer from one whose PONGs wait unread in
  ** the kernel: we only keep it from timing us out. */
  if (!c->held && c->ttl_deadline && now >= c->ttl_deadline)
    return zconn_fail(c, "peer silent past the TTL of its own PING");
  if (!c->held && c->ping_deadline && now >= c->ping_deadline)
    return zconn_fail(c, "peer silent for %lld ms after our PING",
                      (long long)c->cfg.heartbeat_timeout_ms);
  if (now >= zconn_next_ping(c)) {
    uint8_t buf[ZCONN_CMD_MAX];
    size_t n = 0;
    /* The TTL tells the peer how long to wait for us: our own timeout,
    ** in deciseconds, capped at 655 by the codec for libzmq's sake. */
    int64_t ds = (c->cfg.heartbeat_timeout_ms + 99) / 100;
    if (ds < 1) ds = 1;
    if (ds > MQI_ZMTP_PING_TTL_MAX) ds = MQI_ZMTP_PING_TTL_MAX;
    if (mqi_zmtp_ping_encode(buf, sizeof buf, (unsigned)ds, NULL, 0, &n) == MQI_ZMTP_OK &&
        zconn_queue(c, buf, n) != MQI_ZC_OK)
      return MQI_ZC_CLOSED;
    c->last_ping = now;
    if (!c->held) c->ping_deadline = now + c->cfg.heartbeat_timeout_ms;
  }
  return MQI_ZC_OK;
}

void mqi_zconn_hold(mqi_zconn *c, int held, int64_t now) {
  held = held != 0;
  if (held == c->held) return;
  c->held = held;
  if (held) {
    c->held_since = now;
    return;
  }
  /* The time held does not count as the peer's silence; the silence before
  ** and after it adds up, so a hold that comes and goes cannot keep a dead
  ** peer forever. */
  int64_t d = now - c->held_since;
  c->last_recv = mqi_time_add(c->last_recv, d);
  if (c->ping_deadline) c->ping_deadline = mqi_time_add(c->ping_deadline, d);
  if (c->ttl_deadline) c->ttl_deadline = mqi_time_add(c->ttl_deadline, d);
  /* A peer read during the hold (the turn it ends reads before releasing)
  ** was heard from then, not d later; and the PINGs sent while held must
  ** not put off the first one after it, which arms the silence check, or
  ** holds a little less than a heartbeat apart would keep a dead peer. */
  if (c->last_recv > now) c->last_recv = now;
  if (c->last_ping > c->last_recv) c->last_ping = c->last_recv;
}
/*** end src/zmtp_conn.c ***/

/*** begin src/zmtp_batch.c ***/
/*
** zmtp_batch.c -- a PULL endpoint's batch: the messages read and not yet
** committed, and the memory that holds them.
**
** A small message's payload is copied out of the decoder's frame into
** chunks the batch owns, one allocation per BATCH_CHUNK bytes instead of
** one per message, all freed when the batch is.  At millions of messages
** per second a malloc and a free per message, paid by the loop thread
** that also parses every byte, was several percent of ingest.  A payload
** larger than BATCH_SMALL keeps its own allocation (the decoder's, when the
** message has one frame), so a large message is never copied and a chunk
** never wastes more than BATCH_SMALL.  Freed chunks are kept for the next
** batches, up to POOL_MAX of them: a chunk fresh from the kernel costs a
** page fault per page at first touch, which the loop thread would pay.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* #include "zmtp_net.h" -- inlined above */

#define BATCH_CHUNK ((size_t)64 << 10)
#define BATCH_SMALL ((size_t)4 << 10)
#define POOL_MAX 64 /* 4 MiB: two batches of 8192 messages of 100 bytes */

struct mqi_srv_chunk {
  mqi_srv_chunk *next;
  size_t used;
  unsigned char data[];
};

/* len bytes from the newest chunk, or a new one; NULL when out of memory. */
static unsigned char *batch_alloc(mqi_srv_batch *b, mqi_srv_pool *pool, size_t len) {
  mqi_srv_chunk *c = b->chunks;
  if (!c || BATCH_CHUNK - c->used < len) {
    if ((c = pool->free) != NULL) {
      pool->free = c->next;
      pool->n--;
    } else if (!(c = malloc(sizeof *c + BATCH_CHUNK))) {
      return NULL;
    }
    c->next = b->chunks;
    c->used = 0;
    b->chunks = c;
  }
  unsigned char *p = c->data + c->used;
  /* 16-byte aligned: the CRC's loads then never straddle cache lines. */
  c->used += (len + 15) & ~(size_t)15;
  if (c->used > BATCH_CHUNK) c->used = BATCH_CHUNK;
  return p;
}

int mqi_batch_add(mqi_srv_batch *b, mqi_srv_pool *pool, mqi_zmtp_frame *parts, size_t n) {
  mqi_srv_item it = {NULL, 0, NULL, 0, 0};
  size_t total = 0;
  if (b->n == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 256;
    mqi_srv_item *p = realloc(b->items, cap * sizeof *p);
    if (!p) return MQ_ENOMEM;
    b->items = p;
    b->cap = cap;
  }
  for (size_t i = 0; i < n; i++) total += parts[i].size; /* bounded by max_message */
  it.len = total;
  if (n == 1 && total > BATCH_SMALL) {
    it.data = parts[0].body; /* taken from the decoder: not copied */
    it.heap = 1;
    parts[0].body = NULL;
  } else if (total) {
    it.heap = total > BATCH_SMALL;
    it.data = it.heap ? malloc(total) : batch_alloc(b, pool, total);
    if (!it.data) return MQ_ENOMEM;
    for (size_t i = 0, at = 0; i < n; i++) {
      if (parts[i].size) memcpy((unsigned char *)it.data + at, parts[i].body, parts[i].size);
      at += parts[i].size;
    }
  }
  if (n > 1) {
    /* The sizes, for the zmtp-frames header: at most 20 digits and a comma
    ** each. */
    size_t hl = 0;
    if (!(it.frames = malloc(n * 21))) {
      if (it.heap) free(it.data);
      return MQ_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
      hl += (size_t)snprintf(it.frames + hl, n * 21 - hl, i ? ",%zu" : "%zu", parts[i].size);
  }
  it.crc = mqi_crc32(it.data, it.len);
  b->items[b->n++] = it;
  b->bytes += it.len;
  return MQ_OK;
}

static void batch_item_free(mqi_srv_item *it) {
  if (it->heap) free(it->data);
  free(it->frames);
}

void mqi_batch_drop(mqi_srv_batch *b, size_t k) {
  if (k > b->n) k = b->n;
  if (k == 0) return; /* items may be NULL: no NULL + 0, no memmove(NULL, ...) */
  for (size_t i = 0; i < k; i++) {
    b->bytes -= b->items[i].len;
    batch_item_free(&b->items[i]);
  }
  b->n -= k;
  memmove(b->items, b->items + k, b->n * sizeof *b->items);
}

int mqi_batch_prepend(mqi_srv_batch *b, mqi_srv_batch *front) {
  size_t n = front->n + b->n;
  if (front->cap < n) {
    mqi_srv_item *p = realloc(front->items, (n ? n : 1) * sizeof *p);
    if (!p) return MQ_ENOMEM;
    front->items = p;
    front->cap = n;
  }
  if (b->n) memcpy(front->items + front->n, b->items, b->n * sizeof *b->items);
  front->n = n;
  front->bytes += b->bytes;
  /* Chunks are freed together: their order does not matter. */
  mqi_srv_chunk **tail = &front->chunks;
  while (*tail) tail = &(*tail)->next;
  *tail = b->chunks;
  free(b->items);
  *b = *front;
  memset(front, 0, sizeof *front);
  return MQ_OK;
}

void mqi_batch_free(mqi_srv_batch *b, mqi_srv_pool *pool) {
  for (size_t i = 0; i < b->n; i++) batch_item_free(&b->items[i]);
  free(b->items);
  for (mqi_srv_chunk *c = b->chunks, *next; c; c = next) {
    next = c->next;
    if (pool && pool->n < POOL_MAX) {
      c->next = pool->free;
      pool->free = c;
      pool->n++;
    } else {
      free(c);
    }
  }
  memset(b, 0, sizeof *b);
}

void mqi_batch_pool_free(mqi_srv_pool *pool) {
  for (mqi_srv_chunk *c = pool->free, *next; c; c = next) {
    next = c->next;
    free(c);
  }
  pool->free = NULL;
  pool->n = 0;
}
/*** end src/zmtp_batch.c ***/

/*** begin src/zmtp_server.c ***/
/*
** zmtp_server.c -- mq_server: listeners, the poll(2) loop, PULL ingest and
** PUSH egress over the public queue API.
**
** One thread runs the loop (mq_server_run).  A turn of the loop is: poll;
** read every readable connection (bounded per connection); accept; hand
** the PULL messages read so far to the commit thread; do the ROUTER work of
** zmtp_router.c; lease for PUSH peers that can take more; fire timers;
** write; ack what the kernel took; reap dead connections.
** Besides the loop there is one commit thread, started on first use, which
** stores one PULL batch at a time with a single mq_put_batch (one
** transaction, one fsync under MQ_SYNC_FULL: group commit) and pokes the
** wake pipe when it is done; the batch is the thread's alone until then,
** and everything else it shares with the loop is under cmu.  mq_server_stop
** touches only an atomic flag and the wake pipe, so it is safe from any
** thread and from signal handlers.
**
** Backpressure is TCP's.  While a batch is being committed the loop reads
** the next one, up to PULL_BATCH_MSGS messages or PULL_BATCH_BYTES; then it
** stops reading that endpoint's connections (their unread bytes wait in the
** connection and in the kernel) until the commit is done.  While commits
** fail (disk full, file locked) the endpoint reads nothing and retries with
** a growing delay, so libzmq's PUSH blocks at its high-water mark -- we
** never answer with ERROR, which would stop a libzmq peer from ever
** reconnecting.
**
** PUSH egress leases only for connections that are ACTIVE and have written
** out everything queued so far (the socket is writable), round-robin, and
** acks a message once all its bytes were handed to the kernel.  That is
** at-most-once on the peer's side (a peer that dies with messages in its
** buffers loses them), and a crash of ours between write and ack delivers
** the message again after its lease.  Messages leased but not fully written
** when a connection dies are nacked (visible again at once).
**
** Multipart messages and PULL: the payload stored is the frames
** concatenated; when there were several frames, the header "zmtp-frames"
** lists their sizes ("5,0,12"), and PUSH egress uses it to send the message
** with the same frames again (doc/protocol.md).
**
** Connecting endpoints (mq_server_pull_connect, mq_server_push_connect)
** have no listening socket: the endpoint owns at most one connection, which
** it opens itself with a non-blocking connect watched by the same poll, and
** once the ZMTP handshake is done that connection is served exactly like
** an accepted one of the same kind.  When it ends, the next attempt is
** scheduled with exponential backoff and full jitter, on the server's
** clock so tests can step through the schedule; an ERROR from the peer
** (our PLAIN credentials refused) waits CONNECT_REFUSED_MS instead.
**
** Timers come in two kinds: protocol timers (handshake, heartbeats) run on
** the server's clock, which tests may replace (mqi_server_test_clock);
** queue polling (an empty queue is looked at again every EGRESS_POLL_MS,
** since puts of other processes do not wake poll(2)) runs on real
** monotonic time, because it is about the store, not the peer.
*/
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* #include "zmtp_net.h" -- inlined above */

#define PULL_BATCH_MSGS 8192
#define PULL_BATCH_BYTES ((size_t)32 << 20)
#define FRAMES_HEADER "zmtp-frames" /* a multipart message's frame sizes */
#define READ_BUDGET ((size_t)8 << 20) /* bytes read per connection per turn */
#define PUSH_PER_CONN 32              /* leased per PUSH connection per turn */
#define PUSH_LEASE_MAX 256            /* leased per PUSH endpoint per turn */
#define EGRESS_POLL_MS 20             /* look at an empty queue this often */
#define RETRY_MIN_MS 50
/* After this long without a PULL batch, the commit thread turns packs
** into message rows (pack.c), SETTLE_STEP messages per transaction, so that
** what a burst left is settled before a consumer needs it. */
#define SETTLE_IDLE_MS 200
#define SETTLE_STEP 4096
#define RETRY_MAX_MS 2000
#define ACCEPT_PER_TURN 64
#define ACCEPT_PAUSE_MS 200 /* after accept(2) failed, e.g. out of descriptors */
#define OUT_LIMIT_DEFAULT ((size_t)4 << 20)
#define MAX_FRAME_LIMIT ((size_t)1 << 31)
#define POLL_MAX_MS 1000
#define CONNECT_RESET_MS 10000         /* up this long: the backoff starts over */
#define CONNECT_REFUSED_MS (5 * 60000) /* after the peer refused our credentials */

static int64_t srv_mono(void) { return mqi_os_monotonic_ms(); }

int64_t mqi_server_now(mq_server *s) {
  return s->clock ? s->clock(s->clock_ctx) : mqi_os_monotonic_ms();
}

void mqi_server_test_clock(mq_server *s, int64_t (*fn)(void *), void *ctx) {
  if (!s) return;
  s->clock = fn;
  s->clock_ctx = ctx;
}

void mqi_server_test_out_limit(mq_server *s, size_t bytes) {
  if (s && bytes) s->out_limit = bytes;
}

/* ------------------------------------------------------------------------
** Options, new, free
*/
void mq_server_options_init(mq_server_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->heartbeat_ms = 5000;
  o->heartbeat_timeout_ms = 15000;
  o->handshake_timeout_ms = 10000;
  o->max_frame = (size_t)16 << 20;
  o->max_message = (size_t)16 << 20;
  o->max_connections = 1024;
  o->max_handshakes = 64;
  o->credit = 1000;
  o->reconnect_ms = 100;
  o->reconnect_max_ms = 30000;
  o->connect_timeout_ms = 10000;
}

static int srv_check_options(mq_store *st, const mq_server_options *o) {
  if (o->heartbeat_ms < 0 || o->heartbeat_timeout_ms < 0 || o->handshake_timeout_ms < 0)
    return mqi_err_set(st, MQ_EINVAL, "server: a negative time in mq_server_options");
  if (o->max_frame == 0 || o->max_message == 0 || o->max_frame > MAX_FRAME_LIMIT ||
      o->max_message > MAX_FRAME_LIMIT)
    return mqi_err_set(st, MQ_EINVAL, "server: max_frame and max_message must be 1..%zu",
                       MAX_FRAME_LIMIT);
  if (o->max_connections < 1 || o->max_handshakes < 1)
    return mqi_err_set(st, MQ_EINVAL,
                       "server: max_connections and max_handshakes must be at least 1");
  if (o->reconnect_ms < 1 || o->reconnect_max_ms < o->reconnect_ms || o->connect_timeout_ms < 0)
    return mqi_err_set(st, MQ_EINVAL,
                       "server: reconnect_ms must be at least 1, reconnect_max_ms at least "
                       "reconnect_ms, connect_timeout_ms not negative");
  if (o->credit == 0 || o->credit > 1000000)
    return mqi_err_set(st, MQ_EINVAL, "server: credit must be 1..1000000");
  if (!o->auth && (!o->plain_user != !o->plain_password))
    return mqi_err_set(st, MQ_EINVAL, "server: plain_user and plain_password go together");
  if (!o->auth && o->plain_user &&
      (strlen(o->plain_user) > MQI_ZMTP_PLAIN_FIELD_MAX ||
       strlen(o->plain_password) > MQI_ZMTP_PLAIN_FIELD_MAX))
    return mqi_err_set(st, MQ_EINVAL, "server: PLAIN user and password are at most %d bytes",
                       MQI_ZMTP_PLAIN_FIELD_MAX);
  return MQ_OK;
}

int mq_server_new(mq_store *store, const mq_server_options *opts, mq_server **out) {
  mq_server_options o;
  if (out) *out = NULL;
  int rc = mqi_store_check(store, 0);
  if (rc != MQ_OK) return rc;
  if (!out) return mqi_err_set(store, MQ_EINVAL, "mq_server_new: out is NULL");
  mq_server_options_init(&o);
  if (opts) {
    if (opts->size < sizeof(size_t) || opts->size > sizeof o)
      return mqi_err_set(store, MQ_EINVAL,
                         "mq_server_options.size is %zu: call mq_server_options_init first",
                         opts->size);
    memcpy(&o, opts, opts->size);
    o.size = sizeof o;
  }
  if ((rc = srv_check_options(store, &o)) != MQ_OK) return rc;
  /* libzmq's rule: a heartbeat timeout left at 0 means the interval. */
  if (o.heartbeat_timeout_ms == 0) o.heartbeat_timeout_ms = o.heartbeat_ms;
  mq_server *s = calloc(1, sizeof *s);
  if (!s) return mqi_err_set(store, MQ_ENOMEM, "server: out of memory");
  s->store = store;
  s->opt = o;
  s->wake[0] = s->wake[1] = -1;
  s->out_limit = OUT_LIMIT_DEFAULT;
  atomic_init(&s->stop, 0);
  if (pthread_mutex_init(&s->cmu, NULL) != 0) {
    free(s);
    return mqi_err_set(store, MQ_ERROR, "server: cannot create a mutex");
  }
  pthread_condattr_t ca;
  int cerr = pthread_condattr_init(&ca);
  /* The idle wait of the commit thread is a duration: not moved by the
  ** wall clock. */
  if (cerr == 0) cerr = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  if (cerr == 0) cerr = pthread_cond_init(&s->ccv, &ca);
  pthread_condattr_destroy(&ca);
  if (cerr != 0) {
    pthread_mutex_destroy(&s->cmu);
    free(s);
    return mqi_err_set(store, MQ_ERROR, "server: cannot create a condition variable");
  }
  s->csync = 1;
  s->rng = mqi_os_seed() | 1;
  /* With a callback the pair is not used to check peers, but connecting
  ** endpoints still log in with it. */
  if (o.plain_user && o.plain_password) {
    s->plain_user = strdup(o.plain_user);
    s->plain_password = strdup(o.plain_password);
    s->plain_user_len = strlen(o.plain_user);
    s->plain_password_len = strlen(o.plain_password);
    if (!s->plain_user || !s->plain_password) {
      mq_server_free(s);
      return mqi_err_set(store, MQ_ENOMEM, "server: out of memory");
    }
  }
  /* The copies above are ours; the caller's strings need not outlive us. */
  s->opt.plain_user = s->plain_user;
  s->opt.plain_password = s->plain_password;
  if (mqi_net_pipe(s->wake) != MQ_OK) {
    int e = errno;
    mq_server_free(s);
    return mqi_err_set(store, MQ_ENET, "server: pipe: %s", strerror(e));
  }
  if ((rc = mqi_router_new(s)) != MQ_OK) {
    mq_server_free(s);
    return mqi_err_set(store, rc, "server: out of memory");
  }
  *out = s;
  return MQ_OK;
}

static void srv_wipe_free(char *p) {
  if (!p) return;
  volatile char *v = p;
  while (*v) *v++ = 0;
  free(p);
}

/* ------------------------------------------------------------------------
** Endpoints
*/
static int srv_listen(mq_server *s, int kind, const char *queue, const char *endpoint,
                      int connect) {
  struct sockaddr_storage ss;
  socklen_t len = 0;
  char err[256];
  int fd = -1, topic = 0;
  if (!s) return MQ_EINVAL;
  if (s->running)
    return mqi_err_set(s->store, MQ_EMISUSE, "server: endpoints cannot be added while it runs");
  if (kind != MQI_EP_ROUTER) {
    mq_queue_info info;
    int rc = mq_queue_info_get(s->store, queue, &info);
    if (rc != MQ_OK) return rc;
    if (kind == MQI_EP_PUSH && info.kind == MQ_KIND_TOPIC)
      return mqi_err_set(s->store, MQ_EINVAL,
                         "server: \"%s\" is a topic: serve one of its subscriptions "
                         "(\"topic/sub\") with PUSH",
                         queue);
    if (kind == MQI_EP_PULL && info.kind == MQ_KIND_SUBSCRIPTION)
      return mqi_err_set(s->store, MQ_EINVAL,
                         "server: \"%s\" is a subscription: PULL into its topic instead", queue);
    topic = info.kind == MQ_KIND_TOPIC;
  }
  if (mqi_net_parse(endpoint, &ss, &len, err, sizeof err) != MQ_OK)
    return mqi_err_set(s->store, MQ_EINVAL, "server: %s", err);
  if (connect && (strncmp(endpoint, "tcp://*:", 8) == 0 ||
                  (ss.ss_family == AF_INET && ((struct sockaddr_in *)&ss)->sin_port == 0) ||
                  (ss.ss_family == AF_INET6 && ((struct sockaddr_in6 *)&ss)->sin6_port == 0)))
    return mqi_err_set(s->store, MQ_EINVAL,
                       "server: cannot connect to \"%s\": name a host and a port", endpoint);
  if (s->neps == s->epcap) {
    size_t cap = s->epcap ? s->epcap * 2 : 4;
    mqi_srv_ep *p = realloc(s->eps, cap * sizeof *p);
    if (!p) return mqi_err_set(s->store, MQ_ENOMEM, "server: out of memory");
    s->eps = p;
    s->epcap = cap;
  }
  if (!connect && mqi_net_listen(&ss, len, &fd, err, sizeof err) != MQ_OK)
    return mqi_err_set(s->store, MQ_ENET, "server: %s: %s", endpoint, err);
  mqi_srv_ep *ep = &s->eps[s->neps];
  memset(ep, 0, sizeof *ep);
  ep->kind = kind;
  ep->fd = fd;
  ep->cfd = -1;
  ep->topic = topic;
  if (queue) snprintf(ep->queue, sizeof ep->queue, "%s", queue);
  if (connect) {
    ep->connect = 1;
    ep->addr = ss;
    ep->addrlen = len;
    snprintf(ep->name, sizeof ep->name, "%s", endpoint);
    s->neps++;
    mqi_log(s->store, MQ_LOG_INFO, "server: %s \"%s\" connecting to %s",
            kind == MQI_EP_PULL ? "PULL into" : "PUSH from", queue, ep->name);
    return MQ_OK;
  }
  if (mqi_net_local_name(fd, ep->name, sizeof ep->name) != MQ_OK)
    snprintf(ep->name, sizeof ep->name, "%s", endpoint);
  s->neps++;
  if (kind == MQI_EP_ROUTER)
    mqi_log(s->store, MQ_LOG_INFO, "server: ROUTER listening on %s", ep->name);
  else
    mqi_log(s->store, MQ_LOG_INFO, "server: %s \"%s\" listening on %s",
            kind == MQI_EP_PULL ? "PULL into" : "PUSH from", queue, ep->name);
  return MQ_OK;
}

int mq_server_pull(mq_server *s, const char *queue, const char *endpoint) {
  if (s && !queue) return mqi_err_set(s->store, MQ_EINVAL, "mq_server_pull: queue is NULL");
  return srv_listen(s, MQI_EP_PULL, queue, endpoint, 0);
}

int mq_server_push(mq_server *s, const char *queue, const char *endpoint) {
  if (s && !queue) return mqi_err_set(s->store, MQ_EINVAL, "mq_server_push: queue is NULL");
  return srv_listen(s, MQI_EP_PUSH, queue, endpoint, 0);
}

int mq_server_router(mq_server *s, const char *endpoint) {
  return srv_listen(s, MQI_EP_ROUTER, NULL, endpoint, 0);
}

int mq_server_pull_connect(mq_server *s, const char *queue, const char *endpoint) {
  if (s && (!queue || !endpoint))
    return mqi_err_set(s->store, MQ_EINVAL, "mq_server_pull_connect: queue or endpoint is NULL");
  return srv_listen(s, MQI_EP_PULL, queue, endpoint, 1);
}

int mq_server_push_connect(mq_server *s, const char *queue, const char *endpoint) {
  if (s && (!queue || !endpoint))
    return mqi_err_set(s->store, MQ_EINVAL, "mq_server_push_connect: queue or endpoint is NULL");
  return srv_listen(s, MQI_EP_PUSH, queue, endpoint, 1);
}

int mq_server_endpoint(mq_server *s, size_t i, char *buf, size_t cap) {
  if (buf && cap) buf[0] = '\0';
  if (!s || !buf) return MQ_EINVAL;
  if (i >= s->neps) return MQ_ENOTFOUND;
  size_t n = strlen(s->eps[i].name);
  if (n + 1 > cap) return MQ_EINVAL;
  memcpy(buf, s->eps[i].name, n + 1);
  return MQ_OK;
}

int mq_server_endpoint_stats(mq_server *s, size_t i, mq_endpoint_stats *out) {
  if (out) memset(out, 0, sizeof *out);
  if (!s) return MQ_EINVAL;
  if (!out) return mqi_err_set(s->store, MQ_EINVAL, "mq_server_endpoint_stats: out is NULL");
  if (i >= s->neps)
    return mqi_err_set(s->store, MQ_ENOTFOUND, "mq_server_endpoint_stats: no endpoint %zu (%zu)", i,
                       s->neps);
  mqi_srv_counts *c = &s->eps[i].count;
  out->messages_in = atomic_load_explicit(&c->in, memory_order_relaxed);
  out->bytes_in = atomic_load_explicit(&c->bytes_in, memory_order_relaxed);
  out->dropped = atomic_load_explicit(&c->dropped, memory_order_relaxed);
  out->messages_out = atomic_load_explicit(&c->out, memory_order_relaxed);
  out->bytes_out = atomic_load_explicit(&c->bytes_out, memory_order_relaxed);
  out->acks = atomic_load_explicit(&c->acks, memory_order_relaxed);
  out->connections = atomic_load_explicit(&c->conns, memory_order_relaxed);
  out->connections_total = atomic_load_explicit(&c->conns_total, memory_order_relaxed);
  out->refused = atomic_load_explicit(&c->refused, memory_order_relaxed);
  out->auth_failures = atomic_load_explicit(&c->auth_failed, memory_order_relaxed);
  return MQ_OK;
}

/* ------------------------------------------------------------------------
** Connections
*/

/* PLAIN credentials: the user's callback, or the one pair, compared in
** time that does not depend on where the bytes differ. */
static int srv_auth_check(mq_server *s, const uint8_t *user, size_t ulen, const uint8_t *pass,
                          size_t plen, const char *peer) {
  if (s->opt.auth) {
    char u[MQI_ZMTP_PLAIN_FIELD_MAX + 1], p[MQI_ZMTP_PLAIN_FIELD_MAX + 1];
    /* A NUL inside would make the C strings say something else. */
    if (memchr(user, 0, ulen) || memchr(pass, 0, plen)) return 0;
    memcpy(u, user, ulen);
    u[ulen] = '\0';
    memcpy(p, pass, plen);
    p[plen] = '\0';
    int ok = s->opt.auth(s->opt.auth_ctx, u, p, peer) == 1;
    volatile char *v = p;
    for (size_t i = 0; i < sizeof p; i++) v[i] = 0;
    return ok;
  }
  if (!s->plain_user) return 0;
  unsigned diff = (ulen != s->plain_user_len) | (plen != s->plain_password_len);
  for (size_t i = 0; i < s->plain_user_len; i++)
    diff |= (unsigned)(i < ulen ? user[i] : 0) ^ (unsigned char)s->plain_user[i];
  for (size_t i = 0; i < s->plain_password_len; i++)
    diff |= (unsigned)(i < plen ? pass[i] : 0) ^ (unsigned char)s->plain_password[i];
  return diff == 0;
}

/* The connection's credential check (ctx is its mqi_srv_conn). */
static int srv_auth(void *ctx, const uint8_t *user, size_t ulen, const uint8_t *pass, size_t plen,
                    const char *peer) {
  mqi_srv_conn *sc = ctx;
  int ok = srv_auth_check(sc->srv, user, ulen, pass, plen, peer);
  if (!ok) MQI_SRV_COUNT(sc->srv->eps[sc->ep].count.auth_failed, 1);
  return ok;
}

static void srv_config(mq_server *s, int kind, mqi_zconn_config *c) {
  memset(c, 0, sizeof *c);
  c->socket_type = kind == MQI_EP_PULL   ? MQI_ZMTP_SOCKET_PULL
                   : kind == MQI_EP_PUSH ? MQI_ZMTP_SOCKET_PUSH
                                         : MQI_ZMTP_SOCKET_ROUTER;
  c->mechanism = (s->opt.auth || s->plain_user) ? MQI_ZMTP_MECH_PLAIN : MQI_ZMTP_MECH_NULL;
  c->auth = srv_auth;
  c->heartbeat_ms = s->opt.heartbeat_ms;
  c->heartbeat_timeout_ms = s->opt.heartbeat_timeout_ms;
  c->handshake_timeout_ms = s->opt.handshake_timeout_ms;
  mqi_zmtp_limits_init(&c->limits);
  c->limits.max_frame = s->opt.max_frame;
  c->limits.max_message = s->opt.max_message;
  c->out_limit = s->out_limit;
}

static size_t srv_handshaking(const mq_server *s) {
  size_t n = 0;
  for (size_t i = 0; i < s->nconns; i++)
    if (mqi_zconn_state(s->conns[i]->z) < MQI_ZC_ACTIVE) n++;
  return n;
}

/* Make a connection of endpoint e out of socket fd (accepted, or connected
** by us); NULL, with fd closed, when out of memory. */
static mqi_srv_conn *srv_conn_add(mq_server *s, size_t e, int fd, const char *peer, int64_t now) {
  mqi_srv_ep *ep = &s->eps[e];
  mqi_zconn_config cfg;
  srv_config(s, ep->kind, &cfg);
  if (ep->connect) {
    cfg.client = 1;
    cfg.mechanism = s->plain_user ? MQI_ZMTP_MECH_PLAIN : MQI_ZMTP_MECH_NULL;
    cfg.plain_user = s->plain_user;
    cfg.plain_password = s->plain_password;
  }
  mqi_srv_conn *sc = calloc(1, sizeof *sc);
  mqi_zconn *z = NULL;
  if (sc) {
    sc->srv = s;
    sc->ep = e;
    cfg.auth_ctx = sc; /* so that a refusal counts against its endpoint */
  }
  if (s->nconns == s->conncap) {
    size_t cap = s->conncap ? s->conncap * 2 : 16;
    mqi_srv_conn **p = realloc(s->conns, cap * sizeof *p);
    if (p) {
      s->conns = p;
      s->conncap = cap;
    }
  }
  if (!sc || s->nconns == s->conncap || mqi_zconn_new(fd, peer, &cfg, now, &z) != MQ_OK) {
    mqi_log(s->store, MQ_LOG_WARN, "server: %s: out of memory for %s", ep->name, peer);
    free(sc);
    close(fd);
    return NULL;
  }
  sc->z = z;
  sc->serial = ++s->serial;
  s->conns[s->nconns++] = sc;
  MQI_SRV_COUNT(ep->count.conns, 1);
  MQI_SRV_COUNT(ep->count.conns_total, 1);
  return sc;
}

static void srv_accept(mq_server *s, size_t e, int64_t now) {
  char peer[MQI_NET_NAME_MAX];
  mqi_srv_ep *ep = &s->eps[e];
  for (int k = 0; k < ACCEPT_PER_TURN; k++) {
    int fd = mqi_net_accept(ep->fd, peer, sizeof peer);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      /* Out of descriptors (or memory) the pending connection stays in the
      ** backlog and the socket stays readable: polling it again at once
      ** would spin.  Look again later, and say so once, not every time. */
      if (!ep->accept_after)
        mqi_log(s->store, MQ_LOG_WARN, "server: accept on %s: %s; trying again every %d ms",
                ep->name, strerror(errno), ACCEPT_PAUSE_MS);
      ep->accept_after = now + ACCEPT_PAUSE_MS;
      return;
    }
    if (ep->accept_after)
      mqi_log(s->store, MQ_LOG_INFO, "server: %s: accepting connections again", ep->name);
    ep->accept_after = 0;
    /* Over a cap: close at once.  A libzmq peer retries after its
    ** reconnect interval, which is what we want under load. */
    if (s->nconns >= (size_t)s->opt.max_connections ||
        srv_handshaking(s) >= (size_t)s->opt.max_handshakes) {
      mqi_log(s->store, MQ_LOG_WARN, "server: %s: refused %s: too many %s", ep->name, peer,
              s->nconns >= (size_t)s->opt.max_connections ? "connections"
                                                          : "unauthenticated connections");
      MQI_SRV_COUNT(ep->count.refused, 1);
      close(fd);
      continue;
    }
    mqi_srv_conn *sc = srv_conn_add(s, e, fd, peer, now);
    if (!sc) return;
    mqi_log(s->store, MQ_LOG_INFO, "server: %s: connection #%" PRIu64 " from %s", ep->name,
            sc->serial, peer);
  }
}

int mqi_server_send(mq_server *s, mqi_srv_conn *sc, const mqi_zpart *parts, size_t n) {
  int rc = mqi_zconn_send(sc->z, parts, n);
  if (rc == MQI_ZMTP_ESPACE || rc == MQI_ZMTP_ENOMEM) {
    mqi_log(s->store, MQ_LOG_WARN, "server: connection #%" PRIu64 " (%s): %s", sc->serial,
            mqi_zconn_peer(sc->z),
            rc == MQI_ZMTP_ESPACE ? "the peer does not read its replies" : "out of memory");
    mqi_zconn_close(sc->z, rc == MQI_ZMTP_ESPACE ? "output limit reached" : "out of memory");
  }
  return rc;
}

/* ------------------------------------------------------------------------
** Connecting endpoints: one connection each, made again after every loss.
** The schedule lives on the server's clock so tests can step through it.
*/
static uint64_t srv_rand(mq_server *s) {
  uint64_t x = s->rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  s->rng = x;
  return x;
}

/* The attempt after a failure: full jitter, a uniform delay in [0, cap]
** with cap = min(reconnect_max_ms, reconnect_ms * 2^failures), so that
** many nodes cut off by one outage do not all come back in step. */
static void srv_connect_later(mq_server *s, mqi_srv_ep *ep, int64_t now, const char *why) {
  int64_t cap = s->opt.reconnect_ms;
  for (int i = 0; i < ep->failures && cap < s->opt.reconnect_max_ms; i++) cap *= 2;
  if (cap > s->opt.reconnect_max_ms) cap = s->opt.reconnect_max_ms;
  int64_t delay = (int64_t)(srv_rand(s) % (uint64_t)(cap + 1));
  mqi_log(s->store, ep->failures == 0 ? MQ_LOG_WARN : MQ_LOG_INFO,
          "server: %s: %s; connecting again in %" PRId64 " ms", ep->name, why, delay);
  if (ep->failures < 62) ep->failures++;
  ep->next_try = now + delay;
}

static void srv_connect_done(mq_server *s, size_t e, int64_t now) {
  mqi_srv_ep *ep = &s->eps[e];
  int err = mqi_net_connect_result(ep->cfd);
  if (err != 0) {
    close(ep->cfd);
    ep->cfd = -1;
    srv_connect_later(s, ep, now, strerror(err));
    return;
  }
  int fd = ep->cfd;
  ep->cfd = -1;
  /* The greeting goes out at once; the ZMTP handshake timeout takes over. */
  mqi_srv_conn *sc = srv_conn_add(s, e, fd, ep->name + 6, now);
  if (!sc) {
    srv_connect_later(s, ep, now, "out of memory");
    return;
  }
  ep->live = 1;
  ep->up_since = 0;
  mqi_log(s->store, MQ_LOG_INFO, "server: %s: connection #%" PRIu64 " connected", ep->name,
          sc->serial);
}

static void srv_connect_start(mq_server *s, size_t e, int64_t now) {
  mqi_srv_ep *ep = &s->eps[e];
  int fd = -1;
  int r = mqi_net_connect(&ep->addr, ep->addrlen, &fd);
  if (r < 0) {
    srv_connect_later(s, ep, now, strerror(errno));
    return;
  }
  ep->cfd = fd;
  ep->connect_deadline =
      s->opt.connect_timeout_ms > 0 ? now + s->opt.connect_timeout_ms : INT64_MAX;
  if (r == 0) srv_connect_done(s, e, now);
}

/* Start due attempts and fail those past their timeout. */
static void srv_connect_work(mq_server *s, int64_t now) {
  for (size_t e = 0; e < s->neps; e++) {
    mqi_srv_ep *ep = &s->eps[e];
    if (!ep->connect || ep->live) continue;
    if (ep->cfd >= 0 && now >= ep->connect_deadline) {
      close(ep->cfd);
      ep->cfd = -1;
      srv_connect_later(s, ep, now, "connect timed out");
    }
    if (ep->cfd < 0 && now >= ep->next_try) srv_connect_start(s, e, now);
  }
}

/* A connection of a connecting endpoint ended: schedule the next one. */
static void srv_connect_lost(mq_server *s, mqi_srv_ep *ep, mqi_srv_conn *sc) {
  int64_t now = mqi_server_now(s);
  ep->live = 0;
  if (s->freeing) return;
  if (ep->up_since && now - ep->up_since >= CONNECT_RESET_MS) ep->failures = 0;
  ep->up_since = 0;
  if (mqi_zconn_peer_error(sc->z)) {
    /* An ERROR means the peer refused us (credentials): trying again at
    ** once would only be refused again, and would hammer its ZAP handler. */
    mqi_log(s->store, MQ_LOG_ERROR,
            "server: %s: the peer refused the connection (%s); connecting again in %d s",
            ep->name, mqi_zconn_reason(sc->z), CONNECT_REFUSED_MS / 1000);
    ep->next_try = now + CONNECT_REFUSED_MS;
    return;
  }
  srv_connect_later(s, ep, now, mqi_zconn_reason(sc->z)[0] ? mqi_zconn_reason(sc->z) : "closed");
}

/* ------------------------------------------------------------------------
** PULL ingest
*/
static int srv_batch_full(const mqi_srv_ep *ep) {
  return ep->batch.n >= PULL_BATCH_MSGS || ep->batch.bytes >= PULL_BATCH_BYTES;
}

/* Whether the endpoint reads nothing more for now: its batch is full, or
** commits fail (the batch waits for the retry). */
static int srv_pull_full(const mqi_srv_ep *ep) { return ep->failing || srv_batch_full(ep); }

/* The connection's message handler on a PULL endpoint: add the message to
** the endpoint's batch; pause the connection when the batch is full. */
static int srv_pull_msg(void *ctx, mqi_zconn *z, mqi_zmtp_frame *parts, size_t n) {
  mqi_srv_conn *sc = ctx;
  mqi_srv_ep *ep = &sc->srv->eps[sc->ep];
  if (mqi_batch_add(&ep->batch, &sc->srv->pool, parts, n) != MQ_OK) {
    mqi_zconn_close(z, "out of memory for a message");
    return 1;
  }
  return srv_batch_full(ep);
}

/* Options with the "zmtp-frames" header of a multipart message in *hd. */
static void srv_item_opts(const mqi_srv_item *it, mq_put_options *po, mq_header *hd) {
  mq_put_options_init(po);
  if (!it->frames) return;
  hd->name = FRAMES_HEADER;
  hd->value = it->frames;
  po->headers = hd;
  po->n_headers = 1;
}

/* A queue's batch as packs (pack.c), through the array the server keeps
** for it (a fresh one per batch cost page faults). */
static int srv_store_packs(mq_server *s, const char *queue, const mqi_srv_item *items, size_t n) {
  mq_store *st = s->store;
  if (n > s->picap) {
    mqi_put_item *p = realloc(s->pi, n * sizeof *p);
    if (!p) return mqi_err_set(st, MQ_ENOMEM, "out of memory for a batch of %zu", n);
    s->pi = p;
    s->picap = n;
  }
  mqi_put_item *pi = s->pi;
  int rc = MQ_OK;
  for (size_t i = 0; i < n; i++) {
    pi[i] = (mqi_put_item){.data = items[i].data, .len = items[i].len, .crc = items[i].crc};
    mq_header hd = {.name = FRAMES_HEADER, .value = items[i].frames};
    if (rc == MQ_OK && hd.value &&
        mqi_headers_encode(&hd, 1, &pi[i].headers, &pi[i].headers_len) != MQ_OK)
      rc = mqi_err_set(st, MQ_ENOMEM, "out of memory for a batch of %zu", n);
  }
  if (rc == MQ_OK) rc = mqi_pack_put(st, queue, pi, n);
  for (size_t i = 0; i < n; i++) free(pi[i].headers);
  return rc;
}

/* A topic's batch: one publish of n entries. */
static int srv_publish_items(mq_store *st, const char *topic, const mqi_srv_item *items,
                             size_t n) {
  mq_put_options *po = malloc(n * sizeof *po);
  mq_header *hd = malloc(n * sizeof *hd);
  mq_pub_entry *pe = malloc(n * sizeof *pe);
  int rc;
  if (!po || !hd || !pe) {
    rc = mqi_err_set(st, MQ_ENOMEM, "out of memory for a batch of %zu", n);
  } else {
    for (size_t i = 0; i < n; i++) {
      srv_item_opts(&items[i], &po[i], &hd[i]);
      pe[i].subject = NULL;
      pe[i].data = items[i].data;
      pe[i].len = items[i].len;
      pe[i].opts = &po[i];
    }
    rc = mq_publish_batch(st, topic, pe, n, NULL, NULL);
  }
  free(po);
  free(hd);
  free(pe);
  return rc;
}

/* Store n messages in queue (published, for a topic) with one batch, one
** commit; when one entry spoils the batch (too large for the queue), one
** put each, dropping the refused ones with a warning.  *done gets how many
** of the first items are settled (stored or dropped): n, unless a put one
** by one failed for a reason that may pass (lock, I/O, disk full), whose
** code is returned: the rest must be tried again, not dropped.  Runs on
** the commit thread; the error text is copied into err because mq_errmsg
** is per thread. */
static int srv_store_items(mq_server *s, const char *queue, int topic, const mqi_srv_item *items,
                           size_t n, size_t *done, size_t *dropped, size_t *dropped_bytes,
                           char *err, size_t errlen) {
  mq_store *st = s->store;
  err[0] = '\0';
  *done = *dropped = *dropped_bytes = 0;
  int rc = topic ? srv_publish_items(st, queue, items, n) : srv_store_packs(s, queue, items, n);
  if (rc == MQ_OK) *done = n;
  if (rc == MQ_ETOOBIG || rc == MQ_EINVAL) {
    rc = MQ_OK;
    for (; *done < n; (*done)++) {
      const mqi_srv_item *it = &items[*done];
      mq_put_options po;
      mq_header hd;
      srv_item_opts(it, &po, &hd);
      int r = topic ? mq_publish(st, queue, NULL, it->data, it->len, &po, NULL, NULL)
                    : mq_put(st, queue, it->data, it->len, &po, NULL);
      if (r == MQ_OK) continue;
      if (r != MQ_ETOOBIG && r != MQ_EINVAL) {
        rc = r;
        break;
      }
      mqi_log(st, MQ_LOG_WARN, "server: PULL into \"%s\": dropped a message of %zu bytes: %s",
              queue, it->len, mq_errmsg(st));
      (*dropped)++;
      *dropped_bytes += it->len;
    }
  }
  if (rc != MQ_OK) mqi_err_text(err, errlen, mq_errmsg(st));
  return rc;
}

/* The commit thread: takes one batch at a time from the loop, stores it,
** and pokes the wake pipe when done.  The loop meanwhile reads the next
** batch, so network and disk work overlap; it stops reading when that
** batch is full while the commit is still running (backpressure). */
/* The commit thread's wait for the next batch, under cmu: 1 when one is
** queued, 0 to quit, -1 when SETTLE_IDLE_MS passed without one while
** packs may be waiting to be settled. */
static int srv_committer_wait(mq_server *s, int packs) {
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += SETTLE_IDLE_MS / 1000;
  until.tv_nsec += (long)(SETTLE_IDLE_MS % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  while (!s->cquit && s->cjob != 1) {
    if (!packs)
      pthread_cond_wait(&s->ccv, &s->cmu);
    else if (pthread_cond_timedwait(&s->ccv, &s->cmu, &until) == ETIMEDOUT)
      return s->cquit || s->cjob == 1 ? s->cjob == 1 : -1;
  }
  return s->cjob == 1;
}

static void *srv_committer_main(void *arg) {
  mq_server *s = arg;
  mqi_os_thread_name("mq-commit");
  int packs = 1; /* a store may hold packs from an earlier run */
  pthread_mutex_lock(&s->cmu);
  for (;;) {
    int w = srv_committer_wait(s, packs);
    if (w < 0) {
      pthread_mutex_unlock(&s->cmu);
      int left = 0;
      /* A failure (the store is locked by another program, say) is tried
      ** again after the next idle wait; the next get settles anyway. */
      if (mqi_pack_settle_some(s->store, SETTLE_STEP, &left) == MQ_OK) packs = left;
      pthread_mutex_lock(&s->cmu);
      continue;
    }
    if (w == 0) break; /* quit, and nothing queued */
    char queue[MQ_NAME_MAX + 1];
    memcpy(queue, s->cjob_queue, sizeof queue);
    int topic = s->cjob_topic;
    mqi_srv_item *items = s->cjob_batch.items;
    size_t n = s->cjob_batch.n;
    pthread_mutex_unlock(&s->cmu);
    char err[sizeof s->cjob_err];
    size_t done, dropped, dropped_bytes;
    int rc = srv_store_items(s, queue, topic, items, n, &done, &dropped, &dropped_bytes,
                             err, sizeof err);
    pthread_mutex_lock(&s->cmu);
    s->cjob_rc = rc;
    s->cjob_done = done;
    s->cjob_dropped = dropped;
    s->cjob_dropped_bytes = dropped_bytes;
    memcpy(s->cjob_err, err, sizeof err);
    s->cjob = 2;
    if (!topic) packs = 1;
    mqi_net_pipe_poke(s->wake[1]);
  }
  pthread_mutex_unlock(&s->cmu);
  return NULL;
}

/* Count a batch that leaves the endpoint: stored but for `dropped` of its
** messages (dropped_bytes of payload), or, when !stored, lost whole. */
static void srv_count_batch(mqi_srv_ep *ep, const mqi_srv_item *items, size_t n, int stored,
                            size_t dropped, size_t dropped_bytes) {
  size_t bytes = 0;
  for (size_t i = 0; i < n; i++) bytes += items[i].len;
  if (!stored) {
    dropped = n;
    dropped_bytes = bytes;
  }
  MQI_SRV_COUNT(ep->count.in, n - dropped);
  MQI_SRV_COUNT(ep->count.bytes_in, bytes - dropped_bytes);
  MQI_SRV_COUNT(ep->count.dropped, dropped);
}

/* The first done items of b were settled by a commit (stored, or dropped
** as refused by the queue): count them and take them out. */
static void srv_items_settle(mq_server *s, mqi_srv_ep *ep, mqi_srv_batch *b, size_t done,
                             size_t dropped, size_t dropped_bytes) {
  if (done == 0) return;
  srv_count_batch(ep, b->items, done, 1, dropped, dropped_bytes);
  if (dropped < done) mqi_server_kick(s, ep->queue);
  mqi_batch_drop(b, done);
}

/* n items the store will not take (their queue is gone, or the last try
** failed): say so and count them. */
static void srv_items_lost(mq_server *s, mqi_srv_ep *ep, const mqi_srv_item *items, size_t n,
                           const char *err) {
  if (n == 0) return;
  mqi_log(s->store, MQ_LOG_ERROR, "server: PULL into \"%s\": %zu messages lost: %s", ep->queue, n,
          err);
  srv_count_batch(ep, items, n, 0, 0, 0);
}

/* Take the result of a finished commit, if any.  A failed batch goes back
** in front of what was read since, and the endpoint reads nothing more
** until it is stored: the peers' PUSH sockets block at their high-water
** mark meanwhile. */
static void srv_pull_collect(mq_server *s) {
  pthread_mutex_lock(&s->cmu);
  if (s->cjob != 2) {
    pthread_mutex_unlock(&s->cmu);
    return;
  }
  mqi_srv_ep *ep = &s->eps[s->cjob_ep];
  mqi_srv_batch b = s->cjob_batch;
  int rc = s->cjob_rc;
  size_t done = s->cjob_done, dropped = s->cjob_dropped, dropped_bytes = s->cjob_dropped_bytes;
  char err[sizeof s->cjob_err];
  memcpy(err, s->cjob_err, sizeof err);
  s->cjob = 0;
  memset(&s->cjob_batch, 0, sizeof s->cjob_batch);
  pthread_mutex_unlock(&s->cmu);
  s->cbusy = 0;
  srv_items_settle(s, ep, &b, done, dropped, dropped_bytes);
  if (rc == MQ_OK || rc == MQ_ENOTFOUND) {
    srv_items_lost(s, ep, b.items, b.n, err);
    if (ep->failing)
      mqi_log(s->store, MQ_LOG_INFO, "server: PULL into \"%s\": commits work again", ep->queue);
    mqi_batch_free(&b, &s->pool);
    ep->failing = 0;
    ep->backoff = 0;
    return;
  }
  if (!ep->failing)
    mqi_log(s->store, MQ_LOG_WARN, "server: PULL into \"%s\": commit failed (%s): %s; retrying",
            ep->queue, mq_errstr(rc), err);
  ep->failing = 1;
  ep->backoff = ep->backoff ? ep->backoff * 2 : RETRY_MIN_MS;
  if (ep->backoff > RETRY_MAX_MS) ep->backoff = RETRY_MAX_MS;
  ep->retry_at = srv_mono() + ep->backoff;
  /* Order matters: the failed batch was read first. */
  if (mqi_batch_prepend(&ep->batch, &b) != MQ_OK) {
    mqi_log(s->store, MQ_LOG_ERROR, "server: PULL into \"%s\": out of memory; %zu messages lost",
            ep->queue, b.n);
    srv_count_batch(ep, b.items, b.n, 0, 0, 0);
    mqi_batch_free(&b, &s->pool);
  }
}

/* Hand a batch to the commit thread if it is idle (started on first use;
** without it, the commit runs here). */
static void srv_pull_submit(mq_server *s) {
  int64_t mono = srv_mono();
  if (s->cbusy) return;
  for (size_t k = 0; k < s->neps; k++) {
    size_t e = (s->cnext + k) % s->neps;
    mqi_srv_ep *ep = &s->eps[e];
    if (ep->kind != MQI_EP_PULL || ep->batch.n == 0) continue;
    if (ep->failing && mono < ep->retry_at) continue;
    s->cnext = e + 1;
    if (!s->cstarted) {
      if (pthread_create(&s->committer, NULL, srv_committer_main, s) == 0) {
        s->cstarted = 1;
      } else {
        /* No thread: commit in the loop, which then just reads less. */
        char err[sizeof s->cjob_err];
        size_t done, dropped, dropped_bytes;
        int rc = srv_store_items(s, ep->queue, ep->topic, ep->batch.items, ep->batch.n,
                                 &done, &dropped, &dropped_bytes, err, sizeof err);
        pthread_mutex_lock(&s->cmu);
        s->cjob_done = done;
        s->cjob_dropped = dropped;
        s->cjob_dropped_bytes = dropped_bytes;
        s->cjob_ep = e;
        s->cbusy = 1;
        s->cjob_batch = ep->batch;
        s->cjob_rc = rc;
        memcpy(s->cjob_err, err, sizeof err);
        s->cjob = 2;
        pthread_mutex_unlock(&s->cmu);
        memset(&ep->batch, 0, sizeof ep->batch);
        srv_pull_collect(s);
        return;
      }
    }
    pthread_mutex_lock(&s->cmu);
    s->cjob_ep = e;
    memcpy(s->cjob_queue, ep->queue, sizeof s->cjob_queue);
    s->cjob_topic = ep->topic;
    s->cjob_batch = ep->batch;
    s->cjob = 1;
    pthread_cond_signal(&s->ccv);
    pthread_mutex_unlock(&s->cmu);
    s->cbusy = 1;
    memset(&ep->batch, 0, sizeof ep->batch);
    return;
  }
}

/* Stop the commit thread after its current batch, and collect that. */
static void srv_committer_stop(mq_server *s) {
  if (!s->cstarted) return;
  pthread_mutex_lock(&s->cmu);
  s->cquit = 1;
  pthread_cond_signal(&s->ccv);
  pthread_mutex_unlock(&s->cmu);
  pthread_join(s->committer, NULL);
  s->cstarted = 0;
  s->cquit = 0; /* a later mq_server_run starts a new one */
  srv_pull_collect(s);
}

/* Wait for the commit in progress, then store what was read and not yet
** stored, in this thread: the peers' PUSH sockets consider those messages
** delivered (as they do what is still in the kernel's buffers, which a
** stop leaves there, unread).  When the store refuses them, they are kept
** for the next mq_server_run unless this is the last try (final: the
** server is freed). */
static void srv_pull_flush(mq_server *s, int final) {
  srv_committer_stop(s);
  for (size_t e = 0; e < s->neps; e++) {
    mqi_srv_ep *ep = &s->eps[e];
    if (ep->kind != MQI_EP_PULL || !ep->batch.n) continue;
    char err[sizeof s->cjob_err];
    size_t done, dropped, dropped_bytes;
    int rc = srv_store_items(s, ep->queue, ep->topic, ep->batch.items, ep->batch.n, &done,
                             &dropped, &dropped_bytes, err, sizeof err);
    srv_items_settle(s, ep, &ep->batch, done, dropped, dropped_bytes);
    if (rc != MQ_OK && rc != MQ_ENOTFOUND && !final) continue; /* kept for the next run */
    srv_items_lost(s, ep, ep->batch.items, ep->batch.n, err);
    mqi_batch_free(&ep->batch, &s->pool);
    ep->failing = 0;
  }
}

/* Stop or free: store also the whole messages that wait in the PULL
** connections' input buffers (read from the kernel, not yet parsed because
** the batch was full), batch after batch, without reading the sockets
** again.  Stops early where the store refuses a batch (final: never). */
static void srv_pull_drain(mq_server *s, int final) {
  int64_t now = mqi_server_now(s);
  for (int progress = 1; progress;) {
    progress = 0;
    for (size_t i = 0; i < s->nconns; i++) {
      mqi_srv_conn *sc = s->conns[i];
      mqi_srv_ep *ep = &s->eps[sc->ep];
      size_t had = mqi_zconn_buffered(sc->z);
      if (ep->kind != MQI_EP_PULL || mqi_zconn_state(sc->z) != MQI_ZC_ACTIVE || had == 0 ||
          srv_batch_full(ep))
        continue;
      mqi_zconn_input(sc->z, now, 0, srv_pull_msg, sc);
      if (mqi_zconn_buffered(sc->z) < had) progress = 1;
    }
    size_t before = 0, after = 0;
    for (size_t e = 0; e < s->neps; e++) before += s->eps[e].batch.n;
    srv_pull_flush(s, final);
    for (size_t e = 0; e < s->neps; e++) after += s->eps[e].batch.n;
    if (after > 0) return; /* refused: kept for the next run */
    if (after < before) progress = 1;
  }
}

/* ------------------------------------------------------------------------
** PUSH egress
*/
void mqi_server_kick(mq_server *s, const char *queue) {
  for (size_t i = 0; i < s->neps; i++)
    if (s->eps[i].kind == MQI_EP_PUSH && strcmp(s->eps[i].queue, queue) == 0)
      s->eps[i].empty_until = 0;
  mqi_router_kick(s, queue);
}

/* The frames of a stored message: its zmtp-frames header, if it is well
** formed and matches the payload, else the payload as one frame.  Returns
** the number of parts written to parts (at most cap). */
static size_t srv_msg_parts(const mq_msg *m, mqi_zpart *parts, size_t cap) {
  const char *data = mq_msg_data(m);
  size_t size = mq_msg_size(m), n = 0, at = 0;
  const char *h = mq_msg_header(m, FRAMES_HEADER);
  if (h && *h) {
    const char *p = h;
    while (n < cap) {
      if (*p < '0' || *p > '9') break;
      size_t v = 0;
      while (*p >= '0' && *p <= '9' && v <= size) v = v * 10 + (size_t)(*p++ - '0');
      if (v > size - at) break;
      parts[n].data = data + at;
      parts[n].len = v;
      n++;
      at += v;
      if (*p == ',') {
        p++;
        continue;
      }
      if (*p == '\0' && at == size) return n;
      break;
    }
  }
  parts[0].data = data;
  parts[0].len = size;
  return 1;
}

static int srv_pend_push(mqi_srv_conn *sc, uint64_t end, const mq_msg *m, int64_t now) {
  if (sc->pend_head > 0 && sc->pend_head == sc->pend_len) sc->pend_head = sc->pend_len = 0;
  if (sc->pend_len == sc->pend_cap) {
    if (sc->pend_head > 0) {
      memmove(sc->pend, sc->pend + sc->pend_head,
              (sc->pend_len - sc->pend_head) * sizeof *sc->pend);
      sc->pend_len -= sc->pend_head;
      sc->pend_head = 0;
    } else {
      size_t cap = sc->pend_cap ? sc->pend_cap * 2 : 32;
      mqi_srv_pend *p = realloc(sc->pend, cap * sizeof *p);
      if (!p) return -1;
      sc->pend = p;
      sc->pend_cap = cap;
    }
  }
  mqi_srv_pend *e = &sc->pend[sc->pend_len++];
  e->end = end;
  e->size = mq_msg_size(m);
  e->visible_at = mq_msg_visible_at(m);
  e->lease_ms = e->visible_at > now ? e->visible_at - now : 1;
  if (e->visible_at - e->lease_ms / 2 < sc->renew_at) sc->renew_at = e->visible_at - e->lease_ms / 2;
  snprintf(e->receipt, sizeof e->receipt, "%s", mq_msg_receipt(m));
  return 0;
}

/* Messages wait in a connection's output while its peer reads slowly (a
** libzmq PULL at its high-water mark): keep their leases alive, or they
** would be leased again and sent to a second peer as well.  A connection
** is looked at when its earliest renewal is due (renew_at, store clock),
** and then every entry of it: a renewal that failed half-way must not
** leave due entries behind a renewed one.  After a failure (lock, I/O)
** the endpoint waits before trying again, rather than spin. */
static void srv_push_renew(mq_server *s, size_t e) {
  mqi_srv_ep *ep = &s->eps[e];
  int64_t now = mqi_store_now(s->store);
  if (ep->renew_retry && srv_mono() < ep->renew_retry) return;
  ep->renew_retry = 0;
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_srv_conn *sc = s->conns[i];
    if (sc->ep != e || sc->pend_head == sc->pend_len || sc->renew_at > now) continue;
    int64_t next = INT64_MAX;
    for (size_t k = sc->pend_head; k < sc->pend_len; k++) {
      mqi_srv_pend *p = &sc->pend[k];
      if (p->visible_at == INT64_MAX) continue; /* lost already */
      if (p->visible_at - now <= p->lease_ms / 2 && !ep->renew_retry) {
        int rc = mq_touch(s->store, ep->queue, p->receipt, p->lease_ms);
        if (rc == MQ_OK) {
          p->visible_at = mqi_time_add(now, p->lease_ms);
          ep->renew_failing = 0;
        } else if (rc == MQ_ESTALE) {
          mqi_log(s->store, MQ_LOG_WARN,
                  "server: PUSH from \"%s\": connection #%" PRIu64 " (%s): a message waiting to "
                  "be written lost its lease (it ran out or the message expired); it may go out "
                  "twice",
                  ep->queue, sc->serial, mqi_zconn_peer(sc->z));
          p->visible_at = INT64_MAX;
          continue;
        } else {
          if (!ep->renew_failing)
            mqi_log(s->store, MQ_LOG_WARN, "server: PUSH from \"%s\": renewing leases: %s",
                    ep->queue, mq_errmsg(s->store));
          ep->renew_failing = 1;
          ep->renew_retry = srv_mono() + RETRY_MIN_MS;
        }
      }
      int64_t due = p->visible_at - p->lease_ms / 2;
      if (due < next) next = due;
    }
    sc->renew_at = next;
  }
}

/* How many more messages connection sc can take this turn: its credit, and
** what fits its output limit at the endpoint's mean message size. */
static size_t srv_push_room(const mq_server *s, const mqi_srv_ep *ep, const mqi_srv_conn *sc) {
  size_t room = s->opt.credit - (sc->pend_len - sc->pend_head);
  size_t fit = ep->avg_size ? s->out_limit / ep->avg_size : PUSH_PER_CONN;
  if (fit < 1) fit = 1;
  if (room > fit) room = fit;
  return room > PUSH_PER_CONN ? PUSH_PER_CONN : room;
}

static void srv_push_work(mq_server *s, size_t e) {
  mqi_srv_ep *ep = &s->eps[e];
  mqi_srv_conn *ready[PUSH_LEASE_MAX];
  mq_msg *msgs[PUSH_LEASE_MAX];
  const char *back[PUSH_LEASE_MAX];
  size_t nready = 0, count = 0, nback = 0, want = 0;
  int64_t mono = srv_mono();
  srv_push_renew(s, e);
  if (ep->empty_until && mono < ep->empty_until) return;
  /* From a rotating start: with more peers than one turn serves, each
  ** gets its turn. */
  size_t start = ep->scan;
  for (size_t k = 0; k < s->nconns && nready < PUSH_LEASE_MAX; k++) {
    size_t i = (start + k) % s->nconns;
    mqi_srv_conn *sc = s->conns[i];
    if (sc->ep != e || mqi_zconn_state(sc->z) != MQI_ZC_ACTIVE) continue;
    if (mqi_zconn_pending(sc->z) > 0 || sc->pend_len - sc->pend_head >= s->opt.credit) continue;
    ready[nready++] = sc;
    want += srv_push_room(s, ep, sc);
    ep->scan = i + 1;
  }
  if (nready == 0) return;
  if (want > PUSH_LEASE_MAX) want = PUSH_LEASE_MAX;
  int rc = mq_get_batch(s->store, ep->queue, NULL, want, msgs, &count);
  if (rc == MQ_EMPTY) {
    ep->empty_until = mono + EGRESS_POLL_MS;
    return;
  }
  if (rc != MQ_OK) {
    mqi_log(s->store, MQ_LOG_WARN, "server: PUSH from \"%s\": %s", ep->queue, mq_errmsg(s->store));
    ep->empty_until = mono + RETRY_MAX_MS;
    return;
  }
  int64_t now = mqi_store_now(s->store);
  for (size_t i = 0; i < count; i++) {
    mqi_zpart parts[1024];
    size_t np = srv_msg_parts(msgs[i], parts, sizeof parts / sizeof parts[0]);
    size_t size = mq_msg_size(msgs[i]);
    int sent = 0;
    for (size_t tries = 0; tries < nready && !sent; tries++) {
      mqi_srv_conn *sc = ready[ep->rr++ % nready];
      if (mqi_zconn_state(sc->z) != MQI_ZC_ACTIVE || sc->pend_len - sc->pend_head >= s->opt.credit)
        continue;
      /* Over the output limit: skip this peer for now (not a failure). */
      if (mqi_zconn_send(sc->z, parts, np) != MQI_ZMTP_OK) continue;
      if (srv_pend_push(sc, mqi_zconn_queued(sc->z), msgs[i], now) != 0) {
        mqi_zconn_close(sc->z, "out of memory");
        continue;
      }
      sent = 1;
    }
    ep->avg_size = ep->avg_size ? ep->avg_size - ep->avg_size / 8 + size / 8 + 1 : size + 1;
    if (!sent) back[nback++] = mq_msg_receipt(msgs[i]);
  }
  /* Leased but sent to nobody (they did not fit): back at once, and not
  ** counted as a delivery, or a large message would reach its dlq unsent. */
  if (nback && mqi_settle_release(s->store, ep->queue, back, nback) != MQ_OK)
    mqi_log(s->store, MQ_LOG_WARN, "server: PUSH from \"%s\": %zu messages not sent: %s (they "
            "come back when their lease ends)", ep->queue, nback, mq_errmsg(s->store));
  for (size_t i = 0; i < count; i++) mq_msg_free(msgs[i]);
}

/* Ack the PUSH messages whose last byte the kernel has taken: one
** mq_ack_batch (one commit) per endpoint and turn, for all its peers. */
static void srv_push_acks(mq_server *s) {
  const char **rcpts = NULL;
  size_t cap = 0;
  for (size_t e = 0; e < s->neps; e++) {
    if (s->eps[e].kind != MQI_EP_PUSH) continue;
    size_t n = 0, bytes = 0;
    for (size_t i = 0; i < s->nconns; i++) {
      mqi_srv_conn *sc = s->conns[i];
      if (sc->ep != e) continue;
      uint64_t written = mqi_zconn_written(sc->z);
      while (sc->pend_head < sc->pend_len && sc->pend[sc->pend_head].end <= written) {
        if (n == cap) {
          size_t nc = cap ? cap * 2 : 256;
          const char **p = realloc(rcpts, nc * sizeof *p);
          if (!p) break; /* acked next turn */
          rcpts = p;
          cap = nc;
        }
        bytes += sc->pend[sc->pend_head].size;
        rcpts[n++] = sc->pend[sc->pend_head++].receipt;
      }
    }
    if (n == 0) continue;
    /* Sent whatever the ack below does: the kernel has the bytes. */
    MQI_SRV_COUNT(s->eps[e].count.out, n);
    MQI_SRV_COUNT(s->eps[e].count.bytes_out, bytes);
    int rc = mq_ack_batch(s->store, s->eps[e].queue, rcpts, n, NULL);
    if (rc != MQ_OK)
      mqi_log(s->store, MQ_LOG_WARN,
              "server: PUSH from \"%s\": ack of %zu delivered messages failed: %s "
              "(they will be delivered again)",
              s->eps[e].queue, n, mq_errmsg(s->store));
  }
  free(rcpts);
}

/* ------------------------------------------------------------------------
** The loop
*/

static int srv_router_msg(void *ctx, mqi_zconn *z, mqi_zmtp_frame *parts, size_t n) {
  mqi_srv_conn *sc = ctx;
  (void)z;
  return mqi_router_message(sc->srv, sc, parts, n);
}

/* Read one connection, dispatching its messages by endpoint kind. */
static void srv_read(mq_server *s, mqi_srv_conn *sc, int64_t now) {
  mqi_srv_ep *ep = &s->eps[sc->ep];
  int st = mqi_zconn_state(sc->z);
  if (st == MQI_ZC_DEAD) return;
  if (ep->kind == MQI_EP_PULL) {
    if (srv_pull_full(ep) && st == MQI_ZC_ACTIVE) return;
    mqi_zconn_input(sc->z, now, READ_BUDGET, srv_pull_msg, sc);
  } else if (ep->kind == MQI_EP_ROUTER) {
    mqi_zconn_input(sc->z, now, READ_BUDGET, srv_router_msg, sc);
  } else {
    /* PUSH peers send nothing but commands; a message from one is dropped. */
    mqi_zconn_input(sc->z, now, READ_BUDGET, NULL, NULL);
  }
}

/* Whether the loop should read sc now (it may have buffered bytes, or the
** socket may be readable). */
static int srv_wants_read(const mq_server *s, const mqi_srv_conn *sc) {
  const mqi_srv_ep *ep = &s->eps[sc->ep];
  int st = mqi_zconn_state(sc->z);
  if (st == MQI_ZC_DEAD) return 0;
  if (st != MQI_ZC_ACTIVE) return 1;
  if (ep->kind == MQI_EP_PULL) return !srv_pull_full(ep);
  /* A ROUTER peer that does not read its replies gets no more read. */
  if (ep->kind == MQI_EP_ROUTER) return mqi_zconn_pending(sc->z) < s->out_limit / 2;
  return 1;
}

/* Give back what a closing connection holds and free it. */
static void srv_conn_free(mq_server *s, mqi_srv_conn *sc) {
  mqi_srv_ep *ep = &s->eps[sc->ep];
  if (ep->kind == MQI_EP_PUSH && sc->pend_len > sc->pend_head) {
    /* Not all their bytes left us: the peer cannot have them. */
    size_t n = sc->pend_len - sc->pend_head;
    const char **back = malloc(n * sizeof *back);
    for (size_t i = 0; back && i < n; i++) back[i] = sc->pend[sc->pend_head + i].receipt;
    if (!back || mqi_settle_release(s->store, ep->queue, back, n) != MQ_OK)
      mqi_log(s->store, MQ_LOG_WARN,
              "server: PUSH from \"%s\": %zu messages queued for a closed connection come back "
              "when their lease ends: %s", ep->queue, n, back ? mq_errmsg(s->store) : "out of memory");
    free(back);
  }
  if (ep->kind == MQI_EP_ROUTER) mqi_router_conn_gone(s, sc);
  mqi_log(s->store, MQ_LOG_INFO, "server: %s: connection #%" PRIu64 " (%s) closed: %s", ep->name,
          sc->serial, mqi_zconn_peer(sc->z),
          mqi_zconn_reason(sc->z)[0] ? mqi_zconn_reason(sc->z) : "server stopped");
  if (ep->connect) srv_connect_lost(s, ep, sc);
  MQI_SRV_COUNT(ep->count.conns, -1);
  mqi_zconn_free(sc->z);
  free(sc->pend);
  free(sc);
}

static void srv_reap(mq_server *s) {
  size_t j = 0;
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_srv_conn *sc = s->conns[i];
    if (mqi_zconn_state(sc->z) == MQI_ZC_DEAD)
      srv_conn_free(s, sc);
    else
      s->conns[j++] = sc;
  }
  s->nconns = j;
}

/* Everything a turn does after reading: commits, egress, timers, writes. */
static void srv_work(mq_server *s, int64_t now) {
  srv_connect_work(s, now);
  srv_pull_collect(s);
  srv_pull_submit(s);
  mqi_router_work(s);
  for (size_t e = 0; e < s->neps; e++)
    if (s->eps[e].kind == MQI_EP_PUSH) srv_push_work(s, e);
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_srv_conn *sc = s->conns[i];
    int st = mqi_zconn_state(sc->z);
    if (!sc->was_active && st == MQI_ZC_ACTIVE) {
      sc->was_active = 1;
      if (s->eps[sc->ep].connect) s->eps[sc->ep].up_since = now;
      if (s->eps[sc->ep].kind == MQI_EP_ROUTER) mqi_router_ready(s, sc);
    }
    /* A PULL connection we stopped reading must not be timed out for the
    ** silence that causes. */
    mqi_zconn_hold(sc->z, s->eps[sc->ep].kind == MQI_EP_PULL && srv_pull_full(&s->eps[sc->ep]),
                   now);
    mqi_zconn_tick(sc->z, now);
    if (mqi_zconn_pending(sc->z) > 0) mqi_zconn_flush(sc->z, now);
  }
  srv_push_acks(s);
}

/* How long poll may sleep, in ms. */
static int srv_poll_wait(mq_server *s, int64_t now, int64_t end) {
  int64_t mono = srv_mono();
  int64_t wait = POLL_MAX_MS;
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_srv_conn *sc = s->conns[i];
    if (mqi_zconn_buffered(sc->z) > 0 && srv_wants_read(s, sc)) return 0;
    int64_t d = mqi_zconn_deadline(sc->z);
    if (d != INT64_MAX && d - now < wait) wait = d - now;
  }
  for (size_t e = 0; e < s->neps; e++) {
    mqi_srv_ep *ep = &s->eps[e];
    if (ep->connect && !ep->live) {
      int64_t d = (ep->cfd >= 0 ? ep->connect_deadline : ep->next_try);
      if (d != INT64_MAX && d - now < wait) wait = d - now;
    }
    if (!ep->connect && ep->accept_after > now && ep->accept_after - now < wait)
      wait = ep->accept_after - now;
    /* A batch waits for the commit thread: it pokes the pipe when free. */
    if (ep->kind == MQI_EP_PULL && ep->batch.n > 0 && !s->cbusy) {
      int64_t d = ep->failing ? ep->retry_at - mono : 0;
      if (d < wait) wait = d;
    }
    if (ep->kind == MQI_EP_PUSH) {
      /* Only worth waking for when some peer could take a message. */
      for (size_t i = 0; i < s->nconns; i++) {
        mqi_srv_conn *sc = s->conns[i];
        if (sc->ep == e && mqi_zconn_state(sc->z) == MQI_ZC_ACTIVE &&
            mqi_zconn_pending(sc->z) == 0 && sc->pend_len - sc->pend_head < s->opt.credit) {
          int64_t d = ep->empty_until - mono;
          if (d < wait) wait = d;
          break;
        }
      }
    }
  }
  /* The next PUSH lease to renew (store clock: only its distance counts),
  ** or the retry after a failed renewal. */
  int64_t store_now = mqi_store_now(s->store);
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_srv_conn *sc = s->conns[i];
    if (sc->pend_head == sc->pend_len || s->eps[sc->ep].kind != MQI_EP_PUSH) continue;
    int64_t retry = s->eps[sc->ep].renew_retry;
    int64_t d = retry ? retry - mono : sc->renew_at == INT64_MAX ? INT64_MAX : sc->renew_at - store_now;
    if (d < wait) wait = d;
  }
  int64_t r = mqi_router_wake(s);
  if (r != INT64_MAX && r - mono < wait) wait = r - mono;
  if (end != INT64_MAX && end - mono < wait) wait = end - mono;
  return wait < 0 ? 0 : (int)wait;
}

int mq_server_run(mq_server *s, int64_t timeout_ms) {
  if (!s) return MQ_EINVAL;
  if (s->running) return mqi_err_set(s->store, MQ_EMISUSE, "mq_server_run: already running");
  int rc = mqi_store_check(s->store, 0);
  if (rc != MQ_OK) return rc;
  int64_t end = timeout_ms < 0 ? INT64_MAX : srv_mono() + timeout_ms;
  int stopped = 0;
  s->running = 1;
  for (;;) {
    if (atomic_exchange(&s->stop, 0)) {
      stopped = 1;
      break;
    }
    int64_t now = mqi_server_now(s);
    size_t need = 1 + s->neps + s->nconns;
    if (need > s->pfdcap) {
      void *p = realloc(s->pfds, need * sizeof(struct pollfd));
      if (!p) {
        rc = mqi_err_set(s->store, MQ_ENOMEM, "server: out of memory");
        break;
      }
      s->pfds = p;
      s->pfdcap = need;
    }
    struct pollfd *pf = s->pfds;
    size_t np = 0;
    pf[np].fd = s->wake[0];
    pf[np++].events = POLLIN;
    for (size_t e = 0; e < s->neps; e++) {
      /* A connecting endpoint waits for its connect to finish (or for
      ** nothing: -1 is skipped by poll). */
      pf[np].fd = s->eps[e].connect                ? s->eps[e].cfd
                  : now < s->eps[e].accept_after ? -1
                                                 : s->eps[e].fd;
      pf[np++].events = s->eps[e].connect ? POLLOUT : POLLIN;
    }
    for (size_t i = 0; i < s->nconns; i++) {
      mqi_srv_conn *sc = s->conns[i];
      short ev = (short)((srv_wants_read(s, sc) ? POLLIN : 0) |
                         (mqi_zconn_pending(sc->z) > 0 ? POLLOUT : 0));
      /* A negative fd is skipped by poll: a paused connection whose peer
      ** hung up must not make poll return at once, again and again. */
      pf[np].fd = ev ? mqi_zconn_fd(sc->z) : -1;
      pf[np].events = ev;
      np++;
    }
    for (size_t k = 0; k < np; k++) pf[k].revents = 0;
    int wait = srv_poll_wait(s, now, end);
    int n = poll(pf, (nfds_t)np, wait);
    if (n < 0 && errno != EINTR) {
      rc = mqi_err_set(s->store, MQ_ENET, "server: poll: %s", strerror(errno));
      break;
    }
    now = mqi_server_now(s);
    if (n > 0 && (pf[0].revents & POLLIN)) mqi_net_pipe_drain(s->wake[0]);
    /* A finished commit frees its endpoint's next batch for the thread
    ** before reading, so paused connections are read again at once. */
    srv_pull_collect(s);
    srv_pull_submit(s);
    /* Connections first (accepting appends to the array), from a rotating
    ** start so that one busy peer cannot always fill the batch first. */
    size_t nc = s->nconns;
    s->turn++;
    for (size_t k = 0; k < nc; k++) {
      size_t i = (k + s->turn) % nc;
      mqi_srv_conn *sc = s->conns[i];
      short rev = n > 0 ? pf[1 + s->neps + i].revents : 0;
      int want = srv_wants_read(s, sc);
      if ((want && ((rev & POLLIN) || mqi_zconn_buffered(sc->z) > 0)) ||
          (rev & (POLLHUP | POLLERR)))
        srv_read(s, sc, now);
    }
    for (size_t e = 0; e < s->neps && n > 0; e++) {
      if (s->eps[e].connect) {
        if (s->eps[e].cfd >= 0 && (pf[1 + e].revents & (POLLOUT | POLLERR | POLLHUP)))
          srv_connect_done(s, e, now);
      } else if (pf[1 + e].revents & POLLIN) {
        srv_accept(s, e, now);
      }
    }
    srv_work(s, now);
    srv_reap(s);
    if (srv_mono() >= end) break;
  }
  /* Stopped, or unable to go on: what PULL read is stored before we return
  ** (keeping the error that ends the run, not the store's last word). */
  if (stopped) srv_pull_drain(s, 0);
  if (rc != MQ_OK) {
    char why[MQI_ERRMSG_MAX];
    mqi_err_text(why, sizeof why, mq_errmsg(s->store));
    srv_pull_drain(s, 0);
    mqi_err_set(s->store, rc, "%s", why);
  }
  s->running = 0;
  return rc;
}

void mq_server_stop(mq_server *s) {
  if (!s) return;
  atomic_store(&s->stop, 1);
  if (s->wake[1] >= 0) mqi_net_pipe_poke(s->wake[1]);
}

void mq_server_free(mq_server *s) {
  if (!s) return;
  s->freeing = 1;
  srv_pull_drain(s, 1);
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_zconn_close(s->conns[i]->z, "server closed");
    srv_conn_free(s, s->conns[i]);
  }
  srv_pull_flush(s, 1);
  for (size_t e = 0; e < s->neps; e++) {
    mqi_srv_ep *ep = &s->eps[e];
    if (ep->fd >= 0) close(ep->fd);
    if (ep->connect && ep->cfd >= 0) close(ep->cfd);
    mqi_batch_free(&ep->batch, NULL); /* empty after the final flush */
  }
  mqi_batch_pool_free(&s->pool);
  free(s->pi);
  mqi_router_free(s);
  free(s->eps);
  free(s->conns);
  free(s->pfds);
  if (s->wake[0] >= 0) close(s->wake[0]);
  if (s->wake[1] >= 0) close(s->wake[1]);
  if (s->csync) {
    pthread_mutex_destroy(&s->cmu);
    pthread_cond_destroy(&s->ccv);
  }
  srv_wipe_free(s->plain_user);
  srv_wipe_free(s->plain_password);
  free(s);
}
/*** end src/zmtp_server.c ***/

/*** begin src/zmtp_router.c ***/
/*
** zmtp_router.c -- the MQ1 request protocol served on a ROUTER endpoint:
** acknowledged, idempotent puts and leased consumption for libzmq DEALER
** and REQ peers (doc/protocol.md is the reference; this is its server).
**
** Every request is one ZMTP message of separate frames:
**     [""] "MQ1" VERB ARG...
** An empty first frame is the delimiter a REQ socket always sends (a DEALER
** may); it is echoed in front of every reply to that request, which is all
** a REQ socket needs to accept the reply.  Replies go back on the
** connection the request came on, so no routing id is ever needed.
**
** The durability promise lives in the order of operations: the PUTs read in
** one turn of the loop are stored with one mq_put_batch per queue (one
** commit, one fsync under MQ_SYNC_FULL), and their ACKs are queued only
** after that call returned MQ_OK.  A PUT is idempotent: its client_msg_id,
** prefixed by the producer (the ":producer" option, else the peer's ZMTP
** Identity), is the message's dedup key, so a client that did not see its
** ACK sends the same PUT again and gets the first message's id back.  That
** makes puts over the network at-least-once into the queue and, within the
** queue's dedup window, exactly-once.
**
** Consumption is leased like mq_get: GET returns one message (or EMPTY,
** after waiting up to wait_ms); CONSUME opens a window of `credit`
** messages that are pushed to the peer as they come and are counted until
** the peer ACKs or NACKs them or their lease ends (also after a STOP: the
** peer may still settle them).  What a connection holds when it goes away
** (CONSUME deliveries, all of them) is nacked in one commit per stream so
** it is delivered again at once; GET deliveries keep their lease, so a REQ
** client that reconnects can still ack them.
**
** Nothing is leased that cannot be sent at once: a delivery is leased only
** when its MSG fits the connection's output budget (mqi_get_batch_fit), so
** a consumer of large messages that reads slowly is served as it reads
** and never disconnected at the output limit, and no lease is taken that
** could not be sent.  The budget is half the output limit; the other half
** is for replies to the requests already read (reading stops at half).
**
** Times: lease ends and GET deadlines are on the server's clock
** (mqi_server_now, injectable for tests); looking again at an empty queue
** is on the real monotonic clock, because it is about the store, which
** other processes change, not about the peer.
**
** Protocol errors in a request are answered (ERR, or an ACK/DONE with a 4xx
** status), never with a ZMTP ERROR or a close: the ZMTP session is sound
** even when a request is not, and closing would only make libzmq resend.
**
** A request is read in two steps: mqi_router_parse checks every frame,
** length and number and touches nothing but its output, and only then do
** the handlers allocate and act.  Keeping the peer-facing parser pure is
** what lets fuzz/fuzz_zmtp_router.c drive it without a store or a socket.
*/
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* #include "zmtp_net.h" -- inlined above */

#define RT_TAG "MQ1"
#define RT_ID_MAX MQI_RT_ID_MAX
#define RT_HEADERS_MAX MQI_RT_HEADERS_MAX
#define RT_BATCH_MSGS 4096 /* puts per turn before reading pauses */
#define RT_BATCH_BYTES ((size_t)32 << 20)
#define RT_SUBS_MAX 64    /* CONSUME streams per connection */
#define RT_GETS_MAX 64    /* waiting GETs per connection */
#define RT_DELIVER_MAX 64 /* leased per stream per turn */
#define RT_POLL_MS 20     /* look at an empty queue this often */

/* Verbs of settle requests. */
#define RT_ACK 0
#define RT_NACK 1
#define RT_TOUCH 2

typedef struct rt_put {
  mqi_srv_conn *sc;
  size_t ep; /* sc's endpoint, for its counters (sc may be gone by then) */
  int delim;
  char queue[MQ_NAME_MAX + 1];
  char cid[RT_ID_MAX + 1];
  char key[MQ_NAME_MAX + 1];
  char subject[MQ_SUBJECT_MAX + 1];
  void *data; /* owned (a frame body) */
  size_t len;
  mq_put_options po;
  mq_header *hdrs; /* owned, strings in hbuf */
  char *hbuf;
  int status;
  int64_t id;
  char text[120];
} rt_put;

typedef struct rt_settle {
  mqi_srv_conn *sc;
  size_t ep; /* sc's endpoint, for its counters (sc may be gone by then) */
  int delim;
  int verb;
  char queue[MQ_NAME_MAX + 1];
  char receipt[MQ_RECEIPT_MAX + 1];
  int64_t ms; /* NACK delay, TOUCH visibility */
  char *reason;
  int status;
} rt_settle;

typedef struct rt_get {
  int delim;
  char queue[MQ_NAME_MAX + 1];
  int64_t lease_ms;
  int64_t deadline; /* server clock */
  size_t need;      /* bytes of the MSG that did not fit the output; 0 */
} rt_get;

typedef struct rt_flight {
  char receipt[MQ_RECEIPT_MAX + 1];
  int64_t until; /* server clock: the lease's end as we count it */
} rt_flight;

/* A CONSUME stream.  window 0: stopped, kept until what it delivered is
** settled or its lease ends, so that a close still gives it back. */
typedef struct rt_sub {
  int delim;
  char queue[MQ_NAME_MAX + 1];
  size_t window;
  int64_t lease_ms;    /* 0: the queue's */
  int64_t empty_until; /* monotonic ms */
  size_t need;         /* bytes of the MSG that did not fit the output; 0 */
  rt_flight *fl;
  size_t nfl, flcap;
} rt_sub;

struct mqi_rt_conn {
  int known;                    /* producer has been derived */
  char producer[RT_ID_MAX + 2]; /* from the Identity: see rt_producer */
  rt_sub subs[RT_SUBS_MAX];
  size_t nsubs;
  rt_get gets[RT_GETS_MAX];
  size_t ngets;
  size_t next_sub; /* the stream served first next turn: each gets its turn
                      at the output budget */
};

struct mqi_rt_state {
  rt_put *puts;
  size_t nputs, putcap, put_bytes;
  rt_settle *settles;
  size_t nsettles, settlecap;
  int64_t poll_at; /* monotonic ms of the next look at waiting GETs */
};

/* Store polling runs on this clock; leases and waits on the server's. */
static int64_t rt_mono(void) { return mqi_os_monotonic_ms(); }

/* A time `at` on the server's clock (now there) as monotonic ms. */
static int64_t rt_mono_of(int64_t at, int64_t now, int64_t mono) {
  if (at <= now) return mono;
  if (now < 0 && at > INT64_MAX + now) return INT64_MAX;
  return mqi_time_add(mono, at - now);
}

int mqi_router_new(mq_server *s) {
  s->rt = calloc(1, sizeof *s->rt);
  return s->rt ? MQ_OK : MQ_ENOMEM;
}

static void rt_put_clear(rt_put *p) {
  free(p->data);
  free(p->hdrs);
  free(p->hbuf);
  p->data = NULL;
  p->hdrs = NULL;
  p->hbuf = NULL;
}

void mqi_router_free(mq_server *s) {
  mqi_rt_state *st = s->rt;
  if (!st) return;
  for (size_t i = 0; i < st->nputs; i++) rt_put_clear(&st->puts[i]);
  for (size_t i = 0; i < st->nsettles; i++) free(st->settles[i].reason);
  free(st->puts);
  free(st->settles);
  free(st);
  s->rt = NULL;
}

/* ------------------------------------------------------------------------
** Frames in and out
*/
static int rt_is(const mqi_zmtp_frame *f, const char *s) {
  size_t n = strlen(s);
  return f->size == n && (n == 0 || memcmp(f->body, s, n) == 0);
}

/* Copy a frame into a C string of 1..max printable ASCII bytes (no space
** unless spaces is set).  0 on success. */
static int rt_str(const mqi_zmtp_frame *f, char *out, size_t max, int spaces) {
  if (f->size == 0 || f->size > max) return -1;
  for (size_t i = 0; i < f->size; i++) {
    uint8_t c = f->body[i];
    if (c < 0x20 || c > 0x7e || (c == ' ' && !spaces)) return -1;
  }
  memcpy(out, f->body, f->size);
  out[f->size] = '\0';
  return 0;
}

/* A decimal integer (optionally negative) filling the frame. */
static int rt_int(const mqi_zmtp_frame *f, int64_t min, int64_t max, int64_t *out) {
  int64_t v = 0;
  size_t i = 0;
  int neg = 0;
  if (f->size > 0 && f->body[0] == '-') {
    neg = 1;
    i = 1;
  }
  if (f->size == i || f->size - i > 18) return -1;
  for (; i < f->size; i++) {
    if (f->body[i] < '0' || f->body[i] > '9') return -1;
    v = v * 10 + (f->body[i] - '0');
  }
  if (neg) v = -v;
  if (v < min || v > max) return -1;
  *out = v;
  return 0;
}

/* Send [""] "MQ1" then n more frames. */
static void rt_reply(mq_server *s, mqi_srv_conn *sc, int delim, const mqi_zpart *more, size_t n) {
  mqi_zpart parts[8];
  size_t k = 0;
  if (!sc || mqi_zconn_state(sc->z) != MQI_ZC_ACTIVE) return;
  if (delim) parts[k++] = (mqi_zpart){"", 0};
  parts[k++] = (mqi_zpart){RT_TAG, 3};
  for (size_t i = 0; i < n && k < sizeof parts / sizeof parts[0]; i++) parts[k++] = more[i];
  mqi_server_send(s, sc, parts, k);
}

static mqi_zpart rt_p(const char *s) { return (mqi_zpart){s, strlen(s)}; }

static void rt_err(mq_server *s, mqi_srv_conn *sc, int delim, const char *code, const char *text) {
  mqi_zpart p[3] = {rt_p("ERR"), rt_p(code), rt_p(text)};
  rt_reply(s, sc, delim, p, 3);
}

/* The reply status for a library result code. */
static int rt_status(int rc) {
  switch (rc) {
    case MQ_OK:
      return 200;
    case MQ_EINVAL:
      return 400;
    case MQ_ENOTFOUND:
      return 404;
    case MQ_ESTALE:
      return 410;
    case MQ_ETOOBIG:
      return 413;
    case MQ_EFULL:
      return 507;
    case MQ_EBUSY:
    case MQ_EUNKNOWN:
    case MQ_EIO:
      return 503;
    default:
      return 500;
  }
}

/* The producer prefix of dedup keys: the Identity (or :producer) when it
** is short printable text, else a hash of it ("#" and 16 hex digits).  A
** key is producer "/" client_msg_id, and the client_msg_id may hold "/":
** a producer with a "/" is hashed too, so the first "/" of a key always
** ends the producer and two producers can never make the same key.  One
** starting with "#" is hashed so that it cannot pass for another's hash. */
static void rt_producer(const uint8_t *id, size_t len, char *out, size_t cap) {
  int printable = len > 0 && len <= RT_ID_MAX && id[0] != '#';
  for (size_t i = 0; printable && i < len; i++)
    printable = id[i] > 0x20 && id[i] < 0x7f && id[i] != '/';
  if (len == 0) {
    out[0] = '\0';
  } else if (printable) {
    memcpy(out, id, len);
    out[len] = '\0';
  } else {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) h = (h ^ id[i]) * 1099511628211ULL;
    snprintf(out, cap, "#%016" PRIx64, h);
  }
}

/* The router state of sc, made on first use; NULL (and sc closed) when out
** of memory.  The producer is derived here, not when the handshake ends,
** because the first request may come in the same read as the READY. */
static mqi_rt_conn *rt_conn(mqi_srv_conn *sc) {
  if (!sc->rt) sc->rt = calloc(1, sizeof *sc->rt);
  if (!sc->rt) {
    mqi_zconn_close(sc->z, "out of memory");
    return NULL;
  }
  if (!sc->rt->known) {
    size_t len = 0;
    const uint8_t *id = mqi_zconn_identity(sc->z, &len);
    rt_producer(id, len, sc->rt->producer, sizeof sc->rt->producer);
    sc->rt->known = 1;
  }
  return sc->rt;
}

/* ------------------------------------------------------------------------
** Parsing: a pure function of the frames, so fuzz/fuzz_zmtp_router.c can
** drive every branch without a store or a socket.  Empty frames may come
** with a NULL body, so nothing here hands a body to memcmp or memchr
** without a nonzero size.
*/
static int rt_refuse(mqi_router_req *r, int code, const char *why) {
  r->error = why;
  return code;
}

static int rt_has_nul(const mqi_zmtp_frame *f) {
  return f->size > 0 && memchr(f->body, 0, f->size) != NULL;
}

/* PUT queue client_msg_id payload *(name value) */
static int rt_parse_put(const mqi_zmtp_frame *a, size_t n, mqi_router_req *r) {
  if (n < 2 || rt_str(&a[1], r->cid, MQI_RT_ID_MAX, 0) != 0)
    return rt_refuse(r, MQI_RTP_ERR,
                     "PUT needs: queue client_msg_id (1..64 printable bytes) payload");
  if (n < 3) return rt_refuse(r, MQI_RTP_REFUSE, "PUT without a payload frame");
  if (rt_str(&a[0], r->queue, MQ_NAME_MAX, 0) != 0)
    return rt_refuse(r, MQI_RTP_REFUSE, "bad queue name");
  if ((n - 3) % 2 != 0)
    return rt_refuse(r, MQI_RTP_REFUSE, "header frames must come in name/value pairs");
  if ((n - 3) / 2 > MQI_RT_HEADERS_MAX) return rt_refuse(r, MQI_RTP_REFUSE, "too many headers");
  for (size_t i = 3; i + 1 < n; i += 2) {
    const mqi_zmtp_frame *nm = &a[i], *val = &a[i + 1];
    if (nm->size == 0 || nm->size > 255 || rt_has_nul(nm) || rt_has_nul(val))
      return rt_refuse(r, MQI_RTP_REFUSE,
                       "a header name is empty or long, or a name or value holds a NUL byte");
    if (nm->body[0] != ':') {
      r->header_bytes += nm->size + val->size + 2;
      r->n_headers++;
      continue;
    }
    int64_t v = 0;
    if (rt_is(nm, ":delay") || rt_is(nm, ":ttl")) {
      if (rt_int(val, 0, INT64_MAX / 4, &v) != 0)
        return rt_refuse(r, MQI_RTP_REFUSE, "bad :delay or :ttl");
      if (rt_is(nm, ":delay"))
        r->delay_ms = v;
      else
        r->ttl_ms = v;
    } else if (rt_is(nm, ":priority")) {
      if (rt_int(val, -1000000000, 1000000000, &v) != 0)
        return rt_refuse(r, MQI_RTP_REFUSE, "bad :priority");
      r->priority = (int)v;
    } else if (rt_is(nm, ":producer")) {
      if (rt_str(val, r->producer, MQI_RT_ID_MAX, 0) != 0)
        return rt_refuse(r, MQI_RTP_REFUSE, "bad :producer");
    } else if (rt_is(nm, ":subject")) {
      if (rt_str(val, r->subject, MQ_SUBJECT_MAX, 0) != 0)
        return rt_refuse(r, MQI_RTP_REFUSE, "bad :subject");
    } else {
      return rt_refuse(r, MQI_RTP_REFUSE, "unknown option (names starting with ':' are options)");
    }
  }
  return MQI_RTP_OK;
}

/* ACK/NACK/TOUCH queue receipt [...] */
static int rt_parse_settle(const mqi_zmtp_frame *a, size_t n, mqi_router_req *r) {
  int verb = r->verb;
  if (n < 2 || rt_str(&a[1], r->receipt, MQ_RECEIPT_MAX, 0) != 0)
    return rt_refuse(r, MQI_RTP_ERR, "ACK, NACK and TOUCH need: queue receipt");
  if (rt_str(&a[0], r->queue, MQ_NAME_MAX, 0) != 0)
    return rt_refuse(r, MQI_RTP_REFUSE, "bad queue name");
  /* Refused here, alone: in the turn's mq_ack_batch it would fail every
  ** other ACK of the queue read with it. */
  int64_t id;
  uint64_t lease;
  if (mqi_receipt_parse(r->receipt, &id, &lease) != MQ_OK)
    return rt_refuse(r, MQI_RTP_REFUSE, "malformed receipt");
  if (verb == MQI_RT_ACK && n != 2)
    return rt_refuse(r, MQI_RTP_REFUSE, "ACK takes: queue receipt");
  if (verb == MQI_RT_TOUCH && (n != 3 || rt_int(&a[2], 0, INT64_MAX / 4, &r->ms) != 0))
    return rt_refuse(r, MQI_RTP_REFUSE, "TOUCH takes: queue receipt visibility_ms");
  if (verb == MQI_RT_NACK && (n > 4 || (n >= 3 && rt_int(&a[2], 0, INT64_MAX / 4, &r->ms) != 0)))
    return rt_refuse(r, MQI_RTP_REFUSE, "NACK takes: queue receipt [delay_ms [reason]]");
  if (verb == MQI_RT_NACK && n == 4) {
    if (a[3].size > MQI_RT_REASON_MAX || rt_has_nul(&a[3]))
      return rt_refuse(r, MQI_RTP_REFUSE, "a NACK reason is at most 1000 bytes without NUL");
    r->has_reason = 1;
  }
  return MQI_RTP_OK;
}

/* GET queue [lease_ms [wait_ms]] */
static int rt_parse_get(const mqi_zmtp_frame *a, size_t n, mqi_router_req *r) {
  if (n < 1 || n > 3 || rt_str(&a[0], r->queue, MQ_NAME_MAX, 0) != 0 ||
      (n >= 2 && rt_int(&a[1], 0, INT64_MAX / 4, &r->lease_ms) != 0) ||
      (n == 3 && rt_int(&a[2], 0, MQI_RT_WAIT_MAX_MS, &r->wait_ms) != 0))
    return rt_refuse(r, MQI_RTP_ERR, "GET takes: queue [lease_ms [wait_ms]]");
  return MQI_RTP_OK;
}

/* CONSUME queue credit [lease_ms]; STOP queue */
static int rt_parse_consume(const mqi_zmtp_frame *a, size_t n, mqi_router_req *r) {
  int stop = r->verb == MQI_RT_STOP;
  if (n < 1 || rt_str(&a[0], r->queue, MQ_NAME_MAX, 0) != 0 ||
      (stop ? n != 1
            : (n < 2 || n > 3 || rt_int(&a[1], 0, INT64_MAX / 4, &r->credit) != 0 ||
               (n == 3 && rt_int(&a[2], 0, INT64_MAX / 4, &r->lease_ms) != 0))))
    return rt_refuse(r, MQI_RTP_ERR,
                     stop ? "STOP takes: queue" : "CONSUME takes: queue credit [lease_ms]");
  return MQI_RTP_OK;
}

int mqi_router_parse(const mqi_zmtp_frame *parts, size_t n, mqi_router_req *r) {
  static const struct {
    const char *name;
    int verb;
  } verbs[] = {{"PUT", MQI_RT_PUT},   {"ACK", MQI_RT_ACK}, {"NACK", MQI_RT_NACK},
               {"TOUCH", MQI_RT_TOUCH}, {"GET", MQI_RT_GET}, {"CONSUME", MQI_RT_CONSUME},
               {"STOP", MQI_RT_STOP}};
  size_t i = 0;
  memset(r, 0, sizeof *r);
  if (n > 1 && parts[0].size == 0) {
    r->delim = 1;
    i = 1;
  }
  if (n - i < 2 || !rt_is(&parts[i], RT_TAG))
    return rt_refuse(r, MQI_RTP_ERR, "not an MQ1 request: expected [\"\"] \"MQ1\" VERB ARGS...");
  for (size_t k = 0; k < sizeof verbs / sizeof verbs[0] && !r->verb; k++)
    if (rt_is(&parts[i + 1], verbs[k].name)) r->verb = verbs[k].verb;
  r->arg = i + 2;
  const mqi_zmtp_frame *a = parts + r->arg;
  size_t na = n - r->arg;
  switch (r->verb) {
    case MQI_RT_PUT:
      return rt_parse_put(a, na, r);
    case MQI_RT_ACK:
    case MQI_RT_NACK:
    case MQI_RT_TOUCH:
      return rt_parse_settle(a, na, r);
    case MQI_RT_GET:
      return rt_parse_get(a, na, r);
    case MQI_RT_CONSUME:
    case MQI_RT_STOP:
      return rt_parse_consume(a, na, r);
    default:
      return rt_refuse(r, MQI_RTP_ERR, "unknown verb");
  }
}

/* ------------------------------------------------------------------------
** Requests: the parsed request is acted on, or queued for the turn's work
*/
/* The kind of queue (MQ_KIND_*), or -1 with *status and *why set: 404 only
** when there is no such queue.  A lock or an I/O error is a 503, which
** tells the client to retry, not to drop what it was sending. */
static int rt_queue_kind(mq_server *s, const char *queue, int *status, const char **why) {
  mq_queue_info info;
  int rc = mq_queue_info_get(s->store, queue, &info);
  if (rc == MQ_OK) return info.kind;
  *status = rt_status(rc);
  *why = rc == MQ_ENOTFOUND ? "no such queue" : mq_errstr(rc);
  return -1;
}

static void rt_put_refuse(mq_server *s, mqi_srv_conn *sc, int delim, const char *cid,
                          const char *status, const char *why) {
  mqi_zpart r[5] = {rt_p("ACK"), rt_p(cid), rt_p(status), rt_p(""), rt_p(why)};
  rt_reply(s, sc, delim, r, 5);
}

/* A parsed PUT: copy its headers, take its payload frame, queue it. */
static void rt_req_put(mq_server *s, mqi_srv_conn *sc, const mqi_router_req *q,
                       mqi_zmtp_frame *parts) {
  mqi_rt_state *st = s->rt;
  mqi_zmtp_frame *a = parts + q->arg;
  rt_put p;
  memset(&p, 0, sizeof p);
  p.sc = sc;
  p.ep = sc->ep;
  p.delim = q->delim;
  memcpy(p.queue, q->queue, sizeof p.queue);
  memcpy(p.cid, q->cid, sizeof p.cid);
  memcpy(p.subject, q->subject, sizeof p.subject);
  mq_put_options_init(&p.po);
  p.po.delay_ms = q->delay_ms;
  p.po.ttl_ms = q->ttl_ms;
  p.po.priority = q->priority;
  if (q->n_headers) {
    p.hdrs = malloc(q->n_headers * sizeof *p.hdrs);
    p.hbuf = malloc(q->header_bytes);
    if (!p.hdrs || !p.hbuf) {
      rt_put_refuse(s, sc, q->delim, q->cid, "400", "out of memory");
      rt_put_clear(&p);
      return;
    }
    char *at = p.hbuf;
    size_t k = 0;
    for (size_t i = 3; k < q->n_headers; i += 2) { /* a[2] is the payload */
      if (a[i].body[0] == ':') continue;
      p.hdrs[k].name = at;
      memcpy(at, a[i].body, a[i].size);
      at += a[i].size;
      *at++ = '\0';
      p.hdrs[k].value = at;
      if (a[i + 1].size) memcpy(at, a[i + 1].body, a[i + 1].size);
      at += a[i + 1].size;
      *at++ = '\0';
      k++;
    }
    p.po.headers = p.hdrs;
    p.po.n_headers = q->n_headers;
  }
  char named[RT_ID_MAX + 2];
  const char *producer = sc->rt ? sc->rt->producer : "";
  if (q->producer[0]) {
    rt_producer((const uint8_t *)q->producer, strlen(q->producer), named, sizeof named);
    producer = named;
  }
  if (*producer)
    snprintf(p.key, sizeof p.key, "%s/%s", producer, p.cid);
  else
    snprintf(p.key, sizeof p.key, "%s", p.cid);
  p.po.dedup_key = NULL; /* set at commit: p moves in memory until then */
  p.data = a[2].body;
  p.len = a[2].size;
  a[2].body = NULL;
  if (st->nputs == st->putcap) {
    size_t cap = st->putcap ? st->putcap * 2 : 64;
    rt_put *grown = realloc(st->puts, cap * sizeof *grown);
    if (!grown) {
      rt_put_refuse(s, sc, q->delim, q->cid, "503", "out of memory");
      rt_put_clear(&p);
      return;
    }
    st->puts = grown;
    st->putcap = cap;
  }
  st->puts[st->nputs++] = p;
  st->put_bytes += p.len;
}

static void rt_settle_refuse(mq_server *s, mqi_srv_conn *sc, int delim, const char *receipt,
                             const char *why) {
  mqi_zpart r[4] = {rt_p("DONE"), rt_p(receipt), rt_p("400"), rt_p(why)};
  rt_reply(s, sc, delim, r, 4);
}

/* A parsed ACK, NACK or TOUCH: queued for the turn's commit. */
static void rt_req_settle(mq_server *s, mqi_srv_conn *sc, const mqi_router_req *q,
                          const mqi_zmtp_frame *parts) {
  mqi_rt_state *st = s->rt;
  rt_settle t;
  memset(&t, 0, sizeof t);
  t.sc = sc;
  t.ep = sc->ep;
  t.delim = q->delim;
  t.verb = q->verb == MQI_RT_ACK ? RT_ACK : q->verb == MQI_RT_NACK ? RT_NACK : RT_TOUCH;
  t.ms = q->ms;
  memcpy(t.queue, q->queue, sizeof t.queue);
  memcpy(t.receipt, q->receipt, sizeof t.receipt);
  if (q->has_reason) {
    const mqi_zmtp_frame *why = &parts[q->arg + 3];
    t.reason = malloc(why->size + 1);
    if (!t.reason) {
      rt_settle_refuse(s, sc, q->delim, q->receipt, "out of memory");
      return;
    }
    if (why->size) memcpy(t.reason, why->body, why->size);
    t.reason[why->size] = '\0';
  }
  if (st->nsettles == st->settlecap) {
    size_t cap = st->settlecap ? st->settlecap * 2 : 64;
    rt_settle *grown = realloc(st->settles, cap * sizeof *grown);
    if (!grown) {
      free(t.reason);
      rt_settle_refuse(s, sc, q->delim, q->receipt, "out of memory");
      return;
    }
    st->settles = grown;
    st->settlecap = cap;
  }
  st->settles[st->nsettles++] = t;
}

/* A parsed GET: waits in the connection's list until served. */
static void rt_req_get(mq_server *s, mqi_srv_conn *sc, const mqi_router_req *q) {
  mqi_rt_conn *rc = sc->rt;
  rt_get g;
  memset(&g, 0, sizeof g);
  g.delim = q->delim;
  g.lease_ms = q->lease_ms;
  memcpy(g.queue, q->queue, sizeof g.queue);
  if (!rc || rc->ngets == RT_GETS_MAX) {
    rt_err(s, sc, q->delim, "429", "too many waiting GETs on this connection");
    return;
  }
  g.deadline = mqi_time_add(mqi_server_now(s), q->wait_ms);
  rc->gets[rc->ngets++] = g;
  s->rt->poll_at = 0;
}

static rt_sub *rt_find_sub(mqi_rt_conn *rc, const char *queue) {
  for (size_t i = 0; i < rc->nsubs; i++)
    if (strcmp(rc->subs[i].queue, queue) == 0) return &rc->subs[i];
  return NULL;
}

static void rt_sub_drop(mqi_rt_conn *rc, rt_sub *sub) {
  free(sub->fl);
  *sub = rc->subs[--rc->nsubs];
}

/* A parsed CONSUME or STOP: open, resize or close the stream. */
static void rt_req_consume(mq_server *s, mqi_srv_conn *sc, const mqi_router_req *q) {
  mqi_rt_conn *rc = sc->rt;
  int delim = q->delim;
  int64_t credit = q->credit;
  const char *queue = q->queue;
  if (!rc) return;
  rt_sub *sub = rt_find_sub(rc, queue);
  if (q->verb == MQI_RT_STOP || credit == 0) {
    /* Deliveries in flight stay leased to the peer: it may still settle
    ** them, and a close gives back what it did not.  So the stream stays,
    ** stopped, as long as it has any. */
    if (sub) {
      sub->window = 0;
      sub->need = 0;
      if (sub->nfl == 0) rt_sub_drop(rc, sub);
    }
    mqi_zpart r[2] = {rt_p("STOPPED"), rt_p(queue)};
    rt_reply(s, sc, delim, r, 2);
    return;
  }
  int status = 0;
  const char *why = "";
  int kind = rt_queue_kind(s, queue, &status, &why);
  if (kind < 0 || kind == MQ_KIND_TOPIC) {
    char code[8];
    snprintf(code, sizeof code, "%d", kind < 0 ? status : 400);
    rt_err(s, sc, delim, code, kind < 0 ? why : "a topic: consume one of its subscriptions");
    return;
  }
  if (!sub) {
    if (rc->nsubs == RT_SUBS_MAX) {
      rt_err(s, sc, delim, "429", "too many CONSUME streams on this connection");
      return;
    }
    sub = &rc->subs[rc->nsubs++];
    memset(sub, 0, sizeof *sub);
    snprintf(sub->queue, sizeof sub->queue, "%s", queue);
  }
  if ((uint64_t)credit > s->opt.credit) credit = (int64_t)s->opt.credit;
  sub->delim = delim;
  sub->window = (size_t)credit;
  sub->lease_ms = q->lease_ms;
  sub->empty_until = 0;
  sub->need = 0;
  char cbuf[24];
  snprintf(cbuf, sizeof cbuf, "%" PRId64, credit);
  mqi_zpart r[3] = {rt_p("CONSUMING"), rt_p(queue), rt_p(cbuf)};
  rt_reply(s, sc, delim, r, 3);
}

int mqi_router_message(mq_server *s, mqi_srv_conn *sc, mqi_zmtp_frame *parts, size_t n) {
  mqi_rt_state *st = s->rt;
  mqi_router_req q;
  if (!rt_conn(sc)) return 1;
  int pr = mqi_router_parse(parts, n, &q);
  if (pr == MQI_RTP_ERR) {
    rt_err(s, sc, q.delim, "400", q.error);
  } else if (pr == MQI_RTP_REFUSE) {
    if (q.verb == MQI_RT_PUT)
      rt_put_refuse(s, sc, q.delim, q.cid, "400", q.error);
    else
      rt_settle_refuse(s, sc, q.delim, q.receipt, q.error);
  } else if (q.verb == MQI_RT_PUT) {
    rt_req_put(s, sc, &q, parts);
  } else if (q.verb == MQI_RT_GET) {
    rt_req_get(s, sc, &q);
  } else if (q.verb == MQI_RT_CONSUME || q.verb == MQI_RT_STOP) {
    rt_req_consume(s, sc, &q);
  } else {
    rt_req_settle(s, sc, &q, parts);
  }
  return st->nputs >= RT_BATCH_MSGS || st->put_bytes >= RT_BATCH_BYTES ||
         st->nsettles >= RT_BATCH_MSGS;
}

/* ------------------------------------------------------------------------
** Connections
*/

void mqi_router_ready(mq_server *s, mqi_srv_conn *sc) {
  size_t len = 0;
  const uint8_t *id = mqi_zconn_identity(sc->z, &len);
  if (!rt_conn(sc) || len == 0) return;
  /* Handover: the newest connection with an Identity wins, so a peer that
  ** reconnects is not shadowed by its own half-dead old connection. */
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_srv_conn *o = s->conns[i];
    size_t olen = 0;
    if (o == sc || s->eps[o->ep].kind != MQI_EP_ROUTER || !o->was_active ||
        mqi_zconn_state(o->z) != MQI_ZC_ACTIVE)
      continue;
    const uint8_t *oid = mqi_zconn_identity(o->z, &olen);
    if (olen == len && memcmp(oid, id, len) == 0)
      mqi_zconn_close(o->z, "replaced by a newer connection with the same Identity");
  }
}

/* Nack every delivery of a stream whose connection is gone, so it is
** delivered again at once rather than when its lease ends: one commit for
** them all (a consumer may hold a million), one each only when out of
** memory.  A delivery whose lease is over is skipped by the store. */
static void rt_give_back(mq_server *s, rt_sub *sub) {
  const char **rcpts = malloc(sub->nfl * sizeof *rcpts);
  int rc = MQ_OK;
  if (rcpts) {
    for (size_t k = 0; k < sub->nfl; k++) rcpts[k] = sub->fl[k].receipt;
    rc = mqi_nack_batch(s->store, sub->queue, rcpts, sub->nfl);
    free(rcpts);
  } else {
    for (size_t k = 0; k < sub->nfl; k++) {
      int r = mq_nack(s->store, sub->queue, sub->fl[k].receipt, 0, NULL);
      if (r != MQ_OK && r != MQ_ESTALE) rc = r;
    }
  }
  if (rc != MQ_OK)
    mqi_log(s->store, MQ_LOG_WARN,
            "server: ROUTER: %zu deliveries of \"%s\" not given back (%s): they come back "
            "when their lease ends",
            sub->nfl, sub->queue, mq_errmsg(s->store));
}

void mqi_router_conn_gone(mq_server *s, mqi_srv_conn *sc) {
  mqi_rt_state *st = s->rt;
  mqi_rt_conn *rc = sc->rt;
  for (size_t i = 0; st && i < st->nputs; i++)
    if (st->puts[i].sc == sc) st->puts[i].sc = NULL;
  for (size_t i = 0; st && i < st->nsettles; i++)
    if (st->settles[i].sc == sc) st->settles[i].sc = NULL;
  if (!rc) return;
  for (size_t i = 0; i < rc->nsubs; i++) {
    rt_sub *sub = &rc->subs[i];
    if (sub->nfl > 0) rt_give_back(s, sub);
    free(sub->fl);
  }
  free(rc);
  sc->rt = NULL;
}

/* ------------------------------------------------------------------------
** The turn's work
*/
static void rt_ack_put(mq_server *s, rt_put *p) {
  char status[8], id[24];
  snprintf(status, sizeof status, "%d", p->status);
  if (p->status == 200)
    snprintf(id, sizeof id, "%" PRId64, p->id);
  else
    id[0] = '\0';
  mqi_zpart r[5] = {rt_p("ACK"), rt_p(p->cid), rt_p(status), rt_p(id), rt_p(p->text)};
  rt_reply(s, p->sc, p->delim, r, p->status == 200 ? 4 : 5);
}

/* Store the puts of one queue: one batch (one commit), or, when one entry
** spoils the batch, one put each so every PUT gets its own answer. */
static void rt_commit_queue(mq_server *s, rt_put **ps, size_t n) {
  const char *queue = ps[0]->queue;
  int status = 0;
  const char *why = "";
  int kind = rt_queue_kind(s, queue, &status, &why);
  int rc;
  if (kind < 0 || kind == MQ_KIND_SUBSCRIPTION) {
    for (size_t i = 0; i < n; i++) {
      ps[i]->status = kind < 0 ? status : 400;
      snprintf(ps[i]->text, sizeof ps[i]->text, "%s",
               kind < 0 ? why : "a subscription: put to its topic");
    }
    return;
  }
  int topic = kind == MQ_KIND_TOPIC;
  int64_t *ids = malloc(n * sizeof *ids);
  void *en = malloc(n * (topic ? sizeof(mq_pub_entry) : sizeof(mq_entry)));
  if (!ids || !en) {
    rc = MQ_ENOMEM;
  } else {
    for (size_t i = 0; i < n; i++) {
      ps[i]->po.dedup_key = ps[i]->key;
      if (topic) {
        mq_pub_entry *e = (mq_pub_entry *)en + i;
        e->subject = ps[i]->subject[0] ? ps[i]->subject : NULL;
        e->data = ps[i]->data;
        e->len = ps[i]->len;
        e->opts = &ps[i]->po;
      } else {
        mq_entry *e = (mq_entry *)en + i;
        e->data = ps[i]->data;
        e->len = ps[i]->len;
        e->opts = &ps[i]->po;
      }
    }
    rc = topic ? mq_publish_batch(s->store, queue, en, n, ids, NULL)
               : mq_put_batch(s->store, queue, en, n, ids);
  }
  if (rc == MQ_OK) {
    for (size_t i = 0; i < n; i++) {
      ps[i]->status = 200;
      ps[i]->id = ids[i];
    }
  } else if (rc == MQ_ETOOBIG || rc == MQ_EINVAL) {
    for (size_t i = 0; i < n; i++) {
      int64_t id = 0;
      int r = topic ? mq_publish(s->store, queue, ps[i]->subject[0] ? ps[i]->subject : NULL,
                                 ps[i]->data, ps[i]->len, &ps[i]->po, &id, NULL)
                    : mq_put(s->store, queue, ps[i]->data, ps[i]->len, &ps[i]->po, &id);
      ps[i]->status = rt_status(r);
      ps[i]->id = id;
      if (r != MQ_OK) mqi_err_text(ps[i]->text, sizeof ps[i]->text, mq_errmsg(s->store));
    }
  } else {
    /* The batch failed as a whole (locked, disk full, I/O, outcome
    ** unknown): nothing is acknowledged; the client retries with the same
    ** ids and the dedup keys make that safe. */
    for (size_t i = 0; i < n; i++) {
      ps[i]->status = rt_status(rc);
      mqi_err_text(ps[i]->text, sizeof ps[i]->text, mq_errmsg(s->store));
    }
    mqi_log(s->store, MQ_LOG_WARN, "server: ROUTER: %zu puts into \"%s\" failed: %s", n, queue,
            mq_errmsg(s->store));
  }
  free(ids);
  free(en);
  int any = 0;
  for (size_t i = 0; i < n; i++)
    if (ps[i]->status == 200) {
      mqi_srv_counts *c = &s->eps[ps[i]->ep].count;
      MQI_SRV_COUNT(c->in, 1);
      MQI_SRV_COUNT(c->bytes_in, ps[i]->len);
      any = 1;
    }
  if (any) mqi_server_kick(s, queue);
}

static void rt_commit_puts(mq_server *s) {
  mqi_rt_state *st = s->rt;
  size_t n = st->nputs;
  if (n == 0) return;
  rt_put **group = malloc(n * sizeof *group);
  char *done = calloc(n, 1);
  if (!group || !done) {
    for (size_t i = 0; i < n; i++) {
      st->puts[i].status = 503;
      snprintf(st->puts[i].text, sizeof st->puts[i].text, "out of memory");
    }
  } else {
    for (size_t i = 0; i < n; i++) {
      if (done[i]) continue;
      size_t g = 0;
      for (size_t k = i; k < n; k++)
        if (!done[k] && strcmp(st->puts[k].queue, st->puts[i].queue) == 0) {
          group[g++] = &st->puts[k];
          done[k] = 1;
        }
      rt_commit_queue(s, group, g);
    }
  }
  /* Only now, after the commits, do the ACKs go out, in request order. */
  for (size_t i = 0; i < n; i++) {
    rt_ack_put(s, &st->puts[i]);
    rt_put_clear(&st->puts[i]);
  }
  free(group);
  free(done);
  st->nputs = 0;
  st->put_bytes = 0;
}

/* Whether an ACK or NACK answered with status ended the delivery: done
** (200) or no longer the peer's (410).  After any other answer (a lock, an
** I/O error) the message is still leased to the peer and still counts
** against its credit. */
static int rt_settled(int status) { return status == 200 || status == 410; }

/* The delivery of receipt in sc's CONSUME stream on queue, or NULL. */
static rt_flight *rt_flight_of(mqi_srv_conn *sc, const char *queue, const char *receipt,
                               rt_sub **sub) {
  *sub = sc && sc->rt ? rt_find_sub(sc->rt, queue) : NULL;
  for (size_t k = 0; *sub && k < (*sub)->nfl; k++)
    if (strcmp((*sub)->fl[k].receipt, receipt) == 0) return &(*sub)->fl[k];
  return NULL;
}

/* Forget a delivery the peer settled; a stopped stream goes with its
** last one. */
static void rt_forget(mqi_srv_conn *sc, const char *queue, const char *receipt) {
  rt_sub *sub;
  rt_flight *f = rt_flight_of(sc, queue, receipt, &sub);
  if (!f) return;
  *f = sub->fl[--sub->nfl];
  if (sub->window == 0 && sub->nfl == 0) rt_sub_drop(sc->rt, sub);
}

/* A delivery the peer touched: our count of its lease follows, so it is
** neither counted out of the credit early nor left out of the nack on
** close. */
static void rt_touched(mq_server *s, mqi_srv_conn *sc, const char *queue, const char *receipt,
                       int64_t ms) {
  rt_sub *sub;
  rt_flight *f = rt_flight_of(sc, queue, receipt, &sub);
  if (f) f->until = mqi_time_add(mqi_server_now(s), ms);
}

static void rt_done(mq_server *s, rt_settle *t, const char *text) {
  char status[8];
  snprintf(status, sizeof status, "%d", t->status);
  mqi_zpart r[4] = {rt_p("DONE"), rt_p(t->receipt), rt_p(status), rt_p(text)};
  rt_reply(s, t->sc, t->delim, r, t->status == 200 ? 3 : 4);
}

static void rt_commit_settles(mq_server *s) {
  mqi_rt_state *st = s->rt;
  size_t n = st->nsettles;
  if (n == 0) return;
  const char **rcpts = malloc(n * sizeof *rcpts);
  int *res = malloc(n * sizeof *res);
  rt_settle **grp = malloc(n * sizeof *grp);
  char *done = calloc(n, 1);
  for (size_t i = 0; i < n; i++) {
    rt_settle *t = &st->settles[i];
    if (done && done[i]) continue;
    int rc;
    if (t->verb == RT_ACK && rcpts && res && grp && done) {
      /* Every ACK of this turn on this queue: one commit (their receipts
      ** are well-formed: mqi_router_parse). */
      size_t g = 0;
      for (size_t k = i; k < n; k++)
        if (!done[k] && st->settles[k].verb == RT_ACK &&
            strcmp(st->settles[k].queue, t->queue) == 0) {
          grp[g] = &st->settles[k];
          rcpts[g++] = st->settles[k].receipt;
          done[k] = 1;
        }
      rc = mq_ack_batch(s->store, t->queue, rcpts, g, res);
      for (size_t k = 0; k < g; k++) {
        grp[k]->status = rt_status(rc == MQ_OK ? res[k] : rc);
        if (grp[k]->status == 200) MQI_SRV_COUNT(s->eps[grp[k]->ep].count.acks, 1);
        if (rt_settled(grp[k]->status)) rt_forget(grp[k]->sc, grp[k]->queue, grp[k]->receipt);
        rt_done(s, grp[k], grp[k]->status == 200 ? "" : mq_errstr(rc == MQ_OK ? res[k] : rc));
      }
      continue;
    }
    if (t->verb == RT_ACK)
      rc = mq_ack(s->store, t->queue, t->receipt);
    else if (t->verb == RT_NACK)
      rc = mq_nack(s->store, t->queue, t->receipt, t->ms, t->reason);
    else
      rc = mq_touch(s->store, t->queue, t->receipt, t->ms);
    t->status = rt_status(rc);
    if (t->verb == RT_ACK && rc == MQ_OK) MQI_SRV_COUNT(s->eps[t->ep].count.acks, 1);
    if (t->verb != RT_TOUCH && rt_settled(t->status)) rt_forget(t->sc, t->queue, t->receipt);
    if (t->verb == RT_TOUCH && rc == MQ_OK) rt_touched(s, t->sc, t->queue, t->receipt, t->ms);
    rt_done(s, t, rc == MQ_OK ? "" : mq_errstr(rc));
  }
  for (size_t i = 0; i < n; i++) free(st->settles[i].reason);
  free(rcpts);
  free(res);
  free(grp);
  free(done);
  st->nsettles = 0;
}

/* ------------------------------------------------------------------------
** Deliveries: MSG [""] "MQ1" "MSG" queue msg_id receipt receives payload
** *(name value), every header of the message (mq_put takes any number).
*/
#define RT_MSG_HEAD 8 /* frames before the headers, at most */
#define RT_MSG_STACK (RT_MSG_HEAD + 2 * RT_HEADERS_MAX)

/* Where a MSG goes, for rt_msg_cost (it may run on the thread that leads
** the store's commit: nothing here changes). */
typedef struct rt_dest {
  const char *queue;
  int delim;
} rt_dest;

/* The frames of a MSG before its headers; id and recv hold the numbers. */
static size_t rt_msg_head(const rt_dest *d, const mq_msg *m, char id[24], char recv[16],
                          mqi_zpart *p) {
  size_t k = 0;
  snprintf(id, 24, "%" PRId64, mq_msg_id(m));
  snprintf(recv, 16, "%d", mq_msg_receives(m));
  if (d->delim) p[k++] = (mqi_zpart){"", 0};
  p[k++] = (mqi_zpart){RT_TAG, 3};
  p[k++] = rt_p("MSG");
  p[k++] = rt_p(d->queue);
  p[k++] = rt_p(id);
  p[k++] = rt_p(mq_msg_receipt(m));
  p[k++] = rt_p(recv);
  p[k++] = (mqi_zpart){mq_msg_data(m), mq_msg_size(m)};
  return k;
}

/* A frame's bytes on the wire, as mqi_zconn_send counts them. */
static size_t rt_wire(size_t len) { return (len <= 255 ? 2 : 9) + len; }

/* What the MSG of m adds to the connection's output, to the byte. */
static size_t rt_msg_cost(const mq_msg *m, const void *ctx) {
  mqi_zpart p[RT_MSG_HEAD];
  char id[24], recv[16];
  size_t n = rt_msg_head(ctx, m, id, recv, p), bytes = 0;
  for (size_t i = 0; i < n; i++) bytes += rt_wire(p[i].len);
  for (size_t i = 0; i < mq_msg_header_count(m); i++)
    bytes += rt_wire(strlen(mq_msg_header_name(m, i))) + rt_wire(strlen(mq_msg_header_value(m, i)));
  return bytes;
}

static int rt_send_msg(mq_server *s, mqi_srv_conn *sc, int delim, const char *queue,
                       const mq_msg *m) {
  mqi_zpart stack[RT_MSG_STACK], *p = stack;
  char id[24], recv[16];
  rt_dest d = {queue, delim};
  size_t nh = mq_msg_header_count(m);
  if (mqi_zconn_state(sc->z) != MQI_ZC_ACTIVE) return -1;
  if (nh > RT_HEADERS_MAX) {
    p = malloc((RT_MSG_HEAD + 2 * nh) * sizeof *p);
    if (!p) {
      mqi_zconn_close(sc->z, "out of memory");
      return -1;
    }
  }
  size_t k = rt_msg_head(&d, m, id, recv, p);
  for (size_t i = 0; i < nh; i++) {
    p[k++] = rt_p(mq_msg_header_name(m, i));
    p[k++] = rt_p(mq_msg_header_value(m, i));
  }
  int rc = mqi_server_send(s, sc, p, k);
  if (p != stack) free(p);
  if (rc != MQI_ZMTP_OK) return -1;
  MQI_SRV_COUNT(s->eps[sc->ep].count.out, 1);
  MQI_SRV_COUNT(s->eps[sc->ep].count.bytes_out, mq_msg_size(m));
  return 0;
}

/* Whether a delivery whose MSG needs `need` bytes (0: not known) may be
** tried on sc now (see rt_lease).  When not, output is pending, and the
** connection's POLLOUT brings the turn in which it may. */
static int rt_fits(const mq_server *s, mqi_srv_conn *sc, size_t need) {
  size_t pending = mqi_zconn_pending(sc->z), half = s->out_limit / 2;
  return pending == 0 || (pending < half && need <= s->out_limit - pending);
}

/* Whether some delivery of sc waits for more room than there is.  It then
** holds back the others of the connection, which would otherwise take that
** room as it frees, turn after turn, and starve a large message behind
** small ones. */
static int rt_held(const mq_server *s, mqi_srv_conn *sc) {
  const mqi_rt_conn *rc = sc->rt;
  for (size_t k = 0; k < rc->ngets; k++)
    if (rc->gets[k].need > 0 && !rt_fits(s, sc, rc->gets[k].need)) return 1;
  for (size_t k = 0; k < rc->nsubs; k++)
    if (rc->subs[k].need > 0 && !rt_fits(s, sc, rc->subs[k].need)) return 1;
  return 0;
}

/* Whether a delivery that needs `need` bytes (0: not known) may be tried
** on sc now. */
static int rt_may(const mq_server *s, mqi_srv_conn *sc, size_t need) {
  return rt_fits(s, sc, need) && (need > 0 || !rt_held(s, sc));
}

/* Lease up to max messages of queue whose MSGs fit sc's output budget:
** output up to half the limit, except that one message larger than that
** may go on its own -- when it fits under the whole limit, or whatever
** its size when nothing is pending (mqi_zconn_send takes it then).  The
** half kept back is needed only by replies queued earlier in the turn:
** nothing else is sent, and nothing read, until output is below half. */
static int rt_lease(mq_server *s, mqi_srv_conn *sc, const rt_dest *d, int64_t lease_ms, size_t max,
                    mq_msg **msgs, size_t *count, size_t *need) {
  size_t pending = mqi_zconn_pending(sc->z), half = s->out_limit / 2;
  size_t budget = pending < half ? half - pending : 0;
  size_t first = pending == 0 ? SIZE_MAX : pending < half ? s->out_limit - pending : 0;
  return mqi_get_batch_fit(s->store, d->queue, lease_ms, max, rt_msg_cost, d, budget, first, msgs,
                           count, need);
}

/* Serve sc's waiting GETs: all of them when poll is set, else only those
** that were waiting for output space (they go as soon as it is there). */
static void rt_serve_gets(mq_server *s, mqi_srv_conn *sc, int64_t now, int poll) {
  mqi_rt_conn *rc = sc->rt;
  for (size_t i = 0; i < rc->ngets;) {
    rt_get *g = &rc->gets[i];
    mq_msg *m = NULL;
    size_t n = 0;
    rt_dest d = {g->queue, g->delim};
    if (!(poll || g->need > 0) || !rt_may(s, sc, g->need)) {
      i++;
      continue;
    }
    int r = rt_lease(s, sc, &d, g->lease_ms, 1, &m, &n, &g->need);
    /* A message that does not fit yet is not "nothing": the GET waits for
    ** output space past its deadline. */
    if (r == MQ_EMPTY && (g->need > 0 || now < g->deadline)) {
      i++;
      continue;
    }
    if (r == MQ_OK) {
      if (rt_send_msg(s, sc, g->delim, g->queue, m) != 0)
        mq_nack(s->store, g->queue, mq_msg_receipt(m), 0, NULL);
      mq_msg_free(m);
    } else if (r == MQ_EMPTY) {
      mqi_zpart p[2] = {rt_p("EMPTY"), rt_p(g->queue)};
      rt_reply(s, sc, g->delim, p, 2);
    } else {
      char code[8];
      snprintf(code, sizeof code, "%d", rt_status(r));
      rt_err(s, sc, g->delim, code, mq_errmsg(s->store));
    }
    rc->gets[i] = rc->gets[--rc->ngets];
  }
}

static void rt_serve_subs(mq_server *s, mqi_srv_conn *sc, int64_t now, int64_t mono) {
  mqi_rt_conn *rc = sc->rt;
  /* Leases that ended make room; a stopped stream goes with its last. */
  for (size_t i = 0; i < rc->nsubs;) {
    rt_sub *sub = &rc->subs[i];
    for (size_t k = 0; k < sub->nfl;)
      if (sub->fl[k].until <= now)
        sub->fl[k] = sub->fl[--sub->nfl];
      else
        k++;
    if (sub->window == 0 && sub->nfl == 0)
      rt_sub_drop(rc, sub);
    else
      i++;
  }
  size_t first = rc->nsubs ? rc->next_sub++ % rc->nsubs : 0;
  for (size_t j = 0; j < rc->nsubs; j++) {
    rt_sub *sub = &rc->subs[(first + j) % rc->nsubs];
    if (sub->nfl >= sub->window || mono < sub->empty_until) continue;
    if (!rt_may(s, sc, sub->need)) continue;
    size_t want = sub->window - sub->nfl;
    if (want > RT_DELIVER_MAX) want = RT_DELIVER_MAX;
    if (sub->flcap < sub->window) {
      size_t cap = sub->window < 16 ? 16 : sub->window;
      rt_flight *f = realloc(sub->fl, cap * sizeof *f);
      if (!f) continue;
      sub->fl = f;
      sub->flcap = cap;
    }
    mq_msg *msgs[RT_DELIVER_MAX];
    size_t count = 0;
    rt_dest d = {sub->queue, sub->delim};
    int r = rt_lease(s, sc, &d, sub->lease_ms, want, msgs, &count, &sub->need);
    if (r == MQ_EMPTY) {
      if (sub->need == 0) sub->empty_until = mono + RT_POLL_MS;
      continue;
    }
    if (r != MQ_OK) {
      char code[8];
      snprintf(code, sizeof code, "%d", rt_status(r));
      rt_err(s, sc, sub->delim, code, mq_errmsg(s->store));
      sub->empty_until = mono + 1000;
      continue;
    }
    for (size_t k = 0; k < count; k++) {
      if (rt_send_msg(s, sc, sub->delim, sub->queue, msgs[k]) == 0 && sub->nfl < sub->flcap) {
        rt_flight *f = &sub->fl[sub->nfl++];
        snprintf(f->receipt, sizeof f->receipt, "%s", mq_msg_receipt(msgs[k]));
        /* Our count of the lease: the message's own visible_at is on the
        ** store clock, which need not be ours. */
        int64_t lease = mq_msg_visible_at(msgs[k]) - mq_store_now(s->store);
        f->until = mqi_time_add(now, lease > 0 ? lease : 0);
      } else {
        mq_nack(s->store, sub->queue, mq_msg_receipt(msgs[k]), 0, NULL);
      }
      mq_msg_free(msgs[k]);
    }
  }
}

void mqi_router_work(mq_server *s) {
  mqi_rt_state *st = s->rt;
  rt_commit_puts(s);
  rt_commit_settles(s);
  int64_t mono = rt_mono(), now = mqi_server_now(s);
  int poll_gets = mono >= st->poll_at;
  int waiting = 0;
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_srv_conn *sc = s->conns[i];
    if (!sc->rt || mqi_zconn_state(sc->z) != MQI_ZC_ACTIVE) continue;
    if (sc->rt->ngets) rt_serve_gets(s, sc, now, poll_gets);
    if (sc->rt->ngets) waiting = 1;
    if (sc->rt->nsubs) rt_serve_subs(s, sc, now, mono);
  }
  if (poll_gets) st->poll_at = waiting ? mono + RT_POLL_MS : INT64_MAX;
}

int64_t mqi_router_wake(mq_server *s) {
  mqi_rt_state *st = s->rt;
  int64_t w = INT64_MAX, mono = rt_mono(), now = mqi_server_now(s);
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_srv_conn *sc = s->conns[i];
    if (!sc->rt || mqi_zconn_state(sc->z) != MQI_ZC_ACTIVE) continue;
    mqi_rt_conn *rc = sc->rt;
    /* What waits for output space is woken by the connection's POLLOUT. */
    int held = rt_held(s, sc);
    for (size_t k = 0; k < rc->ngets; k++) {
      if (!rt_fits(s, sc, rc->gets[k].need) || (held && rc->gets[k].need == 0)) continue;
      if (rc->gets[k].need > 0) return mono; /* there is room for it now */
      int64_t d = rt_mono_of(rc->gets[k].deadline, now, mono);
      if (st->poll_at < d) d = st->poll_at;
      if (d < w) w = d;
    }
    for (size_t k = 0; k < rc->nsubs; k++) {
      rt_sub *sub = &rc->subs[k];
      if (sub->nfl < sub->window) {
        int may = rt_fits(s, sc, sub->need) && (sub->need > 0 || !held);
        if (may && sub->empty_until < w) w = sub->empty_until;
      } else {
        /* Full (or stopped): room comes when a lease ends. */
        for (size_t f = 0; f < sub->nfl; f++) {
          int64_t d = rt_mono_of(sub->fl[f].until, now, mono);
          if (d < w) w = d;
        }
      }
    }
  }
  return w;
}

void mqi_router_kick(mq_server *s, const char *queue) {
  if (!s->rt) return;
  s->rt->poll_at = 0;
  for (size_t i = 0; i < s->nconns; i++) {
    mqi_rt_conn *rc = s->conns[i]->rt;
    if (!rc) continue;
    rt_sub *sub = rt_find_sub(rc, queue);
    if (sub) sub->empty_until = 0;
  }
}
/*** end src/zmtp_router.c ***/
