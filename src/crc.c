/*
** crc.c -- the CRC-32 stored with every payload, with carry-less
** multiplication where the CPU has it.
**
** The checksum is zlib's crc32 (the IEEE 802.3 polynomial): the format
** stores it, so every implementation here must give zlib's result, which
** the tests check for every length and alignment.  It is computed at every
** put and checked at every read.  For the small messages a PULL endpoint
** takes by the million, zlib 1.2.13's crc32_z costs about 90 ns per 100
** bytes, mostly set-up per call: a quarter of a core at 3M messages/s.
** x86-64 CPUs have had PCLMULQDQ since 2010; folding 16 bytes per step with
** it (Gopal et al., "Fast CRC Computation for Generic Polynomials Using
** PCLMULQDQ Instruction", Intel, 2009) takes about 10 ns per 100 bytes.
** Other CPUs, and inputs under 16 bytes, use zlib.
*/
#include "mqi.h"

#include <string.h>
#include <zlib.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CRC_CLMUL 1
#include <cpuid.h>
#include <immintrin.h>
#include <stdatomic.h>
#endif

#ifdef CRC_CLMUL
/* The fold constants, in the bit-reflected domain of zlib's CRC: x^k mod
** P(x), reflected and shifted left by one bit, for k = 4*128+32 and
** 4*128-32 (four lanes, 64 bytes ahead), 128+32 and 128-32 (one lane, 16
** bytes ahead) and 64; then floor(x^64 / P(x)) and P(x) itself, reflected
** (33 bits), for the final Barrett reduction.  In Python, with
** P = 0x104C11DB7, xmod(k) = x^k mod P by shift-and-xor, refl(v, b) = v's
** low b bits reversed: refl(xmod(k), 32) << 1 for the K's, refl(x^64 // P,
** 33) and refl(P, 33); tests/test_crc.c checks the results against zlib. */
#define CRC_K1 0x154442bd4LL
#define CRC_K2 0x1c6e41596LL
#define CRC_K3 0x1751997d0LL
#define CRC_K4 0x0ccaa009eLL
#define CRC_K5 0x163cd6124LL
#define CRC_MU 0x1f7011641LL
#define CRC_P 0x1db710641LL

#define CRC_TARGET __attribute__((target("pclmul,sse2")))

/* 16 bytes from anywhere: memcpy, not a cast to __m128i *, which C makes
** undefined for a misaligned address; it compiles to one unaligned load. */
CRC_TARGET static inline __m128i crc_load(const unsigned char *p) {
  __m128i v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* x times x^k (k's low half), plus x's high half times x^k' (k's high
** half): x moved that many bits further along the message. */
CRC_TARGET static inline __m128i crc_fold(__m128i x, __m128i k) {
  return _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11));
}

/* The CRC register (pre- and post-inversion are the caller's) after len
** bytes at p; len is a multiple of 16, at least 16. */
CRC_TARGET static uint32_t crc_clmul(uint32_t crc, const unsigned char *p, size_t len) {
  const __m128i k12 = _mm_set_epi64x(CRC_K2, CRC_K1);
  const __m128i k34 = _mm_set_epi64x(CRC_K4, CRC_K3);
  const __m128i low32 = _mm_set_epi32(0, 0, 0, -1);
  __m128i x = _mm_xor_si128(crc_load(p), _mm_cvtsi32_si128((int)crc));
  p += 16;
  len -= 16;
  if (len >= 48) {
    /* Four independent lanes keep the multiplier busy. */
    __m128i x1 = crc_load(p), x2 = crc_load(p + 16), x3 = crc_load(p + 32);
    p += 48;
    len -= 48;
    for (; len >= 64; p += 64, len -= 64) {
      x = _mm_xor_si128(crc_fold(x, k12), crc_load(p));
      x1 = _mm_xor_si128(crc_fold(x1, k12), crc_load(p + 16));
      x2 = _mm_xor_si128(crc_fold(x2, k12), crc_load(p + 32));
      x3 = _mm_xor_si128(crc_fold(x3, k12), crc_load(p + 48));
    }
    x = _mm_xor_si128(crc_fold(x, k34), x1);
    x = _mm_xor_si128(crc_fold(x, k34), x2);
    x = _mm_xor_si128(crc_fold(x, k34), x3);
  }
  for (; len >= 16; p += 16, len -= 16) x = _mm_xor_si128(crc_fold(x, k34), crc_load(p));
  /* 128 bits to 64, appending the 32 zero bits the CRC's definition
  ** multiplies the message by; then 64 to 32 bits. */
  x = _mm_xor_si128(_mm_clmulepi64_si128(k34, x, 0x01), _mm_srli_si128(x, 8));
  x = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x, low32), _mm_set_epi64x(0, CRC_K5), 0x00),
                    _mm_srli_si128(x, 4));
  /* Barrett reduction: the remainder of x by P without a division. */
  const __m128i mp = _mm_set_epi64x(CRC_MU, CRC_P);
  __m128i t = _mm_clmulepi64_si128(_mm_and_si128(x, low32), mp, 0x10);
  t = _mm_clmulepi64_si128(_mm_and_si128(t, low32), mp, 0x00);
  x = _mm_xor_si128(x, t);
  return (uint32_t)_mm_cvtsi128_si32(_mm_srli_si128(x, 4));
}

/* 0 not yet asked, 1 PCLMULQDQ present, 2 absent.  Asked once: CPUID traps
** to the hypervisor on a virtual machine. */
static _Atomic int crc_cpu;

static int crc_have_clmul(void) {
  int v = atomic_load_explicit(&crc_cpu, memory_order_relaxed);
  if (v == 0) {
    unsigned a = 0, b = 0, c = 0, d = 0;
    v = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_PCLMUL) ? 1 : 2;
    atomic_store_explicit(&crc_cpu, v, memory_order_relaxed);
  }
  return v == 1;
}
#endif

int mqi_crc32_accelerated(void) {
#ifdef CRC_CLMUL
  return crc_have_clmul();
#else
  return 0;
#endif
}

uint32_t mqi_crc32(const void *data, size_t len) {
  const unsigned char *p = data ? data : (const unsigned char *)"";
  uint32_t crc = 0;
#ifdef CRC_CLMUL
  if (len >= 16 && crc_have_clmul()) {
    size_t n = len & ~(size_t)15;
    crc = ~crc_clmul(0xffffffffu, p, n);
    p += n;
    len -= n;
  }
#endif
  return (uint32_t)crc32_z(crc, p, len); /* the tail of under 16 bytes */
}
