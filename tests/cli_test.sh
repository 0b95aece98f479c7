#!/usr/bin/env bash
#
# cli_test.sh -- end-to-end tests of the `mq` command-line tool.
#
# Usage: bash tests/cli_test.sh path/to/mq
#
# Runs the real binary as a subprocess and checks what a script relies on:
# stdout, the documented exit statuses (doc/cli.md), one "mq: " line on
# stderr per failure, and that a failed command changes nothing (stats and
# the file's checksum compared before and after).  JSON output is parsed
# back with sed/grep only; payloads are compared byte for byte with cmp.
#
# Time is never waited for: with MQ_CLI_CLOCK_OFFSET_MS set, the tool runs
# on the wall clock plus that offset instead of the store clock, so leases,
# delays and TTLs are expired by moving the offset.  (Without it the tool
# uses the store clock, which on a file created in this boot starts at the
# wall clock: the two agree to within the test's margins.)  Every command runs under `timeout`, so the script is
# bounded.  Files live in a temporary directory under $MQ_TEST_TMPDIR (or
# from mktemp), removed at the end.  Prints "N passed, N failed" last and
# exits non-zero on any failure.

set -u
MQ=${1:?usage: cli_test.sh path/to/mq}
case $MQ in /*) ;; *) MQ=$PWD/$MQ ;; esac
base=${MQ_TEST_TMPDIR:-${TMPDIR:-/tmp}}
mkdir -p "$base"
W=$(mktemp -d "$base/cli_test.XXXXXX") || exit 1
cleanup() { chmod -R u+w "$W" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
cd "$W" || exit 1
unset MQ_CLI_CLOCK_OFFSET_MS

pass=0
fail=0
rc=0

# r ARGS...: run mq with no input; sets $rc, stdout in out, stderr in err.
r() { timeout 60 "$MQ" "$@" </dev/null >out 2>err; rc=$?; }
# ri FILE ARGS...: the same with FILE on standard input.
ri() { local in=$1; shift; timeout 60 "$MQ" "$@" <"$in" >out 2>err; rc=$?; }
# at OFFSET_MS ARGS...: run with the store clock moved forward.
at() { local off=$1; shift; MQ_CLI_CLOCK_OFFSET_MS=$off timeout 60 "$MQ" "$@" </dev/null >out 2>err; rc=$?; }

ok() { pass=$((pass + 1)); }
no() {
  fail=$((fail + 1))
  echo "FAIL: $*" >&2
  echo "  rc=$rc stdout: $(head -c 400 out 2>/dev/null)" >&2
  echo "  stderr: $(head -c 400 err 2>/dev/null)" >&2
}
# is DESC ACTUAL EXPECTED
is() { if [ "$2" == "$3" ]; then ok; else no "$1: got [$2], expected [$3]"; fi; }
# status DESC EXPECTED: the last command's exit status.
status() { is "$1 (exit status)" "$rc" "$2"; }
# has DESC FILE REGEX (grep -E)
has() { if grep -Eq -- "$3" "$2"; then ok; else no "$1: $2 lacks /$3/"; fi; }
hasnt() { if grep -Eq -- "$3" "$2"; then no "$1: $2 has /$3/"; else ok; fi; }
# failed DESC EXPECTED_STATUS REGEX: a failure with its status, one "mq: "
# line matching REGEX on stderr, and nothing on stdout.
failed() {
  status "$1" "$2"
  has "$1 (message)" err "^mq: .*$3"
  if [ -s out ]; then no "$1: wrote to stdout on failure"; else ok; fi
}
# j FIELD: a string or integer member of the JSON line(s) in out.
j() {
  sed -n -e "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" -e t -e "s/.*\"$1\":\(-\{0,1\}[0-9][0-9]*\).*/\1/p" out
}
# stat1 FILE QUEUE FIELD: one stats field, via --json.
stat1() {
  timeout 60 "$MQ" --json "$1" stats "$2" 2>/dev/null |
    sed -n "s/.*\"$3\":\(-\{0,1\}[0-9][0-9]*\).*/\1/p"
}
# Stats (without the age, which moves with the clock) and the checksum.
snapshot() {
  { timeout 60 "$MQ" --json "$1" stats 2>&1 | sed 's/"oldest_age_ms":[0-9]*,//'
    cksum <"$1"; } >"$2"
}
unchanged() {
  snapshot "$2" after.snap
  if cmp -s "$3" after.snap; then ok; else no "$1: the store changed"; fi
}

DB=$W/main.db

# ---- help, version, usage -------------------------------------------------------
r --version
status "--version" 0
has "--version names the library and SQLite" out '^mq [0-9.]+ \(library [0-9.]+, SQLite [0-9.]+\)$'
r --help
status "--help" 0
has "--help lists commands" out 'export QUEUE'
r put --help
status "mq put --help" 0
has "mq put --help" out '^usage: mq FILE put QUEUE'
r "$DB" get --help
status "mq FILE get --help" 0
has "mq FILE get --help" out '--visibility MS'
[ ! -e "$DB" ] && ok || no "--help created the file"
for c in create put get peek ack nack touch stats ls purge drop redrive check export import \
  topic publish subscribe unsubscribe bench; do
  r "$c" --help
  status "mq $c --help" 0
  has "mq $c --help has its usage" out "^usage: mq FILE $c( |\$)"
  r --help
  has "mq --help lists $c" out "^  $c( |\$)"
done
r --help
for form in 'topic create TOPIC \[--max-payload BYTES\]' 'topic drop TOPIC$' 'topic ls$' \
  'topic stats TOPIC$' 'publish TOPIC \[DATA\] \[--subject S\]' 'subscribe TOPIC SUB \[--filter F\]' \
  'unsubscribe TOPIC SUB$' 'import \[QUEUE\]'; do
  has "mq --help: $form" out "^  $form"
done
r topic --help
has "mq topic --help: every form" out '^       mq FILE topic stats TOPIC$'
has "mq topic --help: the options" out '--compress-above BYTES'
r topic create --help
has "mq topic create --help is topic's help" out '^usage: mq FILE topic create TOPIC'
r "$DB" topic ls --help
has "mq FILE topic ls --help" out '^usage: mq FILE topic create'
r publish --help
has "mq publish --help: --subject" out '--subject S'
r subscribe --help
has "mq subscribe --help: --filter" out '--filter F'
[ ! -e "$DB" ] && ok || no "--help created the file"
r
status "no arguments" 2
r "$DB" frobnicate
failed "unknown command" 2 'unknown command'
r "$DB" get q --bogus
failed "unknown option" 2 'no option --bogus'
r --sync sometimes "$DB" ls
failed "bad --sync" 2 'full, normal or off'
r "$DB" get q --count 0
failed "bad --count" 2 'count'
r "$DB" put
failed "put without QUEUE" 2 'missing QUEUE'
[ ! -e "$DB" ] && ok || no "usage errors created the file"

# ---- missing file ------------------------------------------------------------------
for cmd in ls stats check "get q" "peek q" "export q" "put q x" "ack q 0" "purge q"; do
  # shellcheck disable=SC2086
  r "$DB" $cmd
  failed "$cmd on a missing file" 7 'does not exist'
