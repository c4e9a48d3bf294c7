#!/usr/bin/env bash
# mutt (Debian's mutt 2.2) against a wmail node, non-interactively: a batch send over
# submission (STARTTLS + AUTH) with the copy APPENDed to Sent; an IMAP session driven with
# `push` keys (copy, flag, mark read, delete to Trash, save to a new UTF-8 folder with
# ENABLE UTF8=ACCEPT, display); a reopen with the header cache (CONDSTORE/QRESYNC resync
# after another client's changes); bounce (a redirect with Resent-* fields of a message from
# a foreign author) to the account itself; IDLE (new mail announced while idling). imapq.py
# (next to this file) checks each effect over its own connection, and mutt's IMAP/SMTP
# traces (-d 5, kept per step as trace-*.log) must hold no unexpected NO/BAD/4xx/5xx.
#
# Run by the Rust test `clients::roundcube_and_mutt_work_against_a_node`, and by hand:
#   mutt.sh IMAP_PORT SUBMISSION_PORT ADDRESS PASSWORD
# Environment:
#   HOST=127.0.0.1                the node's address
#   IMAP_SECURITY=starttls|ssl    how IMAP_PORT speaks (the submission port always uses STARTTLS)
#   WORK=<fresh mktemp -d>        muttrc, caches, traces and screens; a work dir made here is
#                                 removed after a run without failures unless KEEP_WORK=1
#   KEEP=1                        keep the test's messages and folders in the account
#   SKIP_IDLE=1                   skip the IDLE step
# Needs mutt openssl python3 and `script` and `timeout` (util-linux, coreutils); mutt runs
# under `script` because it needs a terminal. Prints PASS/FAIL per step; the exit status is
# the number of failures. When a tool is missing it prints "MISSING ..." on stderr and
# exits with 2. Every mutt run is under `timeout`, every wait is bounded.
set -u
[ $# -eq 4 ] || { echo "usage: $0 IMAP_PORT SUBMISSION_PORT ADDRESS PASSWORD" >&2; exit 2; }
export IMAP_PORT=$1 SUB_PORT=$2 ADDRESS=$3 PASSWORD=$4
export HOST=${HOST:-127.0.0.1} IMAP_SECURITY=${IMAP_SECURITY:-starttls}
HERE=$(cd "$(dirname "$0")" && pwd)
RUN=mu$(date +%s)$RANDOM

for tool in mutt openssl python3 script timeout; do
  command -v $tool >/dev/null || {
    echo "MISSING $tool: install it with DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mutt openssl python3 bsdutils coreutils (or tools/dev/deps.sh test)" >&2
    exit 2
  }
done
[ -f "$HERE/imapq.py" ] || { echo "MISSING imapq.py next to $0" >&2; exit 2; }
IQ() { python3 "$HERE/imapq.py" "$@"; }

OWN_WORK=0
if [ -z "${WORK:-}" ]; then WORK=$(mktemp -d "${TMPDIR:-/tmp}/wmail-mutt.XXXXXX") && OWN_WORK=1 || exit 2; fi
FAILS=0
cleanup() { if [ $OWN_WORK = 1 ] && [ $FAILS = 0 ] && [ "${KEEP_WORK:-0}" != 1 ]; then rm -rf "$WORK"; fi; }
trap cleanup EXIT
trap 'echo "FAIL interrupted" >&2; FAILS=$((FAILS + 1)); exit $FAILS' INT TERM HUP

pass() { echo "PASS $1"; }
fail() { echo "FAIL $1${2:+  -- $2}"; FAILS=$((FAILS + 1)); }
check() { local name=$1; shift; if "$@"; then pass "$name"; else fail "$name"; fi; }

mkdir -p "$WORK" && rm -rf "$WORK"/{tmp,hcache,bcache,certs.pem,muttrc,push.rc,body.txt,att.txt,send.out,.muttdebug*,trace-*.log,screen-*.out} \
  && mkdir -p "$WORK/tmp" || exit 2
# Trust the node's self-signed certificates: mutt accepts a certificate found in certificate_file.
if [ "$IMAP_SECURITY" = ssl ]; then SCHEME=imaps SC=(); else SCHEME=imap SC=(-starttls imap); fi
{ timeout 10 openssl s_client -connect "$HOST:$IMAP_PORT" "${SC[@]}" -showcerts </dev/null 2>/dev/null
  timeout 10 openssl s_client -connect "$HOST:$SUB_PORT" -starttls smtp -showcerts </dev/null 2>/dev/null; } \
  | sed -n '/BEGIN CERT/,/END CERT/p' >"$WORK/certs.pem"
[ -s "$WORK/certs.pem" ] || { fail "fetch the node's certificates with openssl s_client"; exit $FAILS; }
mq() { printf '"%s"' "$(printf '%s' "$1" | sed 's/[\\"$`]/\\&/g')"; } # a muttrc double-quoted string
UENC=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$ADDRESS")
cat >"$WORK/muttrc" <<EOF
set from = $(mq "$ADDRESS")
set realname = "Mutt Test"
set use_from = yes
set envelope_from = yes
set smtp_url = "smtp://$UENC@$HOST:$SUB_PORT/"
set smtp_pass = $(mq "$PASSWORD")
set imap_user = $(mq "$ADDRESS")
set imap_pass = $(mq "$PASSWORD")
set folder = "$SCHEME://$HOST:$IMAP_PORT/"
set spoolfile = "+INBOX"
set record = "+Sent"
set postponed = "+Drafts"
set trash = "+Trash"
set ssl_starttls = yes
set ssl_force_tls = yes
set ssl_verify_host = no
set certificate_file = "$WORK/certs.pem"
set header_cache = "$WORK/hcache"
set message_cachedir = "$WORK/bcache"
set tmpdir = "$WORK/tmp"
set imap_condstore = yes
set imap_qresync = yes
set charset = "utf-8"
set send_charset = "utf-8"
set copy = yes
set move = no
set mark_old = no
set mail_check = 300
set timeout = 1
set connect_timeout = 10
set confirmappend = no
set confirmcreate = no
set delete = yes
set quit = yes
set bounce = yes
set wait_key = no
EOF
MUTT_TIMEOUT=(timeout -k 5 40)
# mutt in batch mode; its trace goes to $WORK/trace-NAME.log
M() { local trace=$1; shift
  HOME="$WORK" TERM=xterm "${MUTT_TIMEOUT[@]}" mutt -n -F "$WORK/muttrc" -d 5 "$@"
  local rc=$?; mv "$WORK/.muttdebug0" "$WORK/trace-$trace.log" 2>/dev/null; return $rc; }
# mutt interactively (under a pty) with `push` keys; script's stdin feeds further keys
MI() { local trace=$1 keys=$2; shift 2
  printf 'push "%s"\n' "$keys" >"$WORK/push.rc"
  HOME="$WORK" TERM=xterm "${MUTT_TIMEOUT[@]}" script -qec "mutt -n -F $WORK/muttrc -d 5 $* -e 'source $WORK/push.rc'" /dev/null \
    >"$WORK/screen-$trace.out" 2>&1
  local rc=$?; mv "$WORK/.muttdebug0" "$WORK/trace-$trace.log" 2>/dev/null; return $rc; }
INBOX="$SCHEME://$HOST:$IMAP_PORT/INBOX"

echo "# mutt $(mutt -v | head -1 | cut -d' ' -f2), $SCHEME://$HOST:$IMAP_PORT, smtp://$HOST:$SUB_PORT, account $ADDRESS, run $RUN, work dir $WORK"

# 1. batch send over submission (STARTTLS + AUTH), copy to Sent over IMAP
printf 'mutt body line 中文 %s\n' "$RUN" >"$WORK/body.txt"
printf 'attached 附件\n' >"$WORK/att.txt"
M send -s "$RUN mutt-sent 测试" -a "$WORK/att.txt" -- "$ADDRESS" <"$WORK/body.txt" >"$WORK/send.out" 2>&1
rc=$?
check "batch send (exit $rc)" [ $rc = 0 ]
check "sent message delivered to INBOX" bash -c '[ "$(python3 "$1/imapq.py" wait INBOX "$2 mutt-sent" 1 20)" -ge 1 ]' _ "$HERE" "$RUN"
check "copy APPENDed to Sent (record)" bash -c '[ "$1" = 1 ]' _ "$(IQ count Sent "$RUN mutt-sent")"

# 2. IMAP: copy, flag, mark read, delete (-> Trash), save to a new UTF-8 folder, display
if n=$(IQ seed "$RUN" 2>&1) && IQ wait INBOX "$RUN" "$n" 30 >/dev/null; then pass "seed $n messages via submission"; else fail "seed" "$n"; exit $FAILS; fi
IQ append INBOX "$RUN bounceme" >/dev/null || fail "APPEND a message from a foreign author"
FOLDER="M-$RUN-文件夹" FOLDER7="M-$RUN-&ZYdO9lk5-"
K="<tag-pattern>~s $RUN.copyme<enter><tag-prefix><copy-message>=Archive<enter><untag-pattern>.<enter>"
K="$K<tag-pattern>~s $RUN.flagme<enter><tag-prefix><flag-message><untag-pattern>.<enter>"
K="$K<tag-pattern>~s $RUN.readme<enter><tag-prefix><clear-flag>N<untag-pattern>.<enter>"
K="$K<tag-pattern>~s $RUN.deleteme<enter><tag-prefix><delete-message><untag-pattern>.<enter>"
K="$K<tag-pattern>~s $RUN.moveme<enter><tag-prefix><save-message>=$FOLDER<enter><untag-pattern>.<enter>"
K="$K<search>$RUN.viewme<enter><display-message><exit><sync-mailbox><quit>"
MI imap "$K" -f "$INBOX" </dev/null
rc=$?
check "mutt IMAP session (exit $rc)" [ $rc = 0 ]
check "copy to Archive" bash -c '[ "$1" = 1 ] && [ "$2" = 1 ]' _ "$(IQ count INBOX "$RUN copyme")" "$(IQ count Archive "$RUN copyme")"
check "flag -> \\Flagged" bash -c '[[ "$1" == *"\\Flagged"* ]]' _ "$(IQ flags INBOX "$RUN flagme")"
check "clear N -> \\Seen" bash -c '[[ "$1" == *"\\Seen"* ]]' _ "$(IQ flags INBOX "$RUN readme")"
check "delete -> copied to Trash, expunged" bash -c '[ "$1" = 0 ] && [ "$2" = 1 ]' _ "$(IQ count INBOX "$RUN deleteme")" "$(IQ count Trash "$RUN deleteme")"
check "save to new UTF-8 folder (ENABLE UTF8=ACCEPT; seen as mUTF-7 by others)" bash -c 'grep -qxF "$1" <<<"$2" && [ "$3" = 0 ] && [ "$4" = 1 ]' _ \
  "$FOLDER7" "$(IQ folders)" "$(IQ count INBOX "$RUN moveme")" "$(IQ count "$FOLDER7" "$RUN moveme")"
check "display message -> \\Seen" bash -c '[[ "$1" == *"\\Seen"* ]]' _ "$(IQ flags INBOX "$RUN viewme")"

# 3. reopen with the header cache: CONDSTORE/QRESYNC resync after changes by another client
IQ store INBOX "$RUN plain" '+FLAGS (\Flagged)' >/dev/null
IQ expunge INBOX "$RUN attach" >/dev/null
MI qresync "<change-folder>=$FOLDER<enter><display-message><exit><quit>" -f "$INBOX" </dev/null
rc=$?
check "reopen INBOX with CHANGEDSINCE/VANISHED, open UTF-8 folder (exit $rc)" bash -c \
  '[ $1 = 0 ] && grep -aq "CHANGEDSINCE" "$2" && grep -aq "< \* VANISHED" "$2" && grep -aq "SELECT \"M-.*文件夹\"" "$2"' _ $rc "$WORK/trace-qresync.log"

# 4. bounce ("remail"): the unchanged message from sender@remote.test goes out again with a
# Resent-From: naming the account on top, to the account itself.
B0=$(IQ count INBOX "$RUN bounceme")
MI bounce "<search>$RUN.bounceme<enter><bounce-message>$ADDRESS<enter><quit>" -f "$INBOX" </dev/null
rc=$?
SBAD=$(grep -aE '^\[[^]]*\] [0-9]+< [45][0-9][0-9][ -]' "$WORK/trace-bounce.log" 2>/dev/null)
if [ -z "$SBAD" ]; then B1=$(IQ wait INBOX "$RUN bounceme" 2 15); else B1=$(IQ count INBOX "$RUN bounceme"); fi
if [ $rc = 0 ] && [ "$B0" = 1 ] && [ "$B1" = 2 ] && [ -z "$SBAD" ] && grep -aq '> Resent-From: ' "$WORK/trace-bounce.log"; then
  pass "bounce a foreign author's message to self (Resent-From:; INBOX count 1 -> 2)"
else
  fail "bounce a foreign author's message to self" "exit $rc, INBOX count $B0 -> $B1"
  [ -n "$SBAD" ] && echo "$SBAD" | sed 's/^/     /' | cut -c1-300
fi

# 5. IDLE: a message delivered while mutt idles shows up (EXISTS during IDLE, header fetched)
if [ "${SKIP_IDLE:-0}" != 1 ]; then
  printf 'set imap_idle = yes\nset mail_check = 1\n' >>"$WORK/muttrc"
  seen() { for _ in $(seq 50); do grep -aq -- "$1" "$WORK/.muttdebug0" 2>/dev/null && return 0; sleep 0.2; done; return 1; }
  # mutt's keyboard: wait (at most 10 s each) for IDLE, deliver, wait for the new header, quit,
  # and keep script's stdin open until mutt has logged out
  { seen '> a[0-9]* IDLE'; IQ deliver "$RUN idle" >/dev/null; seen "$RUN idle"; sleep 0.3; printf q; seen '< a[0-9]* OK LOGOUT'; } |
    HOME="$WORK" TERM=xterm "${MUTT_TIMEOUT[@]}" script -qec "mutt -n -F $WORK/muttrc -d 5 -f $INBOX" /dev/null >"$WORK/screen-idle.out" 2>&1
  rc=$?
  mv "$WORK/.muttdebug0" "$WORK/trace-idle.log" 2>/dev/null
  check "IDLE: new mail announced while idling (exit $rc)" bash -c \
    'awk "/> a[0-9]+ IDLE/{i=1} /> DONE/{i=0} i && /< \\* [0-9]+ EXISTS/{f=1} END{exit !f}" "$1" && grep -aq "$2 idle" "$1"' _ "$WORK/trace-idle.log" "$RUN"
fi

# 6. traces: every NO/BAD/4xx/5xx (a NO [NONEXISTENT] to STATUS and NO [TRYCREATE] to COPY
# before CREATE are expected)
ALL=$(grep -aE '< (a[0-9]+ (NO|BAD)|\* (NO|BAD|BYE)) |< [45][0-9][0-9][ -]' "$WORK"/trace-*.log | grep -v 'BYE logging out')
UNEXP=$(grep -vE 'NO \[(NONEXISTENT|TRYCREATE)\]' <<<"$ALL" | grep .)
[ -n "$ALL" ] && echo "$ALL" | sed 's/^/     /' | cut -c1-250
if [ -z "$UNEXP" ]; then pass "no unexpected NO/BAD/4xx/5xx in the traces"; else fail "unexpected NO/BAD/4xx/5xx (above)"; fi

[ "${KEEP:-0}" = 1 ] || IQ cleanup "$RUN" >/dev/null 2>&1
echo "# $FAILS failure(s); traces: $WORK/trace-*.log$([ $OWN_WORK = 1 ] && [ $FAILS = 0 ] && [ "${KEEP_WORK:-0}" != 1 ] && echo ' (removed)')"
exit $FAILS
