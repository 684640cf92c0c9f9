#!/bin/sh
# Runs the ghz scenarios against an attnserve and saves ghz's JSON reports.
#
#   deploy/ghz/run.sh [--proto] [--out DIR] [HOST:PORT] [SCENARIO...]
#
# HOST:PORT defaults to localhost:50051; SCENARIO is small, medium or long
# (default: all three, in that order). Each runs `ghz --config SCENARIO.json`
# with the host and the report path given on the command line (which win over
# the config file), then report.py prints a summary table. By default ghz finds
# the method through the server's reflection; --proto makes it read the
# repository's proto/attnserve/v1/attention.proto instead. Reports go to
# deploy/ghz/reports/<UTC time>/ unless --out says otherwise.
#
# Needs ghz (https://ghz.sh; not packaged by Debian: put its release binary on
# PATH, or set GHZ=/path/to/ghz) and python3 (standard library) for the data
# files and the summary.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
ghz=${GHZ:-ghz}
python=${PYTHON:-python3}
host=localhost:50051
out=
use_proto=0
scenarios=

while [ $# -gt 0 ]; do
  case $1 in
    --proto) use_proto=1 ;;
    --out) out=$2; shift ;;
    --out=*) out=${1#--out=} ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    small|medium|long) scenarios="$scenarios $1" ;;
    -*) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) host=$1 ;;
  esac
  shift
done
scenarios=${scenarios:-small medium long}

if ! command -v "$ghz" > /dev/null 2>&1; then
  echo "run.sh: ghz not found; install it from https://ghz.sh or set GHZ=/path/to/ghz" >&2
  exit 2
fi
if [ -z "$out" ]; then
  out=$here/reports/$(date -u +%Y%m%dT%H%M%SZ)
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)

cd "$here"
# Deterministic data; only the absent files are written (long.json is ~5 MB).
"$python" make_data.py --missing $scenarios

reports=
for s in $scenarios; do
  echo "== $s: $(sed -n 's/.*"name": "\(.*\)",/\1/p' "$s.json") -> $host"
  if [ "$use_proto" = 1 ]; then
    "$ghz" --config "$s.json" --proto ../../proto/attnserve/v1/attention.proto \
      --import-paths ../../proto --output "$out/$s.json" --format json "$host"
  else
    "$ghz" --config "$s.json" --output "$out/$s.json" --format json "$host"
  fi
  reports="$reports $out/$s.json"
done
"$python" report.py $reports
echo "reports in $out"
