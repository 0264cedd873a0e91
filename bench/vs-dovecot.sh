#!/usr/bin/env bash
# pop3d against Dovecot 2.3: the same data, the same load generator, the same machine.
#
#   sudo bench/vs-dovecot.sh [--repeats 5] [--seconds 5] [--idle 10000] ...   (--help for all)
#
# 1. Installs Dovecot's POP3 server with apt-get if it is missing, without letting the package
#    start the system Dovecot, and makes sure no system Dovecot runs on 110/995.
# 2. Builds pop3d and pop3bench (examples/pop3bench.rs) in release mode, and copies both, so
#    that a rebuild in the tree during the run cannot swap the binaries.
# 3. Generates ONE data set with `pop3bench --generate-only`: a users file with {PLAIN}
#    passwords (Dovecot's passwd-file format, which pop3d reads too), a mixed-size mailbox, a
#    100,000-message mailbox, a small one for idle sessions, a self-signed certificate.
# 4. Configures Dovecot in the temporary folder (base_dir, state_dir, log, its own loopback
#    ports outside the ephemeral range) and tunes it as its documentation advises for load:
#    high-performance login processes, reused pop3 processes, an auth cache, no flag updates.
# 5. Runs the same workloads against both servers, back to back, --repeats times with the
#    order alternating. Each run starts the server fresh: one run for idle sessions (memory is
#    only meaningful on a fresh server), one for sessions, RETR and the big mailbox (whose
#    server caches are removed first, so "cold" is cold). CPU time is read from /proc for the
#    server's whole process tree (Dovecot: master, login, auth, pop3, log, ...).
# 6. Prints a Markdown table of medians and ranges with the ratio pop3d/Dovecot per figure,
#    and writes bench/results.md, bench/results.svg (normalised bar chart) and
#    bench/results.json (every run's numbers) via bench/report.py.
#
# Needs root: apt-get, Dovecot's privilege separation, and a mail user that owns the Maildirs
# (default nobody:nogroup; BENCH_MAIL_USER and BENCH_MAIL_GROUP override). Everything it
# starts is stopped on exit, including Ctrl-C, and the temporary folder is removed (--keep
# keeps it).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ORIGINAL_ARGS=("$@")

repeats=5
seconds=5
clients=16
rounds=5
messages=3000
bigbox=100000
idle=10000
dovecot_idle=2000
idle_tls=1000
wait_quiet=0
retries=2
# A run during which other processes used more of the machine than this (percent) is redone.
disturbed=10
out_dir="$REPO/bench"
tmp_parent=${TMPDIR:-/tmp}
keep=0
tcp_congestion=
mail_user=${BENCH_MAIL_USER:-nobody}
mail_group=${BENCH_MAIL_GROUP:-nogroup}

usage() {
    cat <<EOF
usage: sudo $0 [options]

  --repeats N        runs per server, order alternating (default $repeats)
  --seconds S        seconds per session transport (plain, STLS, TLS) per run (default $seconds)
  --clients N        concurrent clients in the session workloads (default $clients)
  --rounds N         full-mailbox RETR downloads per transport per run (default $rounds)
  --messages N       messages in the mixed-size mailbox (default $messages)
  --bigbox N         messages in the big mailbox (default $bigbox)
  --idle N           idle sessions held open on pop3d, lowered to what the open-files
                     limit allows (default $idle)
  --dovecot-idle N   idle sessions on Dovecot, one process each (default $dovecot_idle: its
                     memory per session hardly depends on the count, and 10,000
                     processes take minutes to start and stop on a small machine)
  --idle-tls N       implicit-TLS idle sessions opened on each server while the plain
                     ones are held, measured apart (default $idle_tls)
  --wait-quiet S     before each run, wait up to S seconds for other processes to use less
                     than $disturbed% of the machine (default $wait_quiet: don't wait)
  --retries N        redo a run during which other processes used over $disturbed% of the
                     machine, up to N times (default $retries); the report lists them
  --out DIR          where results.md, results.svg, results.json go (default bench/)
  --tmpdir DIR       parent of the temporary folder (default \$TMPDIR or /tmp)
  --keep             keep the temporary folder (data set, configs, logs, raw results)
  --tcp-congestion ALG
                     run with Linux's TCP congestion control set to ALG (cubic, bbr, ...)
                     for both servers, and set it back afterwards (default: leave the
                     machine's; the report names the one in use). On loopback, BBR's pacing
                     adds a timer per burst to the sender's CPU time.
EOF
}

while (($#)); do
    case $1 in
    --repeats) repeats=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --messages) messages=$2; shift 2 ;;
    --bigbox) bigbox=$2; shift 2 ;;
    --idle) idle=$2; shift 2 ;;
    --dovecot-idle) dovecot_idle=$2; shift 2 ;;
    --idle-tls) idle_tls=$2; shift 2 ;;
    --wait-quiet) wait_quiet=$2; shift 2 ;;
    --retries) retries=$2; shift 2 ;;
    --out) out_dir=$2; shift 2 ;;
    --tmpdir) tmp_parent=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --tcp-congestion) tcp_congestion=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "vs-dovecot: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
