/*
** crashvfs.h -- a test VFS that simulates power loss, and fails chosen I/O.
**
** crashvfs_install() registers "crashvfs" as SQLite's default VFS; it wraps
** the VFS that was the default before (unix).  It has two independent jobs.
**
** 1. Power loss, in the spirit of SQLite's src/test6.c.  While
**    crashvfs.record is set, every xWrite and xTruncate on a main database,
**    WAL or rollback journal is appended to one global list together with
**    the bytes it overwrote (or cut off) and the file's size before it.  An
**    xSync on a file makes that file's earlier records durable.  Directory
**    entries are modelled too: a file created through xOpen (or announced
**    with crashvfs_note_create, for a file the code under test creates
**    itself) and a file removed through xDelete are directory operations,
**    durable only after a directory sync.  The unix VFS syncs the directory
**    at the first sync of a file it created and in xDelete(dirSync=1); here
**    the first sync of any created file counts as one, and a directory sync
**    makes every earlier directory operation durable.  xDelete does not
**    delete: it renames the file aside, so a crash can bring it back.
**    At the crash point -- the crash_at_sync'th xSync (the sync does not
**    happen) or the crash_at_write'th xWrite (the write happens and is not
**    durable) -- crashvfs_crash() undoes every non-durable record newest
**    first, which leaves exactly what the last syncs made durable; then
**    redoes a random subset of them (redo_pct percent each) oldest first,
**    as if some unsynced writes had reached the disk anyway; with tear set
**    it cuts one redone write at a 512-byte boundary and fills the next
**    sector of that write's range with garbage, as a write interrupted by
**    the power cut would; then it _exit()s with CRASHVFS_EXIT.  Garbage is
**    only ever put where a non-durable write was going to write.
**    The device is reported without ATOMIC, POWERSAFE_OVERWRITE,
**    SAFE_APPEND, SEQUENTIAL or BATCH_ATOMIC, so SQLite takes its most
**    defensive paths (sector padding of the WAL, a synced WAL header).
**    The -shm file is memory-mapped and is not modelled: after a crash the
**    test deletes it, as a reboot would, and SQLite rebuilds it.
**    fsync_fail_at = N makes the Nth xSync return SQLITE_IOERR_FSYNC without
**    syncing (its records stay non-durable) and the next xSync after it
**    crash: the shape of "fsyncgate", where the bytes of a failed sync may
**    or may not be on the disk after the power cut.
**
** 2. Plain I/O errors, for OOM-style loops: fail_op names an operation
**    (CRASHVFS_READ, _WRITE, _SYNC, _TRUNCATE), fail_at = N fails the Nth
**    such call from the last crashvfs_reset(), fail_sticky keeps failing
**    every later one, fail_code overrides the error (SQLITE_FULL for a
**    write, say).  A failed call does nothing.
**
** Only database, WAL and journal files are counted and recorded; temporary
** files pass straight through.  The process is expected to be single-
** threaded while recording (a forked child running one workload); the
** counters are plain ints.  Recording allocates with malloc; error
** injection alone never allocates, so an allocation-failure test can use
** it.  Header-only: include it in one test file.
*/
#ifndef MQ_TEST_CRASHVFS_H
#define MQ_TEST_CRASHVFS_H

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CRASHVFS_EXIT 86 /* the exit status of a simulated power loss */

enum { CRASHVFS_NONE = 0, CRASHVFS_READ, CRASHVFS_WRITE, CRASHVFS_SYNC, CRASHVFS_TRUNCATE };

