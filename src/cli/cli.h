/*
** cli.h -- what the modules of the `mq` command-line tool share: the run
** context, exit statuses, the argument parser, output helpers (human text,
** JSON, base64) and the JSON-lines record reader used by import.
**
** The tool is a client of mq.h and nothing else: it never includes the
** library's internal header, so everything it does a user's program could
** do too.  Its files are not part of the library or of the amalgamation;
** their non-static names start with cli_ so that they can never collide
** with the library's when both are linked into one program.
**
** Error handling follows one pattern: a command returns an exit status
** (CLI_EXIT_*), and every failure path has already written at least one line,
** starting "mq: ", to stderr by the time it returns.  stdout carries only
** results, so a script can always parse it.
*/
#ifndef MQ_CLI_H
#define MQ_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "mq.h"

/* Exit statuses: one per class of failure, documented in doc/cli.md.
** They never change meaning once released, like the library's codes. */
#define CLI_EXIT_OK 0
#define CLI_EXIT_OTHER 1    /* anything not below: I/O, memory, internal */
#define CLI_EXIT_USAGE 2    /* bad command line or bad input data */
#define CLI_EXIT_EMPTY 3    /* get: no message was available */
#define CLI_EXIT_NOTFOUND 4 /* no such queue */
#define CLI_EXIT_STALE 5    /* a receipt's lease is over */
#define CLI_EXIT_DAMAGED 6  /* the store or a payload is damaged */
#define CLI_EXIT_CANTOPEN 7 /* cannot open, not an mq store, newer format */
#define CLI_EXIT_FULL 8     /* disk full, or the outcome is unknown */
#define CLI_EXIT_BUSY 9     /* the file stayed locked past --busy-timeout */

/* How a command opens the store. */
#define CLI_OPEN_READ 0   /* read-only; the file must exist */
#define CLI_OPEN_WRITE 1  /* read-write; the file must exist */
#define CLI_OPEN_CREATE 2 /* read-write; a missing file is created */

typedef struct cli_ctx {
  const char *path;     /* the store file */
  const char *cmd;      /* the command's name, for messages */
  const char *usage;    /* the command's one-line synopsis */
  int json;             /* --json: one JSON object per line */
  int sync;             /* MQ_SYNC_* from --sync */
  int busy_timeout_ms;  /* --busy-timeout, or -1 for the library default */
  int page_size;        /* --page-size for a new file, or 0 */
  int clock_hook;       /* MQ_CLI_CLOCK_OFFSET_MS is set: the tool installs
                            its own clock (wall clock + clock_offset), so
                            tests can move time without sleeping */
  int64_t clock_offset;
  mq_store *store;      /* open once cli_open succeeded */
} cli_ctx;

/* ---- cli_main.c ---------------------------------------------------------- */

