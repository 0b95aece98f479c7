/*
** test_diskfull.c -- a real full disk: small file systems filled by the
** store itself, and what a caller can still do then.
**
** A full disk is the common failure of an edge device, and with SQLite in
** WAL mode it is a nasty one (reliability note F2): once the file system is
** at 100 %, acks, leases and even checkpoints fail, and reopening can kill
** the process with SIGBUS when SQLite maps its -shm file.  mq's answer is
** the free-space floor (mq_store_options.min_free_bytes): puts are refused
** with MQ_EFULL while less than the floor is free, so the rest of the API
** keeps room to work.  This test checks that promise on real file systems:
** private size-limited tmpfs mounts (2 MiB and 8 MiB with a 256 KiB floor,
** 24 MiB with an 8 MiB floor, larger than a full WAL) and, when root has a
** loop device, an 8 MiB ext4 image made with `mkfs.ext4 -m 0` (the SD-card
** case; the SIGBUS was only seen on ext4).
**
** Per file system, each scenario runs in a forked child, so a crash inside
** the library is seen by the parent as a signal instead of taking the test
** and its mounts down:
**   - floor_self_fill: the store's own puts fill the file system.  Put
**     until MQ_EFULL: the refusal must come from the floor while about the
**     floor is still free; get, ack, nack and mq_store_checkpoint must keep
**     working; after draining and a checkpoint, puts resume on the same
**     handle.  Repeated (fill-and-drain cycles).
**   - floor_external_fill: another file takes the space, leaving less than
**     the floor free while the store's WAL holds half the floor.  Puts are
**     refused by the floor, consumers and checkpoints keep working, and
**     draining plus a checkpoint (which truncates the WAL) lets puts resume
**     on the same handle.  Repeated.
**   - open_when_full: a plain file takes every free byte, then opening a
**     new store and an existing one must fail with MQ_EFULL or
**     MQ_ECANTOPEN, in a child that exits normally (no SIGBUS).  With the
**     filler gone, the existing store opens and holds what it held.
**   - no_floor: with min_free_bytes = 0, SQLite itself meets the full disk.
**     The put must fail with MQ_EFULL (not another code), a refused put
**     stores nothing, and after some room is given back no acknowledged
**     message is lost: every acked id is gone, every put-OK id is present
**     or acked.
**
** Mounts are made in a private mount namespace (unshare CLONE_NEWNS, the
** root made MS_PRIVATE), so they disappear with the test process whatever
** happens; they are also unmounted explicitly on every path, and a loop
** device mounted with `-o loop` is released by the unmount.  Without root
** the test tries a user namespace for tmpfs and skips ext4 with a visible
** "SKIPPED:" line.  The floor's free-space figure is re-read by the library
** at most every 250 ms of real time, so "puts resume" is polled for a
** bounded time: that waits for a cache, it does not test a timeout.
** MQ_FAULT_SCALE multiplies the number of fill cycles.
*/
#include "testutil.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/statvfs.h>

#define MAX_SEQ 200000     /* bound on puts per scenario */
#define BALLAST (512 * 1024) /* room the no-floor case gives back */

/* Figures, summed over every child; lives in shared memory. */
typedef struct figures {
  int cycles;             /* fill-and-drain cycles completed */
  int fs_tested;
  int refusals_floor;     /* puts refused by the floor */
  int refusals_disk;      /* puts refused by SQLite's full disk (no floor) */
  int refusals_other;     /* puts failing with a code other than MQ_EFULL */
  int floor_overshoot;    /* floor set, yet the disk itself got full */
  int settles_tried;      /* get/ack/nack while puts were refused */
  int settles_ok;
  int ckpt_tried, ckpt_ok;
  int resumed;            /* cycles in which puts came back on the same handle */
  int opens_full;         /* opens attempted on a 100 % full file system */
  int opens_signal;       /* ... that died from a signal */
  int opens_bad_code;     /* ... that returned something else than EFULL/ECANTOPEN */
  int64_t acked;          /* messages acked in the no-floor runs */
  int64_t lost;           /* acked-before-full ids missing / put-OK ids missing */
  int64_t resurrected;    /* acked ids present again */
  int64_t refused_present; /* refused puts that were stored anyway */
  int64_t bad_payload;
} figures;

static figures *g_fig;
static int g_scale = 1;

