#!/bin/sh
# piman's netboot installer: puts a deployment's image on the node's disk (busybox sh).
#
# The contract is docs/boot-protocol.md (the /boot/v1 conversation). In order:
#   1. parameters from the kernel command line; network up; hello with the one-time token,
#      whose answer is the plan ($TMP/plan)
#   2. size check; 3. the head fetched and checked: nothing on the disk changes before here
#   4. the ranges after `resume`, outside the head: each run of adjacent ranges (at most
#      RUN_BYTES) written onto the disk by wget, one request each; sync every few ranges;
#      progress at least every `progress_every` seconds. The ranges synced so far are read back
#      and checked in the background while the next ones stream (one reader at a time, one
#      hashing process per group of ranges)
#   5. every range outside the head checked: those of this run by the readers in the background,
#      those of an earlier run (before `resume`) now; a bad one fetched again, checked,
#      rewritten, read back again; then the head written last, sync, partition table re-read,
#      read back
#   7. files.tar extracted onto partition 1; 8. result, then reboot
# A failure posts {"ok": false, ...} when a session exists, and never writes afterwards.
#
# busybox wget cannot send a Range of its own: it accepts a 206 answer only when it continues a
# file (-c), from the file's size. So the body is asked for as {image}?start=a&end=b (200) and
# wget writes it onto the disk itself, at the offset of a shared descriptor that tells where a
# cut stream stopped (stream); what must be checked before it is written (the head, a range
# fetched again after it read back different) is fetched into a sparse file made a bytes long
# first, from {image}?end=b with -c (docs/boot-protocol.md §3): the bytes land at their own
# offsets, dd reads them with skip= equal to seek=, and a cut download goes on by asking again.
#
# ranges_done and resume count the plan's ranges outside the head, in plan order: the head
# is always fetched and written again.
#
# For tests and the demo: PIMAN_CMDLINE (a file read instead of /proc/cmdline), PIMAN_NO_NET=1
# (leave the network alone), PIMAN_NO_REBOOT=1 (exit instead of reboot/poweroff: 0 on success,
# 1 failed, 2 refused or unusable parameters, 3 cancelled), PIMAN_TMP (instead of /tmp),
# PIMAN_RETRY_SECONDS and PIMAN_RETRY_PAUSE (how long and how often to retry the manager).

set -u

TMP=${PIMAN_TMP:-/tmp}
RETRY_SECONDS=${PIMAN_RETRY_SECONDS:-600}  # per request: the manager may be restarting
RETRY_PAUSE=${PIMAN_RETRY_PAUSE:-5}
RANGE_SECONDS=120     # deadline of one wget of a run of ranges (then it goes on from there)
RUN_BYTES=67108864    # at most this many bytes in one request (a run of adjacent ranges)
COPY_BYTES=1048576    # dd's block: large reads and writes, offsets in bytes
READ_BLOCK=65536      # the read-back's block (cache-sized: larger ones thrash with many nodes)
CONTROL_SECONDS=30    # deadline of one wget of anything else
SYNC_EVERY=16         # ranges written between two syncs
FAIL_WAIT=60          # seconds the console stays readable after a failure
UDHCPC_SCRIPT=${0%/*}/udhcpc.script
FAST_HASH_BYTES=1048576  # ranges of this size or more are hashed by openssl, when it works

URL='' TOKEN='' NODE='' DISK='' IFACE=''
DEPLOYMENT='' SESSION='' IMAGE='' STATUS=0
DISK_BYTES=0 IMAGE_BYTES=0 BS=0 HEAD_BLOCKS=0 HEAD_BYTES=0 RESUME=0 PROGRESS_EVERY=5
RANGES_TOTAL=0 RANGES_DONE=0 BYTES_TOTAL=0 BYTES_DONE=0 PROGRESS_AT=0
PART='' LOOP='' MOUNTED='' SKIPPED=''
HASHER=sha256sum  # what hashes a group read back: openssl when it works (find_openssl)
READER='' R_GROUPS=0  # the background read-back of written ranges (its pid), groups started
R_DONE=0 R_BYTES=0  # ranges_done once the reader ends, bytes it checks
STEP=hello  # what fetch names in progress and failures: hello (the head), then write_image

log() { echo "piman-installer: $*" >&2; }

# now: NOW becomes the seconds since boot (read by the shell itself: no process started).
now() { read -r NOW _ </proc/uptime; NOW=${NOW%%.*}; }

json_string() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

# Ends the installer. 0: reboot into the new system; otherwise power off (after a pause on a
# failure, so the console can be read). With PIMAN_NO_REBOOT=1 it exits with the code instead.
finish() {
    # the reader only reads, a few ranges at most: it ends by itself (a killed reader would
    # leave its feeder waiting to open a pipe that nobody opens)
    if [ -n "$READER" ]; then wait "$READER" 2>/dev/null; fi
    release_partition
    if [ "${PIMAN_NO_REBOOT:-0}" = 1 ]; then exit "$1"; fi
    if [ "$1" = 0 ]; then sync; reboot -f; fi
    if [ "$1" = 1 ]; then sleep "$FAIL_WAIT"; fi
    poweroff -f
}

# fail STEP REASON: reports {"ok": false} when the manager gave a session, then finishes.
fail() {
    log "FAILED at $1: $2"
    if [ -n "$SESSION" ] && [ -n "$DEPLOYMENT" ]; then
        post /dev/null "$URL/boot/v1/deployments/$DEPLOYMENT/result" \
            "{\"ok\": false, \"step\": \"$1\", \"reason\": $(json_string "$2")}"
    fi
    finish 1
}

# --- HTTP (busybox wget) -----------------------------------------------------------------

# get OUT URL SECONDS [wget arguments]: STATUS becomes 200 for any 2xx, the code of an HTTP
# error answer, or 0 when no answer came (refused, cut, timed out). What wget could not write
# (the disk refuses writes, /tmp is full) fails at once: asking again would not help.
get() {
    g_out=$1 g_url=$2 g_secs=$3
    shift 3
    if timeout "$g_secs" wget -q -O "$g_out" --header "Authorization: Bearer ${SESSION:-$TOKEN}" \
        "$@" "$g_url" 2>"$TMP/wget.err"; then
        STATUS=200
    else
        # busybox wget says "wget: write error: No space left on device" on stderr ("short
        # write" when some bytes of that write went)
        g_write=$(sed -n -e 's/^wget: write error: //p' -e 's/^wget: short write: //p' \
            "$TMP/wget.err" | head -n 1)
        [ -z "$g_write" ] || fail "$STEP" "cannot write what ${g_url#"$URL"} sent: $g_write"
        # busybox wget says "server returned error: HTTP/1.1 403 Forbidden" on stderr
        STATUS=$(sed -n 's/.*server returned error: HTTP\/[0-9.]* \([0-9][0-9][0-9]\).*/\1/p' \
            "$TMP/wget.err" | head -n 1)
        STATUS=${STATUS:-0}
    fi
}

