/*
** mq.h -- the public interface of mq, an embeddable durable message queue.
**
** mq keeps queues in one SQLite database file in WAL mode.  A producer puts
** a message; a consumer gets it, which hides it for a visibility timeout (a
** lease) and hands back a receipt; the consumer acks with the receipt to
** delete it, or the lease runs out and the message is delivered again.
** Delivery is at-least-once.  Several threads and several processes may use
** one file at the same time.
**
** This header is the whole public API and its reference.  Every function
** states who owns what, what it does on failure and whether it is safe to
** call from several threads.
**
** Conventions that hold for every function below:
**   - Fallible functions return an int: MQ_OK (0) or one of the MQ_E* codes.
**     Codes never change meaning once released.  mq_errstr(rc) describes a
**     code; mq_errmsg(store) gives detail about the calling thread's last
**     failure on that store.
**   - On failure, output pointers are set to NULL (or 0) and nothing in the
**     file has changed -- except MQ_EUNKNOWN, which says the outcome is not
**     known (see below).
**   - Inputs are copied; the caller may reuse its buffers once a call returns.
**   - Memory the library returns is freed with the library's own free call.
**   - Destructors (mq_store_close, mq_msg_free, mq_list_free) accept NULL.
**   - Times are milliseconds.  A store's notion of "now" comes from its clock
**     (mq_store_options.clock); leases, delays and expiry use only that clock.
**   - The library never prints, aborts or exits.  Diagnostics go to the
**     optional log callback.
**   - Names of queues, topics and subscriptions are 1..MQ_NAME_MAX bytes of
**     printable ASCII without spaces or '/'.  A subscription is addressed as
**     "topic/subscription" wherever a queue name is taken (get, ack, nack,
**     touch, peek, stats, purge, redrive, scan): it behaves as a queue.
**     Payloads are opaque bytes; zero bytes is a valid payload.
**
** No name here collides with POSIX <mqueue.h> (mq_open, mq_close, mq_send,
** mq_receive, ...): a program may include both and link with -lrt.
*/
#ifndef MQ_H
#define MQ_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MQ_BUILDING_SHARED) && defined(__GNUC__)
#define MQ_API __attribute__((visibility("default")))
#else
#define MQ_API
#endif

/* Library version: compile-time macros and the run-time call. */
#define MQ_VERSION "0.2.1"
#define MQ_VERSION_NUMBER 2001 /* major*1000000 + minor*1000 + patch */

/* The version string of the library actually linked, e.g. "0.2.0". */
MQ_API const char *mq_libversion(void);
/* The version of SQLite the library runs on, e.g. "3.40.1". */
MQ_API const char *mq_sqlite_version(void);

/* ------------------------------------------------------------------------
** Result codes
*/
#define MQ_OK 0        /* success */
#define MQ_ERROR 1     /* internal error not covered below */
#define MQ_EINVAL 2    /* bad argument: NULL, empty/long name, bad option */
#define MQ_ENOMEM 3    /* out of memory; nothing changed */
#define MQ_ENOTFOUND 4 /* no such queue */
#define MQ_EEXIST 5    /* a queue with that name exists (with other options) */
#define MQ_EMPTY 6     /* no message available (not a failure of the store) */
#define MQ_ESTALE 7    /* the receipt's lease is over: the message was acked,
                          expired, or delivered again; nothing changed */
#define MQ_ETOOBIG 8   /* payload above the queue's max_payload */
#define MQ_EFULL 9     /* disk or quota full: the put was refused */
#define MQ_EUNKNOWN 10 /* an I/O error during commit: the change may or may
                          not be durable.  Retry with a dedup key. */
#define MQ_ECORRUPT 11 /* the file, or one message's payload, is damaged */
#define MQ_ENOTMQ 12   /* the file is not an mq store */
#define MQ_EVERSION 13 /* the file was written by a newer mq format */
#define MQ_EBUSY 14    /* the file stayed locked longer than busy_timeout */
#define MQ_EIO 15      /* an I/O error; nothing changed */
#define MQ_ECANTOPEN 16 /* cannot open or create the file (permissions,
                           missing directory, symlink refused) */
#define MQ_EMISUSE 17  /* API misuse detected, e.g. a store used after fork() */
#define MQ_EREADONLY 18 /* the store was opened read-only */
#define MQ_EPROTO 19   /* a network peer broke the protocol */
#define MQ_ENET 20     /* a network error: bind, connect, resolve */

/* Static English text for a result code; never NULL.  Thread-safe. */
MQ_API const char *mq_errstr(int rc);

/* ------------------------------------------------------------------------
** The store: one queue file.
*/
typedef struct mq_store mq_store;

/* Sync modes (mq_store_options.sync). */
#define MQ_SYNC_FULL 0   /* default: a put or ack that returned MQ_OK survives
                            power loss (fsync per commit, shared by concurrent
                            callers: group commit) */
#define MQ_SYNC_NORMAL 1 /* survives a process crash; the last commits may be
                            lost on power loss or OS crash */
#define MQ_SYNC_OFF 2    /* commits are never fsynced: survives a process
                            crash only while the OS keeps running.  (In WAL
                            mode NORMAL does not fsync commits either, so OFF
                            behaves as NORMAL; checkpoints always fsync, so
                            an OFF handle never weakens another handle's
                            FULL promise on the same file.) */