done
[ ! -e "$DB" ] && ok || no "a command other than create/import created the file"

# ---- create, ls -----------------------------------------------------------------------
r "$DB" create q
status "create" 0
[ -f "$DB" ] && ok || no "create made no file"
r "$DB" create q
status "create again with the same options" 0
snapshot "$DB" before.snap
r "$DB" create q --visibility 5s
failed "create with other options" 2 'exists'
unchanged "create with other options" "$DB" before.snap
r "$DB" create dlq
r "$DB" create w --visibility 1s --max-receives 2 --dlq dlq
status "create with a dlq" 0
r "$DB" create bad --dlq nosuch
failed "create with a missing dlq" 2 'dead-letter queue "nosuch"'

r "$DB" create bin --max-payload 64K --compress-above 100
status "create with sizes" 0
r "$DB" create small --max-payload 10
snapshot "$DB" before.snap
r "$DB" put small 12345678901
failed "a payload over --max-payload" 2 'too large|max_payload|payload'
unchanged "a refused payload" "$DB" before.snap
r "$DB" drop small
r "$DB" create bad --visibility 10x
failed "create with a bad duration" 2 'duration'
r "$DB" ls
status "ls" 0
is "ls lists sorted names" "$(awk '{print $1}' out | tr '\n' ' ')" "bin dlq q w "
has "ls shows the kind and options" out '^w +queue +visibility=1s max_receives=2 dlq=dlq retention=0 max_payload=1M compress_above=0 dedup_window=5m$'
has "ls shows sizes as typed" out '^bin +queue +visibility=30s max_receives=0 retention=0 max_payload=64K compress_above=100 dedup_window=5m$'
r --json "$DB" ls
is "ls --json" "$(j queue | tr '\n' ' ')" "bin dlq q w "
has "ls --json options" out '^\{"queue":"w","kind":"queue","visibility_ms":1000,"max_receives":2,"dlq":"dlq","retention_ms":0,"max_payload":1048576,"compress_above":0,"dedup_window_ms":300000\}$'
has "ls --json: no dlq is null" out '^\{"queue":"bin","kind":"queue",.*"dlq":null,.*"max_payload":65536,"compress_above":100,'
r --json "$DB" stats w
has "stats --json QUEUE has the options" out '"total":0,.*"kind":"queue","visibility_ms":1000,"max_receives":2,"dlq":"dlq",'
r "$DB" stats w
has "stats QUEUE shows the kind" out '^kind: queue$'
has "stats QUEUE shows the options" out '^options: visibility=1s max_receives=2 dlq=dlq retention=0 '
r "$DB" create opts --visibility 1500 --retention 2h --dedup-window 90s --max-payload 3000
r "$DB" ls
has "ls durations and sizes that are not round" out '^opts +queue +visibility=1500 max_receives=0 retention=2h max_payload=3000 compress_above=0 dedup_window=90s$'
r "$DB" drop opts

# ---- put and get ---------------------------------------------------------------------
r "$DB" put q hello
status "put" 0
id1=$(cat out)
[[ $id1 =~ ^[0-9]+$ ]] && ok || no "put prints an id: [$id1]"
r "$DB" put nosuch x
failed "put to an unknown queue" 4 'no queue named "nosuch"'
r "$DB" put q2 x --create
status "put --create" 0
r "$DB" ls
has "put --create made the queue" out '^q2 +queue '
r --json "$DB" get q
status "get" 0
is "get --json id" "$(j id)" "$id1"
is "get --json body" "$(j body)" "hello"
is "get --json receives" "$(j receives)" "1"
rcpt=$(j receipt)
[[ $rcpt =~ ^[0-9a-f]{32}$ ]] && ok || no "get --json receipt: [$rcpt]"
is "in flight after get" "$(stat1 "$DB" q inflight)" 1
r "$DB" get q
failed "get on an empty queue" 3 'no message ready'
r "$DB" get q --wait 50
failed "get --wait on an empty queue" 3 'no message ready'
r "$DB" ack q "$rcpt"
status "ack" 0
is "ack deleted the message" "$(stat1 "$DB" q total)" 0

# Human layout.
r "$DB" put q 'plain text'
r "$DB" get q
status "get (human)" 0
has "human get shows the id" out '^id: [0-9]+$'
has "human get shows the receipt" out '^receipt: [0-9a-f]{32}$'
has "human get shows the body" out '^body: plain text$'
r "$DB" ack q "$(sed -n 's/^receipt: //p' out)"
status "ack the receipt printed by human get" 0

