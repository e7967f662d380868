"""The registry of known models: what each is, its files with sha256 and size, where it lives.

The data is `models/registry.json` (shipped in the wheel). A model is either
  - "embedded": its files ship in `models/<name>/` inside the package, or
  - "fetched":  its files live in the cache, `<cache>/models/<name>/`.
Commands that take a model accept a registry name or a local path (`resolve`).

A fetched entry with `"hashes": "recorded"` lists only file paths (no sha256, no size): the hashes
are recorded when `a2p models pull` or `a2p models import` writes the files, in
`<cache>/models/<name>/.recorded.json`, and checked from then on like any other. Such an entry's
`files` are groups: `{"path": p, "or": [alternatives...], "optional": bool}`; a required group
with no recorded member shows as one missing file (its first path).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from a2pcli import cache
from a2pcli.errors import ModelError
from a2pcli.paths import shipped_models_dir

REGISTRY_FILE = "registry.json"
REGISTRY_SCHEMA = 1
STAMP_FILE = ".verified"
RECORD_FILE = ".recorded.json"  # hashes recorded at pull/import time, for entries with "hashes": "recorded"
RECORD_SCHEMA = 1

# status of one model, as shown by `models list`, `models verify` and the doctor
PRESENT, MISSING, MISMATCH, UNVERIFIED = "present", "missing", "hash mismatch", "unverified"


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative to the model's folder
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str  # "embedded" or "fetched"
    description: str
    licence: str
    source: str
    files: tuple[ModelFile, ...] = field(default_factory=tuple)
    card: str | None = None
    recorded: bool = False  # sha256 and size come from the cache's record, not from the registry
    # expected bytes of files not recorded yet (a fetched model before `models pull`): {path: bytes}
    download_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        return self.kind == "embedded"

    def folder(self) -> Path:
        return shipped_models_dir() / self.name if self.embedded else cache.model_cache_dir(self.name)

    def file_path(self, rel: str) -> Path:
        return self.folder() / rel

    @property
    def size(self) -> int:
        """Bytes on disk once complete: the recorded or listed sizes, and for a file not recorded yet
        the size it would download (`download_sizes`, an estimate)."""
        return sum(f.size if f.sha256 else self.download_sizes.get(f.path, 0) for f in self.files)

    @property
    def size_estimated(self) -> bool:
        """Whether `size` counts files that are not there yet (the expected download, not bytes on disk)."""
        return any(not f.sha256 and f.path in self.download_sizes for f in self.files)


@dataclass(frozen=True)
class FileStatus:
    file: ModelFile
    path: Path
    status: str
    detail: str = ""


def load_registry(path: Path | None = None) -> dict[str, ModelEntry]:
    path = path or shipped_models_dir() / REGISTRY_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the model registry ({exc})", subject=str(path), remedy="reinstall a2p") from exc
    if data.get("schema") != REGISTRY_SCHEMA:
        raise ModelError(f"unknown registry schema {data.get('schema')!r}", subject=str(path), remedy="reinstall a2p")
    entries = {}
    for name, raw in data.get("models", {}).items():
        try:
            recorded = raw.get("hashes") == "recorded"
            if recorded:
                files = _recorded_files(name, raw["files"])
            else:
                files = tuple(ModelFile(f["path"], f["sha256"], int(f["size"])) for f in raw["files"])
            entries[name] = ModelEntry(
                name=name,
                kind=raw["kind"],
                description=raw["description"],
                licence=raw["licence"],
                source=raw["source"],
                files=files,
                card=raw.get("card"),
                recorded=recorded,
                download_sizes={str(k): int(v) for k, v in raw.get("download_sizes", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(
                f"registry entry {name!r} is malformed (missing or bad {exc})", subject=str(path), remedy="reinstall a2p"
            ) from exc
    return entries


def get(name: str) -> ModelEntry:
    entries = load_registry()
    if name not in entries:
        known = ", ".join(sorted(entries))
        remedy = f"use one of: {known}, or a local path" if known else "give a local path (the registry lists no models)"
        raise ModelError("unknown model name", subject=name, remedy=remedy)
    return entries[name]


def read_record(folder: Path) -> dict[str, dict]:
    """The recorded files of a "hashes": "recorded" model: {relative path: {"sha256", "size", ...}}."""
    try:
        data = json.loads((folder / RECORD_FILE).read_text())
        files = data.get("files", {}) if data.get("schema") == RECORD_SCHEMA else {}
        return {rel: rec for rel, rec in files.items() if isinstance(rec.get("sha256"), str) and int(rec["size"]) >= 0}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def write_record(folder: Path, files: dict[str, dict]) -> None:
    """Replace the record (atomically). Callers hold the model's lock."""
    data = {"schema": RECORD_SCHEMA, "files": dict(sorted(files.items()))}
    cache.write_bytes_atomic(folder / RECORD_FILE, (json.dumps(data, indent=1) + "\n").encode())


