/*
** faultvfs.h -- a test VFS that wraps the default one and fails chosen I/O.
**
** faultvfs_install() registers "faultvfs" as SQLite's default VFS, so any
** store opened afterwards goes through it.  The test then arms a fault:
**
**   faultvfs.fail_sync_at   = N   the Nth xSync from now fails
**   faultvfs.fail_write_at  = N   the Nth xWrite from now fails
**   faultvfs.sticky         = 1   ... and every later one too
**   faultvfs.write_errno    = SQLITE_IOERR_WRITE or SQLITE_FULL
**   faultvfs.write_budget   = B   writes beyond B more bytes fail with
**                                 SQLITE_FULL (a full disk), 0 = off
**   faultvfs.budget_growth_only = 1  ... counting only bytes that grow
**                                 the database or WAL, as a real file
**                                 system holding the store does
**
** A failed sync does not sync; a failed write does not write.  That is how
** a real failure looks to SQLite, and it lets tests check what mq reports
** (MQ_EUNKNOWN for a commit whose fsync failed, MQ_EFULL for a full disk)
** and that nothing acknowledged is lost afterwards.  Counters count every
** call on database, WAL and journal files; -shm is memory-mapped and not
** seen here.  `sleeps` counts the VFS's xSleep, which is where SQLite's
** busy handler waits while another connection holds the lock: under a
** busy timeout of 1 ms, once per try.  Header-only: include it in one test
** file.
*/
#ifndef MQ_TEST_FAULTVFS_H
#define MQ_TEST_FAULTVFS_H

#include <sqlite3.h>
#include <string.h>

static struct {
  int fail_sync_at;   /* 0: off */
  int fail_write_at;  /* 0: off */
  int sticky;
  int write_errno;
  sqlite3_int64 write_budget; /* 0: off */
  int budget_growth_only;     /* the budget counts only bytes that grow a file */
  int syncs, writes, sleeps; /* calls seen since the last arm */
  int faults;         /* faults injected */
} faultvfs;

typedef struct faultvfs_file {
  sqlite3_file base;
  sqlite3_file *real; /* follows this struct in the same allocation */
  int flags;          /* as opened (SQLITE_OPEN_MAIN_DB, _WAL, ...) */
} faultvfs_file;

static sqlite3_vfs *faultvfs_real;

static void faultvfs_arm_reset(void) {
  faultvfs.fail_sync_at = faultvfs.fail_write_at = faultvfs.sticky = 0;
  faultvfs.write_errno = SQLITE_IOERR_WRITE;
  faultvfs.write_budget = 0;
  faultvfs.budget_growth_only = 0;
  faultvfs.syncs = faultvfs.writes = faultvfs.sleeps = faultvfs.faults = 0;
}

static int fv_close(sqlite3_file *f) {
  faultvfs_file *p = (faultvfs_file *)f;
  return p->real->pMethods ? p->real->pMethods->xClose(p->real) : SQLITE_OK;
}
static int fv_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o) {
  faultvfs_file *p = (faultvfs_file *)f;
  return p->real->pMethods->xRead(p->real, b, n, o);
}
static int fv_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o) {
  faultvfs_file *p = (faultvfs_file *)f;
  faultvfs.writes++;
  if (faultvfs.fail_write_at &&
      (faultvfs.writes == faultvfs.fail_write_at ||
       (faultvfs.sticky && faultvfs.writes > faultvfs.fail_write_at))) {
    faultvfs.faults++;
    return faultvfs.write_errno;
  }
  if (faultvfs.write_budget && faultvfs.budget_growth_only) {
    /* Only bytes past the end of the store's own files (database, WAL)
    ** take space on its file system: overwriting costs none, and SQLite's
    ** temporary files live elsewhere (the temp directory). */
    if (!(p->flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL)))
      return p->real->pMethods->xWrite(p->real, b, n, o);
    sqlite3_int64 size = 0;
    p->real->pMethods->xFileSize(p->real, &size);
    sqlite3_int64 grow = o + n > size ? o + n - (o > size ? o : size) : 0;
    if (faultvfs.write_budget < grow) {
      faultvfs.faults++;
      return SQLITE_FULL;
    }
    faultvfs.write_budget -= grow;
  } else if (faultvfs.write_budget) {
    if (faultvfs.write_budget < n) {
      faultvfs.faults++;
      return SQLITE_FULL;
    }
    faultvfs.write_budget -= n;
  }
  return p->real->pMethods->xWrite(p->real, b, n, o);
}
static int fv_truncate(sqlite3_file *f, sqlite3_int64 s) {
  faultvfs_file *p = (faultvfs_file *)f;
  return p->real->pMethods->xTruncate(p->real, s);
}
static int fv_sync(sqlite3_file *f, int flags) {
  faultvfs_file *p = (faultvfs_file *)f;
  faultvfs.syncs++;
  if (faultvfs.fail_sync_at &&
      (faultvfs.syncs == faultvfs.fail_sync_at ||
       (faultvfs.sticky && faultvfs.syncs > faultvfs.fail_sync_at))) {
    faultvfs.faults++;
    return SQLITE_IOERR_FSYNC;
  }
  return p->real->pMethods->xSync(p->real, flags);
}
static int fv_size(sqlite3_file *f, sqlite3_int64 *s) {
  faultvfs_file *p = (faultvfs_file *)f;
  return p->real->pMethods->xFileSize(p->real, s);
}
static int fv_lock(sqlite3_file *f, int l) {
  faultvfs_file *p = (faultvfs_file *)f;
  return p->real->pMethods->xLock(p->real, l);
}
static int fv_unlock(sqlite3_file *f, int l) {
  faultvfs_file *p = (faultvfs_file *)f;
  return p->real->pMethods->xUnlock(p->real, l);
}
static int fv_reserved(sqlite3_file *f, int *r) {
  faultvfs_file *p = (faultvfs_file *)f;
  return p->real->pMethods->xCheckReservedLock(p->real, r);
}
static int fv_fcntl(sqlite3_file *f, int op, void *a) {
  faultvfs_file *p = (faultvfs_file *)f;
  return p->real->pMethods->xFileControl(p->real, op, a);
}
static int fv_sector(sqlite3_file *f) {
  faultvfs_file *p = (faultvfs_file *)f;
  return p->real->pMethods->xSectorSize(p->real);
}
static int fv_devchar(sqlite3_file *f) {
  faultvfs_file *p = (faultvfs_file *)f;
  return p->real->pMethods->xDeviceCharacteristics(p->real);
}
static int fv_shm_map(sqlite3_file *f, int pg, int sz, int ext, void volatile **pp) {
  faultvfs_file *p = (faultvfs_file *)f;
  return p->real->pMethods->xShmMap(p->real, pg, sz, ext, pp);
}
static int fv_shm_lock(sqlite3_file *f, int o, int n, int fl) {
  faultvfs_file *p = (faultvfs_file *)f;
  return p->real->pMethods->xShmLock(p->real, o, n, fl);
}
static void fv_shm_barrier(sqlite3_file *f) {
  faultvfs_file *p = (faultvfs_file *)f;
  p->real->pMethods->xShmBarrier(p->real);
}
static int fv_shm_unmap(sqlite3_file *f, int del) {
  faultvfs_file *p = (faultvfs_file *)f;
  return p->real->pMethods->xShmUnmap(p->real, del);
}