/* Flags (mq_store_options.flags). */
#define MQ_OPEN_CREATE 0x1   /* create the file if missing (default on) */
#define MQ_OPEN_READONLY 0x2 /* read-only: peek, stats, list only */

/* Log levels passed to mq_store_options.log. */
#define MQ_LOG_ERROR 0
#define MQ_LOG_WARN 1
#define MQ_LOG_INFO 2

/* A clock returns "now" in milliseconds.  It must not go backwards within
** one run if leases are to behave; tests inject their own to move time by
** hand.  It is called with the store's internal lock held: it must not call
** back into mq.
**
** Without one, a store uses its own clock: the time since boot (suspend
** included) plus an offset fixed once per boot and kept in the file, so all
** processes agree on it and it starts near the wall-clock time.  Stepping
** the wall clock (NTP, a user, a device without RTC) does not move it, so
** leases and delays last what they say.  In a new boot, time continues
** from the later of the wall clock and the newest message's enqueue time
** (it never runs backwards), and leases taken before the reboot end at
** once: their consumers did not survive it. */
typedef int64_t (*mq_clock_fn)(void *ctx);

/* A log callback receives a level and a NUL-terminated message.  It may be
** called from any thread that uses the store, and must not call back into
** mq. */
typedef void (*mq_log_fn)(void *ctx, int level, const char *msg);

/* The page sizes SQLite supports (mq_store_options.page_size). */
#define MQ_PAGE_SIZE_MIN 512
#define MQ_PAGE_SIZE_MAX 65536

typedef struct mq_store_options {
  size_t size;           /* sizeof(mq_store_options): set by init */
  int sync;              /* MQ_SYNC_FULL (default), _NORMAL or _OFF */
  int flags;             /* MQ_OPEN_CREATE (default) | MQ_OPEN_READONLY */
  unsigned mode;         /* permission bits for a new file: 0600 default;
                            0660 lets a group share the queue.  The umask
                            does not apply. */
  int busy_timeout_ms;   /* how long to wait for a lock held by another
                            process before MQ_EBUSY; default 10000 */
  mq_clock_fn clock;     /* NULL: the store clock (see below) */
  void *clock_ctx;
  mq_log_fn log;         /* NULL: no diagnostics */
  void *log_ctx;
  int64_t min_free_bytes; /* puts are refused with MQ_EFULL while the file
                             system has less free space than this, so acks
                             and checkpoints still have room.  Default
                             16 MiB; 0 disables the check. */
  int page_size;         /* SQLite page size of a new file, in bytes: a
                            power of two from MQ_PAGE_SIZE_MIN to
                            MQ_PAGE_SIZE_MAX; 0 (the default)
                            is SQLite's 4096.  Like mode, it applies only
                            to a file that has no SQLite content yet (new
                            or empty): any other file, including one that
                            another process created first, keeps its own
                            (logged at MQ_LOG_INFO).  Larger pages make bulk
                            ingest of large messages faster and every small
                            transaction slower, since each commit writes
                            whole pages (bench/README.md has the figures);
                            keep the default unless the file is mostly fed
                            in big batches. */
} mq_store_options;

/* Fill *opts with the defaults.  Always call this before setting fields, so
** that fields added in later versions get their defaults. */
MQ_API void mq_store_options_init(mq_store_options *opts);

/*
** Open (and by default create) the store at path.  opts may be NULL for
** the defaults.  On success *out is a new handle, owned by the caller and
** released with mq_store_close.
**
** A new file is created with opts->mode regardless of the umask, and so are
** its -wal and -shm companions.  A path that is a symbolic link is refused
** (MQ_ECANTOPEN).  A file that is not an mq store gives MQ_ENOTMQ; one
** written by a newer format gives MQ_EVERSION.  A read-write open of a file
** of an older format upgrades it in place first, in one transaction (which
** waits for the write lock like any write: MQ_EBUSY after busy_timeout_ms),
** after which libraries that read only the older format refuse it; a
** read-only open never changes it (doc/format.md).  A handle whose file a
** newer library upgrades while it is open gets MQ_EVERSION from its next
** put, get, settle or read of messages.
**
** Threads: a handle may be shared by any number of threads; calls on it are
** serialised internally, and concurrent puts and acks share commits.  The
** read calls (stats, info, lists, peek, scan, verify) run on a second,
** read-only connection of the handle, opened on first use (by the file's
** absolute name; if another file has taken that name since, they read on
** the handle's own connection instead): they take one after the other,
** but never wait for the handle's commits nor make them wait, however
** many messages they read; one made inside a scan or verify callback of
** the same handle returns MQ_EMISUSE.  A handle must not be used in a
** child after fork(): calls there return MQ_EMISUSE.  Any number of
** processes may open the same file.
*/
MQ_API int mq_store_open(const char *path, const mq_store_options *opts,
                         mq_store **out);

/* Close the handle and free everything it owns.  Messages obtained from it
** (mq_msg) stay valid and must still be freed.  No other thread may be
** using the handle.  Returns MQ_OK, or MQ_EBUSY if the final checkpoint
** could not run (the data is safe in the WAL either way).  NULL is a no-op.
** In a child process after fork() it frees the handle's memory without
** touching the file (an SQLite connection must not be used across fork)
** and returns MQ_EMISUSE. */
MQ_API int mq_store_close(mq_store *store);