static struct {
  /* power loss */
  int record;         /* record writes for a crash */
  int crash_at_sync;  /* 0: off */
  int crash_at_write; /* 0: off */
  int fsync_fail_at;  /* 0: off */
  int redo_pct;       /* 0..100: chance that a non-durable record survives */
  int tear;           /* tear one redone write, garble one sector */
  uint64_t rng;       /* the crash's random choices; set from the test seed */
  /* error injection */
  int fail_op;
  int fail_at;
  int fail_sticky;
  int fail_code; /* 0: the natural SQLITE_IOERR_* of the operation */
  /* counters since crashvfs_reset() */
  int reads, writes, syncs, truncates;
  int faults;
  int fsync_failed; /* an injected fsync failure happened: crash at the next sync */
  /* what the last crash did (for the test's own statistics) */
  int crash_undone, crash_redone, crash_torn;
} crashvfs;

/* One file known to the recorder: outlives its sqlite3_file, because a
** crash must undo writes to files that are closed (or deleted) by then. */
typedef struct crashvfs_ident {
  char path[512];
  char aside[540]; /* where xDelete put it */
  int present;     /* 1: at path; 0: moved aside or not created */
  int64_t synced;  /* records of this file older than this are durable */
  int created;     /* created by us: its first sync syncs the directory */
  int ever_synced;
  struct crashvfs_ident *next;
} crashvfs_ident;

enum { CV_REC_WRITE = 1, CV_REC_TRUNC, CV_REC_CREATE, CV_REC_DELETE };

typedef struct crashvfs_rec {
  int kind;
  crashvfs_ident *f;
  int64_t off;  /* write: offset; truncate: new size */
  int64_t size; /* the file's size before the operation */
  unsigned char *old;
  int64_t nold; /* bytes of old content saved, from off */
  unsigned char *data;
  int n; /* write: bytes written */
} crashvfs_rec;

static struct {
  crashvfs_ident *files;
  crashvfs_rec *recs;
  int64_t nrec, cap;
  int64_t dir_synced; /* directory operations older than this are durable */
  int ndeleted;
} crashvfs_log;

typedef struct crashvfs_file {
  sqlite3_file base;
  crashvfs_ident *id; /* NULL: not a file we count (temporary files) */
  sqlite3_file *real; /* follows this struct in the same allocation */
} crashvfs_file;

static sqlite3_vfs *crashvfs_real;

static uint64_t cv_rand(void) {
  uint64_t x = crashvfs.rng ? crashvfs.rng : 0x9e3779b97f4a7c15ULL;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  crashvfs.rng = x;
  return x;
}

static void cv_die(const char *what) {
  char msg[200];
  int n = snprintf(msg, sizeof msg, "crashvfs: %s: %s\n", what, strerror(errno));
  ssize_t w = write(2, msg, (size_t)n);
  (void)w;
  _exit(3);
}

/* Forget everything recorded and zero the counters; the arming fields are
** left as they are. */
static inline void crashvfs_reset(void) {
  for (int64_t i = 0; i < crashvfs_log.nrec; i++) {
    free(crashvfs_log.recs[i].old);
    free(crashvfs_log.recs[i].data);
  }
  free(crashvfs_log.recs);
  while (crashvfs_log.files) {
    crashvfs_ident *f = crashvfs_log.files;
    crashvfs_log.files = f->next;
    free(f);
  }
  memset(&crashvfs_log, 0, sizeof crashvfs_log);
  crashvfs.reads = crashvfs.writes = crashvfs.syncs = crashvfs.truncates = 0;
  crashvfs.faults = crashvfs.fsync_failed = 0;
  crashvfs.crash_undone = crashvfs.crash_redone = crashvfs.crash_torn = 0;
}

static crashvfs_rec *cv_push(int kind, crashvfs_ident *f) {
  if (crashvfs_log.nrec == crashvfs_log.cap) {
    int64_t ncap = crashvfs_log.cap ? crashvfs_log.cap * 2 : 256;
    crashvfs_rec *n = realloc(crashvfs_log.recs, (size_t)ncap * sizeof *n);
    if (!n) cv_die("out of memory recording");
    crashvfs_log.recs = n;
    crashvfs_log.cap = ncap;
  }
  crashvfs_rec *r = &crashvfs_log.recs[crashvfs_log.nrec++];
  memset(r, 0, sizeof *r);
  r->kind = kind;
  r->f = f;
  return r;
}