status_text() { if [ "$STATUS" = 0 ]; then echo "no answer"; else echo "HTTP $STATUS"; fi; }

# post OUT URL JSON
post() {
    get "$1" "$2" "$CONTROL_SECONDS" --header "Content-Type: application/json" --post-data "$3"
}

# retrying COMMAND...: runs an HTTP call again, after a pause, while the manager does not
# answer or answers 5xx, for RETRY_SECONDS.
retrying() {
    now; r_deadline=$((NOW + RETRY_SECONDS))
    while :; do
        "$@"
        case $STATUS in 0 | 5??) ;; *) return ;; esac
        now; [ "$NOW" -lt "$r_deadline" ] || return
        log "the manager is not there ($(status_text)); asking again in ${RETRY_PAUSE}s"
        sleep "$RETRY_PAUSE"
    done
}

# progress STEP: where the work stands; a 410 answer (cancelled) stops everything at once.
progress() {
    now; PROGRESS_AT=$NOW
    post /dev/null "$URL/boot/v1/deployments/$DEPLOYMENT/progress" "{\"step\": \"$1\", \
\"ranges_done\": $RANGES_DONE, \"bytes_done\": $BYTES_DONE, \"bytes_total\": $BYTES_TOTAL}"
    case $STATUS in
        200) ;;
        410) log "the deployment was cancelled (410 Gone): stopping"; finish 3 ;;
        *) log "progress not taken (HTTP $STATUS); going on" ;;
    esac
}

progress_due() { now; [ $((NOW - PROGRESS_AT)) -ge "$PROGRESS_EVERY" ]; }

# --- 1. parameters, network, hello ------------------------------------------------------

read_parameters() {
    set -f
    for word in $(cat "${PIMAN_CMDLINE:-/proc/cmdline}"); do
        case $word in
            piman.url=*) URL=${word#*=} ;;
            piman.token=*) TOKEN=${word#*=} ;;
            piman.node=*) NODE=${word#*=} ;;
            piman.disk=*) DISK=${word#*=} ;;
            piman.iface=*) IFACE=${word#*=} ;;
        esac
    done
    set +f
    if [ -z "$URL" ] || [ -z "$TOKEN" ] || [ -z "$DISK" ]; then
        log "the kernel command line lacks piman.url, piman.token or piman.disk"
        finish 2
    fi
    log "node ${NODE:-?}, disk $DISK, manager $URL"
}

