"""Refresh the sha256 and size of every embedded model's files in models/registry.json.

    python -m a2pcli.tools.update_registry [models/registry.json]

Run it after retraining a shipped model; commit the registry with the new files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from a2pcli.cache import sha256_file


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    reg_path = Path(argv[0]) if argv else Path("models/registry.json")
    data = json.loads(reg_path.read_text())
    for name, entry in data["models"].items():
        if entry["kind"] != "embedded":
            continue
        for f in entry["files"]:
            p = reg_path.parent / name / f["path"]
            f["sha256"], f["size"] = sha256_file(p), p.stat().st_size
            print(f"{name}/{f['path']}: {f['size']} bytes, sha256 {f['sha256'][:12]}...", file=sys.stderr)
    reg_path.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
