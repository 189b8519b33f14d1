# The gate task: `dvc repro gate`, then the verdict from gate.json, which `lmrec gate` writes
# on a pass (exit 0) and on a refusal (exit 4, lmrec.exit_codes.ExitCode.REFUSED) alike.
# DVC's exit status says only whether the stage failed; its message text is not read.
# - dvc succeeded: the gate passed now, or passed before and DVC skipped it (dvc.lock
#   records a stage only after exit 0): gate.json must say passed.
# - dvc failed: a refusal only if this run wrote gate.json (newer than the marker made
#   before it; DVC removes the output before running the stage) and it says refused with
#   exit code 4. Anything else, a stale gate.json included, fails the task.
set +e
lmrec_task_pull gate
marker=$(mktemp)
out=$(dvc repro $LMREC_PULL --single-item $LMREC_FORCE gate 2>&1)
rc=$?
set -e
printf '%s\n' "$out"
verdict=$(python - artifacts/gate/gate.json "$marker" "$rc" <<'PY'
import json, os, sys
path, marker, rc = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    report = json.load(open(path))
    fresh = os.stat(path).st_mtime_ns >= os.stat(marker).st_mtime_ns
except (OSError, ValueError) as err:
    report, fresh = None, False
    print(f"no verdict: {path}: {err}", file=sys.stderr)
if rc == 0 and report is not None and report.get("passed") is True:
    print("passed")
elif rc != 0 and fresh and report.get("passed") is False and report.get("exit_code") == 4:
    print("refused")
elif report is not None:
    state = "written by this run" if fresh else "left from an earlier run"
    print(f"no verdict: dvc exited {rc}, {path} ({state}) says passed={report.get('passed')}",
          file=sys.stderr)
PY
)
rm -f "$marker"
case "$verdict" in
  passed) lmrec_task_end gate; echo passed ;;
  refused)
    lmrec_task_commit gate  # the refusal's reasons, for gate_passed
    echo refused ;;
  *) if [ "$rc" -ne 0 ]; then exit "$rc"; fi; exit 1 ;;
esac