# The named interface, else the first one with a carrier (links take seconds to come up).
pick_interface() {
    for dev in /sys/class/net/*; do
        name=${dev##*/}
        [ "$name" = lo ] && continue
        [ -z "$IFACE" ] || [ "$name" = "$IFACE" ] || continue
        ip link set "$name" up 2>/dev/null
        if [ "$(cat "$dev/carrier" 2>/dev/null)" = 1 ]; then echo "$name"; return 0; fi
    done
    return 1
}

network_up() {
    if [ "${PIMAN_NO_NET:-0}" = 1 ]; then log "network: left as it is"; return; fi
    ip link set lo up
    now; n_deadline=$((NOW + RETRY_SECONDS))
    while :; do
        # udhcpc stays in the background after a lease, to renew it
        if n_if=$(pick_interface) && udhcpc -i "$n_if" -s "$UDHCPC_SCRIPT" -n -t 5 -T 3; then
            log "network: $n_if up (DHCP)"; return
        fi
        now; [ "$NOW" -lt "$n_deadline" ] || { log "network: no link or no DHCP answer"; finish 2; }
        sleep 2
    done
}

hello() {
    w=0  # an SD card or USB disk may take a few seconds to appear
    while [ ! -b "$DISK" ] && [ ! -f "$DISK" ] && [ "$w" -lt 30 ]; do sleep 1; w=$((w + 1)); done
    [ -b "$DISK" ] || [ -f "$DISK" ] || { log "no disk $DISK"; finish 2; }
    DISK_BYTES=$(stat -c %s "$DISK")
    [ ! -b "$DISK" ] || DISK_BYTES=$(blockdev --getsize64 "$DISK")
    retrying post "$TMP/plan" "$URL/boot/v1/hello" "{\"node\": $(json_string "$NODE"), \
\"disk\": $(json_string "$DISK"), \"disk_bytes\": $DISK_BYTES, \"installer\": \"1\"}"
    case $STATUS in
        200) log "hello: accepted" ;;
        0 | 5??) log "hello: the manager at $URL does not answer"; finish 2 ;;
        *) log "hello refused (HTTP $STATUS): wrong, used or expired token; disk untouched"
            finish 2 ;;
    esac
}

# --- the plan ---------------------------------------------------------------------------

number() { case $2 in '' | *[!0-9]*) fail hello "plan: $1 is not a number: '$2'" ;; esac; }

# Reads $TMP/plan into variables and $TMP/ranges ("index first last sha256 in_head bytes"). The
# sizes and resume come before the ranges (docs/boot-protocol.md §2).
read_plan() {
    : >"$TMP/ranges"
    p_end=0 p_count=0 p_prev=-1
    while read -r key a b c _ <&3; do
        case $key in
            piman-plan) [ "$a" = 1 ] || fail hello "plan version '$a' is not 1" ;;
            deployment) number deployment "$a"; DEPLOYMENT=$a ;;
            session) SESSION=$a ;;
            image) IMAGE=$a ;;
            image_bytes) number image_bytes "$a"; IMAGE_BYTES=$a ;;
            block_bytes) number block_bytes "$a"; BS=$a ;;
            head_blocks) number head_blocks "$a"; HEAD_BLOCKS=$a ;;
            resume) number resume "$a"; RESUME=$a ;;
            progress_every) number progress_every "$a"; PROGRESS_EVERY=$a ;;
            range)
                number "the first block of range $p_count" "$a"
                number "the last block of range $p_count" "$b"
                case $c in *[!0-9a-f]*) c='' ;; esac
                [ ${#c} = 64 ] || fail hello "plan: range $p_count has no sha256"
                [ "$a" -gt "$p_prev" ] && [ "$b" -ge "$a" ] ||
                    fail hello "plan: range $p_count ($a-$b) is out of order"
                [ "$BS" -gt 0 ] && [ "$IMAGE_BYTES" -gt 0 ] || fail hello "plan: range before sizes"
                p_stop=$(((b + 1) * BS))  # the image's last block may be short
                [ "$p_stop" -le "$IMAGE_BYTES" ] || p_stop=$IMAGE_BYTES
                p_len=$((p_stop - a * BS)) in_head=1
                BYTES_TOTAL=$((BYTES_TOTAL + p_len))
                if [ "$a" -ge "$HEAD_BLOCKS" ]; then  # resume and ranges_done count these
                    in_head=0 RANGES_TOTAL=$((RANGES_TOTAL + 1))
                    [ "$RANGES_TOTAL" -gt "$RESUME" ] || BYTES_DONE=$((BYTES_DONE + p_len))
                elif [ "$b" -ge "$HEAD_BLOCKS" ]; then
                    fail hello "plan: range $p_count straddles the head"
                fi
                echo "$p_count $a $b $c $in_head $p_len" >>"$TMP/ranges"
                p_prev=$b p_count=$((p_count + 1))
                ;;
            end) p_end=1 ;;
        esac
    done 3<"$TMP/plan"
    [ -n "$SESSION" ] || { log "the plan has no session"; finish 2; }
    [ "$p_end" = 1 ] || fail hello "the plan is cut short (no 'end' line)"
    [ -n "$IMAGE" ] && [ "$BS" -gt 0 ] && [ "$IMAGE_BYTES" -gt 0 ] ||
        fail hello "the plan lacks image, image_bytes or block_bytes"
    [ "$p_prev" -lt $(((IMAGE_BYTES + BS - 1) / BS)) ] ||
        fail hello "plan: a range ends past the image"
    [ "$RESUME" -le "$RANGES_TOTAL" ] || fail hello "plan: resume $RESUME > $RANGES_TOTAL ranges"
    HEAD_BYTES=$((HEAD_BLOCKS * BS))
    [ "$HEAD_BYTES" -le "$IMAGE_BYTES" ] || HEAD_BYTES=$IMAGE_BYTES
    RANGES_DONE=$RESUME
    log "plan: deployment $DEPLOYMENT, $p_count ranges ($BYTES_TOTAL of $IMAGE_BYTES bytes)," \
        "resume $RESUME"
}