/* ---- File systems ------------------------------------------------------- */

typedef struct fsys {
  const char *kind; /* "tmpfs" or "ext4" */
  const char *size; /* "2m", "8m" */
  int64_t floor;    /* min_free_bytes used on it */
  char dir[320];    /* mount point */
  char img[352];    /* ext4 image file, "" for tmpfs */
  int mounted;
} fsys;

static char g_base[256];    /* our temp directory */
#define NFS 4
static fsys *g_mounted[NFS]; /* for the cleanup on a signal */

static void fs_umount(fsys *f) {
  if (f->mounted) {
    /* Lazy detach as a last resort: a busy mount must not survive us. */
    if (umount2(f->dir, 0) != 0) umount2(f->dir, MNT_DETACH);
    f->mounted = 0;
  }
  rmdir(f->dir);
  if (f->img[0]) unlink(f->img);
}

static void cleanup_all(void) {
  for (int i = 0; i < NFS; i++)
    if (g_mounted[i]) fs_umount(g_mounted[i]);
  if (g_base[0]) rmdir(g_base);
}

static void on_fatal_signal(int sig) {
  cleanup_all();
  signal(sig, SIG_DFL);
  raise(sig);
}

static int64_t fs_free(const char *dir) {
  struct statvfs v;
  if (statvfs(dir, &v) != 0) return -1;
  return (int64_t)v.f_bavail * (int64_t)v.f_frsize;
}

/* Mount f; 0 on success, -1 with the reason printed. */
static int fs_mount(fsys *f, int slot) {
  char cmd[2048];
  snprintf(f->dir, sizeof f->dir, "%s/%s-%s", g_base, f->kind, f->size);
  if (mkdir(f->dir, 0700) != 0 && errno != EEXIST) return -1;
  g_mounted[slot] = f;
  if (strcmp(f->kind, "tmpfs") == 0) {
    char opts[64];
    snprintf(opts, sizeof opts, "size=%s,mode=0700", f->size);
    if (mount("mqtest_tmpfs", f->dir, "tmpfs", 0, opts) != 0) {
      printf("cannot mount a tmpfs: %s\n", strerror(errno));
      return -1;
    }
  } else {
    snprintf(f->img, sizeof f->img, "%s/%s-%s.img", g_base, f->kind, f->size);
    int fd = open(f->img, O_CREAT | O_RDWR | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)atoi(f->size) * 1024 * 1024) != 0) {
      if (fd >= 0) close(fd);
      printf("cannot create %s: %s\n", f->img, strerror(errno));
      return -1;
    }
    close(fd);
    snprintf(cmd, sizeof cmd, "mkfs.ext4 -q -F -m 0 '%s' >/dev/null 2>&1", f->img);
    if (system(cmd) != 0) {
      printf("mkfs.ext4 failed or is missing\n");
      return -1;
    }
    snprintf(cmd, sizeof cmd, "mount -o loop '%s' '%s' >/dev/null 2>&1", f->img, f->dir);
    if (system(cmd) != 0) {
      printf("mount -o loop failed (no loop device?)\n");
      return -1;
    }
  }
  f->mounted = 1;
  return 0;
}

/* Enter a private mount namespace so no mount can outlive the test.
** Returns 1 if we may mount (root, or a user namespace), 0 if not. */
static int enter_mount_namespace(int *root) {
  *root = geteuid() == 0;
  if (*root) {
    if (unshare(CLONE_NEWNS) == 0 && mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0)
      return 1;
    printf("note: no private mount namespace (%s); mounting in the global one\n",
           strerror(errno));
    return 1; /* explicit unmounts and the signal handler still clean up */
  }
  uid_t uid = geteuid();
  gid_t gid = getegid();
  if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) return 0;
  char map[64];
  int fd;
  snprintf(map, sizeof map, "0 %u 1", (unsigned)uid);
  if ((fd = open("/proc/self/uid_map", O_WRONLY)) < 0) return 0;
  int ok = write(fd, map, strlen(map)) > 0;
  close(fd);
  if ((fd = open("/proc/self/setgroups", O_WRONLY)) >= 0) {
    ok &= write(fd, "deny", 4) == 4;
    close(fd);
  }
  snprintf(map, sizeof map, "0 %u 1", (unsigned)gid);
  if ((fd = open("/proc/self/gid_map", O_WRONLY)) < 0) return 0;
  ok &= write(fd, map, strlen(map)) > 0;
  close(fd);
  return ok && mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0;
}