# Binary payload through standard input, every byte value, NULs included.
i=0
while [ $i -lt 256 ]; do printf '%b' "\\0$(printf %03o $i)"; i=$((i + 1)); done >bin.in
printf '\000\000tail\000' >>bin.in
is "test payload size" "$(wc -c <bin.in | tr -d ' ')" 263
ri bin.in "$DB" put bin
status "put binary from stdin" 0
r "$DB" peek bin --raw
cmp -s out bin.in && ok || no "peek --raw is byte-exact"
r --json "$DB" peek bin
has "binary body is base64 in JSON" out '"body_base64":"AAECAwQF'
hasnt "binary body has no text body" out '"body":'
is "peek has no receipt" "$(sed -n 's/.*"receipt":"\([^"]*\)".*/[\1]/p' out)" "[]"
is "peek leaves the message ready" "$(stat1 "$DB" bin ready)" 1
r "$DB" get bin --raw --ack
status "get --raw --ack" 0
cmp -s out bin.in && ok || no "get --raw is byte-exact"
is "get --ack deleted it" "$(stat1 "$DB" bin total)" 0
: >empty.in
ri empty.in "$DB" put bin
status "put an empty payload" 0
r "$DB" get bin --raw --ack
is "empty payload comes back empty" "$(wc -c <out | tr -d ' ')" 0

# JSON escaping and the text/base64 rule.
printf 'a"b\\c\td\ne\r/\303\251\360\237\230\200' >esc.in
ri esc.in "$DB" put q
r --json "$DB" get q --ack
has "JSON escapes" out '"body":"a\\"b\\\\c\\td\\ne\\r/é😀"'
printf 'bell\007' >ctl.in
ri ctl.in "$DB" put q
r --json "$DB" get q --ack
has "a control byte makes base64" out '"body_base64":"YmVsbAc="'
printf 'bad\377' >inv.in
ri inv.in "$DB" put q
r --json "$DB" get q --ack
has "invalid UTF-8 makes base64" out '"body_base64":"YmFk/w=="'
printf '\355\240\200' >surrogate.in
ri surrogate.in "$DB" put q
r --json "$DB" get q --ack
has "an encoded surrogate is not UTF-8" out '"body_base64":"7aCA"'
printf '\300\200' >overlong.in
ri overlong.in "$DB" put q
r --json "$DB" get q --ack
has "an overlong form is not UTF-8" out '"body_base64":"wIA="'

# Priority, headers, --count, dedup, --lines.
r "$DB" put q low
r "$DB" put q high --priority 5 --header a=1 --header 'b=x=y'
r --json "$DB" peek q
is "higher priority first" "$(j body)" "high"
has "headers in JSON" out '"headers":\{"a":"1","b":"x=y"\}'
r "$DB" peek q
has "headers in human output" out '^header: b=x=y$'
r "$DB" put q x --header novalue
failed "--header without =" 2 'NAME=VALUE'
r --json "$DB" get q --count 5
status "get --count" 0
is "get --count leases both" "$(wc -l <out | tr -d ' ')" 2
r "$DB" ack q $(j receipt)
status "ack several receipts" 0
is "all acked" "$(stat1 "$DB" q total)" 0
r "$DB" put q one --dedup k1
d1=$(cat out)
r "$DB" put q two --dedup k1
is "dedup returns the first id" "$(cat out)" "$d1"
is "dedup stored one" "$(stat1 "$DB" q total)" 1
r "$DB" purge q
status "purge" 0
is "purge prints the count" "$(cat out)" "purged 1"
printf 'l1\nl2\n\nl4' >lines.in
ri lines.in "$DB" put q --lines
status "put --lines" 0
is "put --lines prints an id per line" "$(wc -l <out | tr -d ' ')" 4
r "$DB" peek q --count 10 --raw
is "put --lines bodies" "$(cat out)" "l1l2l4"
r --json "$DB" purge q
is "purge --json" "$(j purged)" 4

# ---- stats -----------------------------------------------------------------------------
r "$DB" put q s1
r "$DB" put q s2 --delay 10s
r "$DB" get q
r --json "$DB" stats q
status "stats QUEUE" 0
is "stats ready" "$(j ready)" 0
is "stats inflight" "$(j inflight)" 1
is "stats delayed" "$(j delayed)" 1
is "stats dead" "$(j dead)" 0
is "stats total" "$(j total)" 2
is "stats bytes" "$(j bytes)" 4
has "stats oldest_age_ms" out '"oldest_age_ms":[0-9]+'
r --json "$DB" stats
is "stats lists every queue" "$(j queue | tr '\n' ' ')" "bin dlq q q2 w "
r "$DB" stats
has "human stats header" out '^queue +ready +inflight +delayed +dead +total +oldest_age_ms +bytes$'
has "human stats row" out '^q +0 +1 +1 +0 +2 +[0-9]+ +4$'
snapshot "$DB" before.snap
r "$DB" stats nosuch
failed "stats of an unknown queue" 4 'no queue named'
unchanged "stats of an unknown queue" "$DB" before.snap
r "$DB" purge q

# ---- delay, TTL, nack, touch, stale receipts (time moved, never waited for) --------------
r "$DB" put q later --delay 10s
r "$DB" get q
status "a delayed message is not ready" 3
at 11000 "$DB" get q --ack
status "ready once the delay is over" 0
r "$DB" put q brief --ttl 1s
at 2000 "$DB" get q
status "an expired message is gone" 3
r "$DB" purge q

r "$DB" put q job
r --json "$DB" get q --visibility 1000
old=$(j receipt)
at 2000 --json "$DB" get q --visibility 1000
status "redelivered after the lease" 0
is "receive count grows" "$(j receives)" 2
new=$(j receipt)
snapshot "$DB" before.snap
at 2000 "$DB" ack q "$old"
failed "ack with a stale receipt" 5 'not leased under this receipt'
unchanged "a stale ack" "$DB" before.snap
at 2000 "$DB" nack q "$old"
failed "nack with a stale receipt" 5 'not leased'
at 2000 "$DB" touch q "$old" --visibility 10s
failed "touch with a stale receipt" 5 'lease'

r "$DB" ack q not-a-receipt
failed "a malformed receipt" 2 'not a receipt'
unchanged "a malformed receipt" "$DB" before.snap
r "$DB" ack q "$new" not-a-receipt
failed "a malformed receipt among good ones" 2 'not a receipt'
unchanged "a malformed receipt among good ones" "$DB" before.snap
at 2000 "$DB" touch q "$new" --visibility 10s
status "touch" 0
at 8000 "$DB" get q
status "touch kept it leased" 3
at 8000 "$DB" touch q "$new"
failed "touch without --visibility" 2 'visibility'
at 8000 "$DB" nack q "$new" --delay 5s --reason 'try again'
status "nack" 0
is "nacked with a delay" "$(MQ_CLI_CLOCK_OFFSET_MS=8000 "$MQ" --json "$DB" stats q |
  sed -n 's/.*"delayed":\([0-9]*\).*/\1/p')" 1
at 14000 --json "$DB" get q
status "back after the nack delay" 0
has "the nack reason travels" out '"reason":"try again"'
is "third delivery" "$(j receives)" 3
at 14000 "$DB" ack q "$(j receipt)" "$old"
failed "ack of a good and a stale receipt" 5 'stale'
is "the good receipt was still acked" "$(stat1 "$DB" q total)" 0

# Dead letters and redrive: w has max-receives 2 and dlq "dlq".
r "$DB" put w poison
r "$DB" get w
at 2000 "$DB" get w
status "second delivery" 0
at 4000 "$DB" get w
status "no third delivery" 3
is "dead-lettered to the dlq" "$(stat1 "$DB" dlq ready)" 1
r --json "$DB" redrive dlq
status "redrive" 0
is "redrive moved one" "$(j moved)" 1
is "back in its queue" "$(MQ_CLI_CLOCK_OFFSET_MS=4000 "$MQ" --json "$DB" stats w |
  sed -n 's/.*"ready":\([0-9]*\).*/\1/p')" 1
r "$DB" redrive q --max -1
failed "redrive --max -1" 2 'max'

# ---- unknown queues change nothing ----------------------------------------------------------
snapshot "$DB" before.snap
for cmd in "get nosuch" "peek nosuch" "purge nosuch" "drop nosuch" "redrive nosuch" \
  "export nosuch" "ack nosuch 0000000000000001000000000000000a"; do
  # shellcheck disable=SC2086
  r "$DB" $cmd
  failed "$cmd" 4 'no queue named "nosuch"'
done
unchanged "commands on an unknown queue" "$DB" before.snap

# ---- export / import -------------------------------------------------------------------------
r "$DB" create x
r "$DB" put x first --priority 2 --header k=v --header 'uni=é'
ri bin.in "$DB" put x --header kind=binary
r "$DB" put x later --delay 1h --ttl 2h
ri esc.in "$DB" put x
r "$DB" put x gone --ttl 1s
r --json "$DB" get x --visibility 10m
is "the leased one is the priority one" "$(j body)" "first"
at 2000 "$DB" export x
status "export" 0
cp out x1.jsonl
is "export skips the expired message (header + 4)" "$(wc -l <x1.jsonl | tr -d ' ')" 5
is "export starts with the header" "$(head -n 1 x1.jsonl)" \
  '{"queue":"x","options":{"visibility_ms":30000,"max_receives":0,"dlq":null,"retention_ms":0,"max_payload":1048576,"compress_above":0,"dedup_window_ms":300000}}'
