#!/usr/bin/env bash
# Train LT-DPT on a Cloud TPU VM slice (one or many hosts), from a machine with gcloud:
#
#   NAME=ltdpt ZONE=us-east5-b TYPE=v6e-8 bash launch/tpu_vm.sh \
#       --config=configs/places.py --workdir=gs://BUCKET/runs/places_lt \
#       --config.data.data_dir=gs://BUCKET/tensorflow_datasets
#   DRY_RUN=1 NAME=... bash launch/tpu_vm.sh ...    # (or --dry_run first) print every command, run none
#
# 1. Requests the slice as a queued resource (`gcloud compute tpus queued-resources create`: it
#    waits in a queue when there is no capacity now) and waits until it is ACTIVE.
# 2. Ships `git archive HEAD` (commit first: uncommitted changes are not shipped) to every worker
#    and unpacks it into a clean ~/ltdpt_jax.
# 3. Installs on every worker: uv, a Python >= 3.11 venv (TPU VM images are Ubuntu 22.04 with
#    Python 3.10, too old for jax/flax/orbax/grain), then one resolver call:
#    `uv pip install -r requirements.txt "jax[tpu]>=0.10,<0.13"`.
# 4. Starts `python -m ltdpt_jax.main ARGS` detached on every worker (nohup setsid, logs in
#    ~/ltdpt_jax/logs/<host>.log, exit code in <host>.rc) with LTDPT_DISTRIBUTED=1, so that
#    jax.distributed.initialize() finds the other hosts; a dropped ssh connection does not stop it.
# 5. Polls every POLL_S seconds. Done: WORKDIR/results.json exists (or every worker exited 0).
#    Preempted (the queued resource left ACTIVE, or a worker exited 75 = stopped by SIGTERM after
#    a checkpoint): delete, recreate, reinstall, rerun; training resumes from the workdir's
#    checkpoints. Any other exit code (2 bad input, 3 diverged, ...) stops here with that code.
# 6. After every attempt copies the workers' logs to LOGS/attempt_<k>/; at the end (also on an
#    error or Ctrl-C) deletes the queued resource and its TPU VM, unless KEEP=1. Ctrl-C first asks
#    the run to stop (SIGTERM: it saves a checkpoint), waits up to STOP_WAIT_S for it, then deletes.
#
# Environment:
#   NAME, ZONE, TYPE   TPU VM name, zone, accelerator type (v4-8, v5litepod-16, v5p-8, v6e-8, ...)
#   PROJECT            adds --project=PROJECT (default: gcloud's core/project)
#   VERSION            TPU software (runtime) version; default by TYPE: v4 (and v2/v3)
#                      tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5,
#                      v6e v2-alpha-tpuv6e (https://cloud.google.com/tpu/docs/runtimes)
#   SPOT=1             Spot capacity (cheaper, preemptible at any time; own quota)
#   KEEP=1             keep the TPU VM at the end (default: delete it)
#   QR                 queued resource id (default NAME-qr)
#   HOSTS              hosts of the slice, only for a TYPE this script does not know
#   PYTHON_VERSION     the venv's Python (default 3.12; uv downloads it when the image lacks it)
#   JAX_REQ            the jax requirement (default "jax[tpu]>=0.10,<0.13")
#   POLL_S             seconds between polls (default 60); MAX_ATTEMPTS (default 20)
#   LOGS               local log directory (default runs/tpu_logs/NAME)
#   FETCH              where a local (non-gs://) workdir is copied back (default runs/tpu_results/NAME)
#   STOP_WAIT_S        on Ctrl-C, how long to wait for the checkpoint (default 600)
#   CREATE_FLAGS       more flags for queued-resources create, space-separated (e.g.
#                      "--service-account=SA --reserved" or "--network=NET --subnetwork=SUB")
# Hosts: v4-N and v5p-N count TensorCores (2 per chip, 4 chips per host): N/8 hosts; v5litepod-N
# (v5e-N) and v6e-N count chips: one host up to 8 chips, else N/4 hosts of 4 chips. A slice of more
# than one host needs a gs:// --workdir (every host writes its part of each checkpoint there); the
# tfds data_dir should be on gs:// too. For several workers at once gcloud refuses to start when an
# ssh-agent runs without your key: ssh-add ~/.ssh/google_compute_engine. gcloud copies files to
# this machine from one worker at a time, so the logs come back with one scp per worker.
set -euo pipefail

