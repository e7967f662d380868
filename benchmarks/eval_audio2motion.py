"""audio2motion at the model level: the numbers of its model card (models/audio2motion/README.md).

    python benchmarks/eval_audio2motion.py evaluate MODEL --data DIR... [--speakers A,B] [--cache DIR]
    python benchmarks/eval_audio2motion.py pauses MODEL FILE...

evaluate: per talking clip under the data folders (of the given speakers), the Pearson r between the
predicted mouth opening (on the speaker's own closed mouth) and the real clip's, the same for a
loudness-envelope predictor, and the spread ratio; a summary line last. pauses: per speech file, the mean
mouth opening on loud frames and in pauses. JSON lines on stdout. MODEL: a model folder, or "audio2motion"
for the shipped one. Landmarks and features come from the training data cache (--cache to move it).

Bars: mean r >= 0.5 on held-out speakers; spread ratio 0.6 to 1.5.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from a2pcli import features
    from a2pcli.audio2motion import load_model
    from a2pcli.audio import load_audio
    from a2pcli.train.audio2motion.evaluate import evaluate_model, pause_check, summarise
    from a2pcli.train.clips import data_cache_dir

    ap = argparse.ArgumentParser(prog="eval_audio2motion.py", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ev = sub.add_parser("evaluate", help="mouth-opening correlation and spread on held-out talking clips")
    ev.add_argument("model")
    ev.add_argument("--data", type=Path, action="append", required=True)
    ev.add_argument("--speakers", default=None, help="comma-separated speakers (folder names); default: all")
    ev.add_argument("--cache", type=Path, default=None, help="data cache folder (default: a2p's training cache)")
    pa = sub.add_parser("pauses", help="mouth opening in speech vs pauses of speech files")
    pa.add_argument("model")
    pa.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args(argv)
    model = load_model(None if args.model == "audio2motion" else args.model)
    if args.cmd == "evaluate":
        speakers = set(args.speakers.split(",")) if args.speakers else None
        rows = evaluate_model(model, args.data, args.cache or data_cache_dir(), speakers)
        for r in rows:
            print(json.dumps(r))
        print(json.dumps({"summary": summarise(rows)}))
    else:
        for f in args.files:
            print(json.dumps({"file": f.name, **pause_check(model, load_audio(f, features.SAMPLE_RATE))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