/* Detail about the calling thread's last failed call on store: the file,
** the queue, the OS or SQLite error.  The text stays valid until the
** calling thread's next call on any store.  Never NULL; "" when there is
** nothing to say.  store may be NULL (for a failed mq_store_open). */
MQ_API const char *mq_errmsg(const mq_store *store);

/* The store's time now, in ms: the clock that leases, delays, expiry and
** mq_msg_enqueued_at/visible_at/expires_at use (the injected clock if
** one was given).  Thread-safe; never fails on a valid handle (0 on NULL). */
MQ_API int64_t mq_store_now(mq_store *store);

/* Run a checkpoint now: copy the WAL into the main file and restart the
** WAL, so that it stays short.  mq already does this in the background of
** ordinary calls; call it before a backup or when idle.  MQ_EBUSY if
** readers kept the WAL from being restarted; nothing is lost then.  It
** waits for a read call of this handle in progress in another thread;
** called from a scan or verify callback of this handle it returns
** MQ_EMISUSE. */
MQ_API int mq_store_checkpoint(mq_store *store);

/* The store as a whole (mq_store_info_get). */
typedef struct mq_store_info {
  int format_version;    /* the file's format (PRAGMA user_version) */
  char created_by[64];   /* the library that created it, e.g. "mq 0.2.0"
                            (as the file says: at most 63 bytes kept) */
  int page_size;         /* bytes per SQLite page (mq_store_options.page_size) */
  int64_t file_bytes;    /* the database's pages, in bytes, as of the last
                            commit (pages still only in the WAL included) */
  int64_t free_bytes;    /* of those, pages free for reuse: room that acks
                            left inside the file, reused by later puts;
                            only VACUUM gives it back (doc/durability.md) */
  int64_t wal_bytes;     /* the -wal file's size now, 0 if there is none */
  int64_t queues;        /* how many queues, topics and subscriptions */
  int64_t topics;
  int64_t subscriptions;
} mq_store_info;

/* Facts about the file: format, page size, sizes, and how many queues,
** topics and subscriptions it holds.  Reads only, on the handle's read
** connection (see mq_store_open, Threads); the cost does not grow with the
** number of messages.  MQ_EINVAL if out is NULL; *out is zeroed on any
** failure. */
MQ_API int mq_store_info_get(mq_store *store, mq_store_info *out);

/* ------------------------------------------------------------------------
** Queues
*/
#define MQ_NAME_MAX 200     /* longest queue name, in bytes */
#define MQ_SUBJECT_MAX 1024 /* longest subject or filter (topics), in bytes */

typedef struct mq_queue_options {
  size_t size;              /* sizeof(mq_queue_options): set by init */
  int64_t visibility_ms;    /* default lease length, >= 1; default 30000 */
  int max_receives;         /* deliveries before a message is dead-lettered;
                               0 (default) = unlimited */
  const char *dlq;          /* queue that receives dead letters; NULL keeps
                               them in this queue in the "dead" state, where
                               only mq_redrive and mq_queue_purge reach them.
                               It must exist and must not be this queue.
                               Dead letters arrive with their receive count,
                               so the dlq's max_receives must be 0 or more
                               than this queue's (else MQ_EINVAL).  A dead
                               letter is kept by the retention of the queue
                               that keeps it (the dlq, or this queue without
                               one), counted from when it died, or for good
                               if that is 0; its TTL no longer applies. */
  int64_t retention_ms;     /* messages older than this are deleted unread;
                               default 0 = kept until acked */
  size_t max_payload;       /* largest payload accepted; default 1 MiB;
                               at most MQ_PAYLOAD_LIMIT */
  size_t compress_above;    /* payloads larger than this are stored zlib-
                               compressed (when that saves space);
                               default 0 = never */
  int64_t dedup_window_ms;  /* how long a dedup key is remembered after the
                               put; default 300000 (5 minutes) */
} mq_queue_options;

#define MQ_PAYLOAD_LIMIT ((size_t)256 * 1024 * 1024)

/* Fill *opts with the defaults.  Call before setting fields. */
MQ_API void mq_queue_options_init(mq_queue_options *opts);

/* Create a queue.  opts may be NULL for the defaults.  Creating a queue
** that already exists with the same options is MQ_OK; with different
** options it is MQ_EEXIST and changes nothing.  Durable on return. */
MQ_API int mq_queue_create(mq_store *store, const char *name,
                           const mq_queue_options *opts);

/* Delete a queue and every message in it.  MQ_ENOTFOUND if there is none;
** MQ_EINVAL if it is the dlq of another queue (drop that one first). */
MQ_API int mq_queue_drop(mq_store *store, const char *name);

/* Delete every message of a queue (ready, in flight, delayed and dead);
** the queue stays.  *deleted (may be NULL) receives the count.  Dedup keys
** are kept: a key says its message was accepted, and a put that repeats it
** within the dedup window still stores nothing and returns the purged
** message's id.  mq_queue_drop forgets them. */
MQ_API int mq_queue_purge(mq_store *store, const char *name, int64_t *deleted);

/* List the queue names, sorted.  On success *names is an array of *count
** NUL-terminated strings, owned by the caller, freed with mq_list_free. */
MQ_API int mq_queue_list(mq_store *store, char ***names, size_t *count);
MQ_API void mq_list_free(char **names, size_t count);