# --- fetching the image -----------------------------------------------------------------

# fetch OUT FIRST_BYTE LAST_BYTE: OUT holds those image bytes at their own offsets, after a
# hole. A cut download goes on where it stopped; no answer or 5xx is retried for RETRY_SECONDS.
fetch() {
    f_out=$1 f_a=$2 f_b=$3
    f_want=$((f_b - f_a + 1))
    rm -f "$f_out"
    truncate -s "$f_a" "$f_out"
    now; f_deadline=$((NOW + RETRY_SECONDS))
    while :; do
        f_have=$(($(stat -c %s "$f_out") - f_a))
        [ "$f_have" -lt "$f_want" ] || return 0
        get "$f_out" "$IMAGE?end=$f_b" "$RANGE_SECONDS" -c  # sends Range: bytes=<size>-
        f_got=$(($(stat -c %s "$f_out") - f_a))
        case $STATUS in
            200) [ "$f_got" = "$f_have" ] || continue ;;  # else an empty answer: try again
            0 | 5??) ;;
            410) log "the deployment was cancelled (410 Gone): stopping"; finish 3 ;;
            *) fail "$STEP" "the image server answered HTTP $STATUS for bytes $f_a-$f_b" ;;
        esac
        now; [ "$NOW" -lt "$f_deadline" ] ||
            fail "$STEP" "no image bytes $f_a-$f_b for ${RETRY_SECONDS}s"
        log "image bytes $f_a-$f_b: stopped at $f_got of $f_want ($(status_text));" \
            "going on in ${RETRY_PAUSE}s"
        if progress_due; then progress "$STEP"; fi
        sleep "$RETRY_PAUSE"
    done
}

# sha256 FILE SKIP_BLOCKS BYTES: the digest of BYTES bytes of FILE after SKIP_BLOCKS blocks.
# Ranges of FAST_HASH_BYTES or more go to openssl when the initramfs has it (it uses the CPU's
# SHA instructions where there are some, and is 2 to 6 times faster than busybox's sha256sum);
# smaller ones to sha256sum, which starts faster (about 1 ms against 4).
sha256() {
    s_hasher=sha256sum
    [ "$3" -lt "$FAST_HASH_BYTES" ] || s_hasher=$HASHER
    s=$(dd if="$1" bs="$COPY_BYTES" skip=$(($2 * BS)) count="$3" iflag=skip_bytes,count_bytes \
        2>/dev/null | $s_hasher)
    echo "${s%% *}"
}

# HASHER becomes openssl when it runs and computes SHA-256 right (its libraries are all there).
find_openssl() {
    o_empty=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
    o_sum=$(openssl dgst -sha256 -r </dev/null 2>/dev/null)
    if [ "${o_sum%% *}" = "$o_empty" ]; then
        HASHER="openssl dgst -sha256 -r"
        log "hashing: openssl and sha256sum"
    fi
}