has "export state inflight" x1.jsonl '"state":"inflight".*"body":"first"'
has "export state delayed with what remains" x1.jsonl '"state":"delayed".*"delay_ms":[0-9]+,"expires_at":[0-9]+,"ttl_ms":[0-9]+'
has "export binary as base64" x1.jsonl '"headers":\{"kind":"binary"\},"body_base64":"AAEC'
has "export non-ASCII header" x1.jsonl '"uni":"é"'
DB2=$W/copy.db
ri x1.jsonl "$DB2" import x
status "import into a new file" 0
is "import prints the count" "$(cat out)" "imported 4"
r "$DB2" export x
# Ids, receive counts and times are not carried over (doc/cli.md); the rest is.
strip() {
  sed -e 's/"id":[0-9]*,//' -e 's/"receives":[0-9]*,//' -e 's/"enqueued_at":[0-9]*,//' \
    -e 's/"visible_at":[0-9]*,//' -e 's/"delay_ms":[0-9]*,//' -e 's/"expires_at":[0-9]*,//' \
    -e 's/"ttl_ms":[0-9]*,//' -e 's/"state":"inflight"/"state":"ready"/' "$1"
}
strip x1.jsonl >x1.s
strip out >x2.s
cmp -s x1.s x2.s && ok || no "export -> import -> export keeps priorities, headers, bodies"
is "the delay survives import" "$(stat1 "$DB2" x delayed)" 1
has "the TTL survives import" out '"expires_at":[0-9]+,"ttl_ms":[0-9]+,"headers":\{\},"body":"later"'
r "$DB2" get x --raw --ack
is "priority kept: the first one first" "$(cat out)" "first"
r "$DB2" get x --raw --ack
cmp -s out bin.in && ok || no "binary payload byte-exact through export/import"
# Import also reads hand-written lines (into the emptied queue).
r "$DB2" purge x
printf '{"body":"\\ud83d\\ude00 \\u00e9\\u0000"}\n\n{"priority":1,"delay_ms":0,"body_base64":"AAE="}\n' >hand.jsonl
ri hand.jsonl --json "$DB2" import x
status "import hand-written lines" 0
is "import --json" "$(j imported)" 2
r "$DB2" get x --raw --ack
is "base64 line" "$(od -An -tx1 out | tr -d ' \n')" "0001"
r "$DB2" get x --raw --ack
is "surrogate pair and \\u escapes decoded" "$(od -An -tx1 out | tr -d ' \n')" "f09f988020c3a900"

# Malformed input imports nothing.
snapshot "$DB2" before.snap
bad_import() { # DESC LINE2 REGEX
  { head -n 1 x1.jsonl; printf '%s\n' "$2"; } >bad.jsonl
  ri bad.jsonl "$DB2" import x
  status "import: $1" 2
  has "import: $1 (message)" err "^mq: line 2: .*$3"
  unchanged "import: $1" "$DB2" before.snap
}
bad_import "unknown field" '{"body":"x","bdy":"y"}' 'unknown field "bdy"'
bad_import "no body" '{"priority":1}' 'body'
bad_import "two bodies" '{"body":"x","body_base64":"eA=="}' 'exactly one'
bad_import "repeated field" '{"body":"x","body":"y"}' 'twice'
bad_import "bad escape" '{"body":"\q"}' 'invalid escape'
bad_import "lone surrogate" '{"body":"\udc00"}' 'surrogate'
bad_import "high surrogate alone" '{"body":"\ud800x"}' 'surrogate'
bad_import "fraction" '{"priority":1.5,"body":"x"}' 'whole number'
bad_import "bad base64" '{"body_base64":"abc"}' 'base64'
bad_import "trailing text" '{"body":"x"} x' 'after the object'
bad_import "not an object" '["body"]' 'expected'
bad_import "unterminated" '{"body":"x' 'unterminated'
bad_import "bad state" '{"state":"lost","body":"x"}' 'state'
bad_import "header not a string" '{"headers":{"a":1},"body":"x"}' 'string'
bad_import "NUL in a header" '{"headers":{"a":"\u0000"},"body":"x"}' 'NUL'
bad_import "raw control char" "$(printf '{"body":"a\001"}')" 'control character'
bad_import "invalid UTF-8" "$(printf '{"body":"\377"}')" 'UTF-8'
bad_import "size mismatch" '{"size":3,"body":"x"}' 'size'
ri bad.jsonl "$W/never.db" import x
status "bad import into a missing file" 2
[ ! -e "$W/never.db" ] && ok || no "a bad import created the file"

# ---- export header: queue options travel with the messages ---------------------------------------
r "$DB" create cfg.dead
r "$DB" create cfg --visibility 5s --max-receives 3 --dlq cfg.dead --retention 1h --max-payload 100 \
  --compress-above 50 --dedup-window 1m
r "$DB" put cfg hello
r "$DB" put cfg 'a second one'
r "$DB" export cfg
cp out cfg.jsonl
is "the header carries every option" "$(head -n 1 cfg.jsonl)" \
  '{"queue":"cfg","options":{"visibility_ms":5000,"max_receives":3,"dlq":"cfg.dead","retention_ms":3600000,"max_payload":100,"compress_above":50,"dedup_window_ms":60000}}'
DB4=$W/cfg.db
ri cfg.jsonl "$DB4" import
failed "import: the header's dlq is missing" 2 'dead-letter queue "cfg.dead", which does not exist'
[ ! -e "$DB4" ] && ok || no "an import refused for its dlq created the file"
r "$DB4" create keep
snapshot "$DB4" before.snap
ri cfg.jsonl "$DB4" import other
failed "import: the header's dlq is missing (existing file)" 2 'dead-letter queue "cfg.dead"'
unchanged "import refused for its dlq" "$DB4" before.snap
ri cfg.jsonl --json "$DB4" import --dlq ''
status "import --dlq '' drops the header's dlq" 0
is "import without QUEUE uses the header's name" "$(j queue)" "cfg"
has "import --json says it created the queue" out '"created":true'
r --json "$DB4" ls
has "the created queue has the header's options, without the dlq" out \
  '^\{"queue":"cfg","kind":"queue","visibility_ms":5000,"max_receives":3,"dlq":null,"retention_ms":3600000,"max_payload":100,"compress_above":50,"dedup_window_ms":60000\}$'
rm -f "$DB4"
r "$DB4" create cfg.dead
ri cfg.jsonl "$DB4" import
status "import with the dlq present" 0
r --json "$DB4" ls
has "the dlq is kept when it exists" out '^\{"queue":"cfg","kind":"queue",.*"dlq":"cfg.dead"'
r "$DB4" export cfg
is "export -> import -> export keeps the header" "$(head -n 1 out)" "$(head -n 1 cfg.jsonl)"
ri cfg.jsonl "$DB4" import renamed --visibility 9s --max-payload 50
status "import into a new name with options" 0
r --json "$DB4" ls
has "command-line options replace the header's, the rest is kept" out \
  '^\{"queue":"renamed","kind":"queue","visibility_ms":9000,"max_receives":3,"dlq":"cfg.dead","retention_ms":3600000,"max_payload":50,"compress_above":50,'