typedef struct mq_queue_stats {
  int64_t ready;          /* visible now, waiting for a consumer */
  int64_t inflight;       /* leased to a consumer */
  int64_t delayed;        /* put with a delay or nacked with one */
  int64_t dead;           /* exceeded max_receives, kept here (no dlq);
                             also a message whose last allowed lease ran
                             out, which the next get dead-letters (to the
                             dlq, if there is one) instead of delivering */
  int64_t total;          /* all of the above */
  int64_t oldest_age_ms;  /* age of the oldest message, 0 if none */
  int64_t bytes;          /* payload bytes as given by producers */
} mq_queue_stats;

/* What a name is (mq_queue_info.kind). */
#define MQ_KIND_QUEUE 0
#define MQ_KIND_TOPIC 1
#define MQ_KIND_SUBSCRIPTION 2

typedef struct mq_queue_info {
  int kind;                   /* MQ_KIND_* */
  int64_t visibility_ms;
  int max_receives;
  char dlq[MQ_NAME_MAX + 1];  /* "" when none */
  int64_t retention_ms;
  size_t max_payload;
  size_t compress_above;
  int64_t dedup_window_ms;
  char filter[MQ_SUBJECT_MAX + 1]; /* subscriptions: the filter, "" = all */
  int64_t created_at;         /* store clock, ms */
} mq_queue_info;

/* The options a queue, topic or subscription ("topic/sub") was created
** with.  Reads only.  MQ_ENOTFOUND if there is no such name. */
MQ_API int mq_queue_info_get(mq_store *store, const char *name,
                             mq_queue_info *out);

/* Counts for one queue as of now on the store's clock.  Reads only; the
** cost grows with the number of messages in the queue, but puts and gets
** on this handle go on meanwhile (see mq_store_open, Threads). */
MQ_API int mq_queue_stats_get(mq_store *store, const char *name,
                              mq_queue_stats *out);

/* ------------------------------------------------------------------------
** Putting messages
*/
typedef struct mq_header {
  const char *name;   /* NUL-terminated, 1..255 bytes */
  const char *value;  /* NUL-terminated, may be "" */
} mq_header;

typedef struct mq_put_options {
  size_t size;          /* sizeof(mq_put_options): set by init */
  int64_t delay_ms;     /* invisible for this long after the put; default 0 */
  int priority;         /* higher is served first; default 0; FIFO within a
                           priority */
  int64_t ttl_ms;       /* deleted unread after this long; 0 = no limit
                           (the queue's retention still applies) */
  const char *dedup_key; /* NULL or 1..MQ_NAME_MAX bytes: a second put with
                           the same key within the queue's dedup window
                           stores nothing and returns the first id */
  const mq_header *headers; /* n_headers name/value pairs stored with the
                               message; copied */
  size_t n_headers;
} mq_put_options;

MQ_API void mq_put_options_init(mq_put_options *opts);

/*
** Put one message.  data may be NULL only when len is 0.  opts may be NULL.
** On MQ_OK *id (may be NULL) receives the message id, and the message is
** durable to the degree of the store's sync mode.  MQ_ETOOBIG for a payload
** over the queue's max_payload, MQ_EFULL when the disk or the free-space
** floor refuses it, MQ_EUNKNOWN if the commit hit an I/O error (the message
** may exist: retry with the same dedup key).
** Threads: concurrent puts on one handle share a commit (and its fsync).
*/
MQ_API int mq_put(mq_store *store, const char *queue, const void *data,
                  size_t len, const mq_put_options *opts, int64_t *id);

typedef struct mq_entry {
  const void *data;
  size_t len;
  const mq_put_options *opts; /* may be NULL */
} mq_entry;

/* Put n messages in one transaction: all are stored or none.  ids (may be
** NULL) must have room for n ids.  A bad entry fails the whole batch with
** the error of that entry; mq_errmsg names its index. */
MQ_API int mq_put_batch(mq_store *store, const char *queue,
                        const mq_entry *entries, size_t n, int64_t *ids);

/* ------------------------------------------------------------------------
** Getting messages
*/
typedef struct mq_msg mq_msg;

typedef struct mq_get_options {
  size_t size;          /* sizeof(mq_get_options): set by init */
  int64_t visibility_ms; /* lease length; 0 (default) = the queue's */
  int64_t wait_ms;      /* if no message is ready, wait up to this long
                           (real time) for one; 0 = return MQ_EMPTY at once */
} mq_get_options;

MQ_API void mq_get_options_init(mq_get_options *opts);

/*
** Lease the next ready message (highest priority, then oldest).  opts may
** be NULL.  On MQ_OK *out is a message owned by the caller (mq_msg_free);
** the message is hidden from other consumers until the lease ends.
** MQ_EMPTY when nothing is ready (after waiting wait_ms).  A waiting get is
** woken at once by a put through any handle of this process, and within a
** few milliseconds by a put from another process; it never spins.
** A message whose stored payload fails its CRC32 check is not returned: it
** is dead-lettered with reason "corrupt payload" and the get moves on; the
** log callback reports it.
** Leases are committed without an fsync even under MQ_SYNC_FULL: losing one
** in a power cut only causes a redelivery.
*/
MQ_API int mq_get(mq_store *store, const char *queue,
                  const mq_get_options *opts, mq_msg **out);

