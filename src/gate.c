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
** safe.  That is what makes it robust: a process killed while holding a
** ticket stalls the next writer for at most GATE_SKIP_MS, after which that
** writer skips the dead ticket; a writer whose ticket was skipped simply
** proceeds.  Counters only ever move forward and the comparisons are done
** modulo 2^32, so stale or garbled shared memory costs at most a moment of
** unfairness, never a hang.
**
** The same shared page carries a sequence number bumped by every commit that
** may have made a message ready.  A consumer with nothing to get waits on
** it, so a put in any process wakes it at once, with no polling.
**
** The shared memory is a POSIX shm object named after the file's device and
** inode ("/mq-<dev>-<ino>").  If it cannot be created (no /dev/shm, another
** user owns it), a private gate is used: everything still works, but waits
** notice another process's put only by timing out.
*/
#include "mqi.h"

#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GATE_MAGIC 0x6D714701u
#define GATE_SKIP_MS 250 /* how long the next writer waits on a silent holder */
#define GATE_SHM_SIZE 4096

typedef struct gate_shared {
  _Atomic uint32_t magic;
  _Atomic uint32_t next;    /* next ticket to hand out */
  _Atomic uint32_t serving; /* ticket whose turn it is */
  _Atomic uint32_t seq;     /* bumped when messages may have become ready */
  _Atomic uint32_t waiters; /* consumers sleeping on seq (a hint) */
} gate_shared;

struct mqi_gate {
  gate_shared *sh;
  int shared; /* sh is a shared mapping, not malloc'd */
};

static gate_shared *gate_map(uint64_t dev, uint64_t ino, unsigned mode) {
  char name[64];
  snprintf(name, sizeof name, "/mq-%llx-%llx", (unsigned long long)dev, (unsigned long long)ino);
  int fd = shm_open(name, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, (mode_t)mode);
  if (fd < 0) return NULL;
  struct stat st;
  /* Someone else's object could feed us anything; only our own is used. */
  if (fstat(fd, &st) != 0 || (st.st_uid != geteuid() && geteuid() != 0)) {
    close(fd);
    return NULL;
  }
  if (st.st_size < GATE_SHM_SIZE && ftruncate(fd, GATE_SHM_SIZE) != 0) {
    close(fd);
    return NULL;
  }
  void *p = mmap(NULL, GATE_SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return NULL;
  gate_shared *sh = p;
  /* A new object is zero-filled, which is a valid idle gate. */
  uint32_t zero = 0;
  atomic_compare_exchange_strong(&sh->magic, &zero, GATE_MAGIC);
  return sh;
}

mqi_gate *mqi_gate_open(uint64_t dev, uint64_t ino, unsigned mode) {
  mqi_gate *g = calloc(1, sizeof *g);
  if (!g) return NULL;
  g->sh = gate_map(dev, ino, mode);
  if (g->sh) {
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

void mqi_gate_close(mqi_gate *g) {
  if (!g) return;
  if (g->shared)
    munmap(g->sh, GATE_SHM_SIZE);
  else
    free(g->sh);
  free(g);
}

int mqi_gate_is_shared(const mqi_gate *g) { return g->shared; }

uint32_t mqi_gate_enter(mqi_gate *g) {
  gate_shared *sh = g->sh;
  uint32_t t = atomic_fetch_add(&sh->next, 1);
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
    if (now - since >= GATE_SKIP_MS) {
      /* The holder has been silent too long; presumably it died.  Only the
      ** writer next in line skips it, so one dead ticket costs one wait. */
      if (cur + 1 == t) atomic_compare_exchange_strong(&sh->serving, &cur, t);
      since = now;
      continue;
    }
    mqi_os_futex_wait((uint32_t *)&sh->serving, cur, GATE_SKIP_MS - (now - since));
  }
}

void mqi_gate_leave(mqi_gate *g, uint32_t ticket) {
  gate_shared *sh = g->sh;
  uint32_t expect = ticket;
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
