/*
** cli_main.c -- the `mq` command-line tool: global options, the command
** table with its help texts, opening the store, and turning library result
** codes into exit statuses and one-line messages.
**
** The grammar is `mq [GLOBAL...] FILE COMMAND [ARGS]`, where global options
** may also appear among the command's arguments.  Parsing finishes before
** anything touches the file, so a mistyped command line never creates,
** opens or changes a store.  Each command decides how the file is opened
** (read-only for commands that only read; a missing file is created only by
** create, topic create, put --create and import): see cli_open.
**
** Time: by default the store is opened without a clock, so the tool runs on
** the store clock that every application of the file shares, and reads it
** with mq_store_now.  MQ_CLI_CLOCK_OFFSET_MS, a test hook, replaces it with
** the wall clock plus an offset (cli_hook_clock).
**
** Exit statuses are a contract with scripts, like the library's result
** codes: one per class of failure (cli.h, doc/cli.md), and every failure
** writes at least one "mq: " line to stderr, and stdout carries only results.
*/
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

typedef struct cli_command {
  const char *name;
  int (*run)(cli_ctx *ctx, int argc, char **argv);
  const char *synopsis; /* after "mq FILE " */
  const char *help;     /* what it does and its options */
} cli_command;

static const cli_command cli_commands[] = {
    {"create", cli_cmd_create,
     "create QUEUE [--visibility MS] [--max-receives N --dlq QUEUE] [--retention MS]\n"
     "       [--max-payload BYTES] [--compress-above BYTES] [--dedup-window MS]",
     "Create a queue (creating FILE if it does not exist).  Creating a queue that\n"
     "exists with the same options succeeds; with other options it fails.\n"
     "  --visibility MS      default lease length (30s)\n"
     "  --max-receives N     deliveries before a message is dead-lettered (0: no limit)\n"
     "  --dlq QUEUE          where dead letters go (an existing queue); without it they\n"
     "                       stay in this queue in the dead state\n"
     "  --retention MS       delete messages older than this unread (0: keep)\n"
     "  --max-payload BYTES  largest payload accepted (1M)\n"
     "  --compress-above BYTES  zlib-compress larger payloads (0: never)\n"
     "  --dedup-window MS    how long a dedup key is remembered (5m)\n"},
    {"put", cli_cmd_put,
     "put QUEUE [DATA] [--delay MS] [--priority N] [--ttl MS] [--dedup KEY]\n"
     "       [--header NAME=VALUE]... [--lines] [--create]",
     "Put one message and print its id.  Without DATA (or with DATA \"-\") the\n"
     "payload is all of standard input, byte for byte.\n"
     "  --delay MS           invisible for this long\n"
     "  --priority N         higher is served first (default 0)\n"
     "  --ttl MS             deleted unread after this long\n"
     "  --dedup KEY          a second put with KEY in the dedup window stores nothing\n"
     "                       and prints the first message's id\n"
     "  --header NAME=VALUE  a header (repeatable)\n"
     "  --lines              one message per line of standard input (without its\n"
     "                       newline), put in batches of 500; prints every id\n"
     "  --create             create QUEUE with default options (and FILE) if missing\n"},
    {"get", cli_cmd_get, "get QUEUE [--visibility MS] [--wait MS] [--count N] [--raw] [--ack]",
     "Lease the next message(s) and print id, receipt, receive count, subject (for\n"
     "a message published to a topic) and body.  QUEUE may be a subscription,\n"
     "TOPIC/SUB, as for every command that takes a QUEUE below.\n"
     "Exit status 3 when no message was available.\n"
     "  --visibility MS      lease length (default: the queue's)\n"
     "  --wait MS            wait up to this long for a message\n"
     "  --count N            lease up to N messages (default 1)\n"
     "  --raw                write only the payload bytes, nothing else\n"
     "  --ack                ack each message once it has been written out\n"},
    {"peek", cli_cmd_peek, "peek QUEUE [--count N] [--raw]",
     "Show ready messages without leasing them (no receipt).  Opens read-only.\n"
     "  --count N            show up to N messages (default 1)\n"
     "  --raw                write only the payload bytes\n"},
    {"ack", cli_cmd_ack, "ack QUEUE RECEIPT...",
     "Delete leased messages, all receipts in one commit.  A stale receipt fails\n"
     "(exit status 5) but the others are still acked; a malformed one fails the\n"
     "whole command before anything changes.\n"},
    {"nack", cli_cmd_nack, "nack QUEUE RECEIPT [--delay MS] [--reason TEXT]",
     "Give a leased message back: visible again now, or after --delay.  The reason\n"
     "is kept with the message and travels to the dead-letter queue.\n"},
    {"touch", cli_cmd_touch, "touch QUEUE RECEIPT --visibility MS",
     "Extend (or shorten) a lease: the message stays hidden for MS from now.\n"},
    {"stats", cli_cmd_stats, "stats [QUEUE]",
     "Counts for one queue or subscription (TOPIC/SUB), or for every queue and\n"
     "subscription: ready, in flight, delayed, dead, total, age of the oldest\n"
     "message and payload bytes.  For one QUEUE the options are shown too.\n"
     "Opens read-only.\n"},
    {"ls", cli_cmd_ls, "ls",
     "List every queue, topic and subscription (TOPIC/SUB) with its kind and\n"
     "options: queues sorted, then each topic followed by its subscriptions.\n"
     "Opens read-only.\n"},
    {"purge", cli_cmd_purge, "purge QUEUE",
     "Delete every message of a queue (in any state) and print how many.\n"},
    {"drop", cli_cmd_drop, "drop QUEUE",
     "Delete a queue and all its messages (topics: topic drop; subscriptions:\n"
     "unsubscribe).\n"},
    {"redrive", cli_cmd_redrive, "redrive QUEUE [--max N]",
     "Move dead letters back: from a dead-letter queue to the queues they came\n"
     "from, or a queue's own dead messages back to ready.  Prints how many moved.\n"
     "  --max N              move at most N (default: all)\n"},
    {"check", cli_cmd_check, "check",
     "Verify the whole store (SQLite integrity, every payload's CRC32, the\n"
     "library's invariants) and print each problem.  Exit status 0 when sound,\n"
     "6 when damaged.  Opens read-only.\n"},
    {"info", cli_cmd_info, "info",
     "Facts about the file: format version and the library that created it,\n"
     "page size, size (and how much of it is free pages, which later puts reuse\n"
     "and only VACUUM gives back), WAL size, and how many queues, topics and\n"
     "subscriptions it holds.  Opens read-only.\n"},
    {"export", cli_cmd_export, "export QUEUE",
     "Write a header line with the queue's name and options, then every message\n"
     "of the queue, in any state, as JSON lines on standard output (see\n"
     "doc/cli.md for the fields).  Opens read-only.\n"},
    {"import", cli_cmd_import, "import [QUEUE] [--batch N] [--skip-dead] [create options...]",
     "Read JSON lines (the export format) from standard input and put each\n"
     "message with its priority, remaining delay and TTL, and headers.  Every line\n"
     "is checked, and every payload against the queue's max payload, before\n"
     "anything is written: a bad file imports nothing.  Without QUEUE, the name\n"
     "in the export header is used.  A missing queue is created with the header's\n"
     "options, replaced by the create options given (those of `create`; --dlq ''\n"
     "for none); an existing queue keeps its options, and must match the create\n"
     "options given.  Creates FILE if missing.\n"
     "  --batch N            messages per transaction (default 500)\n"
     "  --skip-dead          leave out messages exported in the dead state (by\n"
     "                       default they are imported as ready)\n"},
    {"topic", cli_cmd_topic,
     "topic create TOPIC [--max-payload BYTES] [--compress-above BYTES]\n"
     "       [--retention MS] [--dedup-window MS]\n"
     "  topic drop TOPIC\n"
     "  topic ls\n"
     "  topic stats TOPIC",
     "Manage topics.  A message published to a topic reaches every subscription\n"
     "that exists at that moment and whose filter matches its subject; each\n"
     "subscription then works as a queue named TOPIC/SUB.\n"
     "  topic create TOPIC   create a topic (creating FILE if it does not exist);\n"
     "                       again with the same options succeeds\n"
     "    --max-payload BYTES     largest payload accepted (1M)\n"
     "    --compress-above BYTES  zlib-compress larger payloads (0: never)\n"
     "    --retention MS          delete messages older than this unread (0: keep)\n"
     "    --dedup-window MS       how long a dedup key is remembered (5m)\n"
     "  topic drop TOPIC     delete a topic, its subscriptions and their messages\n"
     "  topic ls             list the topics with their number of subscriptions\n"
     "  topic stats TOPIC    the topic's counts (subscriptions, pending deliveries,\n"
     "                       distinct payloads, bytes), then each subscription's\n"
     "                       stats.  ls and stats open read-only.\n"},
    {"publish", cli_cmd_publish,
     "publish TOPIC [DATA] [--subject S] [--delay MS] [--priority N] [--ttl MS]\n"
     "       [--dedup KEY] [--header NAME=VALUE]... [--lines]",
     "Publish one message to a topic and print its publish id and the number of\n"
     "subscriptions it reached.  None matched: id 0, nothing stored.  Without\n"
     "DATA (or with DATA \"-\") the payload is all of standard input.\n"
     "  --subject S          the subject subscriptions filter on: levels separated\n"
     "                       by '.' or '/', e.g. sensors.kitchen.temp\n"
     "  --delay, --priority, --ttl, --dedup, --header, --lines  as for put (a dedup\n"
     "                       key is per topic; a duplicate prints the first id and\n"
     "                       0 subscriptions)\n"},
    {"subscribe", cli_cmd_subscribe,
     "subscribe TOPIC SUB [--filter F] [--visibility MS] [--max-receives N --dlq QUEUE]\n"
     "       [--retention MS]",
     "Create the durable subscription SUB of TOPIC.  It receives what is published\n"
     "from now on; read it as the queue TOPIC/SUB (get, ack, stats...).  Creating\n"
     "it again with the same filter and options succeeds.\n"
     "  --filter F           only subjects matching F: '*' or '+' is one level, '>'\n"
     "                       one or more remaining levels, '#' zero or more ('>'\n"
     "                       and '#' last only); no filter: every message\n"
     "  --visibility MS, --max-receives N, --dlq QUEUE, --retention MS\n"
     "                       as for create\n"},
    {"unsubscribe", cli_cmd_unsubscribe, "unsubscribe TOPIC SUB",
     "Delete a subscription and the messages waiting in it.\n"},
#ifdef MQ_CLI_SERVE
    {"serve", cli_cmd_serve,
     "serve [--pull QUEUE=EP]... [--push QUEUE=EP]... [--router EP]...\n"
     "       [--pull-connect QUEUE=EP]... [--push-connect QUEUE=EP]...\n"
     "       [--plain USER[:PASS]] [--heartbeat MS] [--max-frame BYTES] [--create] [--verbose]",
     "Serve queues to ZeroMQ peers (ZMTP 3.1) until SIGINT/SIGTERM; prints where each\n"
     "endpoint listens.  --pull-connect/--push-connect connect out to a PUSH/PULL\n"
     "socket that binds EP and reconnect with backoff (PLAIN login with --plain).\n"
     "--create makes missing queues; USER alone takes the password from\n"
     "$MQ_SERVE_PASSWORD.  See doc/protocol.md.\n"},
#endif
    {"bench", cli_cmd_bench, "bench [--count N] [--size BYTES]",
     "Measure put, get, ack and a full put/get/ack cycle on a temporary queue in\n"
     "FILE (dropped afterwards) and print operations per second.\n"
     "  --count N            messages per phase (default 1000)\n"
     "  --size BYTES         payload size (default 100)\n"},
};