static crashvfs_ident *cv_ident(const char *path) {
  for (crashvfs_ident *f = crashvfs_log.files; f; f = f->next)
    if (f->present && strcmp(f->path, path) == 0) return f;
  crashvfs_ident *f = calloc(1, sizeof *f);
  if (!f) cv_die("out of memory recording");
  snprintf(f->path, sizeof f->path, "%s", path);
  f->present = 1;
  f->next = crashvfs_log.files;
  crashvfs_log.files = f;
  return f;
}

static void cv_dir_sync(void) { crashvfs_log.dir_synced = crashvfs_log.nrec; }

/* Announce that path is about to be created by code that does not go
** through the VFS (mq creates its file itself, to set its mode): the
** creation is a directory operation like any other. */
static inline void crashvfs_note_create(const char *path) {
  if (!crashvfs.record || access(path, F_OK) == 0) return;
  crashvfs_ident *f = cv_ident(path);
  f->created = 1;
  cv_push(CV_REC_CREATE, f);
}

static int cv_durable(int64_t i) {
  const crashvfs_rec *r = &crashvfs_log.recs[i];
  if (r->kind == CV_REC_CREATE || r->kind == CV_REC_DELETE) return i < crashvfs_log.dir_synced;
  return i < r->f->synced;
}

/* ---- applying records by path (the sqlite3_file may be closed by now) ---- */

static void cv_pwrite_path(const char *path, const void *buf, int64_t n, int64_t off) {
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return; /* gone for good (a durable delete): nothing to restore */
  const unsigned char *p = buf;
  while (n > 0) {
    ssize_t w = pwrite(fd, p, (size_t)n, (off_t)off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) cv_die("pwrite during crash");
    p += w;
    n -= w;
    off += w;
  }
  close(fd);
}

static void cv_truncate_path(const char *path, int64_t size) {
  if (truncate(path, (off_t)size) != 0 && errno != ENOENT) cv_die("truncate during crash");
}

static void cv_undo(const crashvfs_rec *r) {
  crashvfs_ident *f = r->f;
  switch (r->kind) {
    case CV_REC_WRITE:
    case CV_REC_TRUNC:
      if (!f->present) return;
      if (r->nold) cv_pwrite_path(f->path, r->old, r->nold, r->off);
      cv_truncate_path(f->path, r->size);
      return;
    case CV_REC_CREATE:
      if (f->present && unlink(f->path) != 0 && errno != ENOENT) cv_die("unlink during crash");
      f->present = 0;
      return;
    case CV_REC_DELETE:
      if (rename(f->aside, f->path) != 0) cv_die("rename during crash");
      f->present = 1;
      return;
  }
}

