#!/usr/bin/env bash
# Deploy the package the `package` stage just built to the local service, if one runs
# (`make serve` / `lmrec serve`, pid in artifacts/serve.pid), without dropping a request:
# the service loads the new champion from the BentoML model store beside the one it
# serves and swaps it in (POST /admin/reload; it also polls every serve.reload_poll_s).
# Succeeds once the service answers with the packaged champion version; fails, with the
# old model still served, when the service refuses the package (409) or never switches.
# Run from the workspace with PORT set (the lmrec_retrain DAG's deploy task); the last
# line printed is the Bento tag (the task's XCom). With LMREC_SERVE_URL set (the workers of
# cluster/cluster.py) that service is the one reloaded: no pid file, the task may run on
# any machine.
set -euo pipefail
pidfile=artifacts/serve.pid
read -r version bento < <(python -c 'import json
p = json.load(open("artifacts/package/package.json"))
print(p["models"]["champion"]["version"], p.get("bento", "-"))')
[ -n "${version:-}" ] || { echo "artifacts/package/package.json names no champion" >&2; exit 1; }
if [ -n "${LMREC_SERVE_URL:-}" ]; then
  url=$LMREC_SERVE_URL
  if ! curl -sf -o /dev/null "$url/livez"; then
    echo "no service answers at $url: start champion v$version with make cluster-serve"
    echo "$bento"
    exit 0
  fi
elif ! { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }; then
  echo "no local service running ($pidfile): start champion v$version with make serve"
  echo "$bento"
  exit 0
else
  url="localhost:$PORT"
fi
# /admin/* takes the admin token (production mode requires one); without it, the demo's
# service accepts the API token there.
auth=()
admin_token=${LMREC_ADMIN_TOKEN:-${LMREC_API_TOKEN:-}}
if [ -n "$admin_token" ]; then auth=(-H "Authorization: Bearer $admin_token"); fi
served=""
for _ in $(seq 1 "${DEPLOY_TIMEOUT_S:-120}"); do
  answer=$(curl -s -X POST "${auth[@]}" -H 'content-type: application/json' -d '{}' \
    -w '\n%{http_code}' "$url/admin/reload" || true)
  code=${answer##*$'\n'}
  body=${answer%$'\n'*}
  served=$(printf '%s' "$body" | python -c 'import json, sys
try:
    print(json.load(sys.stdin)["versions"]["champion"])
except Exception:
    print("")' )
  if [ "$code" = 409 ]; then
    echo "the service refused champion v$version and still serves v$served: $body" >&2
    exit 1
  fi
  if [ "$code" = 200 ] && [ "$served" = "$version" ]; then
    echo "service on $url serves champion v$version, swapped in without a restart"
    echo "$bento"
    exit 0
  fi
  sleep 1
done
echo "the service on $url did not switch to champion v$version (it serves '${served}')" >&2
exit 1