# stream NAME FIRST_BYTE LAST_BYTE: those image bytes written onto the disk at their own offsets
# as they arrive, by wget itself: one request (wget -O -, ?start=&end=) whose output is the disk,
# opened read-write on descriptor 5 and moved to FIRST_BYTE (dd seek=, count=0). The descriptor's
# offset, read from /proc/$$/fdinfo/5 afterwards, is where wget's last write ended: an answer
# that stops short goes on from there, so no byte is fetched or written twice. No answer or 5xx
# is retried for RETRY_SECONDS. The bytes are checked when they are read back from the disk
# (read_back, verify): hashing them on the way in too would double the CPU the installer spends.
stream() {
    s_a=$2 s_b=$3
    now; s_deadline=$((NOW + RETRY_SECONDS))
    while :; do
        # command: a failed exec would end the shell before it could report (and no 2>: exec
        # would keep that redirection for the whole shell)
        command exec 5<>"$DISK" || fail "$STEP" "cannot open $DISK to write $1"
        # dd moves the shared offset from 0 (busybox dd seeks its output from where it is)
        dd bs=1 seek="$s_a" count=0 oflag=seek_bytes </dev/null >&5 2>"$TMP/dd.err" ||
            fail "$STEP" "seeking $DISK to byte $s_a: $(tail -n 1 "$TMP/dd.err")"
        get - "$IMAGE?start=$s_a&end=$s_b" "$RANGE_SECONDS" >&5
        s_at=''
        while read -r s_key s_value; do
            [ "$s_key" != pos: ] || s_at=$s_value
        done </proc/$$/fdinfo/5
        exec 5>&-
        [ -n "$s_at" ] || fail "$STEP" "no offset for $DISK in /proc/$$/fdinfo (is /proc mounted?)"
        [ "$s_at" -le $((s_b + 1)) ] ||
            fail "$STEP" "the image server sent more than bytes $s_a-$s_b"
        if [ "$STATUS" = 200 ] && [ "$s_at" = $((s_b + 1)) ]; then return 0; fi
        case $STATUS in
            200 | 0 | 5??) ;;
            410) log "the deployment was cancelled (410 Gone): stopping"; finish 3 ;;
            *) fail "$STEP" "the image server answered HTTP $STATUS for bytes $s_a-$s_b" ;;
        esac
        s_a=$s_at
        now; [ "$NOW" -lt "$s_deadline" ] ||
            fail "$STEP" "no image bytes $s_a-$s_b for ${RETRY_SECONDS}s"
        log "$1: the image stopped at byte $s_a ($(status_text)); going on in ${RETRY_PAUSE}s"
        if progress_due; then progress "$STEP"; fi
        sleep "$RETRY_PAUSE"
    done
}

# fetch_range INDEX FIRST LAST SHA BYTES: $TMP/range holds the range, checked (fetched twice at
# most).
fetch_range() {
    fr_len=$5
    for fr_try in 1 2; do
        fetch "$TMP/range" $(($2 * BS)) $(($2 * BS + fr_len - 1))
        [ "$(stat -c %s "$TMP/range")" = $(($2 * BS + fr_len)) ] &&
            [ "$(sha256 "$TMP/range" "$2" "$fr_len")" = "$4" ] && return 0
        log "range $1 does not match its sha256 (fetch $fr_try)"
    done
    fail "$STEP" "range $1 (blocks $2-$3) does not match its sha256"
}

# --- 3. the head, 4. the ranges, 5. the head written last ------------------------------

# flush: what was written to the disk is on it (fsync of the disk, not of every file system:
# a global sync would also wait for writes that are none of the installer's business).
flush() { sync "$DISK" 2>/dev/null || sync; }

# The head: only its mapped ranges are fetched (each checked), into a sparse file of HEAD_BYTES
# whose other bytes read as zeros; it must hold a partition table before anything is erased.
check_head() {
    rm -f "$TMP/head"
    truncate -s "$HEAD_BYTES" "$TMP/head"
    while read -r idx first last sha in_head len <&3; do
        [ "$in_head" = 1 ] || continue
        fetch_range "$idx" "$first" "$last" "$sha" "$len"
        dd if="$TMP/range" of="$TMP/head" bs="$BS" skip="$first" seek="$first" \
            count=$((last - first + 1)) conv=notrunc 2>/dev/null ||
            fail hello "cannot keep range $idx of the head in $TMP"
    done 3<"$TMP/ranges"
    truncate -s "$HEAD_BYTES" "$TMP/head"
    mbr=$(od -An -tx1 -j 510 -N 2 "$TMP/head" | tr -d ' \n')
    gpt=$(dd if="$TMP/head" bs=1 skip=512 count=8 2>/dev/null)
    [ "$mbr" = 55aa ] || [ "$gpt" = "EFI PART" ] ||
        fail hello "the image's head holds no partition table"
    log "head: $HEAD_BYTES bytes with a partition table"
}