# An existing queue keeps its own options.
r "$DB4" create plain
ri cfg.jsonl --json "$DB4" import plain
status "import into an existing queue" 0
has "import --json: not created" out '"created":false'
r --json "$DB4" ls
has "an existing queue's options do not change" out \
  '^\{"queue":"plain","kind":"queue","visibility_ms":30000,"max_receives":0,"dlq":null,"retention_ms":0,"max_payload":1048576,'
is "and it got the messages" "$(stat1 "$DB4" plain total)" 2
snapshot "$DB4" before.snap
ri cfg.jsonl "$DB4" import plain --visibility 7s
failed "import: options given that an existing queue does not have" 2 'exists with other options'
unchanged "import with disagreeing options" "$DB4" before.snap
ri cfg.jsonl "$DB4" import plain --visibility 30s
status "import: options given that an existing queue has" 0

# Payload sizes are checked against the target before anything is written.
r "$DB4" create tiny --max-payload 6
snapshot "$DB4" before.snap
ri cfg.jsonl "$DB4" import tiny --batch 1
failed "import: a payload over the target's max_payload" 2 'line 3: the payload of 12 bytes is over the max payload of 6 bytes'
unchanged "import with a too-large payload (the first batch fits)" "$DB4" before.snap
is "nothing imported into tiny" "$(stat1 "$DB4" tiny total)" 0
{ printf '%s\n' '{"queue":"small","options":{"max_payload":4}}'; tail -n 2 cfg.jsonl; } >small.jsonl
ri small.jsonl "$W/small.db" import
failed "import: a payload over the header's max_payload" 2 'over the max payload of 4 bytes'
[ ! -e "$W/small.db" ] && ok || no "an import refused for its sizes created the file"
{ printf '%s\n' '{"queue":"deadbig","options":{"max_payload":3}}' '{"state":"dead","body":"toolarge"}' '{"body":"ok"}'; } >dead.jsonl
ri dead.jsonl "$DB4" import --skip-dead
status "import --skip-dead does not check the payloads it leaves out" 0

# Bad headers import nothing.
snapshot "$DB4" before.snap
bad_header() { # DESC LINES... ; the last argument is the expected message
  local desc=$1 re=${*: -1}
  shift
  printf '%s\n' "${@:1:$#-1}" >badh.jsonl
  ri badh.jsonl "$DB4" import
  status "import: $desc" 2
  has "import: $desc (message)" err "^mq: .*$re"
  unchanged "import: $desc" "$DB4" before.snap
}
bad_header "unknown header field" '{"queue":"h","kind":"queue"}' '{"body":"x"}' 'unknown field "kind"'
bad_header "unknown option" '{"queue":"h","options":{"visibilty_ms":1}}' 'unknown field "visibilty_ms"'
bad_header "option out of range" '{"queue":"h","options":{"max_payload":0}}' 'max_payload must be'
bad_header "negative option" '{"queue":"h","options":{"visibility_ms":-1}}' 'visibility_ms must be'
bad_header "option of the wrong type" '{"queue":"h","options":{"dlq":5}}' 'expected a string'
bad_header "repeated option" '{"queue":"h","options":{"retention_ms":1,"retention_ms":2}}' 'twice'
bad_header "trailing text" '{"queue":"h"} x' 'after the object'
bad_header "a header not first" '{"body":"x"}' '{"queue":"h"}' 'line 2: an export header can only be the first line'
bad_header "two exports concatenated" '{"queue":"h"}' '{"body":"x"}' '{"queue":"h"}' 'line 3: an export header'
printf '%s\n' '{"body":"x"}' >nohdr.jsonl
ri nohdr.jsonl "$DB4" import
failed "import without QUEUE or header" 2 'no export header'
unchanged "import without QUEUE or header" "$DB4" before.snap

# ---- topics and subscriptions ------------------------------------------------------------------
T=$W/topics.db
r "$T" topic
failed "topic without a subcommand" 2 'subcommand'
r "$T" topic frob
failed "unknown topic subcommand" 2 'unknown topic subcommand "frob"'
r "$T" topic create news --visibility 5s
failed "topic create takes no --visibility" 2 'topic create has no option --visibility'
r "$T" subscribe news all
failed "subscribe on a missing file" 7 'does not exist'
r "$T" publish news x
failed "publish on a missing file" 7 'does not exist'
[ ! -e "$T" ] && ok || no "topic usage errors created the file"
r "$T" topic create news
status "topic create (creates the file)" 0
r "$T" topic create news
status "topic create again with the same options" 0
r "$T" topic create news --max-payload 10
failed "topic create with other options" 2 'exists'
r "$T" create jobs
r "$T" create jobs.dead
r "$T" topic create jobs
failed "topic create on a queue's name" 2 'exists as a queue'
r "$T" create news
failed "create a queue on a topic's name" 2 'exists as a topic'
r "$T" topic create alerts --max-payload 1K --compress-above 100 --retention 1h --dedup-window 2m
status "topic create with options" 0
r "$T" subscribe news all
status "subscribe" 0
r "$T" subscribe news kitchen --filter 'sensors.kitchen.>'
status "subscribe --filter" 0
r "$T" subscribe news temps --filter 'sensors/*/temp' --visibility 1s --max-receives 2 --dlq jobs.dead
status "subscribe with queue options" 0
r "$T" subscribe news all
status "subscribe again with the same filter" 0
snapshot "$T" before.snap
r "$T" subscribe news all --filter 'a.b'
failed "subscribe again with another filter" 2 'exists with another filter'
for f in 'a.>.b' 'a.b*' '#.x' "$(printf 'a.\001')"; do
  r "$T" subscribe news bad --filter "$f"
  failed "a malformed filter [$f]" 2 'filter .* is malformed'
done
r "$T" subscribe nosuch s
failed "subscribe to an unknown topic" 4 'no topic named "nosuch"'
r "$T" subscribe jobs s
failed "subscribe to a queue" 2 '"jobs" is a queue, not a topic'
r "$T" subscribe news s --dlq nosuch
failed "subscribe with a missing dlq" 2 'dead-letter queue "nosuch"'
r "$T" subscribe news s --dlq alerts
failed "subscribe with a topic as dlq" 2 'dead-letter queue "alerts" is not a queue'
r "$T" subscribe news
failed "subscribe without SUB" 2 'missing SUB'
unchanged "refused subscriptions" "$T" before.snap

r "$T" topic ls
status "topic ls" 0
has "topic ls header" out '^topic +subscriptions$'
has "topic ls counts subscriptions" out '^news +3$'
has "topic ls: a topic without subscriptions" out '^alerts +0$'
r --json "$T" topic ls
is "topic ls --json" "$(tr '\n' ' ' <out)" '{"topic":"alerts","subscriptions":0} {"topic":"news","subscriptions":3} '
r "$T" ls
is "ls: queues, then each topic and its subscriptions" "$(awk '{print $1 "/" $2}' out | tr '\n' ' ')" \
  "jobs/queue jobs.dead/queue alerts/topic news/topic news/all/subscription news/kitchen/subscription news/temps/subscription "
