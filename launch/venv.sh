# shellcheck shell=bash
# Shared by launch/gpu.sh and launch/gpu_bench.sh (sourced, not run): printing and running commands
# with a dry run, and the venv that holds requirements.txt + a CUDA jax.
#
#   ME=gpu.sh; DRY_RUN=0|1; source launch/venv.sh
#   die MESSAGE...                     # "$ME: MESSAGE" on stderr, exit 1
#   show CMD ARGS...                   # print "+ CMD ARGS" (arguments shell-quoted where needed)
#   run CMD ARGS...                    # show, then run it unless DRY_RUN=1
#   ensure_venv VENV PYTHON JAX_REQ [WHEELS] [PYTHON_VAR]
#
# ensure_venv (re)installs VENV whenever VENV/.ltdpt_stamp does not hold the sha256 of
# requirements.txt + pyproject.toml + JAX_REQ: PYTHON (>= 3.11, checked first; PYTHON_VAR names
# the variable that sets it, for the error message) creates the venv when it has none or a broken
# or too old one, then one resolver call installs everything:
#   pip install -r requirements.txt "$JAX_REQ"     (from the wheels in WHEELS only, when given)
# and the stamp is written last, so an interrupted install is redone. The install holds a flock on
# VENV.lock: nodes sharing a file system that start at once install it once. Run from the
# repository root.

die() { echo "$ME: $*" >&2; exit 1; }

show() {
  local line=+ a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then line+=" $a"; else line+=" '${a//\'/\'\\\'\'}'"; fi
  done
  printf '%s\n' "$line"
}

run() {
  show "$@"
  [[ "$DRY_RUN" == 1 ]] || "$@"
}

_venv_install() {  # VENV PYTHON JAX_REQ WHEELS PYTHON_VAR STAMP_VALUE
  local venv=$1 python=$2 jax_req=$3 wheels=$4 python_var=$5 stamp=$6
  local py_check="import sys; v = sys.version_info[:2]; sys.exit(0 if v >= (3, 11) else \"ltdpt_jax needs Python >= 3.11 (jax, flax, orbax, grain), %s is %d.%d: set $python_var=python3.12\" % ((sys.executable,) + v))"
  local pip_src=()
  [[ -z "$wheels" ]] || pip_src=(--no-index --find-links "$wheels")
  run "$python" -c "$py_check"
  if [[ "$DRY_RUN" == 1 ]] || ! "$venv/bin/python" -c "$py_check" >/dev/null 2>&1; then
    run "$python" -m venv --clear "$venv"  # none, or a broken or too old one
  fi
  [[ -n "$wheels" ]] || run "$venv/bin/python" -m pip install -q -U pip
  run "$venv/bin/python" -m pip install ${pip_src[@]+"${pip_src[@]}"} -r requirements.txt "$jax_req"
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "+ echo $stamp > $venv/.ltdpt_stamp"
  else
    echo "$stamp" >"$venv/.ltdpt_stamp"
  fi
}

ensure_venv() {  # VENV PYTHON JAX_REQ [WHEELS] [PYTHON_VAR]
  local venv=$1 python=$2 jax_req=$3 wheels=${4:-} python_var=${5:-PYTHON}
  local stamp_file=$venv/.ltdpt_stamp stamp
  stamp=$(cat requirements.txt pyproject.toml <(printf '%s\n' "$jax_req") | sha256sum | cut -d' ' -f1)
  if [[ "$(cat "$stamp_file" 2>/dev/null || true)" == "$stamp" ]]; then
    echo "$ME: $venv is up to date ($stamp_file matches requirements.txt, pyproject.toml, $jax_req)" >&2
    return 0
  fi
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "+ flock $venv.lock  # held while the venv is created and installed"
    _venv_install "$venv" "$python" "$jax_req" "$wheels" "$python_var" "$stamp"
    return 0
  fi
  mkdir -p "$(dirname "$venv")"
  exec 9>"$venv.lock"
  flock 9
  # Another node may have installed it while this one waited for the lock.
  [[ "$(cat "$stamp_file" 2>/dev/null || true)" == "$stamp" ]] ||
    _venv_install "$venv" "$python" "$jax_req" "$wheels" "$python_var" "$stamp"
  flock -u 9
  exec 9>&-
}