/* Lease up to max messages at once.  msgs must have room for max pointers;
** *count receives how many were leased (>= 1 on MQ_OK).  MQ_EMPTY when none
** (after waiting); free each message with mq_msg_free. */
MQ_API int mq_get_batch(mq_store *store, const char *queue,
                        const mq_get_options *opts, size_t max, mq_msg **msgs,
                        size_t *count);

/* Read up to max ready messages without leasing them (no receipt, receive
** count unchanged): those a get would deliver, so not one that has used up
** max_receives (the get dead-letters it).  Same ownership as mq_get_batch;
** *count may be 0. */
MQ_API int mq_peek(mq_store *store, const char *queue, size_t max,
                   mq_msg **msgs, size_t *count);

/* A received message.  Accessors never fail on a non-NULL msg; the memory
** they return belongs to msg and is valid until mq_msg_free(msg). */
MQ_API int64_t mq_msg_id(const mq_msg *msg);
MQ_API const void *mq_msg_data(const mq_msg *msg); /* never NULL */
MQ_API size_t mq_msg_size(const mq_msg *msg);
/* The receipt ("" for a peeked message): pass it to ack, nack, touch. */
MQ_API const char *mq_msg_receipt(const mq_msg *msg);
MQ_API int mq_msg_receives(const mq_msg *msg);     /* this delivery's count */
MQ_API int64_t mq_msg_enqueued_at(const mq_msg *msg); /* store clock, ms */
MQ_API int mq_msg_priority(const mq_msg *msg);
/* The value of header name, or NULL if the message has none of that name. */
MQ_API const char *mq_msg_header(const mq_msg *msg, const char *name);
/* Header i (0-based) of mq_msg_header_count; NULL past the end. */
MQ_API size_t mq_msg_header_count(const mq_msg *msg);
MQ_API const char *mq_msg_header_name(const mq_msg *msg, size_t i);
MQ_API const char *mq_msg_header_value(const mq_msg *msg, size_t i);
/* For a message delivered through a topic subscription, the id mq_publish
** returned for it (the same in every subscription); for a plain put, the
** message id. */
MQ_API int64_t mq_msg_publish_id(const mq_msg *msg);
/* The subject the message was published with, or NULL (plain puts). */
MQ_API const char *mq_msg_subject(const mq_msg *msg);
/* The reason given by the last nack, or NULL. */
MQ_API const char *mq_msg_reason(const mq_msg *msg);
/* When the message becomes visible (again): for a received message, the
** end of its lease; store clock, ms. */
MQ_API int64_t mq_msg_visible_at(const mq_msg *msg);
/* When the message expires unread (its TTL or the queue's retention), or
** 0 if it never does; store clock, ms. */
MQ_API int64_t mq_msg_expires_at(const mq_msg *msg);
MQ_API void mq_msg_free(mq_msg *msg);

#define MQ_RECEIPT_MAX 64 /* a receipt is at most this many bytes + NUL */

/* Message states reported by mq_queue_scan. */
#define MQ_STATE_READY 0    /* visible now */
#define MQ_STATE_INFLIGHT 1 /* leased to a consumer */
#define MQ_STATE_DELAYED 2  /* hidden until mq_msg_visible_at */
#define MQ_STATE_DEAD 3     /* exceeded max_receives, kept without a dlq,
                               or bound for the dlq at the next get */

/* Called once per message by mq_queue_scan.  msg (and everything its
** accessors return) is valid only during the call; it has no receipt and
** mq_msg_receives is the number of deliveries so far.  Return 0 to go on,
** anything else to stop the scan (mq_queue_scan then returns MQ_OK). */
typedef int (*mq_scan_fn)(void *ctx, const mq_msg *msg, int state);

/*
** Visit every message of a queue, in any state, in id order, without
** changing anything (for backups, exports and inspection).  Messages whose
** payload fails its checksum are not passed to fn; *corrupt (may be NULL)
** receives their count.  The scan reads one consistent snapshot; it does
** not block puts, gets or acks of any handle or process, and fn may make
** them, even on this handle (they are not in the snapshot; but MQ_EMISUSE
** when the handle reads on its own connection, see mq_store_open); another
** read call or a checkpoint of this handle from fn returns MQ_EMISUSE.  While a
** scan runs, the WAL cannot be restarted: it grows with what is written
** meanwhile, and is cut back at the next checkpoint after the scan.
*/
MQ_API int mq_queue_scan(mq_store *store, const char *queue, mq_scan_fn fn,
                         void *ctx, int64_t *corrupt);

/* Called by mq_store_verify with one line describing one problem. */
typedef void (*mq_verify_fn)(void *ctx, const char *problem);

/*
** Check the whole store: SQLite's integrity check of the file, the CRC32 of
** every payload, and the library's own invariants (every message has its
** queue and its payload, payload reference counts are right).  Each problem
** found is passed to fn (may be NULL) as one line naming the queue and the
** message where it can; *problems (may be NULL) receives the count.
** Returns MQ_OK if the store is sound, MQ_ECORRUPT if problems were found,
** another code if the check could not run.  Reads only; may take a while
** on a large store.
*/
MQ_API int mq_store_verify(mq_store *store, mq_verify_fn fn, void *ctx,
                           int64_t *problems);

/* ------------------------------------------------------------------------
** Settling messages
*/

