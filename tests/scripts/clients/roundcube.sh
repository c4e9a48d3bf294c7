#!/usr/bin/env bash
# Roundcube webmail (Debian's roundcube-core 1.6, served by `php -S`) against a wmail node.
# It logs in over IMAP and drives Roundcube's HTTP endpoints with curl like the browser UI
# would: message list (sorted, threaded), MIME messages and attachments, search (UTF-8),
# flags, folders (create, modified UTF-7 names, rename, size, subscribe, delete), move, copy,
# delete, compose and send with an attachment over submission, drafts, reply (\Answered),
# bounce (a redirect with Resent-* fields of a message from a foreign author), unread
# counts and logout. imapq.py (next to this file) checks each effect over its own
# connection, and Roundcube's IMAP/SMTP traces must hold no NO/BAD/4xx/5xx.
#
# Run by the Rust test `clients::roundcube_and_mutt_work_against_a_node`, and by hand:
#   roundcube.sh IMAP_PORT SUBMISSION_PORT ADDRESS PASSWORD
# Environment:
#   HOST=127.0.0.1                  the node's address
#   IMAP_SECURITY=starttls|ssl|plain  how IMAP_PORT speaks (plain needs [imap] allow_plaintext_auth)
#   SMTP_SECURITY=starttls|plain    how SUBMISSION_PORT speaks
#   RC_PORT=<a free port>           where `php -S` listens
#   WORK=<fresh mktemp -d>          Roundcube's config, database and logs (imap.log, smtp.log,
#                                   errors.log); a work dir made here is removed after a run
#                                   without failures unless KEEP_WORK=1
#   KEEP=1                          keep the test's messages and folders in the account
# Needs roundcube-core roundcube-sqlite3 php-cli php-sqlite3 curl python3 (tools/dev/deps.sh test).
# Prints PASS/FAIL per step; the exit status is the number of failures. When a tool is
# missing it prints "MISSING ..." on stderr and exits with 2. Every step is bounded in time.
set -u
[ $# -eq 4 ] || { echo "usage: $0 IMAP_PORT SUBMISSION_PORT ADDRESS PASSWORD" >&2; exit 2; }
export IMAP_PORT=$1 SUB_PORT=$2 ADDRESS=$3 PASSWORD=$4
export HOST=${HOST:-127.0.0.1} IMAP_SECURITY=${IMAP_SECURITY:-starttls}
SMTP_SECURITY=${SMTP_SECURITY:-starttls}
HERE=$(cd "$(dirname "$0")" && pwd)
RUN=rc$(date +%s)$RANDOM

missing() {
  echo "MISSING $1: install it with DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends roundcube-core roundcube-sqlite3 php-cli php-sqlite3 curl python3 (or tools/dev/deps.sh test)" >&2
  exit 2
}
for tool in php curl python3 timeout; do command -v $tool >/dev/null || missing "$tool"; done
[ -f /usr/share/roundcube/index.php ] && [ -d /var/lib/roundcube/public_html ] || missing "Roundcube (roundcube-core)"
[ -f /usr/share/roundcube/SQL/sqlite.initial.sql ] || missing "Roundcube's SQLite schema (roundcube-sqlite3)"
php -m 2>/dev/null | grep -qx pdo_sqlite || missing "PHP's SQLite driver (php-sqlite3)"
[ -f "$HERE/imapq.py" ] || { echo "MISSING imapq.py next to $0" >&2; exit 2; }
IQ() { python3 "$HERE/imapq.py" "$@"; }

OWN_WORK=0
if [ -z "${WORK:-}" ]; then WORK=$(mktemp -d "${TMPDIR:-/tmp}/wmail-roundcube.XXXXXX") && OWN_WORK=1 || exit 2; fi
FAILS=0 PHP_PID=
cleanup() {
  if [ -n "$PHP_PID" ]; then kill "$PHP_PID" 2>/dev/null; wait "$PHP_PID" 2>/dev/null; fi
  if [ $OWN_WORK = 1 ] && [ $FAILS = 0 ] && [ "${KEEP_WORK:-0}" != 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'echo "FAIL interrupted" >&2; FAILS=$((FAILS + 1)); exit $FAILS' INT TERM HUP

pass() { echo "PASS $1"; }
fail() { echo "FAIL $1${2:+  -- $2}"; FAILS=$((FAILS + 1)); }
check() { local name=$1; shift; if "$@"; then pass "$name"; else fail "$name"; fi; }

mkdir -p "$WORK" && rm -rf "$WORK"/{conf,logs,temp,rc.db,cookies,php-server.log,report.pdf,att.txt} && mkdir -p "$WORK"/{conf,logs,temp} || exit 2
case $IMAP_SECURITY in starttls) IMAP_URL="tls://$HOST:$IMAP_PORT" ;; ssl) IMAP_URL="ssl://$HOST:$IMAP_PORT" ;; *) IMAP_URL="$HOST:$IMAP_PORT" ;; esac
case $SMTP_SECURITY in starttls) SMTP_URL="tls://$HOST:$SUB_PORT" ;; *) SMTP_URL="$HOST:$SUB_PORT" ;; esac
ln -s /etc/roundcube/defaults.inc.php /etc/roundcube/mimetypes.php "$WORK/conf/"
cat > "$WORK/conf/config.inc.php" <<EOF
<?php
\$config = [];
\$config['db_dsnw'] = 'sqlite:///$WORK/rc.db?mode=0646';
\$config['imap_host'] = '$IMAP_URL';
\$config['smtp_host'] = '$SMTP_URL';
// The node's certificate is self-signed; peer_name keeps the IP address out of SNI.
\$tls = ['ssl' => ['verify_peer' => false, 'verify_peer_name' => false, 'allow_self_signed' => true, 'peer_name' => 'localhost']];
\$config['imap_conn_options'] = \$tls;
\$config['smtp_conn_options'] = \$tls;
\$config['imap_timeout'] = 20;
\$config['smtp_timeout'] = 20;
\$config['smtp_user'] = '%u';
\$config['smtp_pass'] = '%p';
\$config['des_key'] = 'rc-test-0123456789abcdef';
\$config['plugins'] = [];
\$config['log_driver'] = 'file';
\$config['log_dir'] = '$WORK/logs/';
\$config['temp_dir'] = '$WORK/temp/';
\$config['imap_debug'] = true;
\$config['smtp_debug'] = true;
\$config['debug_level'] = 1;
\$config['login_rate_limit'] = 0;
\$config['sendmail_delay'] = 0;
\$config['session_lifetime'] = 60;
\$config['enable_spellcheck'] = false;
// The caches make Roundcube use CONDSTORE/QRESYNC (ENABLE QRESYNC, CHANGEDSINCE ... VANISHED).
\$config['imap_cache'] = 'db';
\$config['messages_cache'] = true;
EOF
php -r '$db = new PDO("sqlite:'"$WORK"'/rc.db"); if ($db->exec(file_get_contents("/usr/share/roundcube/SQL/sqlite.initial.sql")) === false) { fwrite(STDERR, print_r($db->errorInfo(), true)); exit(1); }' \
  || { fail "create Roundcube's SQLite database"; exit $FAILS; }