/* ---- Payloads ------------------------------------------------------------ */

/* The payload of seq: "seq=N;" then bytes derived from seq, 1000..2999
** bytes long, so damage or a mix-up is visible. */
static size_t make_payload(int64_t seq, unsigned char *buf, size_t cap) {
  int n = snprintf((char *)buf, cap, "seq=%lld;", (long long)seq);
  size_t len = 1000 + (size_t)((seq * 7919) % 2000);
  if (len > cap) len = cap;
  uint64_t x = (uint64_t)seq * 0x9e3779b97f4a7c15ULL + 1;
  for (size_t i = (size_t)n; i < len; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    buf[i] = (unsigned char)x;
  }
  return len;
}

/* The seq a message carries if its payload is exactly make_payload(seq),
** else -1. */
static int64_t payload_seq(const mq_msg *m) {
  unsigned char want[4096];
  char head[32];
  size_t n = mq_msg_size(m), hn = n < sizeof head - 1 ? n : sizeof head - 1;
  long long seq = -1;
  memcpy(head, mq_msg_data(m), hn);
  head[hn] = 0;
  if (sscanf(head, "seq=%lld;", &seq) != 1 || seq < 0 || seq >= MAX_SEQ) return -1;
  size_t wl = make_payload(seq, want, sizeof want);
  return wl == n && memcmp(want, mq_msg_data(m), n) == 0 ? seq : -1;
}

static int put_seq(mq_store *s, int64_t seq, int64_t *id) {
  unsigned char buf[4096];
  size_t len = make_payload(seq, buf, sizeof buf);
  *id = 0;
  return mq_put(s, "q", buf, len, NULL, id);
}

static mq_store *open_store(const char *path, int64_t floor, int *rc_out) {
  mq_store_options o;
  mq_store *s = NULL;
  mq_store_options_init(&o);
  o.sync = MQ_SYNC_FULL;
  o.clock = test_clock;
  o.min_free_bytes = floor;
  *rc_out = mq_store_open(path, &o, &s);
  return s;
}

/* ---- Scenario: fill-and-drain cycles under the floor --------------------- */

/* While puts are refused, consumers keep working: leases, acks, nacks and
** a checkpoint all succeed. */
static void settle_while_refused(mq_store *s) {
  int rc;
  for (int k = 0; k < 24; k++) {
    mq_msg *m = NULL;
    g_fig->settles_tried++;
    rc = mq_get(s, "q", NULL, &m);
    CHECK_OK(rc);
    if (rc != MQ_OK) {
      fprintf(stderr, "  get while puts are refused: %s\n", mq_errmsg(s));
      break;
    }
    g_fig->settles_ok++;
    g_fig->settles_tried++;
    rc = k % 3 == 0 ? mq_nack(s, "q", mq_msg_receipt(m), 0, "later")
                    : mq_ack(s, "q", mq_msg_receipt(m));
    CHECK_OK(rc);
    if (rc == MQ_OK) g_fig->settles_ok++;
    mq_msg_free(m);
  }
  g_fig->ckpt_tried++;
  rc = mq_store_checkpoint(s);
  CHECK_OK(rc);
  if (rc == MQ_OK) g_fig->ckpt_ok++;
  else fprintf(stderr, "  checkpoint while puts are refused: %s\n", mq_errmsg(s));
}

/* Ack everything and checkpoint (TRUNCATE): the WAL file shrinks. */
static void drain_and_checkpoint(mq_store *s) {
  int rc = MQ_OK;
  for (int64_t k = 0; k < MAX_SEQ; k++) {
    mq_msg *m = NULL;
    rc = mq_get(s, "q", NULL, &m);
    if (rc != MQ_OK) break;
    int ack = mq_ack(s, "q", mq_msg_receipt(m));
    CHECK_OK(ack);
    mq_msg_free(m);
    if (ack != MQ_OK) break;
  }
  CHECK_RC(rc, MQ_EMPTY);
  g_fig->ckpt_tried++;
  rc = mq_store_checkpoint(s);
  CHECK_OK(rc);
  if (rc == MQ_OK) g_fig->ckpt_ok++;
}

