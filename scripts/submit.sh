#!/usr/bin/env bash
# Submit an atlas job to a Ray cluster with Ray Jobs. The repository is the working dir, so the
# cluster runs exactly the local code and job specs. Results go to the job's out: a bucket
# (workers write their shards there themselves, nothing to copy down) or a folder on the head.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/submit.sh [options] JOB.toml [atlas run options...]

  --address URL   Ray dashboard of the head (default: $RAY_API_SERVER_ADDRESS or
                  http://127.0.0.1:8265, where `ray dashboard cluster.yaml` forwards it)
  --out DIR|URI   output bucket (s3://bucket/prefix, gs://...) or folder on the head (default:
                  the spec's job.out; a relative folder is put under the head's $HOME, since the
                  working dir is temporary)
  --then-site     run `atlas run --no-site`, then build the site only if every unit succeeded
  --no-wait       return after submitting; follow with `ray job logs -f ID`
  --id ID         submission id (default: atlas-<job name>-<UTC time>)
  --dry-run       print the `ray job submit` command line and exit without contacting a cluster

Token authentication: the token comes from $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH or
~/.ray/auth_token, whichever is set first (see docs/CLUSTER.md).
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ADDRESS="${RAY_API_SERVER_ADDRESS:-http://127.0.0.1:8265}"
OUT=""
WAIT=1
THEN_SITE=0
ID=""
DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --address) ADDRESS="${2:?--address needs a URL}"; shift 2 ;;
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    --then-site) THEN_SITE=1; shift ;;
    --no-wait) WAIT=0; shift ;;
    --id) ID="${2:?--id needs a value}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "submit.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) break ;;
  esac
done
if [[ $# -lt 1 ]]; then
  echo "submit.sh: give the job spec to run, e.g. scripts/submit.sh jobs/inceptionv1.toml" >&2
  exit 2
fi
JOB="$1"
shift
if [[ ! -f "$JOB" ]]; then
  echo "submit.sh: job spec $JOB does not exist" >&2
  exit 2
fi

# The spec travels inside the working dir when it is in the repository; otherwise the head must
# see the same path (a shared file system, or a head on this machine).
JOB_ABS="$(cd "$(dirname "$JOB")" && pwd)/$(basename "$JOB")"
if [[ "$JOB_ABS" == "$ROOT"/* ]]; then
  JOB_ARG="${JOB_ABS#"$ROOT"/}"
else
  JOB_ARG="$JOB_ABS"
  echo "submit.sh: $JOB is outside $ROOT, so it is not uploaded; the head must see $JOB_ABS" >&2
fi

SPEC_INFO="$(python "$ROOT/scripts/spec_info.py" "$JOB_ABS")" || exit 2
read -r NAME SPEC_OUT <<<"$SPEC_INFO"
if [[ -n "$OUT" ]]; then
  OUT_ARG="$(printf '%q' "$OUT")"
elif [[ "$SPEC_OUT" == /* || "$SPEC_OUT" == *://* ]]; then
  OUT_ARG="$(printf '%q' "$SPEC_OUT")"
else
  OUT_ARG="\"\$HOME\"/$(printf '%q' "$SPEC_OUT")"  # expanded by the shell on the head
fi

RUN="atlas run $(printf '%q' "$JOB_ARG") --out $OUT_ARG"
for arg in "$@"; do RUN+=" $(printf '%q' "$arg")"; done
if [[ $THEN_SITE == 1 ]]; then
  ENTRYPOINT="$RUN --no-site && atlas site $OUT_ARG"
else
  ENTRYPOINT="$RUN"
fi

if [[ -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" && ! -f "$HOME/.ray/auth_token" ]]; then
  echo "submit.sh: no Ray token found (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token);" \
    "a cluster with token authentication will refuse the job" >&2
fi

ID="${ID:-atlas-$NAME-$(date -u +%Y%m%d-%H%M%S)}"
SUBMIT=(ray job submit --address "$ADDRESS" --working-dir "$ROOT" --submission-id "$ID")
[[ $WAIT == 0 ]] && SUBMIT+=(--no-wait)
echo "submit.sh: $ID -> $ADDRESS: $ENTRYPOINT" >&2
if [[ $DRY_RUN == 1 ]]; then
  printf '%q ' "${SUBMIT[@]}" -- bash -c "$ENTRYPOINT"
  echo
  exit 0
fi
status=0
"${SUBMIT[@]}" -- bash -c "$ENTRYPOINT" || status=$?  # ray quotes each word: one shell line
if [[ $WAIT == 0 && $status == 0 ]]; then
  echo "follow: ray job logs --address $ADDRESS -f $ID    status: ray job status --address $ADDRESS $ID" >&2
elif [[ $status == 0 && "${OUT:-$SPEC_OUT}" == *://* ]]; then
  echo "results: ${OUT:-$SPEC_OUT} (site: ${OUT:-$SPEC_OUT}/site/index.html)" >&2
elif [[ $status == 0 ]]; then
  echo "results on the head: $OUT_ARG (copy them with ray rsync-down, or use a bucket as --out)" >&2
fi
exit "$status"