RC_PORT=${RC_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
RC=http://127.0.0.1:$RC_PORT
# under `timeout` so that even a SIGKILLed run leaves no server behind for long
ROUNDCUBE_CONFIG_DIR="$WORK/conf" timeout -k 5 300 php -S "127.0.0.1:$RC_PORT" -t /var/lib/roundcube/public_html </dev/null >"$WORK/php-server.log" 2>&1 &
PHP_PID=$!
CURL=(curl -s --max-time 30)
up=0
for _ in $(seq 100); do "${CURL[@]}" -o /dev/null "$RC/" && { up=1; break; }; sleep 0.1; done
[ $up = 1 ] || { fail "php -S serving Roundcube on $RC" "$(tail -5 "$WORK/php-server.log")"; exit $FAILS; }
echo "# Roundcube at $RC, IMAP $IMAP_URL, SMTP $SMTP_URL, account $ADDRESS, run $RUN, work dir $WORK"

CJ=$WORK/cookies TOK=
get() { "${CURL[@]}" -c "$CJ" -b "$CJ" -H "X-Roundcube-Request: $TOK" -G "$RC/" "$@"; }   # AJAX GET
post() { "${CURL[@]}" -c "$CJ" -b "$CJ" -H "X-Roundcube-Request: $TOK" -X POST "$RC/" --data-urlencode "_token=$TOK" "$@"; }
page() { "${CURL[@]}" -c "$CJ" -b "$CJ" "$RC/?$1"; }                                         # full page
has() { grep -qF -- "$2" <<<"$1"; }
smtp_lines() { cat "$WORK/logs/smtp.log" 2>/dev/null | wc -l; }

# --- seed ---------------------------------------------------------------------------------
if n=$(IQ seed "$RUN" 2>&1) && IQ wait INBOX "$RUN" "$n" 30 >/dev/null; then pass "seed $n messages via submission (STARTTLS+AUTH)"
else fail "seed messages via submission" "$n"; exit $FAILS; fi
IQ append INBOX "$RUN bounceme" >/dev/null || fail "APPEND a message from a foreign author"
U_PLAIN=$(IQ uid INBOX "$RUN plain") U_ATT=$(IQ uid INBOX "$RUN attach") U_CJK=$(IQ uid INBOX "$RUN cjk")
U_FWD=$(IQ uid INBOX "$RUN fwd") U_COPY=$(IQ uid INBOX "$RUN copyme") U_THREAD=$(IQ uid INBOX "$RUN thread")
U_BOUNCE=$(IQ uid INBOX "$RUN bounceme")

# --- login --------------------------------------------------------------------------------
LTOK=$(page "" | grep -o 'name="_token" value="[^"]*"' | sed 's/.*value="//;s/"$//')
LOC=$("${CURL[@]}" -c "$CJ" -b "$CJ" -o /dev/null -w '%{redirect_url}' -X POST "$RC/?_task=login" --data-urlencode "_token=$LTOK" \
  -d _task=login -d _action=login -d _timezone=UTC --data-urlencode "_user=$ADDRESS" --data-urlencode "_pass=$PASSWORD")
TOK=$(page "_task=mail" | grep -o '"request_token":"[^"]*"' | sed 's/.*:"//;s/"$//')
if has "$LOC" "_task=mail" && [ -n "$TOK" ]; then pass "login"; else fail "login" "redirect=$LOC; see $WORK/logs/"; exit $FAILS; fi

# --- list / sort / threads ----------------------------------------------------------------
lst() { get --data-urlencode _task=mail --data-urlencode _action=list --data-urlencode _mbox=INBOX --data-urlencode _remote=1 "$@"; }
R=$(lst --data-urlencode _sort=arrival_DESC)
check "list INBOX (sort arrival desc)" has "$R" "$RUN cjk 你好 中文"
echo "     quota shown: $(grep -o 'title\\":\\"[^\\]*' <<<"$R" | tail -1 | sed 's/.*"//')"
R=$(lst --data-urlencode _sort=subject_ASC)
check "list INBOX (sort subject)" has "$R" "add_message_row($U_PLAIN,"
R=$(lst --data-urlencode _threads=1 --data-urlencode _sort=arrival_DESC)
check "thread list: reply under its root" grep -q "parent_uid.\{1,3\}:$U_THREAD[,}]" <<<"$R"
lst --data-urlencode _threads=0 >/dev/null

# --- show messages ------------------------------------------------------------------------
R=$(page "_task=mail&_action=show&_uid=$U_ATT&_mbox=INBOX")
check "show multipart: attachments listed" bash -c 'grep -qF report.pdf <<<"$1" && grep -qF données.csv <<<"$1" && grep -qF "Please find the" <<<"$1"' _ "$R"
R=$(page "_task=mail&_action=show&_uid=$U_CJK&_mbox=INBOX")
check "show Chinese subject/body" bash -c 'grep -qF "你好 中文" <<<"$1" && grep -qF "熊猫" <<<"$1"' _ "$R"
R=$(page "_task=mail&_action=show&_uid=$U_FWD&_mbox=INBOX")
check "show message/rfc822 attachment inline" bash -c 'grep -qF "Inner 内部 subject" <<<"$1" && grep -qF inner.bin <<<"$1"' _ "$R"
get --data-urlencode _task=mail --data-urlencode _action=get --data-urlencode "_uid=$U_ATT" --data-urlencode _mbox=INBOX \
  --data-urlencode _part=2 --data-urlencode _download=1 -o "$WORK/report.pdf"
check "download attachment (decoded bytes)" cmp -s "$WORK/report.pdf" <(python3 -c 'import sys; sys.stdout.buffer.write(b"%PDF-1.4 fake pdf content\n" * 50)')
R=$(get --data-urlencode _task=mail --data-urlencode _action=viewsource --data-urlencode "_uid=$U_PLAIN" --data-urlencode _mbox=INBOX)
check "view source" has "$R" "kw$RUN"

# --- search -------------------------------------------------------------------------------
srch() { get --data-urlencode _task=mail --data-urlencode _action=search --data-urlencode "_q=$1" --data-urlencode _mbox=INBOX \
  --data-urlencode "_headers=$2" --data-urlencode "_filter=${3:-ALL}" --data-urlencode _scope=base --data-urlencode _remote=1; }
R=$(srch "kw$RUN" text)
check "search body text" bash -c 'grep -q "add_message_row($1," <<<"$2" && grep -qF "1 messages found" <<<"$2"' _ "$U_PLAIN" "$R"
R=$(srch "$RUN cjk 你好" subject)
check "search UTF-8 subject (RFC 2047)" has "$R" "add_message_row($U_CJK,"
R=$(srch "熊猫" body)
check "search UTF-8 body" has "$R" "add_message_row($U_CJK,"
# Roundcube's "With attachment" filter
R=$(srch "$RUN" subject 'OR OR OR HEADER Content-Type application/ HEADER Content-Type multipart/m HEADER Content-Type multipart/signed HEADER Content-Type multipart/report')
check "search filter 'with attachment'" bash -c 'grep -q "add_message_row($1," <<<"$3" && ! grep -q "add_message_row($2," <<<"$3"' _ "$U_ATT" "$U_PLAIN" "$R"
lst --data-urlencode _search= >/dev/null

# --- flags --------------------------------------------------------------------------------
mark() { post --data-urlencode _task=mail --data-urlencode _action=mark --data-urlencode "_uid=$1" --data-urlencode "_flag=$2" \
  --data-urlencode _mbox=INBOX --data-urlencode _remote=1 >/dev/null; }
mark "$U_PLAIN" read
check "mark read -> \\Seen" bash -c '[[ " $1 " == *"\\Seen"* ]]' _ "$(IQ flags INBOX "$RUN plain")"
mark "$U_PLAIN" unread
check "mark unread -> no \\Seen" bash -c '[[ " $1 " != *"\\Seen"* ]]' _ "$(IQ flags INBOX "$RUN plain")"
mark "$U_PLAIN" flagged
check "flag -> \\Flagged" bash -c '[[ " $1 " == *"\\Flagged"* ]]' _ "$(IQ flags INBOX "$RUN plain")"
mark "$U_PLAIN" unflagged
check "unflag" bash -c '[[ " $1 " != *"\\Flagged"* ]]' _ "$(IQ flags INBOX "$RUN plain")"

# --- folders ------------------------------------------------------------------------------
F=RC-$RUN
F7="$F/&W1Blh072WTk-" # "子文件夹" in modified UTF-7
savef() { "${CURL[@]}" -c "$CJ" -b "$CJ" -X POST "$RC/?_task=settings&_action=save-folder" --data-urlencode "_token=$TOK" --data-urlencode _framed=1 "$@"; }
R=$(savef --data-urlencode "_name=$F" --data-urlencode "_parent=")
check "create folder" bash -c 'grep -qF "Folder created successfully" <<<"$1" && grep -qx "$2" <<<"$3"' _ "$R" "$F" "$(IQ folders)"
savef --data-urlencode "_name=子文件夹" --data-urlencode "_parent=$F" >/dev/null
check "create subfolder with UTF-7 name" bash -c 'grep -qxF "$1" <<<"$2"' _ "$F7" "$(IQ folders)"
post --data-urlencode _task=mail --data-urlencode _action=move --data-urlencode "_uid=$U_PLAIN" --data-urlencode _mbox=INBOX \
  --data-urlencode "_target_mbox=$F" --data-urlencode _remote=1 >/dev/null
check "move message to folder" bash -c '[ "$1" = 0 ] && [ "$2" = 1 ]' _ "$(IQ count INBOX "$RUN plain")" "$(IQ count "$F" "$RUN plain")"
post --data-urlencode _task=mail --data-urlencode _action=copy --data-urlencode "_uid=$U_COPY" --data-urlencode _mbox=INBOX \
  --data-urlencode "_target_mbox=$F7" --data-urlencode _remote=1 >/dev/null
check "copy message to UTF-7 subfolder" bash -c '[ "$1" = 1 ] && [ "$2" = 1 ]' _ "$(IQ count INBOX "$RUN copyme")" "$(IQ count "$F7" "$RUN copyme")"
R=$(savef --data-urlencode "_mbox=$F" --data-urlencode "_name=$F-renamed" --data-urlencode "_parent=")
check "rename folder (with children and messages)" bash -c 'grep -qF "Folder updated successfully" <<<"$1" && [ "$2" = 1 ] && [ "$3" = 1 ]' _ "$R" \
  "$(IQ count "$F-renamed" "$RUN plain")" "$(IQ count "$F-renamed/&W1Blh072WTk-" "$RUN copyme")"
R=$(post --data-urlencode _task=settings --data-urlencode _action=folder-size --data-urlencode "_mbox=$F-renamed" --data-urlencode _remote=1)
check "folder size (STATUS SIZE)" has "$R" "folder_size_update"
R=$(post --data-urlencode _task=settings --data-urlencode _action=unsubscribe --data-urlencode "_mbox=$F-renamed" --data-urlencode _remote=1)
R2=$(post --data-urlencode _task=settings --data-urlencode _action=subscribe --data-urlencode "_mbox=$F-renamed" --data-urlencode _remote=1)
check "unsubscribe/subscribe" bash -c 'grep -qF "successfully unsubscribed" <<<"$1" && grep -qF "successfully subscribed" <<<"$2"' _ "$R" "$R2"
post --data-urlencode _task=settings --data-urlencode _action=delete-folder --data-urlencode "_mbox=$F-renamed" --data-urlencode _remote=1 >/dev/null
check "delete folder (with subfolder)" bash -c '! grep -qF "$1" <<<"$2"' _ "$F" "$(IQ folders)"

# --- delete -------------------------------------------------------------------------------
post --data-urlencode _task=mail --data-urlencode _action=move --data-urlencode "_uid=$U_THREAD" --data-urlencode _mbox=INBOX \
  --data-urlencode _target_mbox=Trash --data-urlencode _remote=1 >/dev/null
check "delete = move to Trash" bash -c '[ "$1" = 1 ]' _ "$(IQ count Trash "$RUN thread")"
U_T=$(IQ uid Trash "$RUN thread")
post --data-urlencode _task=mail --data-urlencode _action=delete --data-urlencode "_uid=$U_T" --data-urlencode _mbox=Trash --data-urlencode _remote=1 >/dev/null
check "delete from Trash (\\Deleted + UID EXPUNGE)" bash -c '[ "$1" = 0 ]' _ "$(IQ count Trash "$RUN thread")"

# --- compose / send / bounce --------------------------------------------------------------
compose() { "${CURL[@]}" -c "$CJ" -b "$CJ" -L "$RC/?_task=mail&_action=compose$1" | grep -o '"compose_id":"[^"]*"' | sed 's/.*:"//;s/"$//'; }
send() { "${CURL[@]}" -c "$CJ" -b "$CJ" -H "X-Roundcube-Request: $TOK" -X POST "$RC/?_task=mail&_unlock=1&_framed=1" --data-urlencode "_token=$TOK" \
  --data-urlencode _task=mail --data-urlencode _action=send --data-urlencode _from=1 --data-urlencode "_to=$ADDRESS" --data-urlencode _is_html=0 "$@"; }
CID=$(compose "")
printf 'attachment payload 附件\n' >"$WORK/att.txt"
R=$("${CURL[@]}" -c "$CJ" -b "$CJ" -H "X-Roundcube-Request: $TOK" -F "_token=$TOK" -F "_attachments[]=@$WORK/att.txt;type=text/plain" \
  "$RC/?_task=mail&_action=upload&_id=$CID&_uploadid=up1&_from=compose&_remote=1")
check "upload attachment" has "$R" "add2attachment_list"
R=$(send --data-urlencode "_id=$CID" --data-urlencode "_subject=$RUN rc-sent 发送" --data-urlencode "_message=Sent by Roundcube 中文" --data-urlencode _store_target=Sent)
check "send with attachment (SMTP)" has "$R" "sent_successfully"
check "sent message delivered to INBOX" bash -c '[ "$(python3 "$1/imapq.py" wait INBOX "$2 rc-sent" 1 20)" -ge 1 ]' _ "$HERE" "$RUN"
check "sent copy APPENDed to Sent" bash -c '[ "$1" = 1 ]' _ "$(IQ count Sent "$RUN rc-sent")"
CID=$(compose "")
R=$(send --data-urlencode "_id=$CID" --data-urlencode "_subject=$RUN draft" --data-urlencode "_message=draft body" --data-urlencode _draft=1)
DID=$(grep -o 'set_draft_id("[^"]*")' <<<"$R" | sed 's/set_draft_id("//;s/")//')
check "save draft (APPEND Drafts)" bash -c '[ -n "$1" ] && [ "$2" = 1 ]' _ "$DID" "$(IQ count Drafts "$RUN draft")"
R=$(send --data-urlencode "_id=$CID" --data-urlencode "_subject=$RUN draft" --data-urlencode "_message=final body" --data-urlencode "_draft_saveid=$DID" --data-urlencode _store_target=Sent)
check "send draft removes it from Drafts" bash -c 'grep -qF sent_successfully <<<"$1" && [ "$2" = 0 ]' _ "$R" "$(IQ count Drafts "$RUN draft")"
CID=$(compose "&_reply_uid=$U_CJK&_mbox=INBOX")
R=$(send --data-urlencode "_id=$CID" --data-urlencode "_subject=Re: $RUN cjk 你好 中文" --data-urlencode "_message=reply" --data-urlencode _store_target=Sent)
check "reply sets \\Answered" bash -c 'grep -qF sent_successfully <<<"$1" && [[ "$2" == *"\\Answered"* ]]' _ "$R" "$(IQ flags INBOX "$RUN cjk")"
# Bounce ("Redirect"): the unchanged message from sender@remote.test goes out again with a
# Resent-From: naming the account on top, to the account itself.
B0=$(IQ count INBOX "$RUN bounceme") S0=$(smtp_lines)
R=$("${CURL[@]}" -c "$CJ" -b "$CJ" -H "X-Roundcube-Request: $TOK" -X POST "$RC/?_task=mail&_action=bounce&_framed=1" --data-urlencode "_token=$TOK" \
  --data-urlencode "_uid=$U_BOUNCE" --data-urlencode _mbox=INBOX --data-urlencode _from=1 --data-urlencode "_to=$ADDRESS")
SBAD=$(tail -n +$((S0 + 1)) "$WORK/logs/smtp.log" 2>/dev/null | grep -aE 'Recv: [45][0-9][0-9] ')
if has "$R" "Message sent successfully"; then B1=$(IQ wait INBOX "$RUN bounceme" 2 15); else B1=$(IQ count INBOX "$RUN bounceme"); fi
if has "$R" "Message sent successfully" && [ "$B0" = 1 ] && [ "$B1" = 2 ] && [ -z "$SBAD" ]; then
  pass "bounce a foreign author's message to self (Resent-From:; INBOX count 1 -> 2)"
else
  fail "bounce a foreign author's message to self" "INBOX count $B0 -> $B1; reply: $(grep -o 'display_message("[^"]*"' <<<"$R" | head -1 | cut -c18-)"
  [ -n "$SBAD" ] && echo "$SBAD" | sed 's/^/     /' | cut -c1-300
fi

# --- refresh / unread counts / logout -----------------------------------------------------
R=$(get --data-urlencode _task=mail --data-urlencode _action=getunread --data-urlencode _remote=1)
check "getunread (STATUS on all folders)" has "$R" 'set_unread_count(\"INBOX\"'
R=$("${CURL[@]}" -c "$CJ" -b "$CJ" "$RC/?_task=logout&_token=$TOK")
check "logout" has "$R" "successfully terminated"

# --- traces -------------------------------------------------------------------------------
BAD=$(grep -aE '\] (S: [A-Z][0-9]+ (NO|BAD) |S: \* (NO|BAD|BYE) )' "$WORK/logs/imap.log" | grep -v 'BYE logging out')
if [ -z "$BAD" ]; then pass "no NO/BAD/BYE in the IMAP trace ($(grep -c '] C: ' "$WORK/logs/imap.log") commands)"
else fail "IMAP NO/BAD responses:"; echo "$BAD" | sed 's/^/     /' | cut -c1-300; fi
SBAD=$(grep -aE 'Recv: [45][0-9][0-9] ' "$WORK/logs/smtp.log" 2>/dev/null)
if [ -z "$SBAD" ]; then pass "no 4xx/5xx in the SMTP trace"; else fail "SMTP errors:"; echo "$SBAD" | sed 's/^/     /' | cut -c1-300; fi
ERR=$(grep -aE 'PHP (Fatal|Warning|Error|Notice)|IMAP Error|SMTP Error|DB Error' "$WORK/logs/errors.log" 2>/dev/null)
if [ -z "$ERR" ]; then pass "no PHP/IMAP/SMTP errors in Roundcube's errors.log"; else fail "Roundcube errors.log:"; echo "$ERR" | sed 's/^/     /' | cut -c1-300; fi
DEP=$(grep -ac 'PHP Deprecated' "$WORK/logs/errors.log" 2>/dev/null)
[ "${DEP:-0}" -gt 0 ] && echo "INFO $DEP PHP Deprecated notices in $WORK/logs/errors.log"

[ "${KEEP:-0}" = 1 ] || IQ cleanup "$RUN" >/dev/null 2>&1
echo "# $FAILS failure(s); IMAP trace: $WORK/logs/imap.log, SMTP trace: $WORK/logs/smtp.log$([ $OWN_WORK = 1 ] && [ $FAILS = 0 ] && [ "${KEEP_WORK:-0}" != 1 ] && echo ' (removed)')"
exit $FAILS