/* Puts come back on the same handle once the floor's figure is re-read
** (the library does so at most every 250 ms): poll for a bounded time.
** Returns the last put's code. */
static int put_until_resumed(mq_store *s, int64_t seq) {
  int64_t id, deadline = tu_mono_ms() + 3000;
  int rc;
  do {
    rc = put_seq(s, seq, &id);
    if (rc != MQ_EFULL) break;
    tu_sleep_ms(25);
  } while (tu_mono_ms() < deadline);
  return rc;
}

/* The store's own puts fill the file system: the floor must stop them in
** time, with room left for everything else. */
static void floor_self_fill(const fsys *f) {
  char path[512];
  snprintf(path, sizeof path, "%s/floor.db", f->dir);
  int rc;
  mq_store *s = open_store(path, f->floor, &rc);
  CHECK_OK(rc);
  if (!s) return;
  CHECK_OK(mq_queue_create(s, "q", NULL));
  int64_t seq = 0;
  for (int c = 0; c < 2 * g_scale; c++) {
    int64_t id, put_ok = 0;
    rc = MQ_OK;
    while (seq < MAX_SEQ && (rc = put_seq(s, seq, &id)) == MQ_OK) {
      seq++;
      put_ok++;
    }
    seq++;
    int64_t free_now = fs_free(f->dir);
    CHECK_RC(rc, MQ_EFULL);
    CHECK(put_ok > 0);
    const char *why = mq_errmsg(s);
    int by_floor = rc == MQ_EFULL && strstr(why, "floor") != NULL;
    if (rc == MQ_EFULL && by_floor) g_fig->refusals_floor++;
    if (rc == MQ_EFULL && !by_floor) g_fig->refusals_disk++;
    if (rc != MQ_EFULL) g_fig->refusals_other++;
    /* The floor exists so that this never happens: the refusal must come
    ** from it, while the file system still has about the floor free (less
    ** at most what the last accepted commit took). */
    CHECK(by_floor);
    CHECK(free_now >= f->floor / 2);
    if (!by_floor || free_now < f->floor / 2) {
      g_fig->floor_overshoot++;
      fprintf(stderr,
              "  %s %s: with a floor of %lld bytes, put %lld (cycle %d) failed with "
              "\"%s\" and %lld bytes free: the puts went past the floor\n",
              f->kind, f->size, (long long)f->floor, (long long)seq - 1, c, why,
              (long long)free_now);
    }
    settle_while_refused(s);
    if (!by_floor || free_now < f->floor / 2) break; /* the rest would only repeat it */
    drain_and_checkpoint(s);
    rc = put_until_resumed(s, seq++);
    CHECK_OK(rc);
    if (rc == MQ_OK) g_fig->resumed++;
    else
      fprintf(stderr, "  %s %s cycle %d: puts did not resume (%s; %lld bytes free)\n", f->kind,
              f->size, c, mq_errmsg(s), (long long)fs_free(f->dir));
    g_fig->cycles++;
  }
  rc = mq_store_close(s);
  CHECK(rc == MQ_OK || rc == MQ_EBUSY);
  test_unlink_store(path);
}

static int64_t file_size(const char *file) {
  struct stat st;
  return stat(file, &st) == 0 ? (int64_t)st.st_size : -1;
}

/* Write n bytes to file (appending); returns the bytes written. */
static int64_t write_bytes(const char *file, int64_t n) {
  static char chunk[65536];
  int fd = open(file, O_CREAT | O_WRONLY | O_APPEND, 0600);
  int64_t total = 0;
  if (fd < 0) return -1;
  memset(chunk, 0xa5, sizeof chunk);
  while (total < n) {
    size_t want = n - total < (int64_t)sizeof chunk ? (size_t)(n - total) : sizeof chunk;
    ssize_t w = write(fd, chunk, want);
    if (w <= 0) break;
    total += w;
  }
  fsync(fd);
  close(fd);
  return total;
}