/* Delete the message whose lease receipt names.  Durable on MQ_OK.
** MQ_ESTALE (nothing changed) if the message was acked already, expired, or
** was delivered again to someone else after this lease ran out.  An ack after
** the lease ran out but before another delivery still succeeds.  MQ_EINVAL
** for a malformed receipt. */
MQ_API int mq_ack(mq_store *store, const char *queue, const char *receipt);

/* Ack n receipts in one commit.  results (may be NULL) receives each one's
** code (MQ_OK or MQ_ESTALE); the call returns MQ_OK if the commit succeeded,
** even when some receipts were stale. */
MQ_API int mq_ack_batch(mq_store *store, const char *queue,
                        const char *const *receipts, size_t n, int *results);

/* Give the message back: visible again after delay_ms (0 = at once).
** reason (may be NULL, at most 1000 bytes) is kept with the message and
** travels to the dead-letter queue.  If the message has used up
** max_receives it is dead-lettered now.  MQ_ESTALE as for mq_ack. */
MQ_API int mq_nack(mq_store *store, const char *queue, const char *receipt,
                   int64_t delay_ms, const char *reason);

/* Extend (or shorten) the lease: the message stays hidden until
** visibility_ms from now.  MQ_ESTALE if the lease is already over or the
** message expired (its TTL or the queue's retention passed). */
MQ_API int mq_touch(mq_store *store, const char *queue, const char *receipt,
                    int64_t visibility_ms);

/* Move dead letters back to be delivered again, with their receive count
** reset.  For a queue used as a dlq: its messages go back to the queues
** they came from.  For any queue: its own dead messages become ready.
** Each is then kept by the retention of the queue it lands in, counted from
** the redrive, as if put there now; its original TTL does not come back.
** An expired dead letter is gone and is not redriven.
** A dead letter whose queue was dropped stays in the dlq (ready if it was
** dead there); it never goes to a queue created since, as queue ids are
** never reused.  A dead letter a consumer of the dlq holds a live lease on
** stays.
** At most max messages (0 = all); *moved (may be NULL) gets the count. */
MQ_API int mq_redrive(mq_store *store, const char *queue, int64_t max,
                      int64_t *moved);

/* ------------------------------------------------------------------------
** Topics and durable subscriptions
**
** A message published to a topic reaches every subscription that exists at
** that moment and whose filter matches the message's subject.  Each
** subscription then behaves exactly like a queue named "topic/sub": get,
** ack, nack, touch, max_receives and dead letters, retention, blocking get,
** stats.  Several consumers of one subscription share its messages; several
** subscriptions each get every message.  The payload is stored once per
** publish, however many subscriptions receive it, and deleted when the last
** of them has acked it (or it expired there).  A subscription created later
** does not see messages published before it.
**
** Subjects are levels separated by '.' or '/' ("sensors.kitchen.temp",
** "sensors/kitchen/temp" -- the two separators are equivalent).  In a
** filter, '*' or '+' matches exactly one level (which may be empty), '>'
** matches one or more remaining levels and '#' zero or more; '>' and '#'
** must be the last level.  Any other level matches itself literally.  A NULL
** or empty filter matches every message, with or without a subject.
** A subject is at most MQ_SUBJECT_MAX bytes with no control characters and
** no '*', '>' or '#' (no filter could name a level such as "c#" or "a*b"),
** and none of its levels may be a lone "+"; "c++" is plain text.  A
** malformed subject or filter is MQ_EINVAL.  NULL and "" both mean "no
** subject".
*/
/* Create a topic.  opts (may be NULL) gives max_payload, compress_above,
** dedup_window_ms and retention_ms for what is published to it; the other
** fields are unused.  Same rules as mq_queue_create for an existing name;
** a topic cannot share its name with a queue. */
MQ_API int mq_topic_create(mq_store *store, const char *topic,
                           const mq_queue_options *opts);

/* Drop a topic with all its subscriptions and their messages. */
MQ_API int mq_topic_drop(mq_store *store, const char *topic);

/* Topic names, sorted; free with mq_list_free. */
MQ_API int mq_topic_list(mq_store *store, char ***names, size_t *count);

/* Create subscription sub on topic, with an optional subject filter (see
** above; MQ_EINVAL if malformed) and queue options for its messages
** (visibility, max_receives + dlq, retention).  Creating it again with the
** same filter and options is MQ_OK; otherwise MQ_EEXIST. */
MQ_API int mq_subscription_create(mq_store *store, const char *topic,
                                  const char *sub, const char *filter,
                                  const mq_queue_options *opts);

/* Drop a subscription and its pending messages. */
MQ_API int mq_subscription_drop(mq_store *store, const char *topic,
                                const char *sub);

/* The subscription names of a topic (without the "topic/" prefix), sorted;
** free with mq_list_free. */
MQ_API int mq_subscription_list(mq_store *store, const char *topic,
                                char ***names, size_t *count);

/*
** Publish one message to a topic.  subject may be NULL.  opts may be NULL;
** delay_ms, priority, ttl_ms, dedup_key and headers apply as for mq_put (a
** dedup key is per topic).  On MQ_OK *id (may be NULL) receives the
** message's publish id and *delivered (may be NULL) the number of
** subscriptions it reached -- 0 when none matched, in which case nothing
** is stored.  Durable like mq_put.  Concurrent publishes share commits.
*/
MQ_API int mq_publish(mq_store *store, const char *topic, const char *subject,
                      const void *data, size_t len, const mq_put_options *opts,
                      int64_t *id, int64_t *delivered);