for n in repeats clients rounds messages bigbox idle dovecot_idle idle_tls; do
    [[ ${!n} =~ ^[1-9][0-9]*$ ]] || { echo "vs-dovecot: --${n/_/-} must be a positive integer" >&2; exit 2; }
done
for n in wait_quiet retries; do
    [[ ${!n} =~ ^[0-9]+$ ]] || { echo "vs-dovecot: --${n/_/-} must be a whole number" >&2; exit 2; }
done
[[ $seconds =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "vs-dovecot: --seconds must be a number" >&2; exit 2; }
[[ -z $tcp_congestion || $tcp_congestion =~ ^[a-z0-9_]+$ ]] || {
    echo "vs-dovecot: --tcp-congestion takes a name such as cubic or bbr" >&2
    exit 2
}

log() { printf 'vs-dovecot: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (apt-get, Dovecot's privilege separation, the mail user)"
command -v python3 >/dev/null || die "python3 is needed (port checks and the report)"
command -v cargo >/dev/null || die "cargo is needed to build pop3d"
id "$mail_user" >/dev/null 2>&1 || die "no user $mail_user (set BENCH_MAIL_USER)"
getent group "$mail_group" >/dev/null || die "no group $mail_group (set BENCH_MAIL_GROUP)"
mail_uid=$(id -u "$mail_user")
[[ $mail_uid != 0 ]] || die "the mail user must not be root: Dovecot refuses uid 0"

started_at=$(date +%s)

# ---------------------------------------------------------------------------------------------
# 1. Dovecot
# ---------------------------------------------------------------------------------------------

system_dovecot_pid() {
    local pidfile=/run/dovecot/master.pid pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    kill -0 "$pid" 2>/dev/null && echo "$pid"
}

installed_now=0
if ! command -v dovecot >/dev/null || [[ ! -x /usr/lib/dovecot/pop3 ]]; then
    log "installing dovecot-pop3d with apt-get (services kept from starting)"
    # policy-rc.d answering 101 tells invoke-rc.d not to start the packaged service.
    made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q dovecot-pop3d
    if ((made_policy)); then rm -f /usr/sbin/policy-rc.d; fi
    installed_now=1
fi
dovecot_version=$(dovecot --version)
if [[ $dovecot_version != 2.3.* ]]; then
    log "warning: Dovecot $dovecot_version, not 2.3: the configuration may need changes"
fi

if pid=$(system_dovecot_pid); then
    if ((installed_now)); then
        log "the package started the system Dovecot (pid $pid): stopping it"
        doveadm stop 2>/dev/null || kill "$pid"
        for _ in {1..50}; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    else
        die "a system Dovecot is running (pid $pid); stop it first: it would share the CPUs"
    fi
fi
if system_dovecot_pid >/dev/null; then
    die "the system Dovecot is still running"
fi

# ---------------------------------------------------------------------------------------------
# 2. Build
# ---------------------------------------------------------------------------------------------

log "building pop3d and pop3bench (release)"
(cd "$REPO" && cargo build --release -q && cargo build --release -q --example pop3bench)
revision=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
# Marked when what is built and measured differs from the commit.
if [[ -n $(git -C "$REPO" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock \
    examples/pop3bench.rs 2>/dev/null) ]]; then
    revision="$revision+changes"
fi

work=$(mktemp -d "$tmp_parent/vs-dovecot.XXXXXX")
# Dovecot's unprivileged processes and the mail user must reach the folders inside.
chmod 755 "$work"
mkdir -p "$work/bin" "$work/runs" "$work/dovecot/run" "$work/dovecot/state" "$work/pop3d"
cp "$REPO/target/release/pop3d" "$REPO/target/release/examples/pop3bench" "$work/bin/"
pop3d="$work/bin/pop3d"
pop3bench="$work/bin/pop3bench"
instance="vsdovecot$$"
conf="$work/dovecot/dovecot.conf"
pop3d_pid=

stop_dovecot() {
    local pid
    [[ -s $work/dovecot/run/master.pid ]] || return 0
    pid=$(<"$work/dovecot/run/master.pid")
    if kill -0 "$pid" 2>/dev/null; then
        doveadm -c "$conf" stop 2>/dev/null || kill "$pid" 2>/dev/null || true
        for _ in {1..150}; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    # The master's children (one per idle session) take a while to go, and must be gone
    # before the next run: 2000 take seconds, 10,000 a minute on 2 CPUs.
    for _ in {1..600}; do pgrep -f "^dovecot-$instance/" >/dev/null || break; sleep 0.2; done
    rm -f "$work/dovecot/run/master.pid"
}

# True while PID runs (a child that has exited but not been waited for does not).
running() {
    [[ -r /proc/$1/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

stop_pop3d() {
    [[ -n $pop3d_pid ]] || return 0
    # SIGTERM again every 2 s: one that lands between fork and exec is taken by the forked
    # shell and lost. pop3d's grace period is 10 s; after 20 s, SIGKILL.
    local i
    for ((i = 0; i < 100; i++)); do
        running "$pop3d_pid" || break
        ((i % 10)) || kill "$pop3d_pid" 2>/dev/null || true
        sleep 0.2
    done
    kill -KILL "$pop3d_pid" 2>/dev/null || true
    wait "$pop3d_pid" 2>/dev/null || true
    pop3d_pid=
}

clean_up() {
    local status=$?
    trap - EXIT INT TERM HUP
    stop_pop3d
    stop_dovecot
    if [[ -n $congestion_before ]]; then
        sysctl -qw "net.ipv4.tcp_congestion_control=$congestion_before" ||
            log "warning: could not set net.ipv4.tcp_congestion_control back to $congestion_before"
    fi
    if ((keep)); then
        log "kept $work"
    else
        rm -rf "$work"
    fi
    exit "$status"
}
congestion_before=
trap clean_up EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

congestion_now=$(</proc/sys/net/ipv4/tcp_congestion_control)
if [[ -n $tcp_congestion && $tcp_congestion != "$congestion_now" ]]; then
    grep -qw -- "$tcp_congestion" /proc/sys/net/ipv4/tcp_available_congestion_control ||
        modprobe "tcp_$tcp_congestion" 2>/dev/null || true
    congestion_before=$congestion_now
    sysctl -qw "net.ipv4.tcp_congestion_control=$tcp_congestion" ||
        die "cannot set TCP congestion control $tcp_congestion (available: $(</proc/sys/net/ipv4/tcp_available_congestion_control))"
    log "TCP congestion control $tcp_congestion for this run (was $congestion_before)"
fi

# ---------------------------------------------------------------------------------------------
# 3. The data set
# ---------------------------------------------------------------------------------------------

data="$work/data"
"$pop3bench" --generate-only "$data" --messages "$messages" --bigbox "$bigbox"
chown -R "$mail_user:$mail_group" "$data/mail"
chmod 644 "$data/users" "$data/cert.pem"
chmod 600 "$data/key.pem" # read by root: Dovecot's config process, pop3d before it drops privileges

# ---------------------------------------------------------------------------------------------
# Limits and ports
# ---------------------------------------------------------------------------------------------

# Idle sessions need descriptors: the soft limit goes as high as the hard one lets it (root
# may raise the hard one too, where it has CAP_SYS_RESOURCE).
ulimit -Hn 1048576 2>/dev/null || ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
nofile=$(ulimit -n)
# pop3d holds one descriptor per logged-in session (its socket; the sessions of a mailbox
# share one lock descriptor), as does the client (pop3bench).
pop3d_idle=$(( idle < nofile - 200 - idle_tls ? idle : nofile - 200 - idle_tls ))
if ((pop3d_idle < idle)); then
    log "open-files limit $nofile: pop3d's idle sessions lowered from $idle to $pop3d_idle"
fi
if ((dovecot_idle > nofile - 200 - idle_tls)); then dovecot_idle=$((nofile - 200 - idle_tls)); fi

read -r eph_low eph_high </proc/sys/net/ipv4/ip_local_port_range
# Four free loopback ports outside the ephemeral range, so that no client connection can hold
# one: pop3d plain and TLS, Dovecot plain and TLS.
mapfile -t ports < <(python3 - "$eph_low" "$eph_high" <<'EOF'
import random, socket, sys
low, high = int(sys.argv[1]), int(sys.argv[2])
candidates = [p for p in range(10000, 30000) if not low <= p <= high]
random.shuffle(candidates)
found = []
for port in candidates:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        found.append(port)
    except OSError:
        pass
    finally:
        s.close()
    if len(found) == 4:
        break
print("\n".join(map(str, found)))
EOF
)
((${#ports[@]} == 4)) || die "cannot find four free loopback ports"
pop3d_plain=${ports[0]} pop3d_tls=${ports[1]} dovecot_plain=${ports[2]} dovecot_tls=${ports[3]}

# ---------------------------------------------------------------------------------------------
# 4. Dovecot's configuration
# ---------------------------------------------------------------------------------------------

nproc=$(nproc)
# pop3 processes: one per session (client_limit 1), reused (service_count 0).
pop3_processes=$((dovecot_idle + idle_tls + 4 * clients + 100))
# Every service's client limit must cover the processes that may connect to it: auth, for
# one, serves the login processes and the pop3 processes' userdb lookups.
client_limit=$((2 * pop3_processes + 100))
cat >"$conf" <<EOF
# Written by bench/vs-dovecot.sh: Dovecot $dovecot_version serving pop3bench's data set.
instance_name = $instance
base_dir = $work/dovecot/run
state_dir = $work/dovecot/state
log_path = $work/dovecot/dovecot.log
protocols = pop3
listen = 127.0.0.1

ssl = yes
ssl_cert = <$data/cert.pem
ssl_key = <$data/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_cache_size = 16M

passdb {
  driver = passwd-file
  args = $data/users
}
userdb {
  driver = passwd-file
  args = $data/users
}
mail_location = maildir:$data/mail/%u/Maildir
mail_uid = $mail_user
mail_gid = $mail_group
first_valid_uid = $mail_uid

# POP3 clients that download and delete gain nothing from \\Seen updates.
pop3_no_flag_updates = yes
# All of pop3bench's sessions are one user from one address.
mail_max_userip_connections = $pop3_processes

default_process_limit = $pop3_processes
default_client_limit = $client_limit
default_vsz_limit = 256M

# High-performance mode: long-lived login processes, one per CPU, each serving many
# connections (and proxying TLS ones).
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $dovecot_plain
  }
  inet_listener pop3s {
    address = 127.0.0.1
    port = $dovecot_tls
    ssl = yes
  }
  service_count = 0
  process_min_avail = $nproc
  vsz_limit = 1G
}
# pop3 processes are reused for the next session rather than forked each time.
service pop3 {
  service_count = 0
  process_limit = $pop3_processes
}
EOF
if ! doveconf -c "$conf" -n 2>"$work/dovecot/doveconf.err" |
    sed "s|$work|\$TMP|g" >"$work/dovecot/doveconf-n.txt"; then
    cat "$work/dovecot/doveconf.err" >&2
    die "Dovecot rejects the configuration"
fi

# ---------------------------------------------------------------------------------------------
# Starting and measuring the servers
# ---------------------------------------------------------------------------------------------

# Generous: on a shared machine, another job's disk writes can stall a starting server's
# first log lines for seconds.
wait_port() {
    local port=$1 _
    for _ in {1..600}; do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# Each server's caches of the big mailbox go before a run, so that its first session there
# is cold: Dovecot's index and uidlist, pop3d's size cache.
forget_bigbox() {
    local dir="$data/mail/bigbox/Maildir"
    case $1 in
    dovecot) find "$dir" -maxdepth 1 -name 'dovecot*' -type f -delete ;;
    pop3d) rm -f "$dir/pop3d-sizes" ;;
    esac
}

# Why a process is not getting on: its state and where each thread waits in the kernel.
describe_process() {
    local pid=$1 task
    [[ -d /proc/$pid ]] || { log "process $pid has exited"; return; }
    log "process $pid: $(grep -E '^State' "/proc/$pid/status")"
    for task in "/proc/$pid/task/"*; do
        log "  thread ${task##*/} $(<"$task/comm"): waiting in $(<"$task/wchan")"
    done
}

start_dovecot() {
    : >"$work/dovecot/dovecot.log"
    dovecot -c "$conf"
    for _ in {1..600}; do [[ -s $work/dovecot/run/master.pid ]] && break; sleep 0.1; done
    if ! wait_port "$dovecot_plain" || ! wait_port "$dovecot_tls"; then
        cat "$work/dovecot/dovecot.log" >&2
        die "Dovecot did not start"
    fi
    server_pid=$(<"$work/dovecot/run/master.pid")
}

start_pop3d() {
    local max=$((pop3d_idle + idle_tls + 4 * clients + 100)) _
    # Emptied here, not by the redirection below: that happens in the child, and until then
    # the wait below could find the last run's "ready".
    : >"$work/pop3d/pop3d.log"
    "$pop3d" serve --listen "127.0.0.1:$pop3d_plain" --listen-tls "127.0.0.1:$pop3d_tls" \
        --tls-cert "$data/cert.pem" --tls-key "$data/key.pem" --users "$data/users" \
        --maildir "$data/mail/%u/Maildir" --mode keep \
        --max-connections "$max" --max-connections-per-ip "$max" --max-sessions-per-user-ip "$max" \
        --user "$mail_user" --group "$mail_group" 2>"$work/pop3d/pop3d.log" &
    pop3d_pid=$!
    for _ in {1..600}; do
        grep -q '] ready$' "$work/pop3d/pop3d.log" && break
        kill -0 "$pop3d_pid" 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q '] ready$' "$work/pop3d/pop3d.log"; then
        cat "$work/pop3d/pop3d.log" >&2
        describe_process "$pop3d_pid"
        die "pop3d did not start"
    fi
    server_pid=$pop3d_pid
}

# The share of the machine busy over one second, from /proc/stat, in percent.
machine_busy() {
    local a b
    read -r -a a </proc/stat
    sleep 1
    read -r -a b </proc/stat
    # cpu user nice system idle iowait irq softirq steal
    local busy=$(((b[1] + b[2] + b[3] + b[6] + b[7] + b[8]) - (a[1] + a[2] + a[3] + a[6] + a[7] + a[8])))
    local idle=$(((b[4] + b[5]) - (a[4] + a[5])))
    echo $((100 * busy / (busy + idle > 0 ? busy + idle : 1)))
}

# With --wait-quiet: no run starts while other jobs keep the machine busy, if it can help it.
wait_for_quiet() {
    ((wait_quiet > 0)) || return 0
    local deadline=$((SECONDS + wait_quiet)) busy
    while busy=$(machine_busy) && ((busy >= disturbed)); do
        if ((SECONDS >= deadline)); then
            log "the machine is still ${busy}% busy after ${wait_quiet} s; running anyway"
            return 0
        fi
        log "the machine is ${busy}% busy; waiting for it to calm down"
        sleep 4
    done
}

# attempt SERVER REPEAT PART: a fresh server, one pop3bench run, the server stopped again.
attempt() {
    local server=$1 repeat=$2 part=$3 plain tls label n bench extra=()
    case $server in
    dovecot) plain=$dovecot_plain tls=$dovecot_tls label="Dovecot $dovecot_version" n=$dovecot_idle ;;
    pop3d) plain=$pop3d_plain tls=$pop3d_tls label="pop3d $revision" n=$pop3d_idle ;;
    esac
    case $part in
    idle) bench=idle extra=(--idle "$n" --idle-tls "$idle_tls") ;;
    main) bench=sessions,retr,bigbox; forget_bigbox "$server" ;;
    esac
    wait_for_quiet
    "start_$server"
    local name="$server-$part-$repeat" busy
    busy=$(machine_busy)
    log "run $repeat/$repeats: $server $bench (machine ${busy}% busy before)"
    local status=0
    "$pop3bench" --target "127.0.0.1:$plain" --tls-target "127.0.0.1:$tls" --data "$data" \
        --server-pid "$server_pid" --label "$label" --bench "$bench" "${extra[@]}" \
        --clients "$clients" --seconds "$seconds" --rounds "$rounds" \
        --json "$work/runs/$name.json" >"$work/runs/$name.md" 2>"$work/runs/$name.log" || status=$?
    grep -E 'error|took' "$work/runs/$name.log" | sed 's/^/    /' >&2 || true
    "stop_$server"
    case $server in
    dovecot) cp "$work/dovecot/dovecot.log" "$work/runs/$name.server.log" ;;
    pop3d) cp "$work/pop3d/pop3d.log" "$work/runs/$name.server.log" ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$busy" "$(cut -d' ' -f1-3 /proc/loadavg)" "$status" \
        "$(grep -ciE 'warning|error|fatal|panic' "$work/runs/$name.server.log" || true)" >>"$work/runs/index.tsv"
    if ((status != 0)); then
        log "warning: pop3bench reported errors for $name: see $work/runs/$name.log"
    fi
}