/* Something else (logs, another program) takes the space: a plain file
** leaves the file system below the floor while the store has a WAL of half
** the floor.  Consumers keep working; draining and a checkpoint give
** the WAL's space back and puts resume on the same handle. */
static void floor_external_fill(const fsys *f) {
  char path[512], filler[512], wal[512];
  snprintf(path, sizeof path, "%s/ext.db", f->dir);
  snprintf(wal, sizeof wal, "%s/ext.db-wal", f->dir);
  snprintf(filler, sizeof filler, "%s/filler", f->dir);
  int rc;
  int64_t seq = 0, id;
  mq_store *a = open_store(path, 0, &rc);
  CHECK_OK(rc);
  if (!a) return;
  CHECK_OK(mq_queue_create(a, "q", NULL));
  for (int c = 0; c < 2 * g_scale; c++) {
    /* Puts until the WAL holds half the floor (at most a third of the
    ** free space, and less than the 1000 pages that make SQLite
    ** checkpoint on its own): its space comes back at the checkpoint. */
    int64_t want = f->floor / 2;
    if (want > fs_free(f->dir) / 3) want = fs_free(f->dir) / 3;
    if (want > 3 * 1024 * 1024) want = 3 * 1024 * 1024;
    /* At least enough messages for settle_while_refused (the WAL's size
    ** says little once the library cuts it back near the floor). */
    for (int i = 0; i < 10000 && (i < 30 || file_size(wal) < want); i++) {
      rc = put_seq(a, seq++, &id);
      CHECK_OK(rc);
      if (rc != MQ_OK) {
        fprintf(stderr, "  %s %s external cycle %d: put %d: %s (%lld bytes free)\n", f->kind,
                f->size, c, i, mq_errmsg(a), (long long)fs_free(f->dir));
        break;
      }
    }
    /* A handle opened now (opening wants 256 KiB free) reads the free
    ** space at its first put, after the filler took it. */
    mq_store *s = open_store(path, f->floor, &rc);
    CHECK_OK(rc);
    if (!s) break;
    int64_t room = fs_free(f->dir) - f->floor * 3 / 4;
    CHECK(room > 0 && write_bytes(filler, room) == room);
    int64_t free_now = fs_free(f->dir);
    CHECK(free_now > 0 && free_now < f->floor);
    rc = put_seq(s, seq++, &id);
    CHECK_RC(rc, MQ_EFULL);
    CHECK(strstr(mq_errmsg(s), "floor") != NULL);
    if (rc == MQ_EFULL) g_fig->refusals_floor++;
    else if (rc != MQ_OK) g_fig->refusals_other++;
    settle_while_refused(s);
    drain_and_checkpoint(s);
    rc = put_until_resumed(s, seq++);
    CHECK_OK(rc);
    if (rc == MQ_OK) g_fig->resumed++;
    else
      fprintf(stderr, "  %s %s external cycle %d: puts did not resume (%s; %lld bytes free)\n",
              f->kind, f->size, c, mq_errmsg(s), (long long)fs_free(f->dir));
    g_fig->cycles++;
    CHECK_OK(mq_store_verify(s, NULL, NULL, NULL));
    CHECK_OK(mq_store_close(s));
    unlink(filler);
  }
  rc = mq_store_close(a);
  CHECK(rc == MQ_OK || rc == MQ_EBUSY);
  unlink(filler);
  test_unlink_store(path);
}

/* ---- Scenario: opening on a 100 % full file system ----------------------- */

/* Write a plain file until ENOSPC, with ever smaller writes so the last
** bytes are taken too.  Returns the bytes written. */
static int64_t fill_to_full(const char *file) {
  static char chunk[65536];
  int fd = open(file, O_CREAT | O_WRONLY | O_TRUNC, 0600);
  int64_t total = 0;
  if (fd < 0) return -1;
  memset(chunk, 0xa5, sizeof chunk);
  for (size_t sz = sizeof chunk; sz >= 1; sz /= 4) {
    for (int i = 0; i < 1 << 20; i++) { /* bounded: at most 64 GiB */
      ssize_t n = write(fd, chunk, sz);
      if (n <= 0) break;
      total += n;
    }
  }
  fsync(fd);
  close(fd);
  return total;
}

/* Open path in a child; returns the child's open code (>= 0), or -signal. */
static int open_in_child(const char *path) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    tu_child_setup();
    int rc;
    mq_store *s = open_store(path, 256 * 1024, &rc);
    if (s) mq_store_close(s);
    _exit(rc);
  }
  int st = 0;
  if (pid < 0 || waitpid(pid, &st, 0) < 0) return -1000;
  if (WIFSIGNALED(st)) return -WTERMSIG(st);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1000;
}