static void cv_redo(const crashvfs_rec *r, int64_t keep) {
  crashvfs_ident *f = r->f;
  switch (r->kind) {
    case CV_REC_WRITE:
      if (f->present && keep > 0) cv_pwrite_path(f->path, r->data, keep, r->off);
      return;
    case CV_REC_TRUNC:
      if (f->present) cv_truncate_path(f->path, r->off);
      return;
    case CV_REC_CREATE: {
      int fd = open(f->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
      if (fd < 0) cv_die("create during crash");
      close(fd);
      f->present = 1;
      return;
    }
    case CV_REC_DELETE:
      if (f->present && rename(f->path, f->aside) != 0) cv_die("rename during crash");
      f->present = 0;
      return;
  }
}

/* The power cut: see the file comment.  Never returns. */
static inline void crashvfs_crash(void) {
  int64_t n = crashvfs_log.nrec;
  for (int64_t i = n - 1; i >= 0; i--) {
    if (cv_durable(i)) continue;
    cv_undo(&crashvfs_log.recs[i]);
    crashvfs.crash_undone++;
  }
  /* Which redone write (if any) is torn: one chosen among those redone. */
  int64_t torn = -1, seen = 0;
  unsigned char *redo = calloc((size_t)(n ? n : 1), 1);
  if (!redo) cv_die("out of memory at crash");
  for (int64_t i = 0; i < n; i++) {
    if (cv_durable(i)) continue;
    redo[i] = (int)(cv_rand() % 100) < crashvfs.redo_pct;
    if (redo[i] && crashvfs.tear && crashvfs_log.recs[i].kind == CV_REC_WRITE &&
        cv_rand() % (uint64_t)++seen == 0)
      torn = i;
  }
  for (int64_t i = 0; i < n; i++) {
    if (!redo[i]) continue;
    const crashvfs_rec *r = &crashvfs_log.recs[i];
    crashvfs.crash_redone++;
    if (i != torn) {
      cv_redo(r, r->n);
      continue;
    }
    /* A sector boundary strictly inside the write, or its start. */
    int64_t first = (r->off / 512 + 1) * 512, end = r->off + r->n, cut = r->off;
    if (first < end) {
      int64_t choices = (end - 1 - first) / 512 + 1;
      cut = first + (int64_t)(cv_rand() % (uint64_t)(choices + 1)) * 512;
      if (cut > end - 1) cut = r->off; /* the extra choice: nothing written */
    }
    cv_redo(r, cut - r->off);
    /* The sector that was being written when the power went. */
    int64_t g0 = cut, g1 = (cut / 512 + 1) * 512;
    if (g1 > end) g1 = end;
    if (g0 < g1 && r->f->present) {
      unsigned char junk[512];
      for (int k = 0; k < 512; k++) junk[k] = (unsigned char)cv_rand();
      cv_pwrite_path(r->f->path, junk, g1 - g0, g0);
    }
    crashvfs.crash_torn++;
  }
  free(redo);
  _exit(CRASHVFS_EXIT);
}

/* Crash now, at the current state (e.g. right after the workload ended). */
static inline void crashvfs_crash_now(void) { crashvfs_crash(); }

/* ---- the io methods ---------------------------------------------------- */

static int cv_fail(int op) {
  if (crashvfs.fail_op != op) return 0;
  int count = op == CRASHVFS_READ    ? crashvfs.reads
              : op == CRASHVFS_WRITE ? crashvfs.writes
              : op == CRASHVFS_SYNC  ? crashvfs.syncs
                                     : crashvfs.truncates;
  if (!crashvfs.fail_at) return 0;
  if (count == crashvfs.fail_at || (crashvfs.fail_sticky && count > crashvfs.fail_at)) {
    crashvfs.faults++;
    return 1;
  }
  return 0;
}

static int cv_close(sqlite3_file *f) {
  crashvfs_file *p = (crashvfs_file *)f;
  return p->real->pMethods ? p->real->pMethods->xClose(p->real) : SQLITE_OK;
}

static int cv_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o) {
  crashvfs_file *p = (crashvfs_file *)f;
  if (p->id) {
    crashvfs.reads++;
    if (cv_fail(CRASHVFS_READ)) return crashvfs.fail_code ? crashvfs.fail_code : SQLITE_IOERR_READ;
  }
  return p->real->pMethods->xRead(p->real, b, n, o);
}

/* Save what [off, off+n) held before it changes (the part inside the file). */
static void cv_save_old(crashvfs_file *p, crashvfs_rec *r, int64_t off, int64_t n) {
  sqlite3_int64 size = 0;
  if (p->real->pMethods->xFileSize(p->real, &size) != SQLITE_OK) cv_die("size while recording");
  r->size = size;
  r->off = off;
  int64_t avail = size > off ? size - off : 0;
  if (avail > n) avail = n;
  r->nold = avail;
  if (avail > 0) {
    if (!(r->old = malloc((size_t)avail))) cv_die("out of memory recording");
    int rc = p->real->pMethods->xRead(p->real, r->old, (int)avail, off);
    if (rc != SQLITE_OK) cv_die("read while recording");
  }
}