/* One entry of mq_publish_batch. */
typedef struct mq_pub_entry {
  const char *subject; /* may be NULL */
  const void *data;
  size_t len;
  const mq_put_options *opts; /* may be NULL */
} mq_pub_entry;

/* Publish n messages in one transaction: all or none.  ids (may be NULL)
** gets each publish id; *delivered (may be NULL) the total deliveries. */
MQ_API int mq_publish_batch(mq_store *store, const char *topic,
                            const mq_pub_entry *entries, size_t n,
                            int64_t *ids, int64_t *delivered);

typedef struct mq_topic_stats {
  int64_t subscriptions;  /* how many subscriptions the topic has */
  int64_t messages;       /* deliveries pending over all subscriptions;
                             expired ones are gone, as in their stats */
  int64_t payloads;       /* distinct payloads stored for them */
  int64_t bytes;          /* their size as published (stored once each) */
} mq_topic_stats;

/* Counts for a topic; per-subscription counts come from
** mq_queue_stats_get("topic/sub").  Reads only. */
MQ_API int mq_topic_stats_get(mq_store *store, const char *topic,
                              mq_topic_stats *out);

/* Does subject match filter (the rules above)?  1 yes, 0 no, -1 if the
** filter is malformed.  Pure; for tests and tools. */
MQ_API int mq_subject_matches(const char *filter, const char *subject);

/* ------------------------------------------------------------------------
** Network endpoints (ZMTP 3.1, the ZeroMQ wire protocol; no libzmq needed)
**
** A server serves queues of one store to ZeroMQ peers over TCP:
**   - PULL ingest: a libzmq PUSH socket connects; each message it sends is
**     put on a queue (a multipart message's frames concatenated, their
**     sizes in the header "zmtp-frames"; see doc/protocol.md).  At-most-once up to our commit:
**     PUSH has no acknowledgement, so what sits in kernel buffers when a
**     connection drops is lost.  Backpressure is TCP's: we stop reading
**     while commits are behind.
**   - PUSH egress: messages leased from a queue go round-robin to the
**     connected libzmq PULL sockets and are acked once written to the
**     socket.  At-most-once on the peer's side.
**   - ROUTER: libzmq DEALER or REQ peers speak the acknowledged request
**     protocol of doc/protocol.md: idempotent puts acknowledged only after
**     the durable commit, and consumption with credit, lease, ack and nack
**     -- at-least-once over the network.
** PULL and PUSH endpoints may also connect out, to a libzmq socket that
** binds (mq_server_pull_connect, mq_server_push_connect), and then
** reconnect by themselves, with backoff, for as long as the server runs.
** Mechanisms: NULL, or PLAIN when credentials are set (checked by a
** callback, or against one user/password pair).  Heartbeats detect dead
** peers; handshakes time out; frame and message sizes are limited before
** anything is allocated.
**
** Compiled in by default; a library built with MQ_WITH_ZMTP=OFF has none of
** the mq_server_* functions.
**
** Threads: a server is driven by one thread at a time through mq_server_run;
** mq_server_stop may be called from any thread or from a signal handler.
** The store handle must outlive the server.
*/
typedef struct mq_server mq_server;

/* Decide whether a PLAIN client may connect: return 1 to accept. */
typedef int (*mq_auth_fn)(void *ctx, const char *user, const char *password,
                          const char *peer_address);

typedef struct mq_server_options {
  size_t size;                 /* sizeof(mq_server_options): set by init */
  const char *plain_user;      /* PLAIN with one user/password pair; NULL:
                                  NULL mechanism (unless auth is set).
                                  Connecting endpoints log in with it. */
  const char *plain_password;
  mq_auth_fn auth;             /* PLAIN with a callback (takes precedence) */
  void *auth_ctx;
  int64_t heartbeat_ms;        /* PING when idle this long; default 5000;
                                  0 = no heartbeats */
  int64_t heartbeat_timeout_ms; /* drop a peer silent this long after a
                                   PING; default 15000 */
  int64_t handshake_timeout_ms; /* default 10000 */
  size_t max_frame;            /* largest frame accepted; default 16 MiB */
  size_t max_message;          /* largest multipart message; default 16 MiB */
  int max_connections;         /* per server; default 1024 */
  int max_handshakes;          /* connections not yet authenticated;
                                  default 64 */
  size_t credit;               /* PUSH egress and ROUTER consumers: most
                                  messages in flight per peer; default 1000 */
  /* Connecting endpoints (mq_server_pull_connect, mq_server_push_connect):
  ** after a failed or lost connection the next attempt waits a random time
  ** in [0, min(reconnect_max_ms, reconnect_ms * 2^failures)] ("full
  ** jitter"); a connection that stayed up 10 s resets the count. */
  int64_t reconnect_ms;        /* default 100; at least 1 */
  int64_t reconnect_max_ms;    /* default 30000; at least reconnect_ms */
  int64_t connect_timeout_ms;  /* a TCP connect taking longer fails;
                                  default 10000; 0 = the kernel's */
} mq_server_options;

MQ_API void mq_server_options_init(mq_server_options *opts);