static void open_when_full(const fsys *f) {
  char path[512], fresh[512], filler[512];
  snprintf(path, sizeof path, "%s/existing.db", f->dir);
  snprintf(fresh, sizeof fresh, "%s/new.db", f->dir);
  snprintf(filler, sizeof filler, "%s/filler", f->dir);
  int rc;
  mq_store *s = open_store(path, 0, &rc);
  CHECK_OK(rc);
  if (!s) return;
  CHECK_OK(mq_queue_create(s, "q", NULL));
  int64_t id;
  for (int64_t i = 0; i < 20; i++) CHECK_OK(put_seq(s, i, &id));
  CHECK_OK(mq_store_close(s));

  CHECK(fill_to_full(filler) > 0);
  CHECK(fs_free(f->dir) < 65536);
  const char *which[2] = {fresh, path};
  for (int i = 0; i < 2; i++) {
    rc = open_in_child(which[i]);
    g_fig->opens_full++;
    if (rc < 0) {
      g_fig->opens_signal++;
      fprintf(stderr, "  %s %s: opening the %s store on a full file system: killed by signal %d\n",
              f->kind, f->size, i ? "existing" : "new", -rc);
    } else if (rc != MQ_EFULL && rc != MQ_ECANTOPEN) {
      g_fig->opens_bad_code++;
      fprintf(stderr, "  %s %s: opening the %s store on a full file system returned %d (%s)\n",
              f->kind, f->size, i ? "existing" : "new", rc, mq_errstr(rc));
    }
    CHECK(rc == MQ_EFULL || rc == MQ_ECANTOPEN);
  }

  /* With room again, the existing store opens and holds its 20 messages. */
  unlink(filler);
  test_unlink_store(fresh);
  s = open_store(path, 0, &rc);
  CHECK_OK(rc);
  if (s) {
    mq_queue_stats st;
    CHECK_OK(mq_queue_stats_get(s, "q", &st));
    CHECK(st.total == 20);
    CHECK_OK(mq_store_verify(s, NULL, NULL, NULL));
    CHECK_OK(mq_store_close(s));
  }
  test_unlink_store(path);
}

/* ---- Scenario: no floor, SQLite meets the full disk ---------------------- */

enum { S_NONE = 0, S_PUT_OK, S_REFUSED, S_ACKED, S_ACK_UNKNOWN };

static int scan_cb(void *ctx, const mq_msg *m, int state) {
  (void)state;
  unsigned char *seen = ctx;
  int64_t seq = payload_seq(m);
  if (seq < 0) {
    g_fig->bad_payload++;
    return 0;
  }
  seen[seq]++;
  return 0;
}