static int cv_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o) {
  crashvfs_file *p = (crashvfs_file *)f;
  if (!p->id) return p->real->pMethods->xWrite(p->real, b, n, o);
  crashvfs.writes++;
  if (cv_fail(CRASHVFS_WRITE))
    return crashvfs.fail_code ? crashvfs.fail_code : SQLITE_IOERR_WRITE;
  if (crashvfs.record) {
    crashvfs_rec *r = cv_push(CV_REC_WRITE, p->id);
    cv_save_old(p, r, o, n);
    r->n = n;
    if (!(r->data = malloc((size_t)(n ? n : 1)))) cv_die("out of memory recording");
    memcpy(r->data, b, (size_t)n);
  }
  int rc = p->real->pMethods->xWrite(p->real, b, n, o);
  if (crashvfs.record && crashvfs.crash_at_write && crashvfs.writes == crashvfs.crash_at_write)
    crashvfs_crash();
  return rc;
}

static int cv_truncate(sqlite3_file *f, sqlite3_int64 size) {
  crashvfs_file *p = (crashvfs_file *)f;
  if (!p->id) return p->real->pMethods->xTruncate(p->real, size);
  crashvfs.truncates++;
  if (cv_fail(CRASHVFS_TRUNCATE))
    return crashvfs.fail_code ? crashvfs.fail_code : SQLITE_IOERR_TRUNCATE;
  if (crashvfs.record) {
    crashvfs_rec *r = cv_push(CV_REC_TRUNC, p->id);
    sqlite3_int64 cur = 0;
    if (p->real->pMethods->xFileSize(p->real, &cur) != SQLITE_OK) cv_die("size while recording");
    cv_save_old(p, r, size, cur > size ? cur - size : 0);
    r->off = size;
  }
  return p->real->pMethods->xTruncate(p->real, size);
}

static int cv_sync(sqlite3_file *f, int flags) {
  crashvfs_file *p = (crashvfs_file *)f;
  if (!p->id) return p->real->pMethods->xSync(p->real, flags);
  crashvfs.syncs++;
  if (crashvfs.record) {
    if ((crashvfs.crash_at_sync && crashvfs.syncs == crashvfs.crash_at_sync) ||
        crashvfs.fsync_failed)
      crashvfs_crash();
    if (crashvfs.fsync_fail_at && crashvfs.syncs == crashvfs.fsync_fail_at) {
      crashvfs.fsync_failed = 1;
      crashvfs.faults++;
      return SQLITE_IOERR_FSYNC;
    }
  }
  if (cv_fail(CRASHVFS_SYNC)) return crashvfs.fail_code ? crashvfs.fail_code : SQLITE_IOERR_FSYNC;
  int rc = p->real->pMethods->xSync(p->real, flags);
  if (rc == SQLITE_OK && crashvfs.record) {
    p->id->synced = crashvfs_log.nrec;
    if (p->id->created && !p->id->ever_synced) cv_dir_sync();
    p->id->ever_synced = 1;
  }
  return rc;
}

