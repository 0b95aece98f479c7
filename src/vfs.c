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
#include "mqi.h"

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