ME=tpu_vm.sh
note() { echo "$ME: $*" >&2; }
die() { echo "$ME: $*" >&2; exit 1; }

DRY_RUN=${DRY_RUN:-0}
if [[ "${1:-}" == --dry_run || "${1:-}" == --dry-run ]]; then
  DRY_RUN=1
  shift
fi
dry() { [[ "$DRY_RUN" == 1 ]]; }

[[ -n "${NAME:-}" && -n "${ZONE:-}" && -n "${TYPE:-}" ]] ||
  die "set NAME (the TPU VM's name), ZONE and TYPE, e.g. NAME=ltdpt ZONE=us-east5-b TYPE=v6e-8 bash launch/tpu_vm.sh --config=... --workdir=gs://BUCKET/runs/x"
PROJECT=${PROJECT:-}
SPOT=${SPOT:-0}
KEEP=${KEEP:-0}
QR=${QR:-$NAME-qr}
POLL_S=${POLL_S:-60}
MAX_ATTEMPTS=${MAX_ATTEMPTS:-20}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
JAX_REQ=${JAX_REQ:-'jax[tpu]>=0.10,<0.13'}
LOGS=${LOGS:-runs/tpu_logs/$NAME}
FETCH=${FETCH:-runs/tpu_results/$NAME}
STOP_WAIT_S=${STOP_WAIT_S:-600}
[[ "$JAX_REQ" =~ ^[][A-Za-z0-9_.,\<\>=!~-]+$ ]] || die "JAX_REQ=$JAX_REQ: expected a requirement like jax[tpu]>=0.10,<0.13"
[[ "$PYTHON_VERSION" =~ ^3\.[0-9]+$ ]] || die "PYTHON_VERSION=$PYTHON_VERSION: expected 3.11, 3.12, ..."

# --- The slice: runtime version and number of hosts, from TYPE. ---
[[ "$TYPE" =~ ^([a-z0-9]+)-([0-9]+)$ ]] ||
  die "TYPE=$TYPE is not an accelerator type such as v4-8, v5litepod-16, v5p-8 or v6e-8"
family=${BASH_REMATCH[1]}
size=${BASH_REMATCH[2]}
case "$family" in
  v2 | v3 | v4) default_version=tpu-ubuntu2204-base ;;
  v5p) default_version=v2-alpha-tpuv5 ;;
  v5litepod | v5e) default_version=v2-alpha-tpuv5-lite ;;
  v6e) default_version=v2-alpha-tpuv6e ;;
  *) default_version= ;;
esac
case "$family" in
  v2 | v3 | v4 | v5p) hosts=$((size > 8 ? size / 8 : 1)) ;;  # TensorCores, 8 per host
  v5litepod | v5e | v6e) hosts=$((size > 8 ? size / 4 : 1)) ;;  # chips: 1 host <= 8, else 4 per host
  *) hosts= ;;
esac
VERSION=${VERSION:-$default_version}
[[ -n "$VERSION" ]] ||
  die "no default runtime version for TYPE=$TYPE: set VERSION (see https://cloud.google.com/tpu/docs/runtimes) and HOSTS"
HOSTS=${HOSTS:-$hosts}
[[ "$HOSTS" =~ ^[1-9][0-9]*$ ]] || die "set HOSTS, the number of TPU VM hosts of a $TYPE slice"

