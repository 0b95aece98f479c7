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

#include "zmtp_net.h"

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
