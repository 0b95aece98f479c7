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
#include "mqi.h"

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