has "ls: a topic's options" out '^alerts +topic +subscriptions=0 retention=1h max_payload=1K compress_above=100 dedup_window=2m$'
has "ls: a subscription's filter and options" out '^news/temps +subscription +filter=sensors/\*/temp visibility=1s max_receives=2 dlq=jobs.dead '
r --json "$T" ls
has "ls --json: topic" out '^\{"queue":"news","kind":"topic","retention_ms":0,"max_payload":1048576,"compress_above":0,"dedup_window_ms":300000,"subscriptions":3\}$'
has "ls --json: subscription" out '^\{"queue":"news/kitchen","kind":"subscription","visibility_ms":30000,.*"filter":"sensors.kitchen.>"\}$'
has "ls --json: subscription without a filter" out '^\{"queue":"news/all",.*"filter":""\}$'

# publish
r "$T" publish news 'kitchen temp' --subject sensors.kitchen.temp
status "publish" 0
[[ $(cat out) =~ ^[0-9]+\ delivered\ 3$ ]] && ok || no "publish prints the id and 3 subscriptions: [$(cat out)]"
r --json "$T" publish news 'hall humidity' --subject sensors.hall.humidity --priority 4 --header h=1
status "publish --json" 0
is "publish --json delivered" "$(j delivered)" 1
pid=$(j id)
r --json "$T" publish news 'no subject'
is "no subject: only the unfiltered subscription" "$(j delivered)" 1
r --json "$T" publish news 'slash temp' --subject sensors/hall/temp
is "'/' and '.' are the same separator" "$(j delivered)" 2
r --json "$T" publish news dup --subject sensors.hall.humidity --dedup d1
dupid=$(j id)
r --json "$T" publish news dup2 --subject sensors.hall.humidity --dedup d1
is "publish --dedup: the first id" "$(j id)" "$dupid"
is "publish --dedup: delivered nowhere again" "$(j delivered)" 0
printf 'l1\nl2\n' >plines.in
ri plines.in --json "$T" publish news --lines --subject sensors.kitchen.light
status "publish --lines" 0
is "publish --lines: one line each" "$(j delivered | tr '\n' ' ')" "2 2 "
is "stats of a subscription" "$(stat1 "$T" news/all total)" 7
is "the filter kept the rest out" "$(stat1 "$T" news/kitchen total)" 3
is "a wildcard filter" "$(stat1 "$T" news/temps total)" 2
r --json "$T" topic stats news
status "topic stats" 0
has "topic stats: the topic's counts (payloads stored once)" out '^\{"topic":"news","subscriptions":3,"messages":12,"payloads":7,"bytes":'
has "topic stats: each subscription" out '^\{"queue":"news/kitchen","ready":3,.*"kind":"subscription",'
is "topic stats: 1 + 3 lines" "$(wc -l <out | tr -d ' ')" 4
r "$T" topic stats news
has "topic stats (human)" out '^topic news: subscriptions 3, messages 12, payloads 7, bytes [0-9]+$'
has "topic stats table" out '^news/temps +2 +0 +0 +0 +2 +[0-9]+ +[0-9]+$'
r "$T" topic stats nosuch
failed "topic stats of an unknown topic" 4 'no topic named'
r "$T" subscribe alerts fire --filter 'fire.>'
snapshot "$T" before.snap
r "$T" publish alerts 'water' --subject water.leak
status "publish that matches nothing" 0
is "publish that matches nothing prints id 0" "$(cat out)" "0 delivered 0"
unchanged "a publish nobody receives stores nothing" "$T" before.snap

# Bad publishes and puts change nothing.
snapshot "$T" before.snap
for sj in 'a.*.b' 'a.>' '#' 'lang.c#' "$(printf 'a\001b')"; do
  r "$T" publish news x --subject "$sj"
  failed "a malformed subject [$sj]" 2 'subject .* is malformed'
done
r "$T" publish nosuch x
failed "publish to an unknown topic" 4 'no topic named "nosuch"'
r "$T" publish jobs x
failed "publish to a queue" 2 '"jobs" is a queue, not a topic'
r "$T" publish news/all x
failed "publish to a subscription" 2 '"news/all" is a subscription: publish to its topic "news"'
r "$T" put news x
failed "put to a topic" 2 '"news" is a topic: send to it with mq FILE publish news'
r "$T" put news x --create
failed "put --create to a topic" 2 'is a topic'
ri plines.in "$T" put news --lines
failed "put --lines to a topic" 2 'is a topic'
r "$T" put news/all x
failed "put to a subscription" 2 'is a subscription: publish to its topic'
r "$T" publish alerts "$(head -c 1100 /dev/zero | tr '\0' x)" --subject fire.x
failed "publish over the topic's max_payload" 2 'max_payload of 1024'
unchanged "refused publishes and puts" "$T" before.snap

# A subscription is a queue: get, peek, ack, nack, touch, purge, redrive, export.
r --json "$T" peek news/all --count 10
status "peek a subscription" 0
has "peek --json shows the subject" out '"priority":4,"subject":"sensors.hall.humidity",.*"headers":\{"h":"1"\},"body":"hall humidity"'
hasnt "no subject member without a subject" out '"subject":[^,]*,[^}]*"body":"no subject"'
r --json "$T" get news/kitchen
status "get from a subscription" 0
is "get --json subject" "$(j subject)" "sensors.kitchen.temp"
is "get --json body" "$(j body)" "kitchen temp"
kr=$(j receipt)
is "leased in the subscription" "$(stat1 "$T" news/kitchen inflight)" 1
is "other subscriptions untouched" "$(stat1 "$T" news/all inflight)" 0
r "$T" ack news/kitchen "$kr"
status "ack in a subscription" 0
r "$T" ack news/kitchen "$kr"
failed "a second ack in a subscription is stale" 5 'not leased'
r "$T" get news/kitchen
has "human get shows the subject" out '^subject: sensors.kitchen.light$'
kr=$(sed -n 's/^receipt: //p' out)
r "$T" touch news/kitchen "$kr" --visibility 1h
status "touch in a subscription" 0
r "$T" nack news/kitchen "$kr" --reason later
status "nack in a subscription" 0
r --json "$T" get news/kitchen --count 5 --ack
is "get --ack from a subscription" "$(wc -l <out | tr -d ' ')" 2
is "the subscription is empty" "$(stat1 "$T" news/kitchen total)" 0
is "its messages are still in the others" "$(stat1 "$T" news/all total)" 7
# Dead letters of a subscription (max-receives 2, dlq jobs.dead) and redrive.
r "$T" get news/temps --count 5
at 2000 "$T" get news/temps --count 5
status "second delivery from a subscription" 0
at 4000 "$T" get news/temps
status "no third delivery from a subscription" 3
is "dead-lettered to the subscription's dlq" "$(stat1 "$T" jobs.dead ready)" 2
r --json "$T" redrive jobs.dead
is "redrive back to the subscription" "$(j moved)" 2
is "back in the subscription" "$(MQ_CLI_CLOCK_OFFSET_MS=4000 "$MQ" --json "$T" stats news/temps |
  sed -n 's/.*"ready":\([0-9]*\).*/\1/p')" 2