static int cv_size(sqlite3_file *f, sqlite3_int64 *s) {
  crashvfs_file *p = (crashvfs_file *)f;
  return p->real->pMethods->xFileSize(p->real, s);
}
static int cv_lock(sqlite3_file *f, int l) {
  crashvfs_file *p = (crashvfs_file *)f;
  return p->real->pMethods->xLock(p->real, l);
}
static int cv_unlock(sqlite3_file *f, int l) {
  crashvfs_file *p = (crashvfs_file *)f;
  return p->real->pMethods->xUnlock(p->real, l);
}
static int cv_reserved(sqlite3_file *f, int *r) {
  crashvfs_file *p = (crashvfs_file *)f;
  return p->real->pMethods->xCheckReservedLock(p->real, r);
}
static int cv_fcntl(sqlite3_file *f, int op, void *a) {
  crashvfs_file *p = (crashvfs_file *)f;
  return p->real->pMethods->xFileControl(p->real, op, a);
}
static int cv_sector(sqlite3_file *f) {
  crashvfs_file *p = (crashvfs_file *)f;
  return p->real->pMethods->xSectorSize(p->real);
}
static int cv_devchar(sqlite3_file *f) {
  crashvfs_file *p = (crashvfs_file *)f;
  int c = p->real->pMethods->xDeviceCharacteristics(p->real);
  /* The weakest device: no atomic writes of any size, a write may damage
  ** its whole sector, appends and orders are not safe. */
  c &= ~(SQLITE_IOCAP_ATOMIC | SQLITE_IOCAP_ATOMIC512 | SQLITE_IOCAP_ATOMIC1K |
         SQLITE_IOCAP_ATOMIC2K | SQLITE_IOCAP_ATOMIC4K | SQLITE_IOCAP_ATOMIC8K |
         SQLITE_IOCAP_ATOMIC16K | SQLITE_IOCAP_ATOMIC32K | SQLITE_IOCAP_ATOMIC64K |
         SQLITE_IOCAP_SAFE_APPEND | SQLITE_IOCAP_SEQUENTIAL | SQLITE_IOCAP_POWERSAFE_OVERWRITE);
#ifdef SQLITE_IOCAP_BATCH_ATOMIC
  c &= ~SQLITE_IOCAP_BATCH_ATOMIC;
#endif
  return c;
}
static int cv_shm_map(sqlite3_file *f, int pg, int sz, int ext, void volatile **pp) {
  crashvfs_file *p = (crashvfs_file *)f;
  return p->real->pMethods->xShmMap(p->real, pg, sz, ext, pp);
}
static int cv_shm_lock(sqlite3_file *f, int o, int n, int fl) {
  crashvfs_file *p = (crashvfs_file *)f;
  return p->real->pMethods->xShmLock(p->real, o, n, fl);
}
static void cv_shm_barrier(sqlite3_file *f) {
  crashvfs_file *p = (crashvfs_file *)f;
  p->real->pMethods->xShmBarrier(p->real);
}
static int cv_shm_unmap(sqlite3_file *f, int del) {
  crashvfs_file *p = (crashvfs_file *)f;
  return p->real->pMethods->xShmUnmap(p->real, del);
}

/* Version 2 methods: no xFetch/xUnfetch, so SQLite never reads the files
** through a memory map that would bypass the recorder. */
static const sqlite3_io_methods crashvfs_io = {
    2,          cv_close,   cv_read,     cv_write,       cv_truncate,  cv_sync,
    cv_size,    cv_lock,    cv_unlock,   cv_reserved,    cv_fcntl,     cv_sector,
    cv_devchar, cv_shm_map, cv_shm_lock, cv_shm_barrier, cv_shm_unmap, NULL,
    NULL};

static int cv_open(sqlite3_vfs *v, const char *name, sqlite3_file *f, int flags, int *out) {
  (void)v;
  crashvfs_file *p = (crashvfs_file *)f;
  p->real = (sqlite3_file *)(p + 1);
  p->id = NULL;
  memset(p->real, 0, (size_t)crashvfs_real->szOsFile);
  int tracked = name && (flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL | SQLITE_OPEN_MAIN_JOURNAL |
                                  SQLITE_OPEN_SUPER_JOURNAL));
  int existed = tracked && access(name, F_OK) == 0;
  int rc = crashvfs_real->xOpen(crashvfs_real, name, p->real, flags, out);
  p->base.pMethods = rc == SQLITE_OK ? &crashvfs_io : NULL;
  if (rc == SQLITE_OK && tracked) {
    /* Even when not recording, a non-NULL id marks the file as counted. */
    static crashvfs_ident untracked;
    if (crashvfs.record) {
      p->id = cv_ident(name);
      if (!existed) {
        p->id->created = 1;
        p->id->ever_synced = 0;
        cv_push(CV_REC_CREATE, p->id);
      }
    } else {
      p->id = &untracked;
    }
  }
  return rc;
}

