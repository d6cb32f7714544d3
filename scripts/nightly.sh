#!/usr/bin/env bash
# Nightly rebuild of an atlas, for cron. Runs the job (locally, or on a cluster through
# scripts/submit.sh), waits, then rebuilds the site. Finished units are skipped, so a night
# without changes costs a plan and a site build. The previous site stays in place until the new
# one is complete (the builder renders into a staging folder and renames it over the old one),
# and a failed job leaves it untouched. Exits non-zero when anything failed.
#
#   15 2 * * *  /path/to/repo/scripts/nightly.sh jobs/inceptionv1.toml >>/var/log/atlas.log 2>&1
#   15 2 * * *  /path/to/repo/scripts/nightly.sh --address http://127.0.0.1:8265 jobs/inceptionv1.toml
#   15 2 * * *  /path/to/repo/scripts/nightly.sh --out s3://atlas/v1 --publish s3://atlas-www/v1 jobs/inceptionv1.toml
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/nightly.sh [--address URL] [--out DIR|URI] [--publish URI] [--keep N] JOB.toml

  --address URL   submit to this Ray cluster (its dashboard URL) instead of running here
  --out DIR|URI   output folder or bucket, e.g. s3://atlas/v1 (default: the spec's job.out;
                  a folder is on the head with --address)
  --publish URI   also publish the site to a folder or bucket prefix, switched atomically
                  (versions/<id>/ then the entry page; docs/STORE.md, "Publishing the site")
  --keep N        published versions to keep (default 3)

Relative paths in the spec resolve from the repository root. Exit status: 0 success,
1 the job or the site build failed, 2 bad usage or spec, 75 another nightly run holds the lock.
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ADDRESS=""
OUT=""
PUBLISH=""
KEEP=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --address) ADDRESS="${2:?--address needs a URL}"; shift 2 ;;
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    --publish) PUBLISH="${2:?--publish needs a URI}"; shift 2 ;;
    --keep) KEEP="${2:?--keep needs a number}"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "nightly.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) break ;;
  esac
done
if [[ $# -ne 1 || ! -f "$1" ]]; then
  echo "nightly.sh: give one existing job spec, e.g. scripts/nightly.sh jobs/inceptionv1.toml" >&2
  exit 2
fi
JOB="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
cd "$ROOT"

log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) nightly: $*" >&2; }

SPEC_INFO="$(python scripts/spec_info.py "$JOB")" || exit 2
read -r NAME SPEC_OUT <<<"$SPEC_INFO"

# One run per store at a time: cron may start the next night before a slow night ends. The lock
# is named after the job and the store it writes (two stores of one job name run side by side),
# and opened for appending: `>` would truncate whatever file a link planted at that name points to.
STORE_ID="$(printf '%s' "${OUT:-$SPEC_OUT}" | sha256sum | cut -c1-12)"
LOCK="${XDG_RUNTIME_DIR:-/tmp}/atlas-nightly-$NAME-$STORE_ID.lock"
exec 9>>"$LOCK"
if ! flock -n 9; then
  log "another run of $NAME holds $LOCK; skipping this one"
  exit 75
fi

START=$SECONDS
status=0
if [[ -n "$ADDRESS" ]]; then
  log "submitting $NAME to $ADDRESS"
  "$ROOT/scripts/submit.sh" --address "$ADDRESS" ${OUT:+--out "$OUT"} --then-site "$JOB" || status=$?
  WHERE="the head of $ADDRESS"
else
  OUT="${OUT:-$SPEC_OUT}"
  log "running $NAME into $OUT"
  if atlas run "$JOB" --out "$OUT" --no-site; then
    log "building the site of $OUT"
    atlas site "$OUT" || status=$?
  else
    status=$?
  fi
  WHERE="$OUT/site"
fi

if [[ $status -eq 0 && -n "$PUBLISH" ]]; then
  # Builds from the store (a bucket, or a folder this machine sees) and publishes the result.
  log "publishing the site of ${OUT:-$SPEC_OUT} to $PUBLISH"
  atlas site "${OUT:-$SPEC_OUT}" --publish "$PUBLISH" --keep "$KEEP" || status=$?
  WHERE="$PUBLISH"
fi

if [[ $status -ne 0 ]]; then
  log "FAILED ($status) after $((SECONDS - START)) s; the previous site of $NAME is unchanged"
  exit 1
fi
log "done in $((SECONDS - START)) s; site in $WHERE"