def _recorded_files(name: str, groups: list[dict]) -> tuple[ModelFile, ...]:
    record = read_record(cache.model_cache_dir(name))
    out: list[ModelFile] = []
    for group in groups:
        paths = [group["path"], *group.get("or", [])]
        have = [p for p in paths if p in record]
        out += [ModelFile(p, record[p]["sha256"], int(record[p]["size"])) for p in have]
        if not have and not group.get("optional", False):
            out.append(ModelFile(paths[0], "", 0))  # nothing recorded: reported missing
    return tuple(out)


def stamp_verified(folder: Path, rel: str, sha256: str) -> None:
    """Note that `folder/rel` was just hashed to `sha256` (so the next check need not re-hash it)."""
    st = (folder / rel).stat()
    stamps = _read_stamps(folder)
    stamps[rel] = (sha256, st.st_size, st.st_mtime_ns)
    _write_stamps(folder, stamps)


def stamp_matches(folder: Path, rel: str, sha256: str) -> bool:
    """Whether `folder/rel` is unchanged (size, mtime) since it was hashed to `sha256`."""
    try:
        st = (folder / rel).stat()
    except OSError:
        return False
    return _read_stamps(folder).get(rel) == (sha256, st.st_size, st.st_mtime_ns)


def _read_stamps(folder: Path) -> dict[str, tuple[str, int, int]]:
    stamps = {}
    try:
        for line in (folder / STAMP_FILE).read_text().splitlines():
            sha, size, mtime, rel = line.split(" ", 3)
            stamps[rel] = (sha, int(size), int(mtime))
    except (OSError, ValueError):
        pass
    return stamps


def _write_stamps(folder: Path, stamps: dict[str, tuple[str, int, int]]) -> None:
    text = "".join(f"{sha} {size} {mtime} {rel}\n" for rel, (sha, size, mtime) in sorted(stamps.items()))
    try:
        cache.write_bytes_atomic(folder / STAMP_FILE, text.encode())
    except OSError:
        pass  # a read-only install: stamps are an optimisation only


def check_entry(entry: ModelEntry, rehash: bool = False) -> list[FileStatus]:
    """Status of each file. Without `rehash`, a file whose size and mtime match a stamp of an
    earlier successful hash is taken as verified; embedded files are always hashed (they are small)."""
    folder = entry.folder()
    stamps = {} if (rehash or entry.embedded) else _read_stamps(folder)
    new_stamps = dict(stamps)
    out = []
    for f in entry.files:
        path = folder / f.path
        if not path.is_file():
            out.append(FileStatus(f, path, MISSING))
            continue
        if entry.recorded and not f.sha256:  # on disk, but no pull or import finished writing it
            out.append(FileStatus(f, path, MISSING, "not recorded (interrupted pull or import)"))
            continue
        st = path.stat()
        if st.st_size != f.size:
            out.append(FileStatus(f, path, MISMATCH, f"size {st.st_size} != {f.size}"))
            continue
        stamp = stamps.get(f.path)
        if stamp == (f.sha256, st.st_size, st.st_mtime_ns):
            out.append(FileStatus(f, path, PRESENT))
            continue
        got = cache.sha256_file(path)
        if got != f.sha256:
            out.append(FileStatus(f, path, MISMATCH, f"sha256 {got[:12]}... != {f.sha256[:12]}..."))
            continue
        new_stamps[f.path] = (got, st.st_size, st.st_mtime_ns)
        out.append(FileStatus(f, path, PRESENT))
    if not entry.embedded and new_stamps != stamps and folder.is_dir():
        _write_stamps(folder, new_stamps)
    return out


def entry_status(statuses: list[FileStatus]) -> str:
    kinds = {s.status for s in statuses}
    if MISMATCH in kinds:
        return MISMATCH
    if MISSING in kinds:
        return MISSING
    return PRESENT


def require(entry: ModelEntry) -> Path:
    """The model's folder, after checking every file; a clear error naming the bad file otherwise."""
    for s in check_entry(entry):
        if s.status == MISSING:
            fix = "reinstall a2p" if entry.embedded else f"run `a2p models pull {entry.name}`"
            raise ModelError("model file is missing", subject=str(s.path), remedy=fix)
        if s.status == MISMATCH:
            fix = "reinstall a2p" if entry.embedded else f"run `a2p models verify {entry.name}` and pull it again"
            raise ModelError(f"model file is corrupt ({s.detail})", subject=str(s.path), remedy=fix)
    return entry.folder()


def resolve(name_or_path: str) -> tuple[Path, ModelEntry | None]:
    """A registry name -> its verified folder and entry; an existing local path -> (path, None)."""
    entries = load_registry()
    if name_or_path in entries:
        entry = entries[name_or_path]
        return require(entry), entry
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path, None
    known = ", ".join(sorted(entries))
    raise ModelError("neither a known model name nor an existing path", subject=name_or_path, remedy=f"known: {known}")
