/*
** pubsub.c -- publish/subscribe with a topic and two durable subscriptions.
**
** Build it with the project (target example_pubsub) and run `pubsub [file]`
** (default file: pubsub.db in the current directory).
**
** What it shows:
**   1. A topic "sensors" with two subscriptions: "all" takes every message,
**      "kitchen" only subjects matching "sensors.kitchen.*".  Subscriptions
**      are durable: they live in the file, and a message published while no
**      consumer runs waits for one.
**   2. A publisher sends five readings with subjects such as
**      "sensors.kitchen.temp".  mq_publish says how many subscriptions each
**      one reached.  The payload is stored once, however many subscriptions
**      receive it.
**   3. Two consumers, one per subscription, read "sensors/all" and
**      "sensors/kitchen" exactly as they would read a queue: mq_get leases a
**      message, mq_ack deletes it from that subscription only.  Each prints
**      what it gets.
**   4. The topic's statistics before and after: deliveries pending, and
**      payloads stored (a payload is freed when its last subscription has
**      acked it).
**
** The publisher and the consumers run one after the other in one process,
** so that the output is the same on every run.  In real use they are
** separate threads or processes, each with its own handle on the same file;
** a consumer then passes mq_get_options.wait_ms to wait for the next
** message instead of returning MQ_EMPTY.  Two consumers reading the SAME
** subscription share its messages (a consumer group); two subscriptions
** each get every message they match (fan-out).
**
** Running it twice on one file is fine: it starts by dropping the topic of
** the previous run, if any.  Only the public API (mq.h) is used.
*/
#include <stdio.h>
#include <string.h>

#include "mq.h"

/* Print a failed call and say so; every mq call returns a result code. */
static int check(mq_store *store, int rc, const char *what) {
  if (rc != MQ_OK) fprintf(stderr, "%s: %s: %s\n", what, mq_errstr(rc), mq_errmsg(store));
  return rc == MQ_OK;
}

/* Create the topic and its subscriptions.  Creating them again with the
** same filter and options is harmless (MQ_OK), so a program can do this at
** every start. */
static int setup(mq_store *store) {
  mq_queue_options sub_opts;
  int rc = mq_topic_drop(store, "sensors"); /* a clean slate for the demo */
  if (rc != MQ_OK && rc != MQ_ENOTFOUND) return check(store, rc, "mq_topic_drop");
  if (!check(store, mq_topic_create(store, "sensors", NULL), "mq_topic_create")) return 0;

  /* "all": no filter, every message.  Default queue options. */
  if (!check(store, mq_subscription_create(store, "sensors", "all", NULL, NULL),
             "mq_subscription_create(all)"))
    return 0;

  /* "kitchen": '*' matches exactly one level, so "sensors.kitchen.temp"
  ** matches and "sensors.hall.temp" or "sensors.kitchen" do not.  A
  ** subscription takes queue options like a queue: here a 10 s lease and
  ** at most 5 deliveries before a message is set aside as dead. */
  mq_queue_options_init(&sub_opts);
  sub_opts.visibility_ms = 10000;
  sub_opts.max_receives = 5;
  return check(store,
               mq_subscription_create(store, "sensors", "kitchen", "sensors.kitchen.*", &sub_opts),
               "mq_subscription_create(kitchen)");
}

/* The publisher: one mq_publish per reading.  The subject is what filters
** match; the payload is opaque bytes (text here). */
static int publisher(mq_store *store) {
  static const struct {
    const char *subject, *value;
  } readings[] = {
      {"sensors.kitchen.temp", "21.5 C"},   {"sensors.hall.temp", "19.0 C"},
      {"sensors.kitchen.humidity", "48 %"}, {"sensors.kitchen", "kitchen sensor online"},
      {"sensors.garage.door", "open"},
  };
  for (size_t i = 0; i < sizeof readings / sizeof readings[0]; i++) {
    int64_t id = 0, delivered = 0;
    int rc = mq_publish(store, "sensors", readings[i].subject, readings[i].value,
                        strlen(readings[i].value), NULL, &id, &delivered);
    if (!check(store, rc, "mq_publish")) return 0;
    /* Durable once MQ_OK is returned: in every matching subscription, or
    ** (after a crash before that) in none. */
    printf("publisher: %-26s %-24s -> %lld subscription%s\n", readings[i].subject,
           readings[i].value, (long long)delivered, delivered == 1 ? "" : "s");
  }
  return 1;
}

/* A consumer: drain one subscription, addressed as "topic/subscription",
** with the queue calls.  A message is acked only after it was handled; if
** the consumer died before the ack, the lease would run out and the message
** would be delivered again (at-least-once). */
static int consumer(mq_store *store, const char *who, const char *subscription) {
  for (int n = 0; n < 100; n++) { /* bounded, like any loop should be */
    mq_msg *msg = NULL;
    int rc = mq_get(store, subscription, NULL, &msg);
    if (rc == MQ_EMPTY) {
      printf("%s: nothing more in %s\n", who, subscription);
      return 1;
    }
    if (!check(store, rc, "mq_get")) return 0;
    printf("%s: got %-26s \"%.*s\" (delivery %d)\n", who, mq_msg_subject(msg),
           (int)mq_msg_size(msg), (const char *)mq_msg_data(msg), mq_msg_receives(msg));
    rc = mq_ack(store, subscription, mq_msg_receipt(msg));
    mq_msg_free(msg); /* after the ack: the receipt belongs to msg */
    if (!check(store, rc, "mq_ack")) return 0;
  }
  return 1;
}

static void print_stats(mq_store *store, const char *when) {
  mq_topic_stats ts;
  if (check(store, mq_topic_stats_get(store, "sensors", &ts), "mq_topic_stats_get"))
    printf("topic sensors %s: %lld subscriptions, %lld deliveries pending, %lld payloads "
           "stored (%lld bytes)\n",
           when, (long long)ts.subscriptions, (long long)ts.messages, (long long)ts.payloads,
           (long long)ts.bytes);
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "pubsub.db";
  mq_store *store = NULL;
  int ok = check(NULL, mq_store_open(path, NULL, &store), "mq_store_open");
  ok = ok && setup(store);
  ok = ok && publisher(store);
  if (ok) print_stats(store, "after publishing");
  /* Consumer 1 reads every reading; consumer 2 only the kitchen's. */
  ok = ok && consumer(store, "consumer 1", "sensors/all");
  /* The kitchen's two readings are still pending there, so their payloads
  ** stay; the three that only "all" took are gone with its acks. */
  if (ok) print_stats(store, "after consumer 1");
  ok = ok && consumer(store, "consumer 2", "sensors/kitchen");
  if (ok) print_stats(store, "after both consumers acked");
  mq_store_close(store);
  return ok ? 0 : 1;
}