static int cv_delete(sqlite3_vfs *v, const char *name, int dirsync) {
  (void)v;
  if (crashvfs.record) {
    for (crashvfs_ident *f = crashvfs_log.files; f; f = f->next) {
      if (!f->present || strcmp(f->path, name) != 0) continue;
      snprintf(f->aside, sizeof f->aside, "%s-crashvfs-del%d", name, ++crashvfs_log.ndeleted);
      if (rename(f->path, f->aside) != 0) return SQLITE_IOERR_DELETE;
      f->present = 0;
      cv_push(CV_REC_DELETE, f);
      if (dirsync) cv_dir_sync();
      return SQLITE_OK;
    }
  }
  return crashvfs_real->xDelete(crashvfs_real, name, dirsync);
}
static int cv_access(sqlite3_vfs *v, const char *n, int fl, int *r) {
  (void)v;
  return crashvfs_real->xAccess(crashvfs_real, n, fl, r);
}
static int cv_fullpath(sqlite3_vfs *v, const char *n, int k, char *o) {
  (void)v;
  return crashvfs_real->xFullPathname(crashvfs_real, n, k, o);
}
static int cv_random(sqlite3_vfs *v, int n, char *o) {
  (void)v;
  return crashvfs_real->xRandomness(crashvfs_real, n, o);
}
static int cv_sleep(sqlite3_vfs *v, int us) {
  (void)v;
  return crashvfs_real->xSleep(crashvfs_real, us);
}
static int cv_time(sqlite3_vfs *v, double *t) {
  (void)v;
  return crashvfs_real->xCurrentTime(crashvfs_real, t);
}
static int cv_lasterr(sqlite3_vfs *v, int n, char *b) {
  (void)v;
  return crashvfs_real->xGetLastError(crashvfs_real, n, b);
}
static int cv_time64(sqlite3_vfs *v, sqlite3_int64 *t) {
  (void)v;
  return crashvfs_real->xCurrentTimeInt64(crashvfs_real, t);
}

static sqlite3_vfs crashvfs_vfs;

/* Register crashvfs as the default VFS (idempotent). */
static inline void crashvfs_install(void) {
  if (crashvfs_real) {
    sqlite3_vfs_register(&crashvfs_vfs, 1);
    return;
  }
  crashvfs_real = sqlite3_vfs_find(NULL);
  crashvfs_vfs.iVersion = 2;
  crashvfs_vfs.szOsFile = (int)sizeof(crashvfs_file) + crashvfs_real->szOsFile;
  crashvfs_vfs.mxPathname = crashvfs_real->mxPathname;
  crashvfs_vfs.zName = "crashvfs";
  crashvfs_vfs.xOpen = cv_open;
  crashvfs_vfs.xDelete = cv_delete;
  crashvfs_vfs.xAccess = cv_access;
  crashvfs_vfs.xFullPathname = cv_fullpath;
  crashvfs_vfs.xRandomness = cv_random;
  crashvfs_vfs.xSleep = cv_sleep;
  crashvfs_vfs.xCurrentTime = cv_time;
  crashvfs_vfs.xGetLastError = cv_lasterr;
  crashvfs_vfs.xCurrentTimeInt64 = cv_time64;
  sqlite3_vfs_register(&crashvfs_vfs, 1);
}

/* Make the wrapped VFS the default again (crashvfs stays registered). */
static inline void crashvfs_uninstall(void) {
  if (crashvfs_real) sqlite3_vfs_register(crashvfs_real, 1);
}

#endif /* MQ_TEST_CRASHVFS_H */
