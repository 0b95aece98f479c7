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
#include "mqi.h"

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