r "$T" redrive news/temps
status "redrive a subscription" 0
r "$T" export news/all
status "export a subscription" 0
cp out sub.jsonl
is "export a subscription: header + 7" "$(wc -l <sub.jsonl | tr -d ' ')" 8
has "export header of a subscription" sub.jsonl '^\{"queue":"news/all","options":\{"visibility_ms":30000,'
has "export keeps the subject" sub.jsonl '"subject":"sensors.kitchen.temp".*"body":"kitchen temp"'
ri sub.jsonl "$T" import
failed "import into a subscription" 2 '"news/all" is a subscription: import writes to queues only'
ri sub.jsonl "$T" import fromsub
status "import a subscription's export into a queue" 0
is "imported all" "$(cat out)" "imported 7"
r --json "$T" purge news/all
status "purge a subscription" 0
is "purge a subscription: count" "$(j purged)" 7
is "the payloads shared with others stay" "$(stat1 "$T" news/temps total)" 2

# A topic's name where a queue is meant: a clear message, nothing changed.
snapshot "$T" before.snap
for cmd in "get news" "peek news" "stats news" "purge news" "redrive news" "export news" \
  "ack news 0000000000000001000000000000000a" "nack news 0000000000000001000000000000000a" \
  "touch news 0000000000000001000000000000000a --visibility 1s"; do
  # shellcheck disable=SC2086
  r "$T" $cmd
  failed "$cmd on a topic" 2 '"news" is a topic'
done
r "$T" drop news
failed "drop a topic" 2 'is a topic: drop it with mq FILE topic drop news'
r "$T" drop news/all
failed "drop a subscription" 2 'is a subscription: drop it with mq FILE unsubscribe news all'
r "$T" topic drop jobs
failed "topic drop of a queue" 2 '"jobs" is a queue, not a topic'
r "$T" topic drop nosuch
failed "topic drop of an unknown topic" 4 'no topic named'
r "$T" unsubscribe news nosuch
failed "unsubscribe an unknown subscription" 4 'has no subscription "nosuch"'
r "$T" unsubscribe nosuch all
failed "unsubscribe from an unknown topic" 4 'no topic named'
unchanged "topic names where queues are meant" "$T" before.snap

r "$T" unsubscribe news kitchen
status "unsubscribe" 0
r "$T" get news/kitchen
failed "get from a dropped subscription" 4 'no queue named "news/kitchen"'
r --json "$T" publish news x --subject sensors.kitchen.temp
is "a dropped subscription receives nothing" "$(j delivered)" 2
r "$T" topic drop news
status "topic drop" 0
r "$T" topic ls
hasnt "a dropped topic is gone" out '^news '
r "$T" ls
hasnt "its subscriptions are gone" out '^news'
r "$T" check
status "the store is sound after all that" 0

# ---- damaged, foreign and unopenable files ------------------------------------------------------
head -c 4096 /dev/urandom >garbage.db
sum0=$(cksum <garbage.db)
for cmd in ls stats check "put q x" "put q x --create" "create q" "get q"; do
  # shellcheck disable=SC2086
  r garbage.db $cmd
  failed "$cmd on a garbage file" 7 'not an mq store'
done
is "the garbage file is untouched" "$(cksum <garbage.db)" "$sum0"

mkdir ro
chmod 555 ro
rodir=ro
if (: >ro/probe) 2>/dev/null; then
  rm -f ro/probe
  # Permissions do not stop root: use a directory nobody can create in.
  if (: >/sys/mq_cli_probe) 2>/dev/null; then rodir=""; else rodir=/sys; fi
fi
if [ -n "$rodir" ]; then
  r "$rodir/x.db" create q
  failed "create in an unwritable directory" 7 'cannot create'
  [ ! -e "$rodir/x.db" ] && ok || no "a file appeared in the unwritable directory"
else
  echo "skip: no unwritable directory available" >&2
fi

if command -v sqlite3 >/dev/null 2>&1; then
  sqlite3 foreign.db 'CREATE TABLE t(x); INSERT INTO t VALUES (1);'
  sum0=$(cksum <foreign.db)
  r foreign.db ls
  failed "a non-mq SQLite file" 7 'another application'
  r foreign.db create q
  failed "create in a non-mq SQLite file" 7 'another application'
  is "the SQLite file is untouched" "$(cksum <foreign.db)" "$sum0"

  # One payload byte damaged behind the library's back.
  DB3=$W/damaged.db
  r "$DB3" create q
  r "$DB3" put q 'hello world'
  r "$DB3" put q intact
  r "$DB3" check
  status "check on a sound store" 0
  is "check says ok" "$(cat out)" "ok"
  # (A payload this small is kept in its message row.)
  sqlite3 "$DB3" "UPDATE mq_msg SET data = CAST('hello wOrld' AS BLOB)
                  WHERE data = CAST('hello world' AS BLOB)"
  r "$DB3" check
  status "check on a damaged store" 6
  has "check names the damaged message" out '^queue "q": message [0-9]+: payload fails its checksum$'
  has "check says damaged" err '^mq: .*damaged: 1 problem'
  r --json "$DB3" check
  has "check --json" out '^\{"ok":false,"problems":1\}$'
  has "check --json problem line" out '^\{"problem":"queue \\"q\\": message [0-9]+: payload fails'
  r "$DB3" export q
  status "export of a damaged queue" 6
  is "export writes the header and the intact message" "$(wc -l <out | tr -d ' ')" 2
  has "export says what it left out" err 'damaged payload'

  # The tool runs on the store clock that every application of the file
  # shares, not on the wall clock: move the store clock an hour ahead of
  # the wall clock (as a wall-clock step back would) and look.
  DB5=$W/clock.db
  r "$DB5" create c
  sqlite3 "$DB5" "UPDATE mq_meta SET value = value + 3600000 WHERE key = 'clock_offset'"
  r "$DB5" put c ahead
  r --json "$DB5" peek c
  skew=$(($(j enqueued_at) - $(date +%s%3N)))
  [ "$skew" -gt 3540000 ] && [ "$skew" -lt 3660000 ] && ok ||
    no "the tool's put uses the store clock: enqueued_at - wall clock = $skew ms, expected about 1 h"
  # A message that expires 2 h after the wall clock's now has 1 h left on
  # the store clock: export says so.
  r "$DB5" purge c
  at 0 "$DB5" put c wall --ttl 2h
  r "$DB5" export c
  ttl=$(sed -n 's/.*"ttl_ms":\([0-9]*\).*/\1/p' out)
  [ -n "$ttl" ] && [ "$ttl" -gt 3540000 ] && [ "$ttl" -le 3600000 ] && ok ||
    no "export gives the TTL left on the store clock: [$ttl], expected about 1 h"
  # The test hook is a clock of its own: the wall clock plus the offset.
  at 0 --json "$DB5" peek c
  skew=$(($(j enqueued_at) - $(date +%s%3N)))
  [ "$skew" -gt -60000 ] && [ "$skew" -le 0 ] && ok ||
    no "MQ_CLI_CLOCK_OFFSET_MS=0 runs on the wall clock: skew $skew ms"
  # What the file says about itself is data: not valid UTF-8, it goes out
  # in base64 in JSON, escaped in human output.
  r creator.db create q
  sqlite3 creator.db "UPDATE mq_meta SET value = CAST(X'6D71C3' AS TEXT) WHERE key = 'created_by'"
  r --json creator.db info
  has "info --json: a creator that is not UTF-8" out '"created_by_base64":"bXHD"'
  r creator.db info
  has "info: a creator that is not UTF-8, escaped" out '^format +3 \(created by mq\\xc3\)$'