#define CLI_NCOMMANDS (sizeof cli_commands / sizeof cli_commands[0])

static const cli_command *cli_find(const char *name) {
  for (size_t i = 0; i < CLI_NCOMMANDS; i++)
    if (strcmp(cli_commands[i].name, name) == 0) return &cli_commands[i];
  return NULL;
}

static void cli_help_general(FILE *f) {
  fprintf(f,
          "usage: mq [OPTIONS] FILE COMMAND [ARGS]\n"
          "       mq COMMAND --help | mq --help | mq --version\n"
          "\n"
          "A command-line shell for mq queue files.\n"
          "\n"
          "Commands:\n");
  /* Every line of every synopsis, so the list is the whole grammar. */
  for (size_t i = 0; i < CLI_NCOMMANDS; i++) fprintf(f, "  %s\n", cli_commands[i].synopsis);
  fprintf(f,
          "\n"
          "A subscription is used as the queue TOPIC/SUB wherever a QUEUE is taken.\n"
          "\n"
          "Options (anywhere on the line):\n"
          "  --json               one JSON object per line on standard output\n"
          "  --sync full|normal|off  durability of writes (default full)\n"
          "  --busy-timeout MS    wait this long for a lock held by another process\n"
          "  --page-size BYTES    SQLite page size of a file this command creates\n"
          "  --help, -h           help (for a command: mq COMMAND --help)\n"
          "  --version            the tool's, library's and SQLite's versions\n"
          "\n"
          "Exit status: 0 ok, 1 other error, 2 usage or invalid input, 3 empty (get),\n"
          "4 no such queue or topic, 5 stale receipt, 6 damaged store, 7 cannot open /\n"
          "not an mq store / newer format, 8 disk full or outcome unknown, 9 store locked.\n");
}

