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
#include "mqi.h"

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
