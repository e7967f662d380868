#!/usr/bin/env bash
# The README's set-up on a fresh virtual environment: wall time, megabytes downloaded, and any
# package that pip fetched in more than one version (resolver backtracking).
#
#   bash benchmarks/bench_setup.sh [ci:setup|quickstart] [WORKDIR]
#
# ci:setup (default) runs the README's `<!-- ci:setup -->` block; quickstart runs the quick start's
# first block without its last two commands (doctor and the render). It runs in a copy of the
# repository's committed files under WORKDIR (default: a new temporary folder) with an empty pip
# cache, so every package is fetched as on a new machine. Needs network access to the package index.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
which=${1:-ci:setup}
work=${2:-$(mktemp -d -t a2p-setup-XXXXXX)}
mkdir -p "$work/src"
git -C "$repo" archive HEAD | tar -x -C "$work/src"
cd "$work/src"

if [ "$which" = quickstart ]; then
  setup=$(awk '/^## Quick start/ {f=1} f && /^```bash/ {getline; print; exit}' README.md | sed 's/ && a2p doctor.*//')
else
  setup=$(awk -v m="<!-- ci:$which -->" -v m2="<!-- $which -->" '($0 == m || $0 == m2) {f=1; next}
          f && /^```/ {if (in_) exit; in_=1; next} f && in_ {print; exit}' README.md)
fi
[ -n "$setup" ] || { echo "no set-up block '$which' in README.md" >&2; exit 1; }

export PIP_CACHE_DIR="$work/pip-cache"
log="$work/setup.log"
echo "+ $setup"
start=$(date +%s.%N)
set +e
(eval "$setup") >"$log" 2>&1
rc=$?
set -e
end=$(date +%s.%N)

python3 - "$log" "$rc" "$start" "$end" "$work" <<'EOF'
import collections, re, sys
log, rc, start, end, work = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
unit = {"kB": 1e-3, "MB": 1.0, "GB": 1e3}
total, versions = 0.0, collections.defaultdict(set)
for line in open(log, errors="replace"):
    m = re.match(r"\s*Downloading (\S+?)-(\d[^-]*)-\S*\.(?:whl|tar\.gz) \(([\d.]+) (kB|MB|GB)\)", line)
    if m:
        total += float(m.group(3)) * unit[m.group(4)]
        versions[m.group(1).lower().replace("_", "-")].add(m.group(2))
backtracked = {k: sorted(v) for k, v in versions.items() if len(v) > 1}
print(f"exit {rc}; wall {end - start:.0f} s; downloaded {total:.0f} MB")
print("packages fetched in several versions:", backtracked or "none")
print(f"log: {log}")
EOF
du -sm "$work/src/.venv" 2>/dev/null | awk '{print "venv: " $1 " MB"}'