/* A synopsis line indented by two spaces is another form of the command
** (topic's subcommands); one indented further continues the line above. */
static void cli_help_command(FILE *f, const cli_command *c) {
  const char *s = c->synopsis;
  for (int first = 1; *s; first = 0) {
    const char *nl = strchr(s, '\n');
    int len = nl ? (int)(nl - s) : (int)strlen(s);
    if (first)
      fprintf(f, "usage: mq FILE %.*s\n", len, s);
    else if (len > 2 && s[0] == ' ' && s[1] == ' ' && s[2] != ' ')
      fprintf(f, "       mq FILE %.*s\n", len - 2, s + 2);
    else
      fprintf(f, "%.*s\n", len, s);
    s += len + (nl != NULL);
  }
  fprintf(f, "\n%s", c->help);
}

/* ---- errors and exit statuses --------------------------------------------- */

int cli_exit_status(int rc) {
  switch (rc) {
    case MQ_OK:
      return CLI_EXIT_OK;
    case MQ_EINVAL:
    case MQ_ETOOBIG:
    case MQ_EEXIST:
      return CLI_EXIT_USAGE;
    case MQ_EMPTY:
      return CLI_EXIT_EMPTY;
    case MQ_ENOTFOUND:
      return CLI_EXIT_NOTFOUND;
    case MQ_ESTALE:
      return CLI_EXIT_STALE;
    case MQ_ECORRUPT:
      return CLI_EXIT_DAMAGED;
    case MQ_ECANTOPEN:
    case MQ_ENOTMQ:
    case MQ_EVERSION:
      return CLI_EXIT_CANTOPEN;
    case MQ_EFULL:
    case MQ_EUNKNOWN:
      return CLI_EXIT_FULL;
    case MQ_EBUSY:
      return CLI_EXIT_BUSY;
    default:
      return CLI_EXIT_OTHER;
  }
}

