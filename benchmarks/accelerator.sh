#!/usr/bin/env bash
# The GPU machine's side of benchmarks/accelerator.py (its docstring: the wheels to download here
# first, into .whl/, and the table it prints). Installs the carried wheels into /tmp/site, runs
# the script with any arguments given (e.g. --profile), and copies results.json, table.md, the
# logs (logs.tgz) and, if under 16 MB, the 512 step's Perfetto trace into $OUT.
#
#   bash benchmarks/accelerator.sh --profile      # device tool: carry [".whl"], timeout 600 s
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
out=${ACCELERATOR_OUT:-/tmp/accelerator}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv \
    2>/dev/null
PYTHONUNBUFFERED=1 python3 benchmarks/accelerator.py --out="$out" "$@"
status=$?
if [ -n "${OUT:-}" ] && [ -d "$out" ]; then
  cp "$out"/results.json "$out"/table.md "$OUT"/ 2>/dev/null
  tar czf "$OUT"/logs.tgz -C "$out" logs
  trace=$(find "$out"/profile -name perfetto_trace.json.gz -size -16M 2>/dev/null | head -1)
  [ -n "$trace" ] && cp "$trace" "$OUT"/
fi
exit $status