static const sqlite3_io_methods faultvfs_io = {
    2,           fv_close,   fv_read,     fv_write,       fv_truncate,  fv_sync,
    fv_size,     fv_lock,    fv_unlock,   fv_reserved,    fv_fcntl,     fv_sector,
    fv_devchar,  fv_shm_map, fv_shm_lock, fv_shm_barrier, fv_shm_unmap, NULL,
    NULL};

static int fv_open(sqlite3_vfs *v, const char *name, sqlite3_file *f, int flags, int *out) {
  (void)v;
  faultvfs_file *p = (faultvfs_file *)f;
  p->real = (sqlite3_file *)(p + 1);
  p->flags = flags;
  memset(p->real, 0, (size_t)faultvfs_real->szOsFile);
  int rc = faultvfs_real->xOpen(faultvfs_real, name, p->real, flags, out);
  p->base.pMethods = rc == SQLITE_OK ? &faultvfs_io : NULL;
  return rc;
}
static int fv_delete(sqlite3_vfs *v, const char *n, int s) {
  (void)v;
  return faultvfs_real->xDelete(faultvfs_real, n, s);
}
static int fv_access(sqlite3_vfs *v, const char *n, int fl, int *r) {
  (void)v;
  return faultvfs_real->xAccess(faultvfs_real, n, fl, r);
}
static int fv_fullpath(sqlite3_vfs *v, const char *n, int k, char *o) {
  (void)v;
  return faultvfs_real->xFullPathname(faultvfs_real, n, k, o);
}
static int fv_random(sqlite3_vfs *v, int n, char *o) {
  (void)v;
  return faultvfs_real->xRandomness(faultvfs_real, n, o);
}
static int fv_sleep(sqlite3_vfs *v, int us) {
  (void)v;
  faultvfs.sleeps++;
  return faultvfs_real->xSleep(faultvfs_real, us);
}
static int fv_time(sqlite3_vfs *v, double *t) {
  (void)v;
  return faultvfs_real->xCurrentTime(faultvfs_real, t);
}
static int fv_lasterr(sqlite3_vfs *v, int n, char *b) {
  (void)v;
  return faultvfs_real->xGetLastError(faultvfs_real, n, b);
}
static int fv_time64(sqlite3_vfs *v, sqlite3_int64 *t) {
  (void)v;
  return faultvfs_real->xCurrentTimeInt64(faultvfs_real, t);
}

static sqlite3_vfs faultvfs_vfs;

static void faultvfs_install(void) {
  if (faultvfs_real) return;
  faultvfs_real = sqlite3_vfs_find(NULL);
  faultvfs_vfs.iVersion = 2;
  faultvfs_vfs.szOsFile = (int)sizeof(faultvfs_file) + faultvfs_real->szOsFile;
  faultvfs_vfs.mxPathname = faultvfs_real->mxPathname;
  faultvfs_vfs.zName = "faultvfs";
  faultvfs_vfs.xOpen = fv_open;
  faultvfs_vfs.xDelete = fv_delete;
  faultvfs_vfs.xAccess = fv_access;
  faultvfs_vfs.xFullPathname = fv_fullpath;
  faultvfs_vfs.xRandomness = fv_random;
  faultvfs_vfs.xSleep = fv_sleep;
  faultvfs_vfs.xCurrentTime = fv_time;
  faultvfs_vfs.xGetLastError = fv_lasterr;
  faultvfs_vfs.xCurrentTimeInt64 = fv_time64;
  faultvfs_arm_reset();
  sqlite3_vfs_register(&faultvfs_vfs, 1);
}

#endif