static void cli_vmessage(const char *prefix, const char *fmt, va_list ap) {
  fflush(stdout);
  fputs("mq: ", stderr);
  if (prefix) fputs(prefix, stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

int cli_error(int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  cli_vmessage(NULL, fmt, ap);
  va_end(ap);
  return status;
}

/* The library's detail for the last failure, or the code's text: the detail
** usually names the file and queue, which the code alone cannot. */
static const char *cli_reason(cli_ctx *ctx, int rc) {
  const char *m = mq_errmsg(ctx->store);
  return m && *m ? m : mq_errstr(rc);
}

int cli_fail(cli_ctx *ctx, int rc) {
  return cli_error(cli_exit_status(rc), "%s", cli_reason(ctx, rc));
}

int cli_fail_at(cli_ctx *ctx, int rc, const char *fmt, ...) {
  char prefix[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  return cli_error(cli_exit_status(rc), "%s: %s", prefix, cli_reason(ctx, rc));
}

int cli_usage(cli_ctx *ctx, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  cli_vmessage(NULL, fmt, ap);
  va_end(ap);
  if (ctx && ctx->usage) fprintf(stderr, "usage: mq FILE %s\n", ctx->usage);
  return CLI_EXIT_USAGE;
}

int cli_finish(cli_ctx *ctx, int status) {
  (void)ctx;
  if (fflush(stdout) != 0 || ferror(stdout)) {
    int e = errno;
    fprintf(stderr, "mq: writing to standard output: %s\n", e ? strerror(e) : "error");
    if (status == CLI_EXIT_OK) status = CLI_EXIT_OTHER;
  }
  return status;
}

/* ---- the store ------------------------------------------------------------ */

/* The test hook's clock (MQ_CLI_CLOCK_OFFSET_MS): the wall clock plus the
** offset.  It cannot be the store's own clock plus the offset, because a
** clock callback cannot reach the store clock; so with the hook the tool
** runs on a different clock than applications do (doc/cli.md says so).
** Without the hook no clock is installed and the tool uses the store clock
** every application of the file shares, reading it with mq_store_now. */
static int64_t cli_hook_clock(void *arg) {
  const cli_ctx *ctx = arg;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + ctx->clock_offset;
}

int cli_open(cli_ctx *ctx, int mode) {
  mq_store_options o;
  mq_store_options_init(&o);
  o.sync = ctx->sync;
  if (ctx->busy_timeout_ms >= 0) o.busy_timeout_ms = ctx->busy_timeout_ms;
  o.page_size = ctx->page_size;
  if (ctx->clock_hook) {
    o.clock = cli_hook_clock;
    o.clock_ctx = ctx;
  }
  if (mode == CLI_OPEN_READ)
    o.flags = MQ_OPEN_READONLY;
  else
    o.flags = mode == CLI_OPEN_CREATE ? MQ_OPEN_CREATE : 0;
  int rc = mq_store_open(ctx->path, &o, &ctx->store);
  if (rc != MQ_OK) {
    ctx->store = NULL;
    return cli_fail(ctx, rc);
  }
  return CLI_EXIT_OK;
}

int cli_reject_topic(cli_ctx *ctx, const char *name, const char *what) {
  mq_queue_info info;
  if (mq_queue_info_get(ctx->store, name, &info) != MQ_OK || info.kind != MQ_KIND_TOPIC)
    return CLI_EXIT_OK;
  return cli_error(CLI_EXIT_USAGE,
                   "\"%s\" is a topic, which holds no messages itself: %s one of its "
                   "subscriptions, \"%s/SUB\" (see mq FILE topic stats %s)",
                   name, what, name, name);
}

/* ---- main ----------------------------------------------------------------- */

static int cli_version(void) {
  printf("mq %s (library %s, SQLite %s)\n", MQ_VERSION, mq_libversion(), mq_sqlite_version());
  return cli_finish(NULL, CLI_EXIT_OK);
}

static int cli_is_help(const char *a) { return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0; }

int main(int argc, char **argv) {
  cli_ctx ctx;
  memset(&ctx, 0, sizeof ctx);
  ctx.sync = MQ_SYNC_FULL;
  ctx.busy_timeout_ms = -1;
  const char *env = getenv("MQ_CLI_CLOCK_OFFSET_MS");
  if (env && *env) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(env, &end, 10);
    if (errno || *end || v < -(1LL << 50) || v > (1LL << 50))
      return cli_error(CLI_EXIT_USAGE, "MQ_CLI_CLOCK_OFFSET_MS=\"%s\" is not a number of ms", env);
    ctx.clock_offset = v;
    ctx.clock_hook = 1;
  }

  int help = 0, version = 0, i = 1, status = CLI_EXIT_OK;
  const char *file = NULL, *cmd = NULL;
  /* Up to the command: global options, FILE, COMMAND. */
  for (; i < argc && !cmd; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) {
      /* Lets FILE start with '-'. */
      if (++i >= argc) break;
      if (!file)
        file = argv[i];
      else
        cmd = argv[i];
      continue;
    }
    if (a[0] != '-' || a[1] == '\0') {
      if (!file)
        file = a;
      else
        cmd = a;
      continue;
    }
    if (cli_is_help(a)) {
      help = 1;
      continue;
    }
    if (strcmp(a, "--version") == 0) {
      version = 1;
      continue;
    }
    if (a[1] != '-')
      return cli_usage(NULL, "unknown option %s before the command (try mq --help)", a);
    /* --name, --name=value or --name value. */
    char name[64];
    const char *eq = strchr(a + 2, '=');
    size_t nlen = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
    if (nlen >= sizeof name || !cli_global_known(a + 2, nlen))
      return cli_usage(NULL, "unknown option %s before the command (try mq --help)", a);
    memcpy(name, a + 2, nlen);
    name[nlen] = '\0';
    const char *value = eq ? eq + 1 : NULL;
    if (!value && cli_global_takes_value(name)) {
      if (i + 1 >= argc) return cli_usage(NULL, "option --%s needs a value", name);
      value = argv[++i];
    }
    if ((status = cli_global_option(&ctx, name, value)) != CLI_EXIT_OK) return status;
  }

  if (version) return cli_version();
  const cli_command *c = cmd ? cli_find(cmd) : NULL;
  if (!help && c)
    for (int j = i; j < argc && strcmp(argv[j], "--") != 0; j++)
      if (cli_is_help(argv[j])) help = 1;
  if (file && strcmp(file, "help") == 0 && (!cmd || c)) help = 1;
  if (help) {
    /* `mq put --help` puts the command where FILE would be; in
    ** `mq topic create --help` the subcommand is where COMMAND would be. */
    if (file && strcmp(file, "topic") == 0 && (!c || !cmd || cli_find(cmd)))
      c = cli_find(file);
    if (!c && file && !cmd) c = cli_find(file);
    if (c)
      cli_help_command(stdout, c);
    else
      cli_help_general(stdout);
    return cli_finish(NULL, CLI_EXIT_OK);
  }
  if (!file) {
    cli_help_general(stderr);
    return CLI_EXIT_USAGE;
  }
  if (!cmd) {
    if (cli_find(file)) return cli_usage(NULL, "no FILE given: usage is mq FILE %s ...", file);
    return cli_usage(NULL, "no COMMAND given after %s (try mq --help)", file);
  }
  if (!c) return cli_usage(NULL, "unknown command \"%s\" (try mq --help)", cmd);

  ctx.path = file;
  ctx.cmd = c->name;
  ctx.usage = c->synopsis;
  status = c->run(&ctx, argc - i, argv + i);
  status = cli_finish(&ctx, status);
  /* MQ_EBUSY from close only means the final checkpoint did not run: the
  ** data is safe in the WAL, so it does not change the outcome. */
  mq_store_close(ctx.store);
  return status;
}
