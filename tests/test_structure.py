"""How the package is put together, read from its source: one definition per public type and constant, no
private name used outside its module, the CLI free of pipeline work, benchmarks on the library's pipeline."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "a2pcli"
SHARED_NAMES: set[str] = set()


def modules(folder: Path) -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text()) for p in sorted(folder.rglob("*.py"))}


def test_no_two_public_types_or_constants_share_a_name():
    defined = defaultdict(list)
    for path, tree in modules(PACKAGE).items():
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                defined[node.name].append(path.relative_to(ROOT))
            if isinstance(node, ast.FunctionDef) and node.name in ("region_weights", "expression_weights"):
                defined[node.name].append(path.relative_to(ROOT))
            for target in node.targets if isinstance(node, ast.Assign) else []:
                if isinstance(target, ast.Name) and target.id in ("SAMPLE_RATE", "CM_PER_FACE_UNIT"):
                    defined[target.id].append(path.relative_to(ROOT))
    twice = {name: where for name, where in defined.items() if len(where) > 1 and name not in SHARED_NAMES}
    assert not twice, twice
    assert defined["SAMPLE_RATE"] == [Path("a2pcli/audio.py")]
    assert defined["CM_PER_FACE_UNIT"] == [Path("a2pcli/headpose.py")]


def test_no_private_name_is_used_outside_its_module():
    found = []
    for path, tree in {**modules(PACKAGE), **modules(ROOT / "benchmarks")}.items():
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("a2pcli"):
                found += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
                aliases |= {a.asname or a.name for a in node.names}
            if isinstance(node, ast.Import):
                aliases |= {a.asname or a.name for a in node.names if a.name.startswith("a2pcli")}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert not found, found


def test_the_render_commands_only_map_flags_to_one_library_call():
    source = (PACKAGE / "cli" / "cmd_render.py").read_text()
    for work in ("load_portrait(", "talk_targets(", "retarget(", "VideoWriter", "probe_audio(", "load_audio(",
                 "atomic_path(", "render_video", "load_model(", "closed_rest("):
        assert work not in source, f"cmd_render.py does pipeline work: {work}"


def test_benchmarks_run_the_library_pipeline_not_a_copy():
    for path in (ROOT / "benchmarks").glob("*.py"):
        source = path.read_text()
        for piece in ("talk_targets(", "closed_rest(", "open_mouth_gap("):
            assert piece not in source, f"{path.name} composes the pipeline itself ({piece})"