/* Open ctx->path as mode (CLI_OPEN_*).  On failure prints the reason and
** returns its exit status; on success CLI_EXIT_OK and ctx->store is set. */
int cli_open(cli_ctx *ctx, int mode);
/* Print "mq: " and the library's message for rc on the store (or the
** code's text), return the exit status for rc. */
int cli_fail(cli_ctx *ctx, int rc);
/* Same, with a prefix naming what failed ("receipt 2: ..."). */
int cli_fail_at(cli_ctx *ctx, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Print "mq: <message>" and the command's synopsis; return CLI_EXIT_USAGE. */
int cli_usage(cli_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* For a command given a queue name: if name is a topic (which holds no
** messages of its own), print why the command does not apply and return
** CLI_EXIT_USAGE; otherwise CLI_EXIT_OK (a missing name included: the
** command's own call reports that).  what is the command's action. */
int cli_reject_topic(cli_ctx *ctx, const char *name, const char *what);
/* Print "mq: <message>" and return status. */
int cli_error(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The exit status for a library result code. */
int cli_exit_status(int rc);
/* Flush stdout; a failed write (full disk, closed pipe) is an error. */
int cli_finish(cli_ctx *ctx, int status);

/* ---- cli_args.c ---------------------------------------------------------- */

#define CLI_FLAG 0  /* --name */
#define CLI_VALUE 1 /* --name VALUE or --name=VALUE; the last one counts */
#define CLI_MULTI 2 /* --name VALUE, repeatable; every value kept */

typedef struct cli_optspec {
  const char *name; /* without the leading "--" */
  int kind;         /* CLI_FLAG, CLI_VALUE or CLI_MULTI */
} cli_optspec;

#define CLI_MAX_OPTS 16

typedef struct cli_args {
  const char **pos; /* positional arguments, in order */
  size_t npos;
  const char *val[CLI_MAX_OPTS];    /* per spec entry: NULL if absent, "" for a flag */
  const char **multi[CLI_MAX_OPTS]; /* per CLI_MULTI entry: every value */
  size_t nmulti[CLI_MAX_OPTS];
} cli_args;

/* Parse a command's arguments (argv[0] is the first one after the command
** name) against spec (n entries) plus the global options, which set ctx.
** Options may come before, between or after positional arguments; "--"
** ends them.  On a bad option prints a usage message and returns
** CLI_EXIT_USAGE; otherwise CLI_EXIT_OK.  Free with cli_args_free. */
int cli_args_parse(cli_ctx *ctx, int argc, char **argv, const cli_optspec *spec, size_t n,
                   cli_args *out);
void cli_args_free(cli_args *a);
/* Whether name[0..len) is a global option (json, sync, busy-timeout). */
int cli_global_known(const char *name, size_t len);
/* Whether a global option takes a value. */
int cli_global_takes_value(const char *name);
/* Apply a global option (name without "--"; value NULL when none was
** given).  Returns CLI_EXIT_OK or, after a message, CLI_EXIT_USAGE. */
int cli_global_option(cli_ctx *ctx, const char *name, const char *value);

/* Parsers for option values; each prints a usage message naming opt and
** returns CLI_EXIT_USAGE on bad input. */
int cli_parse_ms(cli_ctx *ctx, const char *opt, const char *s, int64_t *out);
int cli_parse_size(cli_ctx *ctx, const char *opt, const char *s, int64_t *out);
int cli_parse_int(cli_ctx *ctx, const char *opt, const char *s, int64_t min, int64_t max,
                  int64_t *out);

/* Read all of a stream; *buf is NUL-terminated and owned by the caller.
** More than limit bytes is an error (returns CLI_EXIT_USAGE, message
** printed); an I/O error returns CLI_EXIT_OTHER. */
int cli_read_all(FILE *f, size_t limit, char **buf, size_t *len);

/* ---- cli_out.c ----------------------------------------------------------- */

/* The length of the longest well-formed UTF-8 prefix of s[0..len): the
** offset of the first bad sequence, or len. */
size_t cli_utf8_prefix(const unsigned char *s, size_t len);
/* 1 if s[0..len) is well-formed UTF-8 (no overlong forms, no surrogates,
** nothing above U+10FFFF). */
int cli_utf8_valid(const unsigned char *s, size_t len);
/* 1 if the bytes can be shown as text: valid UTF-8 with no control byte
** other than tab, newline and carriage return. */
int cli_is_text(const unsigned char *s, size_t len);

/* A JSON object being written to a stream, one member at a time. */
typedef struct cli_jobj {
  FILE *f;
  int n; /* members written so far */
} cli_jobj;

void cli_jobj_begin(cli_jobj *o, FILE *f);
void cli_jobj_int(cli_jobj *o, const char *key, int64_t v);
void cli_jobj_double(cli_jobj *o, const char *key, double v);
void cli_jobj_bool(cli_jobj *o, const char *key, int v);
void cli_jobj_null(cli_jobj *o, const char *key);
/* A string member; s must be valid UTF-8 (the caller checks). */
void cli_jobj_str(cli_jobj *o, const char *key, const char *s, size_t len);
/* A member whose value is base64 text. */
void cli_jobj_base64(cli_jobj *o, const char *key, const void *data, size_t len);
/* Open a nested object as the value of key; write into it with sub, then
** cli_jobj_close(sub). */
void cli_jobj_nested(cli_jobj *o, const char *key, cli_jobj *sub);
void cli_jobj_close(cli_jobj *o);
/* Close the object and end the line. */
void cli_jobj_end(cli_jobj *o);
/* Write s as a JSON string, quotes included. */
void cli_json_string(FILE *f, const char *s, size_t len);

/* Base64 (RFC 4648, with padding).  Encoded length of n bytes. */
size_t cli_base64_len(size_t n);
void cli_base64_encode(const void *data, size_t n, char *out);
/* Strict decode of s[0..len) into out (room for len/4*3 bytes): only the
** standard alphabet, padding required, no spare bits.  Returns 0 or -1. */
int cli_base64_decode(const char *s, size_t len, unsigned char *out, size_t *outlen);

/* Write bytes for a human reader: control bytes (and invalid UTF-8) as
** \xNN so nothing can drive the terminal. */
void cli_print_safe(FILE *f, const char *s, size_t len);
/* Format a store-clock time (ms since the epoch) as ISO 8601 UTC. */
void cli_format_time(int64_t ms, char *buf, size_t n);

/* A duration in ms or a size in bytes in the syntax the options take
** ("30s", "5m", "1500", "64K"), so what ls prints can be typed back. */
void cli_format_ms(int64_t ms, char *buf, size_t n);
void cli_format_size(int64_t bytes, char *buf, size_t n);
/* "queue", "topic" or "subscription" for an MQ_KIND_*. */
const char *cli_kind_name(int kind);
/* The options of info as members of o (--json), or as " name=value"
** pairs on f (human).  A topic gets only the options a topic uses
** (retention, max_payload, compress_above, dedup_window), a subscription
** also its filter. */
void cli_info_json(cli_jobj *o, const mq_queue_info *info);
void cli_info_human(FILE *f, const mq_queue_info *info);
/* All seven queue options of info as members of o: the export header. */
void cli_options_json(cli_jobj *o, const mq_queue_info *info);

/* Write one message of get or peek: a JSON line (ctx->json) or a block of
** "name: value" lines followed by an empty line. */
void cli_print_msg(cli_ctx *ctx, const mq_msg *m);
/* Write one message as an export line (always JSON); now is the store's
** time, against which the remaining delay and TTL are given. */
void cli_export_line(FILE *f, const mq_msg *m, int state, int64_t now);
/* The name of an MQ_STATE_*, or NULL. */
const char *cli_state_name(int state);

/* ---- cli_jsonl.c --------------------------------------------------------- */

/* One message read from an export line.  The strings point into memory the
** record owns; cli_record_free releases it. */
typedef struct cli_record {
  int state;        /* MQ_STATE_*, or -1 if absent */
  int64_t priority; /* 0 if absent */
  int has_visible_at, has_delay, has_expires_at, has_ttl;
  int64_t visible_at, delay_ms, expires_at, ttl_ms;
  unsigned char *body; /* decoded payload (never NULL once parsed) */
  size_t body_len;
  mq_header *headers; /* n_headers pairs (owned), NULL if none */
  size_t n_headers;
  char *arena; /* owns the decoded strings */
} cli_record;

/* Parse one line (len bytes, no newline) into rec.  Returns 0, or -1 with
** a description of the first problem (and its column) in err. */
int cli_record_parse(const char *line, size_t len, cli_record *rec, char *err, size_t errlen);
void cli_record_free(cli_record *rec);

/* The first line of an export: the queue's name and options.  Only the
** options present on the line are set in o (bit CLI_QO_* of given); dlq
** is NULL for a "dlq":null.  Strings point into arena. */
typedef struct cli_header {
  const char *queue; /* NULL if absent */
  unsigned given;
  mq_queue_options o;
  char *arena;
} cli_header;

/* If line is an export header -- an object whose first member is "queue"
** or "options" -- parse it into h and return 1, or -1 with the problem in
** err if it is malformed.  Return 0 if it is not a header (a message
** line); h is then empty.  Free with cli_header_free after 1. */
int cli_header_parse(const char *line, size_t len, cli_header *h, char *err, size_t errlen);
void cli_header_free(cli_header *h);

/* ---- commands ------------------------------------------------------------ */

/* Each runs one command: argv[0] is the first argument after its name. */
int cli_cmd_create(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_serve(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_drop(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_purge(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_ls(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_stats(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_redrive(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_check(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_info(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_put(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_get(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_peek(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_ack(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_nack(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_touch(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_export(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_import(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_bench(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_topic(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_publish(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_subscribe(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_unsubscribe(cli_ctx *ctx, int argc, char **argv);

/* The queue options, in this order everywhere: the bits of a `given`
** mask, the export header's fields, the specs below. */
enum {
  CLI_QO_VISIBILITY,
  CLI_QO_MAX_RECEIVES,
  CLI_QO_DLQ,
  CLI_QO_RETENTION,
  CLI_QO_MAX_PAYLOAD,
  CLI_QO_COMPRESS_ABOVE,
  CLI_QO_DEDUP_WINDOW,
  CLI_QUEUE_NOPTS
};
/* The specs of all seven, for create and import. */
#define CLI_QUEUE_OPTSPECS                                                                   \
  {"visibility", CLI_VALUE}, {"max-receives", CLI_VALUE}, {"dlq", CLI_VALUE},                \
      {"retention", CLI_VALUE}, {"max-payload", CLI_VALUE}, {"compress-above", CLI_VALUE}, { \
    "dedup-window", CLI_VALUE                                                                \
  }
/* Set the queue options CLI_QO_from..to-1 given on the command line in *o
** (which the caller initialised), reading option k from spec index
** first + k - from.  "--dlq ''" means no dlq.  Bit k of *given is set for
** each option present. */
int cli_queue_options(cli_ctx *ctx, const cli_args *a, size_t first, int from, int to,
                      mq_queue_options *o, unsigned *given);
/* Write the stats of n queues (info may be NULL, else one per queue): a
** table, or with --json one line each with kind and options. */
void cli_stats_print(cli_ctx *ctx, char **names, const mq_queue_stats *s,
                     const mq_queue_info *info, size_t n);
/* Make sure queue exists (put --create): a missing queue is created with
** o, an existing one is used as it is. */
int cli_ensure_queue(cli_ctx *ctx, const char *queue, const mq_queue_options *o);

#endif /* MQ_CLI_H */