else
  echo "skip: no sqlite3 CLI for the foreign-file and damage cases" >&2
fi

# ---- drop, globals, bench ---------------------------------------------------------------------
r "$DB" drop dlq
failed "drop a queue that is a dlq" 2 'dlq'
r "$DB" drop w
status "drop" 0
r "$DB" drop dlq
status "drop the former dlq" 0
r "$DB" get w
failed "get from a dropped queue" 4 'no queue named'
r --sync normal --busy-timeout 100 "$DB" put q synced
status "--sync normal --busy-timeout" 0
r "$DB" put q viaoff --sync off
status "--sync after the command" 0
# The page size sits in bytes 16-17 of SQLite's header (1 meaning 65536).
pagesize() { od -An -tu1 -j16 -N2 "$1" | awk '{ p = $1 * 256 + $2; print p == 1 ? 65536 : p }'; }
r --page-size 8K pages8k.db create q
status "--page-size 8K on a new file" 0
is "a new file gets --page-size" "$(pagesize pages8k.db)" 8192
r "$DB" --page-size 64K put q keeps
status "--page-size on an existing file" 0
is "an existing file keeps its page size" "$(pagesize "$DB")" 4096
r --page-size 64K pages64k.db create q
is "--page-size 64K" "$(pagesize pages64k.db)" 65536
r pages64k.db put q big64
status "put into a 64K-page file" 0
r pages8k.db info
status "info" 0
has "info shows the page size" out '^page size +8192$'
has "info shows the format" out '^format +3 \(created by mq [0-9]'
has "info counts the queues" out '^queues +1$'
r --json pages64k.db info
is "info --json page_size" "$(j page_size)" 65536
is "info --json subscriptions" "$(j subscriptions)" 0
r missing.db info
failed "info on a missing file" 7 'does not exist'
[ ! -e missing.db ] && ok || no "info created the file"
r pages8k.db info extra
failed "info with an argument" 2 'unexpected argument'
for bad in 1000 256 128K 0 x; do
  r --page-size "$bad" pagesbad.db create q
  failed "--page-size $bad" 2 'page-size'
done
[ ! -e pagesbad.db ] && ok || no "a bad --page-size created the file"
r "$DB" bench --count 20 --size 16 --sync off
status "bench" 0
for op in put get ack cycle; do
  has "bench reports $op" out "^$op +20 ops +[0-9.]+ s +[0-9]+ ops/s$"
done
r --json "$DB" bench --count 10 --sync off
is "bench --json" "$(grep -c '"ops_per_sec":' out)" 4
r "$DB" ls
hasnt "bench leaves no queue behind" out 'mq-bench'

# ---- serve (built only with the network code) -------------------------------------------------
# `timeout --foreground` passes our SIGTERM on once.  Without it, timeout
# also signals its process group, and the second SIGTERM can land while a
# LeakSanitizer build checks for leaks at exit, which stops it dead.
if "$MQ" --help 2>&1 | grep -q "serve \[--pull"; then
  r "$DB" create served
  timeout --foreground -k 10 30 "$MQ" "$DB" serve --pull served=tcp://127.0.0.1:0 --router tcp://127.0.0.1:0 \
    </dev/null >serve.out 2>serve.err &
  spid=$!
  for _ in $(seq 200); do [ "$(wc -l <serve.out)" -ge 2 ] && break; sleep 0.05; done
  is "serve prints where the pull endpoint listens" \
    "$(grep -c '^pull served tcp://127\.0\.0\.1:[1-9][0-9]*$' serve.out)" 1
  is "serve prints where the router listens" \
    "$(grep -c '^router tcp://127\.0\.0\.1:[1-9][0-9]*$' serve.out)" 1
  kill -TERM "$spid"
  wait "$spid"
  is "serve stops cleanly on SIGTERM (exit status)" "$?" 0
  r "$DB" serve --pull nosuch=tcp://127.0.0.1:0
  failed "serve an unknown queue" 4 'no queue "nosuch"'
  r "$DB" serve --pull served=tcp://256.1.1.1:1
  is "serve a malformed endpoint fails" "$([ "$rc" -ne 0 ] && echo yes)" yes
  r "$DB" serve --push-connect served=tcp://*:5555
  failed "serve --push-connect to no host" 2 'name a host and a port'
  r "$DB" serve --pull-connect served
  is "serve --pull-connect without an endpoint fails" "$([ "$rc" -ne 0 ] && echo yes)" yes
  # One mq serve binds a PULL; a second, on another file, connects its PUSH to
  # it -- started first, so it must keep reconnecting until the PULL is there.
  DB2=$W/connect.db
  r "$DB2" create outbox
  r "$DB2" put outbox first
  r "$DB2" put outbox second
  port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  timeout --foreground -k 10 30 "$MQ" "$DB2" serve --push-connect "outbox=tcp://127.0.0.1:$port" \
    </dev/null >connect.out 2>connect.err &
  cpid=$!
  for _ in $(seq 200); do [ "$(wc -l <connect.out)" -ge 1 ] && break; sleep 0.05; done
  is "serve prints where --push-connect connects" "$(cat connect.out)" \
    "push-connect outbox tcp://127.0.0.1:$port"
  sleep 0.3
  r "$DB" create inbox
  timeout --foreground -k 10 30 "$MQ" "$DB" serve --pull "inbox=tcp://127.0.0.1:$port" \
    </dev/null >serve.out 2>serve.err &
  spid=$!
  for _ in $(seq 300); do
    r --json "$DB" stats inbox
    grep -q '"total":2,' out && break
    sleep 0.05
  done
  has "--push-connect reconnected and delivered both messages" out '"total":2,'
  r "$DB" get inbox --raw
  is "the first message came first" "$(cat out)" "first"
  kill -TERM "$cpid" "$spid"
  wait "$cpid"
  is "serve --push-connect stops cleanly on SIGTERM (exit status)" "$?" 0
  wait "$spid"
  r --json "$DB2" stats outbox
  has "delivered messages are gone from the outbox" out '"total":0,'
  has "serve says at exit what --push-connect sent" connect.err \
    "^mq serve: push-connect outbox tcp://127\\.0\\.0\\.1:$port: in 0 \\(0 bytes\\), out 2 \\(11 bytes\\), acks 0, dropped 0; connections 1, "
  has "serve says at exit what the pull endpoint stored" serve.err \
    "^mq serve: pull inbox tcp://127\\.0\\.0\\.1:$port: in 2 \\(11 bytes\\), out 0 \\(0 bytes\\), acks 0, dropped 0; connections 1, "
else
  echo "skip: mq built without the network code (no serve)" >&2
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
