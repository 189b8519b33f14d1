"""lmrec_monitor: a daily drift check that triggers lmrec_retrain when the data moved, and
the daily online report.

drift -> drifted (short-circuit) -> trigger_retrain
      -> online_report (whatever drift's outcome)

``drift`` runs ``lmrec drift`` (the package CLI in the ``.venv``) in the workspace: recent
feedback events against the training split, thresholds from params ``monitor``; it writes
``artifacts/monitor/drift.json`` and exits 5 on drift, which the task turns into the
verdict ``drifted`` (0 gives ``ok``; any other code fails the task). ``drifted`` skips the
trigger unless the verdict is ``drifted``; ``trigger_retrain`` starts an ``lmrec_retrain``
run on the same workspace without waiting for it.

``online_report`` runs ``lmrec online-report`` on the same feedback log: CTR per model
version and variant with intervals, the challenger-vs-champion test and each version's
offline NDCG@10, in ``artifacts/monitor/online.json`` and ``online.png``. Both commands
hold the workspace's pipeline lock, so it runs after the drift check (done, failed or
drifted: ``trigger_rule="all_done"``) rather than beside it, where one would wait for the
other; it gates nothing. A missing or unreadable log fails it, and so does (exit 7) a
significant disagreement of offline NDCG@10 and online CTR on two versions.
"""

from __future__ import annotations

from _lmrec_common import DEFAULT_WORKSPACE, PROLOGUE, START, default_args, task_env
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, chain, dag, task

DRIFT_SH = """set +e
if [ -n "$FEEDBACK" ]; then feedback=(--feedback "$FEEDBACK"); else feedback=(); fi
lmrec drift --params params.yaml --split artifacts/preprocess "${feedback[@]}" \\
  --out artifacts/monitor
rc=$?
set -e
case "$rc" in
  0) echo ok ;;
  5) echo drifted ;;
  *) exit "$rc" ;;
esac
"""

ONLINE_SH = """if [ -n "$FEEDBACK" ]; then feedback=(--feedback "$FEEDBACK"); else feedback=(); fi
lmrec online-report --params params.yaml "${feedback[@]}" --out artifacts/monitor
"""


@dag(
    dag_id="lmrec_monitor",
    schedule="@daily",
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["lmrec"],
    params={
        "workspace": Param(DEFAULT_WORKSPACE, type="string", description="checkout to run in"),
        "feedback": Param(
            "", type="string", description="feedback log ('': params serve.feedback_db)"
        ),
    },
)
def lmrec_monitor():
    """Check recent feedback for drift daily; trigger lmrec_retrain when drifted. Then
    report online CTR per model version and variant."""

    @task.bash(
        env=task_env(FEEDBACK="{{ params.feedback }}"),
        append_env=True,
        cwd="{{ params.workspace }}",
    )
    def drift() -> str:
        """`lmrec drift`: print `drifted` or `ok` last."""
        return PROLOGUE + DRIFT_SH

    @task.bash(
        env=task_env(FEEDBACK="{{ params.feedback }}"),
        append_env=True,
        cwd="{{ params.workspace }}",
        trigger_rule="all_done",
    )
    def online_report() -> str:
        """`lmrec online-report`: artifacts/monitor/online.json and online.png."""
        return PROLOGUE + ONLINE_SH

    @task.short_circuit
    def drifted(verdict: str) -> bool:
        """Go on to the trigger only when the check found drift."""
        return verdict == "drifted"

    trigger = TriggerDagRunOperator(
        task_id="trigger_retrain",
        trigger_dag_id="lmrec_retrain",
        conf={"workspace": "{{ params.workspace }}"},
        wait_for_completion=False,
    )
    verdict = drift()
    chain(verdict, drifted(verdict), trigger)
    verdict >> online_report()


lmrec_monitor()