/* Create a server for store; opts may be NULL.  Free with mq_server_free. */
MQ_API int mq_server_new(mq_store *store, const mq_server_options *opts,
                         mq_server **out);

/* Listen on endpoint ("tcp://HOST:PORT", HOST an IPv4 or IPv6 address in
** brackets, or "*"; PORT 0 picks a free port) and serve queue as a PULL
** ingest, a PUSH egress, or (queue NULL) the ROUTER protocol.  The queue
** must exist.  The socket is bound when this returns MQ_OK. */
MQ_API int mq_server_pull(mq_server *server, const char *queue, const char *endpoint);
MQ_API int mq_server_push(mq_server *server, const char *queue, const char *endpoint);
MQ_API int mq_server_router(mq_server *server, const char *endpoint);

/* Connect out instead of listening: serve queue to a libzmq socket that
** binds endpoint ("tcp://HOST:PORT", HOST an IPv4 address, an IPv6
** address in brackets, or "localhost"; not "*", and PORT not 0).
** mq_server_pull_connect connects as PULL to a PUSH socket and puts what
** it sends on queue, like mq_server_pull; mq_server_push_connect connects
** as PUSH to a PULL socket and sends it the messages of queue, like
** mq_server_push.  The queue must exist.  No connection is attempted
** before mq_server_run; from then on the server keeps one connection per
** endpoint, reconnecting after failures with the backoff of
** mq_server_options (reconnect_ms, reconnect_max_ms, connect_timeout_ms).
** With plain_user and plain_password set, the connection authenticates
** with PLAIN as that user; when the peer refuses (it sends ERROR), the
** next attempt waits 5 minutes and the log callback says why.  The
** endpoint string is copied.  MQ_EINVAL for a bad endpoint or NULL
** argument, MQ_ENOTFOUND for an unknown queue, MQ_EMISUSE while the server
** runs.  Threads: as the listening calls above. */
MQ_API int mq_server_pull_connect(mq_server *server, const char *queue, const char *endpoint);
MQ_API int mq_server_push_connect(mq_server *server, const char *queue, const char *endpoint);

/* The address endpoint i (in order of the calls above) actually listens
** on, e.g. "tcp://127.0.0.1:40123", or for a connecting endpoint the
** address it connects to; copied into buf.  MQ_ENOTFOUND past the last. */
MQ_API int mq_server_endpoint(mq_server *server, size_t i, char *buf, size_t cap);

/* What endpoint i has done since mq_server_new: counters that only grow,
** except connections.  A message counts once its commit returned (PULL,
** ROUTER puts: as durable as the store's sync mode makes it) or once the
** kernel took its last byte (PUSH).  A PULL message read but not stored
** counts as dropped, never as in: the queue refused it (over its
** max_payload, or the queue is gone), its one-by-one retry after a refused
** batch failed, there was no memory to keep it, or the store still failed
** it at mq_server_free. */
typedef struct mq_endpoint_stats {
  int64_t messages_in;  /* PULL: messages stored; ROUTER: puts acknowledged
                           (a retried put counts again) */
  int64_t bytes_in;     /* their payload bytes */
  int64_t dropped;      /* PULL: messages read and not stored */
  int64_t messages_out; /* PUSH: messages written to a peer; ROUTER:
                           messages handed to consumers (GET, CONSUME) */
  int64_t bytes_out;    /* their payload bytes */
  int64_t acks;         /* ROUTER: messages acked by consumers */
  int64_t connections;  /* open now, handshakes included */
  int64_t connections_total; /* accepted or connected, all told */
  int64_t refused;      /* connections closed at once: max_connections or
                           max_handshakes reached */
  int64_t auth_failures; /* PLAIN credentials refused */
} mq_endpoint_stats;

/* Copy endpoint i's counters into *out.  Threads: safe from any thread,
** also while mq_server_run runs (each counter is read atomically; the set
** is not one snapshot), but not during mq_server_free or while endpoints
** are being added.  MQ_ENOTFOUND past the last endpoint, MQ_EINVAL for a
** NULL argument. */
MQ_API int mq_server_endpoint_stats(mq_server *server, size_t i, mq_endpoint_stats *out);

/* Serve until mq_server_stop, or for at most timeout_ms (< 0: no limit).
** Returns MQ_OK when stopped or timed out, an error if the server cannot
** go on.  Before it returns stopped or failing, it stores what PULL
** endpoints have read from their connections, whole messages in their
** input buffers included (not what still waits in the kernel's buffers);
** what the store refuses then is kept for the next run, or a last try in
** mq_server_free, and the log says so.  Errors of single peers (protocol
** errors, dead peers) only close those connections; the log callback of
** the store reports them. */
MQ_API int mq_server_run(mq_server *server, int64_t timeout_ms);

/* Make mq_server_run return soon.  Safe from any thread and from a signal
** handler. */
MQ_API void mq_server_stop(mq_server *server);

/* Store what PULL endpoints have read, as a stop does (what the store
** refuses now is lost, and logged), then close every connection and
** listener and free the server.  Messages given to PUSH peers and not
** completely written come back at once, without counting as a delivery;
** messages ROUTER consumers leased and did not settle come back as when
** their connection breaks (doc/protocol.md).  NULL is a no-op. */
MQ_API void mq_server_free(mq_server *server);

#ifdef __cplusplus
}
#endif
#endif /* MQ_H */