# The largest share of the machine (percent) that other processes used in any workload of a
# run, as pop3bench measured it from /proc/stat.
worst_share() {
    python3 - "$1" <<'EOF'
import json, sys
try:
    use = json.load(open(sys.argv[1])).get("cpu_use") or {}
except (OSError, ValueError):
    use = {}
shares = [u.get("other_processes_share") or 0 for u in use.values() if isinstance(u, dict)]
print(round(100 * max(shares, default=0)))
EOF
}

# run SERVER REPEAT PART: attempts until one is not disturbed by other processes (over
# $disturbed% of the machine), or --retries are spent. Disturbed attempts are kept aside as
# NAME.disturbedN.* and left out of the medians.
run() {
    local name="$1-$3-$2" try share file
    for ((try = 1; ; try++)); do
        attempt "$@"
        share=$(worst_share "$work/runs/$name.json")
        ((share > disturbed)) || return 0
        if ((try > retries)); then
            log "$name: other processes used ${share}% of the machine; no retries left, kept"
            return 0
        fi
        log "$name: other processes used ${share}% of the machine; running it again"
        for file in "$work/runs/$name".*; do
            mv "$file" "$work/runs/$name.disturbed$try${file#"$work/runs/$name"}"
        done
    done
}

# ---------------------------------------------------------------------------------------------
# 5. The runs
# ---------------------------------------------------------------------------------------------

