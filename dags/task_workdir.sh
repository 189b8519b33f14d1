# Per-task work directories (the lmrec_retrain Param `workdirs: per-task`): every task
# starts from a fresh clone of the run's branch, so any worker on any machine can run any
# task; nothing is shared but git and the DVC remote.
#
# - `configure` creates the run's branch `lmrec-run/<run id>` in the workspace repository
#   from its checked-out commit, with this run's params.yaml committed on it.
# - lmrec_task_begin: clone that branch into a temporary directory, point DVC at the
#   remote ($LMREC_DVC_REMOTE, endpoint $LMREC_DVC_ENDPOINT, local config) and make
#   `dvc repro` pull what the stage needs ($LMREC_PULL=--pull: missing dependencies and
#   run-cache hits come from the remote).
# - lmrec_task_pull <stage>: `dvc pull` the stage's dependencies that DVC tracks (data, the
#   upstream stages' outputs), so the stage runs even under --force (which skips repro's
#   own --pull).
# - lmrec_task_end <name>: `dvc push --run-cache` (the stage's outputs and its run-cache
#   entry), then commit dvc.lock, data.dvc and the stage's uncached outputs (metrics,
#   gate.json, ...; dvc.yaml `cache: false`) on the run's branch and push it: the next
#   task's clone starts from there, and the branch is the run's record (with the stages'
#   run.json: MLflow run ids, not DVC outputs so that the run-cache holds).
# With `workdirs: shared` (the default) both are no-ops: every task runs in the workspace.
LMREC_PULL=""

lmrec_run_branch() {
  printf 'lmrec-run/%s' "$(printf '%s' "${AIRFLOW_CTX_DAG_RUN_ID:?}" | tr -c 'A-Za-z0-9._-' '-')"
}

lmrec_task_begin() {
  [ "${LMREC_WORKDIRS:-shared}" = per-task ] || return 0
  LMREC_RUN_BRANCH=$(lmrec_run_branch)
  LMREC_TASK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/lmrec-task.XXXXXX")
  trap 'rm -rf "$LMREC_TASK_DIR"' EXIT
  git clone -q --branch "$LMREC_RUN_BRANCH" "$LMREC_WORKSPACE" "$LMREC_TASK_DIR"
  cd "$LMREC_TASK_DIR"
  git config user.name lmrec
  git config user.email lmrec@localhost
  if [ -z "${LMREC_DVC_REMOTE:-}" ]; then
    echo "workdirs per-task needs a DVC remote: set LMREC_DVC_REMOTE on the workers" >&2
    exit 1
  fi
  dvc remote add --local --default --force run "$LMREC_DVC_REMOTE"
  if [ -n "${LMREC_DVC_ENDPOINT:-}" ]; then
    dvc remote modify --local run endpointurl "$LMREC_DVC_ENDPOINT"
  fi
  LMREC_PULL=--pull
  echo "task work directory $LMREC_TASK_DIR (branch $LMREC_RUN_BRANCH at $(git rev-parse --short HEAD))"
}

lmrec_task_pull() {
  [ "${LMREC_WORKDIRS:-shared}" = per-task ] || return 0
  local deps
  deps=$(python - "$1" <<'PY'
import sys, yaml
stage = yaml.safe_load(open("dvc.yaml"))["stages"][sys.argv[1]]
print("\n".join(d for d in stage.get("deps", []) if d == "data" or d.startswith("artifacts/")))
PY
)
  if [ -n "$deps" ]; then
    # shellcheck disable=SC2086
    dvc pull -q --allow-missing $deps
  fi
}

lmrec_task_end() {
  [ "${LMREC_WORKDIRS:-shared}" = per-task ] || return 0
  dvc push --run-cache -q
  lmrec_task_commit "$1"
}

# Commit what the next task needs on the run's branch (also after a gate refusal).
lmrec_task_commit() {
  [ "${LMREC_WORKDIRS:-shared}" = per-task ] || return 0
  local files
  files=$(python - "$1" <<'PY'
import os, sys, yaml
stage = yaml.safe_load(open("dvc.yaml"))["stages"].get(sys.argv[1], {})
# run.json: facts that differ between identical runs (MLflow run ids), kept out of DVC's
# outputs so the run-cache holds; register reads them, so they travel in git.
found = ["dvc.lock", "data.dvc", f"artifacts/{sys.argv[1]}/run.json"]
for out in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
    if isinstance(out, dict):
        (path, opts), = out.items()
        if opts and opts.get("cache") is False:
            found.append(path)
print("\n".join(p for p in found if os.path.exists(p)))
PY
)
  if [ -n "$files" ]; then
    # shellcheck disable=SC2086
    git add -f $files
  fi
  git commit -q -m "$1 (${AIRFLOW_CTX_DAG_RUN_ID:-})" || echo "$1: nothing new to commit"
  git push -q origin "HEAD:$LMREC_RUN_BRANCH"
}