static void no_floor(const fsys *f) {
  char path[512], ballast[512];
  snprintf(path, sizeof path, "%s/nofloor.db", f->dir);
  snprintf(ballast, sizeof ballast, "%s/ballast", f->dir);
  unsigned char *state = calloc(MAX_SEQ, 1);
  unsigned char *seen = calloc(MAX_SEQ, 1);
  CHECK(state && seen);
  if (!state || !seen) {
    free(state);
    free(seen);
    return;
  }
  /* Room to give back afterwards, so the store can be reopened. */
  int fd = open(ballast, O_CREAT | O_WRONLY | O_TRUNC, 0600);
  static char zero[BALLAST];
  memset(zero, 0x5a, sizeof zero);
  CHECK(fd >= 0 && write(fd, zero, sizeof zero) == (ssize_t)sizeof zero);
  if (fd >= 0) close(fd);

  int rc;
  mq_store *s = open_store(path, 0, &rc);
  CHECK_OK(rc);
  if (!s) goto out;
  CHECK_OK(mq_queue_create(s, "q", NULL));
  int64_t seq = 0, first_fail = -1, extra = 0;
  while (seq < MAX_SEQ && extra < 40) {
    int64_t id;
    rc = put_seq(s, seq, &id);
    if (rc == MQ_OK) {
      state[seq] = S_PUT_OK;
    } else {
      state[seq] = S_REFUSED;
      if (rc == MQ_EFULL) g_fig->refusals_disk++;
      else {
        g_fig->refusals_other++;
        fprintf(stderr, "  %s %s: put %lld failed with %d (%s): %s\n", f->kind, f->size,
                (long long)seq, rc, mq_errstr(rc), mq_errmsg(s));
      }
      CHECK_RC(rc, MQ_EFULL);
      if (first_fail < 0) first_fail = seq;
    }
    if (first_fail >= 0) extra++;
    /* A consumer keeps up with one message in eight, before and after the
    ** disk filled.  An ack that fails with a definite code changed nothing;
    ** MQ_EUNKNOWN may have taken effect. */
    if (seq % 8 == 7 || first_fail >= 0) {
      mq_msg *m = NULL;
      int grc = mq_get(s, "q", NULL, &m);
      if (first_fail >= 0) g_fig->settles_tried++;
      CHECK(grc == MQ_OK || grc == MQ_EMPTY || grc == MQ_EFULL);
      if (grc == MQ_OK) {
        int64_t mseq = payload_seq(m);
        CHECK(mseq >= 0);
        if (first_fail >= 0) {
          g_fig->settles_ok++;
          g_fig->settles_tried++;
        }
        int arc = mq_ack(s, "q", mq_msg_receipt(m));
        CHECK(arc == MQ_OK || arc == MQ_EFULL || arc == MQ_EUNKNOWN || arc == MQ_EIO);
        if (mseq >= 0 && arc == MQ_OK) {
          state[mseq] = S_ACKED;
          g_fig->acked++;
        }
        if (mseq >= 0 && arc == MQ_EUNKNOWN) state[mseq] = S_ACK_UNKNOWN;
        if (arc == MQ_OK && first_fail >= 0) g_fig->settles_ok++;
        mq_msg_free(m);
      } else if (grc == MQ_EMPTY && first_fail >= 0) {
        g_fig->settles_ok++;
      }
    }
    seq++;
  }
  CHECK(first_fail > 0); /* the disk did fill, after some puts worked */
  rc = mq_store_close(s);
  CHECK(rc == MQ_OK || rc == MQ_EBUSY);

  /* Give room back, reopen, and account for every message. */
  unlink(ballast);
  s = open_store(path, 0, &rc);
  CHECK_OK(rc);
  if (!s) goto out;
  int64_t corrupt = 0;
  CHECK_OK(mq_queue_scan(s, "q", scan_cb, seen, &corrupt));
  CHECK(corrupt == 0);
  int64_t lost = 0, res = 0, refused_present = 0, dup = 0;
  for (int64_t i = 0; i < seq; i++) {
    if (seen[i] > 1) dup++;
    if (state[i] == S_PUT_OK && !seen[i]) lost++;
    if (state[i] == S_ACKED && seen[i]) res++;
    if (state[i] == S_REFUSED && seen[i]) refused_present++;
  }
  CHECK(lost == 0);
  CHECK(res == 0);
  CHECK(refused_present == 0);
  CHECK(dup == 0);
  if (lost || res || refused_present || dup)
    fprintf(stderr, "  %s %s: lost %lld, acked-then-present %lld, refused-but-stored %lld, "
            "stored twice %lld\n", f->kind, f->size, (long long)lost, (long long)res,
            (long long)refused_present, (long long)dup);
  g_fig->lost += lost;
  g_fig->resurrected += res;
  g_fig->refused_present += refused_present;
  CHECK_OK(mq_store_verify(s, NULL, NULL, NULL));
  rc = mq_store_close(s);
  CHECK(rc == MQ_OK || rc == MQ_EBUSY);
out:
  unlink(ballast);
  test_unlink_store(path);
  free(state);
  free(seen);
}

/* ---- Driver ------------------------------------------------------------- */

/* Run one scenario in a child: its CHECK failures and any signal fail the
** test; the parent goes on to clean up either way. */
static void run_child(const char *name, void (*fn)(const fsys *), const fsys *f) {
  fflush(NULL);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid < 0) return;
  if (pid == 0) {
    tu_child_setup();
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    alarm(120); /* a hang in the child fails it, the parent still cleans up */
    signal(SIGALRM, SIG_DFL);
    test_current = name;
    test_failures = test_checks = 0; /* count this scenario's own checks */
    fn(f);
    fprintf(stderr, "%s %s (%s %s)\n", test_failures ? "FAIL" : "ok  ", name, f->kind, f->size);
    fflush(NULL);
    _exit(test_failures ? 1 : 0);
  }
  int st = tu_wait(pid);
  test_checks++;
  if (st != 0) {
    test_failures++;
    fprintf(stderr, "FAIL %s on %s %s: child %s %d\n", name, f->kind, f->size,
            st >= 128 ? "died from signal" : "exited with", st >= 128 ? st - 128 : st);
  }
}