log "pop3d on 127.0.0.1:$pop3d_plain/$pop3d_tls, Dovecot on 127.0.0.1:$dovecot_plain/$dovecot_tls;" \
    "idle sessions: pop3d $pop3d_idle, Dovecot $dovecot_idle; $repeats repeats"
for ((r = 1; r <= repeats; r++)); do
    if ((r % 2)); then order=(dovecot pop3d); else order=(pop3d dovecot); fi
    for server in "${order[@]}"; do
        run "$server" "$r" main
        run "$server" "$r" idle
    done
done

# ---------------------------------------------------------------------------------------------
# 6, 7. The report
# ---------------------------------------------------------------------------------------------

mkdir -p "$out_dir"
command_line="sudo bench/vs-dovecot.sh${ORIGINAL_ARGS[*]:+ ${ORIGINAL_ARGS[*]}}"
elapsed=$(($(date +%s) - started_at))
# shellcheck source=/dev/null
os_name=$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-}")
python3 "$REPO/bench/report.py" \
    --runs "$work/runs" \
    --out-md "$out_dir/results.md" --out-svg "$out_dir/results.svg" --out-json "$out_dir/results.json" \
    --command "$command_line" \
    --pop3d "pop3d $revision" --dovecot "Dovecot ${dovecot_version%% *}" \
    --dovecot-build "Dovecot $dovecot_version" \
    --os "$os_name" \
    --settings "clients=$clients seconds=$seconds rounds=$rounds messages=$messages bigbox=$bigbox idle_pop3d=$pop3d_idle idle_dovecot=$dovecot_idle idle_tls=$idle_tls repeats=$repeats nofile=$nofile wait_quiet=$wait_quiet retries=$retries" \
    --dovecot-config "$work/dovecot/doveconf-n.txt" \
    --elapsed "$elapsed"
log "wrote $out_dir/results.md, $out_dir/results.svg, $out_dir/results.json in $((elapsed / 60)) min $((elapsed % 60)) s"