# Fetches and writes the ranges after RESUME, a run of adjacent ranges (up to RUN_BYTES) per
# request. Every few ranges, those written since the last time (a group) are handed to the
# background reader (read_back), which syncs and reads them back while the next runs stream.
write_ranges() {
    w_seen=0 w_pending=0 w_bytes=0 w_first=-1 w_last=-1 w_count=0 w_from='' w_run=0
    : >"$TMP/bad"
    : >"$TMP/group"
    while read -r idx first last sha in_head len <&3; do
        [ "$in_head" = 0 ] || continue
        w_seen=$((w_seen + 1))
        [ "$w_seen" -gt "$RESUME" ] || continue  # written and synced by an earlier run
        if [ "$w_count" -gt 0 ] && { [ "$first" != $((w_last + 1)) ] ||
            [ $(((last + 1 - w_first) * BS)) -gt "$RUN_BYTES" ]; }; then
            write_run $((w_seen - 1))
        fi
        [ "$w_count" -gt 0 ] || w_first=$first w_from=$idx
        w_last=$last w_to=$idx w_count=$((w_count + 1)) w_run=$((w_run + len))
        # into the group now: the reader takes it only once its runs are written (write_run)
        echo "$idx $first $last $sha $len" >>"$TMP/group"
    done 3<"$TMP/ranges"
    [ "$w_count" = 0 ] || write_run "$w_seen"
    read_back "$RANGES_TOTAL" "$w_bytes"  # the last group
    reader_done
    progress write_image
}

# write_run DONE: the run (ranges w_from..w_to, blocks w_first..w_last, w_run
# bytes) streamed onto the disk with one request; DONE ranges are written once it is. Every
# SYNC_EVERY ranges, or when progress is due, the ranges written since the last time (a group)
# go to the background reader, and progress is reported.
write_run() {
    wr_name="ranges $w_from-$w_to"
    [ "$w_from" != "$w_to" ] || wr_name="range $w_from"
    stream "$wr_name" $((w_first * BS)) $((w_first * BS + w_run - 1))
    w_pending=$((w_pending + w_count))
    w_bytes=$((w_bytes + w_run)) w_count=0 w_run=0
    if [ "$w_pending" -ge "$SYNC_EVERY" ] || progress_due; then
        read_back "$1" "$w_bytes"
        w_pending=0 w_bytes=0
        progress write_image
    fi
}

# read_back DONE BYTES: the ranges of $TMP/group (BYTES bytes; DONE ranges are written once
# they are) synced and read back by a background reader, while the next runs stream: the
# stream never waits for a sync. It starts after the previous reader ended (reader_done); each
# range that reads back different goes to $TMP/bad.
read_back() {
    [ -s "$TMP/group" ] || return 0
    reader_done
    R_GROUPS=$((R_GROUPS + 1)) R_DONE=$1 R_BYTES=$2
    mv "$TMP/group" "$TMP/group.$R_GROUPS"
    : >"$TMP/group"
    (
        flush
        drop_caches
        check_group "$TMP/group.$R_GROUPS" "$TMP/rb.$R_GROUPS"
        rm -f "$TMP/group.$R_GROUPS"
    ) &
    READER=$!
}

# reader_done: the background reader, if one runs, has ended: its ranges are synced (what
# ranges_done and bytes_done count from now on) and read back.
reader_done() {
    [ -n "$READER" ] || return 0
    wait "$READER"
    READER='' RANGES_DONE=$R_DONE BYTES_DONE=$((BYTES_DONE + R_BYTES)) R_BYTES=0
}

# check_group LIST DIR: the ranges of LIST ("index first last sha256 bytes" lines) read back
# from the disk, each one that reads back different written to $TMP/bad. One hashing process
# for all of them (starting openssl costs more than hashing a few MiB): it reads one named pipe
# per range, in order, while a feeder copies each range from the disk into its pipe.
check_group() {
    rm -rf "$2"
    mkdir -p "$2"
    c_pipes='' c_n=0
    while read -r idx first last sha len; do
        c_pipes="$c_pipes $2/$c_n" c_n=$((c_n + 1))
    done <"$1"
    # split into one name per pipe: PIMAN_TMP must have no blanks
    if ! mkfifo $c_pipes; then  # then one hashing process per range
        while read -r idx first last sha len; do
            [ "$(sha256 "$DISK" "$first" "$len")" = "$sha" ] || echo "$idx" >>"$TMP/bad"
        done <"$1"
        rm -rf "$2"
        return
    fi
    (
        c_n=0
        while read -r idx first last sha len; do
            dd if="$DISK" of="$2/$c_n" bs="$READ_BLOCK" skip=$((first * BS)) count="$len" \
                iflag=skip_bytes,count_bytes 2>/dev/null
            c_n=$((c_n + 1))
        done <"$1"
    ) &
    c_feeder=$!
    if ! $HASHER $c_pipes >"$2/sums" 2>/dev/null; then
        # the hashing stopped early: end the feeder, and its dd waiting to open a pipe nobody
        # opens any more (opening it read-write lets that open go on)
        kill "$c_feeder" 2>/dev/null
        for c_pipe in $c_pipes; do : <>"$c_pipe"; done
    fi
    wait "$c_feeder" 2>/dev/null
    exec 4<"$2/sums"
    while read -r idx first last sha len; do
        read -r c_sum _ <&4 || c_sum=''
        [ "$c_sum" = "$sha" ] || echo "$idx" >>"$TMP/bad"
    done <"$1"
    exec 4<&-
    rm -rf "$2"
}

