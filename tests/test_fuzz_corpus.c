/*
** test_fuzz_corpus.c -- replay every fuzz corpus through its fuzz target,
** without libFuzzer, as an ordinary ctest.
**
** The fuzz targets (fuzz/fuzz_*.c) are #included here with their
** LLVMFuzzerTestOneInput renamed, so CI runs exactly the code libFuzzer
** runs, on every seed and every crasher ever saved in fuzz/corpus/<target>/
** -- a fixed bug stays fixed even on machines without clang.  Each file is
** also replayed cut short at every length (up to 1 KiB), which is the
** "peer hung up after n bytes" case the decoders must survive anyway.  The
** targets check their own properties and abort() on a violation, which
** fails this test; it also fails if a corpus directory is missing or empty,
** since a replay of nothing proves nothing.
**
** The corpus is found from MQ_SOURCE_DIR when the build defines it, else
** relative to this file's path (__FILE__ is absolute in CMake builds), else
** from $MQ_FUZZ_CORPUS.
*/
#include <dirent.h>

#include "harness.h"

#define LLVMFuzzerTestOneInput fuzz_zmtp_greeting_one
#include "../fuzz/fuzz_zmtp_greeting.c"
#undef LLVMFuzzerTestOneInput

#define LLVMFuzzerTestOneInput fuzz_zmtp_frames_one
#include "../fuzz/fuzz_zmtp_frames.c"
#undef LLVMFuzzerTestOneInput

#define LLVMFuzzerTestOneInput fuzz_zmtp_cmd_one
#include "../fuzz/fuzz_zmtp_cmd.c"
#undef LLVMFuzzerTestOneInput

#define LLVMFuzzerTestOneInput fuzz_zmtp_router_one
#include "../fuzz/fuzz_zmtp_router.c"
#undef LLVMFuzzerTestOneInput

typedef int (*tfc_target_fn)(const uint8_t *data, size_t size);

static const struct {
  const char *name;
  tfc_target_fn fn;
} tfc_targets[] = {
    {"fuzz_zmtp_greeting", fuzz_zmtp_greeting_one},
    {"fuzz_zmtp_frames", fuzz_zmtp_frames_one},
    {"fuzz_zmtp_cmd", fuzz_zmtp_cmd_one},
    {"fuzz_zmtp_router", fuzz_zmtp_router_one},
};

#define TFC_MAX_FILE (1u << 20)  /* corpus files are small; refuse surprises */
#define TFC_PREFIX_MAX 1024      /* replay every prefix of files this small */

static char tfc_root[1024];

static void tfc_find_root(void) {
  const char *env = getenv("MQ_FUZZ_CORPUS");
  if (env && *env) {
    snprintf(tfc_root, sizeof tfc_root, "%s", env);
    return;
  }
#ifdef MQ_SOURCE_DIR
  snprintf(tfc_root, sizeof tfc_root, "%s/fuzz/corpus", MQ_SOURCE_DIR);
#else
  /* __FILE__ is .../tests/test_fuzz_corpus.c: go up two components. */
  char here[900];
  snprintf(here, sizeof here, "%s", __FILE__);
  char *slash = strrchr(here, '/');
  if (slash) *slash = 0; else snprintf(here, sizeof here, ".");
  slash = strrchr(here, '/');
  if (slash)
    *slash = 0;
  else
    snprintf(here, sizeof here, "%s", strcmp(here, "tests") == 0 ? "." : "..");
  snprintf(tfc_root, sizeof tfc_root, "%s/fuzz/corpus", here);
#endif
}

/* Read a whole file into an exact-size heap block; NULL on failure. */
static uint8_t *tfc_read(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  uint8_t *buf = NULL;
  *len = 0;
  if (!f) return NULL;
  if (fseek(f, 0, SEEK_END) == 0) {
    long n = ftell(f);
    if (n >= 0 && (unsigned long)n <= TFC_MAX_FILE && fseek(f, 0, SEEK_SET) == 0) {
      buf = malloc(n ? (size_t)n : 1);
      if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) {
        *len = (size_t)n;
      } else {
        free(buf);
        buf = NULL;
      }
    }
  }
  fclose(f);
  return buf;
}

/* Replay one target's corpus; returns the number of files run. */
static int tfc_replay(const char *name, tfc_target_fn fn) {
  char dir[1200];
  int files = 0;
  snprintf(dir, sizeof dir, "%s/%s", tfc_root, name);
  DIR *d = opendir(dir);
  if (!d) {
    fprintf(stderr, "cannot open corpus %s\n", dir);
    return 0;
  }
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    char path[1500];
    struct stat st;
    size_t len;
    if (e->d_name[0] == '.') continue;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
    uint8_t *buf = tfc_read(path, &len);
    CHECK(buf != NULL);
    if (!buf) continue;
    CHECK(fn(buf, len) == 0);
    if (len <= TFC_PREFIX_MAX) {
      for (size_t cut = 0; cut < len; cut++) {
        /* Each prefix in its own exact-size block, for ASan's sake. */
        uint8_t *pre = malloc(cut ? cut : 1);
        if (cut) memcpy(pre, buf, cut);
        CHECK(fn(pre, cut) == 0);
        free(pre);
      }
    }
    free(buf);
    files++;
  }
  closedir(d);
  return files;
}

static void test_replay_corpora(void) {
  tfc_find_root();
  for (size_t i = 0; i < sizeof tfc_targets / sizeof tfc_targets[0]; i++) {
    int files = tfc_replay(tfc_targets[i].name, tfc_targets[i].fn);
    fprintf(stderr, "  %s: %d corpus files\n", tfc_targets[i].name, files);
    CHECK(files > 0);
  }
}

/* The renamed entry points are wired to the right targets: each accepts
** the empty input and a minimal valid input of its own format. */
static void test_targets_accept_trivial_inputs(void) {
  static const uint8_t greeting[] = {0x00, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3};
  static const uint8_t frames[] = {0x80 | 10, 0x80 | 10, 0, 0x80 | 12, 0,
                                   0x01, 0x02, 'h', 'i', 0x00, 0x00};
  static const uint8_t cmd[] = {0x04, 'P', 'I', 'N', 'G', 0x00, 0x0f};
  static const uint8_t router[] = {3, 'M', 'Q', '1', 3, 'G', 'E', 'T', 4, 'j', 'o', 'b', 's'};
  for (size_t i = 0; i < sizeof tfc_targets / sizeof tfc_targets[0]; i++)
    CHECK(tfc_targets[i].fn((const uint8_t *)"", 0) == 0);
  CHECK(fuzz_zmtp_greeting_one(greeting, sizeof greeting) == 0);
  CHECK(fuzz_zmtp_frames_one(frames, sizeof frames) == 0);
  CHECK(fuzz_zmtp_cmd_one(cmd, sizeof cmd) == 0);
  CHECK(fuzz_zmtp_router_one(router, sizeof router) == 0);
}

int main(void) {
  TEST(test_targets_accept_trivial_inputs);
  TEST(test_replay_corpora);
  return test_done();
}