int main(void) {
  const char *scale = getenv("MQ_FAULT_SCALE");
  if (scale && atoi(scale) > 0) g_scale = atoi(scale);
  setvbuf(stdout, NULL, _IOLBF, 0);
  g_fig = mmap(NULL, sizeof *g_fig, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (g_fig == MAP_FAILED) return 2;
  memset(g_fig, 0, sizeof *g_fig);

  int root = 0;
  if (!enter_mount_namespace(&root)) {
    printf("SKIPPED: test_diskfull: not root and no user namespace to mount a tmpfs in\n");
    return 0;
  }
  const char *tmp = getenv("MQ_TEST_TMPDIR");
  if (!tmp || !*tmp) tmp = "/tmp";
  mkdir(tmp, 0700);
  snprintf(g_base, sizeof g_base, "%s/diskfull-XXXXXX", tmp);
  if (!mkdtemp(g_base)) {
    perror("mkdtemp");
    return 2;
  }
  atexit(cleanup_all);
  signal(SIGINT, on_fatal_signal);
  signal(SIGTERM, on_fatal_signal);
  signal(SIGHUP, on_fatal_signal);

  /* Small floors on small file systems (an SD card, a data partition of a
  ** few MiB), and a floor larger than a full WAL (1000 pages) on a larger
  ** one. */
  fsys fs[NFS] = {{"tmpfs", "2m", 256 * 1024, "", "", 0},
                  {"tmpfs", "8m", 256 * 1024, "", "", 0},
                  {"tmpfs", "24m", 8 * 1024 * 1024, "", "", 0},
                  {"ext4", "8m", 256 * 1024, "", "", 0}};
  char tested[160] = "";
  for (int i = 0; i < NFS; i++) {
    if (strcmp(fs[i].kind, "ext4") == 0 && !root) {
      printf("SKIPPED: ext4 on a loop device needs root\n");
      continue;
    }
    if (fs_mount(&fs[i], i) != 0) {
      printf("SKIPPED: %s %s could not be mounted (see above)\n", fs[i].kind, fs[i].size);
      fs_umount(&fs[i]);
      /* tmpfs must work where we could enter a namespace; ext4 may not */
      if (strcmp(fs[i].kind, "tmpfs") == 0) CHECK(!"tmpfs mount failed");
      continue;
    }
    run_child("floor_self_fill", floor_self_fill, &fs[i]);
    run_child("floor_external_fill", floor_external_fill, &fs[i]);
    run_child("open_when_full", open_when_full, &fs[i]);
    run_child("no_floor", no_floor, &fs[i]);
    fs_umount(&fs[i]);
    g_mounted[i] = NULL;
    g_fig->fs_tested++;
    snprintf(tested + strlen(tested), sizeof tested - strlen(tested), "%s%s-%s",
             tested[0] ? "/" : "", fs[i].kind, fs[i].size);
  }
  cleanup_all();
  CHECK(g_fig->fs_tested > 0);

  printf("diskfull: fill cycles %d on %s · enqueue refusals with MQ_EFULL %d (floor %d, disk %d; "
         "other codes %d; floor overshoots %d) · settles while full %d/%d · checkpoints while "
         "full %d/%d · puts resumed %d/%d · reopen-on-full %d: signals %d, other codes %d · "
         "acked %lld · acknowledged sends lost %lld, acked-then-present %lld, refused-but-stored "
         "%lld\n",
         g_fig->cycles, tested[0] ? tested : "none", g_fig->refusals_floor + g_fig->refusals_disk,
         g_fig->refusals_floor, g_fig->refusals_disk, g_fig->refusals_other,
         g_fig->floor_overshoot, g_fig->settles_ok, g_fig->settles_tried, g_fig->ckpt_ok,
         g_fig->ckpt_tried, g_fig->resumed, g_fig->cycles, g_fig->opens_full,
         g_fig->opens_signal, g_fig->opens_bad_code, (long long)g_fig->acked,
         (long long)g_fig->lost, (long long)g_fig->resurrected, (long long)g_fig->refused_present);
  return test_done();
}