# write_range NAME FIRST LAST BYTES: $TMP/range onto the disk at its own blocks, FIRST..LAST.
write_range() {
    dd if="$TMP/range" of="$DISK" bs="$COPY_BYTES" skip=$(($2 * BS)) seek=$(($2 * BS)) \
        count="$4" iflag=skip_bytes,count_bytes oflag=seek_bytes \
        conv=notrunc 2>"$TMP/dd.err" ||
        fail "$STEP" "writing $1 (blocks $2-$3): $(tail -n 1 "$TMP/dd.err")"
}

write_head() {
    flush
    dd if="$TMP/head" of="$DISK" bs="$BS" conv=notrunc 2>"$TMP/dd.err" ||
        fail write_image "writing the head: $(tail -n 1 "$TMP/dd.err")"
    flush
    BYTES_DONE=$BYTES_TOTAL
    if [ -b "$DISK" ]; then
        blockdev --rereadpt "$DISK" || log "warning: the partition table was not re-read"
    fi
    log "image written ($BYTES_TOTAL bytes in ranges)"
}

# --- 6. verify ----------------------------------------------------------------------------

# Every range outside the head (the head is not written yet) read back and its SHA-256 checked:
# the ranges written by this run were read back in the background (read_back), and those in
# $TMP/bad read back different; the ranges of an earlier run (before RESUME) are read back
# here. A range that reads back different is fetched again, checked before it is written this
# time, and read back again (twice at most), so a download corrupted on the way is repaired.
verify_body() {
    drop_caches
    BYTES_DONE=0 v_seen=0
    progress verify
    while read -r idx first last sha in_head len <&3; do
        [ "$in_head" = 0 ] || continue
        v_len=$len v_seen=$((v_seen + 1))
        if [ "$v_seen" -gt "$RESUME" ] && { [ ! -s "$TMP/bad" ] || ! grep -qx "$idx" "$TMP/bad"; }
        then
            BYTES_DONE=$((BYTES_DONE + v_len))  # read back and found right by read_back
            continue
        fi
        v_try=0
        while [ "$(sha256 "$DISK" "$first" "$v_len")" != "$sha" ]; do
            v_try=$((v_try + 1))
            [ "$v_try" -le 2 ] ||
                fail verify "range $idx (blocks $first-$last) reads back different"
            log "range $idx reads back different: fetching it again ($v_try)"
            fetch_range "$idx" "$first" "$last" "$sha" "$len"
            write_range "range $idx" "$first" "$last" "$len"
            flush
            drop_caches
        done
        BYTES_DONE=$((BYTES_DONE + v_len))
        if progress_due; then progress verify; fi
    done 3<"$TMP/ranges"
}

# The head's ranges, read back once it is written.
verify_head() {
    drop_caches
    while read -r idx first last sha in_head len <&3; do
        [ "$in_head" = 1 ] || continue
        [ "$(sha256 "$DISK" "$first" "$len")" = "$sha" ] ||
            fail verify "range $idx (blocks $first-$last) of the head reads back different"
    done 3<"$TMP/ranges"
    log "verified: every range reads back as planned"
}

drop_caches() {
    if [ -b "$DISK" ]; then  # read the disk, not the page cache
        blockdev --flushbufs "$DISK"
        echo 3 >/proc/sys/vm/drop_caches 2>/dev/null
    fi
}

# --- 7. customise -----------------------------------------------------------------------

# le OFFSET SIZE: an unsigned little-endian integer of the disk (od reads in host order,
# little-endian on every machine this runs on).
le() { od -An -tu"$2" -j "$1" -N "$2" "$DISK" | tr -d ' \n'; }

# The byte offset of partition 1 of the disk image, from its MBR or GPT (512-byte sectors).
partition1_offset() {
    if [ "$(od -An -tx1 -j 450 -N 1 "$DISK" | tr -d ' \n')" = ee ]; then
        p_start=$(le $(($(le 584 8) * 512 + 32)) 8)  # GPT: the first entry's first LBA
    else
        p_start=$(le 454 4)
    fi
    [ "${p_start:-0}" -gt 0 ] && echo $((p_start * 512))
}