# --- The run's arguments: find --workdir; a multi-host slice needs a gs:// one. ---
WORKDIR=
argv=("$@")
for ((i = 0; i < ${#argv[@]}; i++)); do
  case "${argv[i]}" in
    --workdir=* | -workdir=*) WORKDIR=${argv[i]#*=} ;;
    --workdir | -workdir) WORKDIR=${argv[i + 1]:-} ;;
  esac
done
[[ -n "$WORKDIR" ]] || die "pass --workdir=gs://BUCKET/runs/NAME (and --config=...): arguments go to python -m ltdpt_jax.main"
WORKDIR=${WORKDIR%/}
if [[ "$WORKDIR" == gs://* ]]; then
  SHARED_WORKDIR=1
elif ((HOSTS > 1)); then
  die "TYPE=$TYPE has $HOSTS hosts: --workdir must be a gs:// path that every host shares (got $WORKDIR)"
else
  SHARED_WORKDIR=0
fi
ARGS=$(printf ' %q' "$@")

# --- Showing and running commands. ---
# shq ARG: ARG quoted for a shell, readably ('...' only where needed; --flag='value').
shq() {
  local a=$1 flag=
  if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$a"
    return
  fi
  if [[ "$a" =~ ^(--[a-z][a-z0-9_-]*=)(.*)$ ]]; then
    flag=${BASH_REMATCH[1]}
    a=${BASH_REMATCH[2]}
  fi
  printf "%s'%s'" "$flag" "${a//\'/\'\\\'\'}"
}
show() {
  local line=+ a
  for a in "$@"; do line+=" $(shq "$a")"; done
  printf '%s\n' "$line"
}
run() {  # show and run (only show in a dry run)
  show "$@"
  dry || "$@"
}
# query VAR DRY_VALUE CMD...: CMD's stdout in VAR ('' if it fails), quietly; a dry run shows CMD
# and sets VAR=DRY_VALUE.
query() {
  local __var=$1 __dry=$2 __out
  shift 2
  if dry; then
    show "$@"
    printf -v "$__var" '%s' "$__dry"
    return 0
  fi
  __out=$("$@" 2>/dev/null) || __out=
  printf -v "$__var" '%s' "$__out"
}
# check CMD...: CMD's exit status, quietly (a dry run shows CMD and succeeds).
check() {
  if dry; then
    show "$@"
    return 0
  fi
  "$@" >/dev/null 2>&1
}

PROJ=()
[[ -z "$PROJECT" ]] || PROJ=(--project="$PROJECT")
GP=(--zone="$ZONE" ${PROJ[@]+"${PROJ[@]}"})
QRC=(gcloud compute tpus queued-resources)
VM=(gcloud compute tpus tpu-vm)
ssh_all() { run "${VM[@]}" ssh "$NAME" "${GP[@]}" --worker=all --command="$1"; }
qr_state() { query "$1" "$2" "${QRC[@]}" describe "$QR" "${GP[@]}" --format='value(state.state)'; }

# --- Remote commands (bash on every worker; ~/ltdpt_jax holds the code, its venv and logs). ---
EXTRACT='rm -rf ~/ltdpt_jax && mkdir ~/ltdpt_jax && tar -xzf ~/ltdpt_jax.tar.gz -C ~/ltdpt_jax && rm -f ~/ltdpt_jax.tar.gz'
PY_CHECK="import sys; v = sys.version_info[:2]; sys.exit(0 if v >= (3, 11) else 'ltdpt_jax needs Python >= 3.11 (jax, flax, orbax, grain); the venv has %d.%d: set PYTHON_VERSION=3.12' % v)"
INSTALL="set -e; cd ~/ltdpt_jax; export PATH=\"\$HOME/.local/bin:\$PATH\";"
INSTALL+=" command -v uv >/dev/null 2>&1 || { curl -LsSf https://astral.sh/uv/install.sh | sh || true; };"
INSTALL+=" command -v uv >/dev/null 2>&1 || python3 -m pip install --user uv;"
INSTALL+=" uv venv -p $PYTHON_VERSION .venv; .venv/bin/python -c \"$PY_CHECK\";"
INSTALL+=" uv pip install --python .venv/bin/python -r requirements.txt \"$JAX_REQ\""
# The run, detached: the python process's id in logs/<host>.pid, its exit code in logs/<host>.rc.
INNER="h=\$(hostname); env LTDPT_DISTRIBUTED=1 .venv/bin/python -m ltdpt_jax.main$ARGS > logs/\$h.log 2>&1 < /dev/null & echo \$! > logs/\$h.pid; wait \$!; echo \$? > logs/\$h.rc"
START="cd ~/ltdpt_jax && mkdir -p logs && rm -f logs/*.rc logs/*.pid && nohup setsid bash -c $(shq "$INNER") > /dev/null 2>&1 < /dev/null &"
# Every finished worker prints 'RC <host>.rc <code>'; one whose process vanished without an exit
# code (the VM rebooted) prints 'RC <host>.rc gone'; every worker prints 'LOG <its log's last line>'.
# shellcheck disable=SC2016  # remote commands: the worker's shell expands them, not this one
RCS='cd ~/ltdpt_jax/logs 2>/dev/null && for f in *.rc; do [ -e "$f" ] && echo "RC $f $(cat "$f")"; done;'
# shellcheck disable=SC2016  # (the same)
RCS+=' for f in *.pid; do h=${f%.pid}; [ -e "$f" ] && [ ! -e "$h.rc" ] && ! kill -0 "$(cat "$f")" 2>/dev/null && [ ! -e "$h.rc" ] && echo "RC $h.rc gone"; done;'
# shellcheck disable=SC2016  # (the same)
RCS+=' for f in *.log; do [ -e "$f" ] && echo "LOG ${f%.log}: $(tail -n 1 "$f" | cut -c1-160)"; done; true'
# shellcheck disable=SC2016  # (the same)
STOP='cd ~/ltdpt_jax/logs 2>/dev/null && for f in *.pid; do [ -e "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null; done; true'
if [[ "$WORKDIR" == /* ]]; then REMOTE_WORKDIR=$WORKDIR; else REMOTE_WORKDIR=ltdpt_jax/$WORKDIR; fi

# --- Local state, and the clean-up that runs however the script ends. ---
ATTEMPT=0
STARTED=0      # code was shipped to a VM at least once
QR_HELD=0      # a queued resource of ours may exist
RUNNING=0      # a run was started and has not been seen to end
INTERRUPTED=0
TMP=
SKIP_WAIT=0

collect_logs() {
  local dest=$LOGS/attempt_$ATTEMPT w
  run mkdir -p "$dest"
  # gcloud copies from one worker at a time ("cannot target multiple workers while copying files
  # to client"); the files are named by host.
  for ((w = 0; w < HOSTS; w++)); do
    run "${VM[@]}" scp "$NAME:ltdpt_jax/logs/*" "$dest" "${GP[@]}" --worker="$w" ||
      note "could not copy the logs of worker $w (attempt $ATTEMPT)"
  done
}

fetch_workdir() {  # a local workdir lives on worker 0 only: copy it back before the VM goes
  run mkdir -p "$FETCH"
  run "${VM[@]}" scp --recurse "$NAME:$REMOTE_WORKDIR" "$FETCH" "${GP[@]}" --worker=0 ||
    note "could not copy $REMOTE_WORKDIR from the TPU VM"
}

delete_qr() {
  if run "${QRC[@]}" delete "$QR" "${GP[@]}" --force --quiet; then
    QR_HELD=0
  else
    note "deleting queued resource $QR failed: delete it with gcloud compute tpus queued-resources delete $QR --zone=$ZONE --force"
  fi
}

stop_run() {  # SIGTERM to the run on every worker (it saves a checkpoint, exits 75); wait for it
  local waited=0 rcs n
  note "stopping the run (SIGTERM: checkpoint, exit 75); up to ${STOP_WAIT_S}s, Ctrl-C again to skip"
  trap 'SKIP_WAIT=1' INT
  ssh_all "$STOP" || true
  while ! dry && ((SKIP_WAIT == 0 && waited < STOP_WAIT_S)); do
    query rcs "" "${VM[@]}" ssh "$NAME" "${GP[@]}" --worker=all --command="$RCS"
    n=$(grep -c '^RC ' <<<"$rcs" || true)
    ((n < HOSTS)) || break
    sleep "$((POLL_S < 10 ? POLL_S : 10))" || true
    waited=$((waited + 10))
  done
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT
  trap '' TERM
  if ((RUNNING == 1 && INTERRUPTED == 1)); then
    stop_run
    collect_logs
  fi
  trap '' INT
  if ((QR_HELD == 1 && STARTED == 1 && SHARED_WORKDIR == 0)); then
    fetch_workdir
  fi
  [[ -z "$TMP" ]] || rm -rf "$TMP"
  if ((QR_HELD == 1)); then
    if [[ "$KEEP" == 1 ]]; then
      note "KEEP=1: the TPU VM $NAME stays (and bills); delete it with: gcloud compute tpus queued-resources delete $QR --zone=$ZONE --force --quiet"
    else
      delete_qr
    fi
  fi
  if ((ATTEMPT > 0)); then
    note "logs: $LOGS/attempt_1 .. attempt_$ATTEMPT (<host>.log, <host>.rc of every worker)"
    if ((SHARED_WORKDIR == 1)); then
      note "results: $WORKDIR/results.json (metrics.jsonl, eval_<step>.json, checkpoints/ beside it)"
    else
      note "results: $FETCH/$(basename "$WORKDIR")/results.json (copied from the TPU VM)"
    fi
  fi
  exit "$rc"
}

# --- Capacity: a queued resource, ACTIVE. ---
create_qr() {
  local extra=() extra_flags=()
  [[ "$SPOT" != 1 ]] || extra+=(--spot)
  [[ -z "${CREATE_FLAGS:-}" ]] || read -ra extra_flags <<<"$CREATE_FLAGS"
  extra+=(${extra_flags[@]+"${extra_flags[@]}"})
  QR_HELD=1
  run "${QRC[@]}" create "$QR" --node-id="$NAME" "${GP[@]}" --accelerator-type="$TYPE" \
    --runtime-version="$VERSION" ${extra[@]+"${extra[@]}"}
}

wait_gone() {
  local state
  while :; do
    qr_state state ""
    [[ -n "$state" ]] || return 0
    note "queued resource $QR: $state, waiting for it to go"
    sleep "$POLL_S"
  done
}

# Returns 1 when the slice was preempted (SUSPENDING/SUSPENDED) before it could be used.
wait_active() {
  local state last=
  while :; do
    qr_state state ACTIVE
    case "$state" in
      ACTIVE) note "queued resource $QR is ACTIVE ($TYPE, $HOSTS host(s), $VERSION)"; return 0 ;;
      FAILED) die "queued resource $QR FAILED (a bad request, or no capacity within its allocation interval); see: gcloud compute tpus queued-resources describe $QR --zone=$ZONE" ;;
      SUSPENDING | SUSPENDED) note "queued resource $QR is $state (preempted)"; return 1 ;;
      *)  # WAITING_FOR_RESOURCES, PROVISIONING, ACCEPTED, CREATING, or not visible yet
        [[ "$state" == "$last" ]] || note "queued resource $QR: ${state:-not found yet}, waiting (every ${POLL_S}s)"
        last=$state
        sleep "$POLL_S"
        ;;
    esac
  done
}

acquire() {
  local state
  qr_state state ""
  case "$state" in
    "") create_qr || die "creating queued resource $QR failed (see above: quota, zone, type?)" ;;
    ACTIVE) QR_HELD=1; note "reusing the ACTIVE queued resource $QR" ;;
    WAITING_FOR_RESOURCES | PROVISIONING | ACCEPTED | CREATING) QR_HELD=1; note "queued resource $QR exists ($state)" ;;
    *) QR_HELD=1; note "queued resource $QR is $state: deleting it"; delete_qr; wait_gone; create_qr || die "creating queued resource $QR failed (see above)" ;;
  esac
  wait_active
}

# --- One attempt on an ACTIVE slice: code, install, start. ---
setup_and_start() {
  local tarball
  if dry; then
    tarball=${TMPDIR:-/tmp}/ltdpt_jax.XXXXXX/ltdpt_jax.tar.gz
  else
    [[ -n "$TMP" ]] || TMP=$(mktemp -d)
    tarball=$TMP/ltdpt_jax.tar.gz
  fi
  # (Called in an `if`, where set -e does not apply: every step checks itself.)
  run git -C "$REPO_DIR" archive --format=tar.gz -o "$tarball" HEAD || die "git archive failed"
  run "${VM[@]}" scp "$tarball" "$NAME:ltdpt_jax.tar.gz" "${GP[@]}" --worker=all || return 1
  STARTED=1
  ssh_all "$EXTRACT" || return 1
  ssh_all "$INSTALL" || return 1
  ssh_all "$START" || return 1
  RUNNING=1
}

# Sets RESULT to finished, preempted or failed (then RESULT_RC: the exit code). A worker killed by
# a signal (exit 128 + n, but for 130: a Ctrl-C) beside workers that exit 75 is a lost host: the
# others stopped for it after a checkpoint, so the run is recreated and resumed like a preemption.
poll() {
  local rcs state tag file code n0 line stopped failed_rc killed_rc
  RESULT='' RESULT_RC=0
  while :; do
    dry || sleep "$POLL_S"
    query rcs "" "${VM[@]}" ssh "$NAME" "${GP[@]}" --worker=all --command="$RCS"
    n0=0 stopped='' failed_rc='' killed_rc=''
    while read -r tag file code; do
      [[ "$tag" == RC ]] || continue
      case "$code" in
        0) n0=$((n0 + 1)) ;;
        75) note "attempt $ATTEMPT: $file says 75 (stopped after a checkpoint: SIGTERM, or a lost process)"; stopped=1 ;;
        gone) note "attempt $ATTEMPT: the run of ${file%.rc} vanished without an exit code (VM restarted)"; stopped=1 ;;
        129 | 13[1-9] | 1[4-5][0-9]) note "attempt $ATTEMPT: $file says $code (killed by signal $((code - 128)))"; killed_rc=$code ;;
        *) note "attempt $ATTEMPT: $file says ${code:-nothing}"; failed_rc=${code:-1} ;;
      esac
    done <<<"$rcs"
    if [[ -n "$failed_rc" ]]; then
      RESULT=failed RESULT_RC=$failed_rc
    elif [[ -n "$stopped" ]]; then
      RESULT=preempted
    elif [[ -n "$killed_rc" ]]; then
      RESULT=failed RESULT_RC=$killed_rc
    fi
    [[ "$RESULT_RC" =~ ^[0-9]+$ ]] || RESULT_RC=1
    [[ "$RESULT" != failed ]] || return 0
    [[ "$RESULT" != preempted ]] || return 0
    # (A dry run shows one whole poll, then takes the run as finished.)
    if ((SHARED_WORKDIR == 1)); then
      if check gcloud storage ls "$WORKDIR/results.json" ${PROJ[@]+"${PROJ[@]}"}; then
        RESULT=finished
        dry || return 0
      fi
    elif check "${VM[@]}" ssh "$NAME" "${GP[@]}" --worker=0 --command="test -f $(shq "$REMOTE_WORKDIR/results.json")"; then
      RESULT=finished
      dry || return 0
    fi
    if ((n0 >= HOSTS)); then RESULT=finished; return 0; fi  # e.g. --mode=eval: no results.json
    qr_state state ACTIVE
    if [[ "$state" != ACTIVE ]]; then
      note "attempt $ATTEMPT: queued resource $QR is ${state:-not found} (preempted)"
      RESULT=preempted
      return 0
    fi
    ! dry || return 0
    line=$(grep '^LOG ' <<<"$rcs" | sort | head -n 1 || true)
    note "attempt $ATTEMPT running; ${line#LOG }"
  done
}

# --- Main. ---
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
if ! dry; then
  command -v gcloud >/dev/null 2>&1 || die "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), then gcloud init"
fi
if ! git -C "$REPO_DIR" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  dry || die "$REPO_DIR is not a git checkout with a commit: the TPU VM gets git archive HEAD"
  note "warning: $REPO_DIR is not a git checkout with a commit (git archive HEAD would fail)"
fi
if [[ -n "$(git -C "$REPO_DIR" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  note "warning: uncommitted changes are not shipped; the TPU VM gets HEAD ($(git -C "$REPO_DIR" rev-parse --short HEAD))"
fi
if ((SHARED_WORKDIR == 0)); then
  note "warning: --workdir=$WORKDIR is on the TPU VM's disk: it is copied to $FETCH at the end and lost with the VM on a preemption (training would restart from scratch); use gs:// to resume"
fi
note "$TYPE: $HOSTS host(s), runtime $VERSION, queued resource $QR$([[ "$SPOT" == 1 ]] && echo ', spot')"
trap cleanup EXIT
trap 'INTERRUPTED=1; exit 130' INT TERM

while :; do
  ATTEMPT=$((ATTEMPT + 1))
  ((ATTEMPT <= MAX_ATTEMPTS)) ||
    { ATTEMPT=$((ATTEMPT - 1)); note "preempted $MAX_ATTEMPTS times: giving up; the checkpoints in $WORKDIR are intact, rerun the same command to resume"; exit 75; }
  note "attempt $ATTEMPT of at most $MAX_ATTEMPTS"
  if ! acquire; then
    delete_qr
    wait_gone
    continue
  fi
  if ! setup_and_start; then
    qr_state state ACTIVE
    [[ "$state" != ACTIVE ]] || die "setting up the TPU VM failed (see above); the queued resource is ACTIVE, so it was not a preemption"
    note "the slice went away while setting up (${state:-not found}): recreating"
    delete_qr
    wait_gone
    continue
  fi
  poll
  RUNNING=0
  collect_logs
  case "$RESULT" in
    finished) note "attempt $ATTEMPT: finished"; break ;;
    failed) note "training stopped with exit code $RESULT_RC (2 bad input, 3 diverged, 130 interrupted): see $LOGS/attempt_$ATTEMPT"; exit "$RESULT_RC" ;;
    preempted) note "attempt $ATTEMPT was preempted: recreating the slice; training resumes from $WORKDIR"; delete_qr; wait_gone ;;
  esac
done