# Sets PART to partition 1 as a block device, or SKIPPED to why it cannot be reached.
find_partition() {
    if [ -b "$DISK" ]; then
        case ${DISK##*/} in
            mmcblk* | nvme* | loop*) PART=${DISK}p1 ;;
            *) PART=${DISK}1 ;;
        esac
        w=0
        while [ ! -b "$PART" ] && [ "$w" -lt 10 ]; do sleep 1; w=$((w + 1)); done
        [ -b "$PART" ] || fail customise "no partition $PART after re-reading the table"
        return
    fi
    if [ "$(id -u)" != 0 ]; then
        SKIPPED="not root: partition 1 of the regular file $DISK needs a loop device"; return
    fi
    offset=$(partition1_offset) || { SKIPPED="no partition 1 in the MBR/GPT of $DISK"; return; }
    if LOOP=$(losetup -f 2>/dev/null) && losetup -o "$offset" "$LOOP" "$DISK" 2>/dev/null; then
        PART=$LOOP
    else
        LOOP='' SKIPPED="no loop device for the regular file $DISK"
    fi
}

release_partition() {
    if [ -n "$MOUNTED" ]; then umount "$MOUNTED" 2>/dev/null; MOUNTED=''; fi
    if [ -n "$LOOP" ]; then losetup -d "$LOOP" 2>/dev/null; LOOP=''; fi
}

customise() {
    progress customise
    retrying get "$TMP/files.tar" "$URL/boot/v1/deployments/$DEPLOYMENT/files.tar" \
        "$CONTROL_SECONDS"
    [ "$STATUS" = 200 ] || fail customise "files.tar: HTTP $STATUS"
    find_partition
    if [ -n "$SKIPPED" ]; then log "customise skipped: $SKIPPED"; return; fi
    mkdir -p "$TMP/p1"
    if ! mount -t vfat "$PART" "$TMP/p1" 2>"$TMP/mount.err"; then
        if [ -n "$LOOP" ] && ! grep -qw vfat /proc/filesystems; then
            SKIPPED="this kernel cannot mount vfat (partition 1 of the regular file $DISK)"
            release_partition
            log "customise skipped: $SKIPPED"; return
        fi
        fail customise "cannot mount $PART (vfat): $(tail -n 1 "$TMP/mount.err")"
    fi
    MOUNTED=$TMP/p1
    tar -xf "$TMP/files.tar" -C "$TMP/p1" 2>"$TMP/tar.err" ||
        fail customise "extracting files.tar: $(tail -n 1 "$TMP/tar.err")"
    if [ -f "$TMP/p1/piman/remove" ]; then  # files the node must not boot from its card
        while read -r c_name; do
            case $c_name in '' | /* | *..*) continue ;; esac
            rm -f "$TMP/p1/$c_name" && log "customise: removed $c_name"
        done <"$TMP/p1/piman/remove"
        rm -f "$TMP/p1/piman/remove"
    fi
    sync
    umount "$TMP/p1" || fail customise "cannot unmount $PART"
    MOUNTED=''
    release_partition
    log "customised: files.tar extracted onto $PART"
}

# --- 8. result ----------------------------------------------------------------------------

report_ok() {
    r_extra=''
    if [ -n "$SKIPPED" ]; then
        r_extra=", \"customise\": \"skipped\", \"reason\": $(json_string "$SKIPPED")"
    fi
    retrying post /dev/null "$URL/boot/v1/deployments/$DEPLOYMENT/result" \
        "{\"ok\": true, \"bytes_written\": $BYTES_TOTAL$r_extra}"
    [ "$STATUS" = 200 ] || log "the result was not taken (HTTP $STATUS)"
    log "done: rebooting"
    finish 0
}

main() {
    mkdir -p "$TMP"
    read_parameters
    find_openssl
    network_up
    hello
    read_plan
    log "size: image $IMAGE_BYTES bytes, disk $DISK_BYTES bytes"
    [ "$IMAGE_BYTES" -le "$DISK_BYTES" ] ||
        fail hello "the image ($IMAGE_BYTES bytes) is larger than $DISK ($DISK_BYTES bytes)"
    check_head
    progress hello  # the last chance to be told "cancelled" before the disk changes
    STEP=write_image
    log "erasing the partition table, writing $((RANGES_TOTAL - RESUME)) of $RANGES_TOTAL ranges"
    dd if=/dev/zero of="$DISK" bs="$BS" count=$(((HEAD_BYTES + BS - 1) / BS)) conv=notrunc \
        2>"$TMP/dd.err" || fail write_image "erasing the head: $(tail -n 1 "$TMP/dd.err")"
    write_ranges
    STEP=verify
    verify_body  # before the partition table: a card that fails here does not boot
    write_head
    verify_head
    customise
    report_ok
}

main "$@"
