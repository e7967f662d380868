"""AniPortrait's weight files: which files the renderer needs, where they are, and loading them safely.

The files keep AniPortrait's own `pretrained_model/` layout (its configs' paths), so that the folder
an AniPortrait user already has can be adopted as it is (`a2p models import aniportrait DIR`), and the
cache folder `<cache>/models/aniportrait/` can be used by AniPortrait's scripts:

    denoising_unet.pth  reference_unet.pth  pose_guider.pth  motion_module.pth     AniPortrait (ZJYang/AniPortrait)
    audio2mesh.pt  audio2pose.pt  [film_net_fp16.pt]
    stable-diffusion-v1-5/unet/config.json                                          the UNet architecture (SD1.5)
    sd-vae-ft-mse/config.json  sd-vae-ft-mse/diffusion_pytorch_model.safetensors|.bin
    image_encoder/config.json  image_encoder/pytorch_model.bin|model.safetensors    sd-image-variations' CLIP
    wav2vec2-base-960h/config.json  preprocessor_config.json  pytorch_model.bin|model.safetensors

How a renderer gets its inputs::

    w = open_weights()                          # the pulled/imported model; every file's sha256 checked
    w = open_weights("/path/pretrained_model")  # or a folder of AniPortrait's layout (no recorded hashes)
    cfg = w.config("unet_config")               # parsed JSON: unet_config, vae_config, image_encoder_config,
                                                #   wav2vec2_config, wav2vec2_preprocessor
    sd = w.state_dict("denoising_unet.pth")     # {key: tensor}, AniPortrait's own key names, strict-checked
    sds = w.state_dicts(["reference_unet.pth", "denoising_unet.pth", "motion_module.pth", "pose_guider.pth",
                         "vae", "image_encoder"])     # the `weights` dict of sampler.build_models
    w.path("film_net_fp16.pt")                  # a file's path (TorchScript: torch.jit.load it yourself)

Safety, in order, before any tensor reaches a model:
1. `open_weights()` checks that every required file is there and, for the registry model, that each
   file's sha256 equals the one recorded when it was pulled or imported (`registry.require`: a file
   whose size and mtime are unchanged since it was last hashed is not re-hashed). Missing or partial
   weights are a `ModelError` (exit 4) naming the file and `a2p models pull aniportrait`.
2. `state_dict()` re-checks that file, reads it with `torch.load(weights_only=True)` (memory-mapped
   when the format allows) or safetensors, and turns any read failure (truncated zip, foreign pickle)
   into a `ModelError` naming the file.
3. The key check is strict. AniPortrait's six checkpoints are compared with the full-size key list
   shipped beside this module (`fullsize_keys.json.gz`: key, shape, dtype of every tensor); one
   unexpected, missing or mis-shaped tensor is an error naming it. `expected=` replaces that list
   (a built model, a {key: shape} mapping or a key list; tiny test configs pass their model) and
   `expected=None` skips it for callers whose model builders check strictly themselves.
   Equivalent spellings are normalised towards the expected ones first: weight-norm
   `weight_g/weight_v` <-> `parametrizations.weight.original0/1` (torch < 2.1 vs later), and the
   legacy diffusers VAE attention names (`query/key/value/proj_attn` -> `to_q/to_k/to_v/to_out.0`,
   applied to the VAE whatever `expected` is, since sd-vae-ft-mse was saved with them).
4. `cache=True` keeps a safetensors copy of what was read (optionally cast to `dtype`) under
   `<model folder>/.converted/`, named by the source's sha256, so that later loads are a memory map;
   the copy's own sha256 is kept beside it and checked the same way as the sources.

`check_file()` is the structural check that pull and import run on every file before it is recorded.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import sys
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from a2pcli.errors import InputError, ModelError

MODEL_NAME = "aniportrait"
PULL = f"a2p models pull {MODEL_NAME}"
REPAIR = (f"run `{PULL}`: it fetches again every file that is not the Hub's "
          f"(`a2p models verify {MODEL_NAME}` lists them)")
KEY_TABLE = Path(__file__).with_name("fullsize_keys.json.gz")
KEY_TABLE_SCHEMA = 1
CONVERTED_DIR = ".converted"

CHECKPOINT, CONFIG, TORCHSCRIPT = "checkpoint", "config", "torchscript"


@dataclass(frozen=True)
class WeightFile:
    """One file the renderer may need. `paths` are alternatives inside pretrained_model/: the first is
    the one `models pull` fetches and the first present is the one loaded. `table` says the file's
    key list is in the shipped full-size table."""

    name: str
    paths: tuple[str, ...]
    kind: str
    required: bool = True
    table: bool = False
    needs: tuple[str, ...] = ()  # fields a config must have (a cheap "is this the right JSON" check)


FILES: tuple[WeightFile, ...] = (
    WeightFile("denoising_unet.pth", ("denoising_unet.pth",), CHECKPOINT, table=True),
    WeightFile("reference_unet.pth", ("reference_unet.pth",), CHECKPOINT, table=True),
    WeightFile("pose_guider.pth", ("pose_guider.pth",), CHECKPOINT, table=True),
    WeightFile("motion_module.pth", ("motion_module.pth",), CHECKPOINT, table=True),
    WeightFile("audio2mesh.pt", ("audio2mesh.pt",), CHECKPOINT, table=True),
    WeightFile("audio2pose.pt", ("audio2pose.pt",), CHECKPOINT, table=True),
    WeightFile("film_net_fp16.pt", ("film_net_fp16.pt",), TORCHSCRIPT, required=False),
    WeightFile("unet_config", ("stable-diffusion-v1-5/unet/config.json",), CONFIG,
               needs=("block_out_channels", "cross_attention_dim", "in_channels")),
    WeightFile("vae_config", ("sd-vae-ft-mse/config.json",), CONFIG, needs=("block_out_channels", "latent_channels")),
    WeightFile("vae", ("sd-vae-ft-mse/diffusion_pytorch_model.safetensors",
                       "sd-vae-ft-mse/diffusion_pytorch_model.bin"), CHECKPOINT),
    WeightFile("image_encoder_config", ("image_encoder/config.json",), CONFIG,
               needs=("hidden_size", "projection_dim")),
    WeightFile("image_encoder", ("image_encoder/pytorch_model.bin", "image_encoder/model.safetensors"), CHECKPOINT),
    WeightFile("wav2vec2_config", ("wav2vec2-base-960h/config.json",), CONFIG, needs=("hidden_size", "conv_dim")),
    WeightFile("wav2vec2_preprocessor", ("wav2vec2-base-960h/preprocessor_config.json",), CONFIG,
               needs=("sampling_rate",)),
    WeightFile("wav2vec2", ("wav2vec2-base-960h/pytorch_model.bin", "wav2vec2-base-960h/model.safetensors"),
               CHECKPOINT),
)
BY_NAME = {f.name: f for f in FILES}


def spec(name: str) -> WeightFile:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown AniPortrait file {name!r}; known: {', '.join(BY_NAME)}") from None


def registry_groups() -> list[dict]:
    """The `files` of the registry entry (models/registry.json), derived from FILES."""
    out = []
    for f in FILES:
        group: dict = {"path": f.paths[0]}
        if len(f.paths) > 1:
            group["or"] = list(f.paths[1:])
        if not f.required:
            group["optional"] = True
        out.append(group)
    return out


# --- the full-size key table ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def key_table() -> dict[str, dict[str, tuple[tuple[int, ...], str]]]:
    """{checkpoint file: {key: (shape, dtype)}} of AniPortrait's six released checkpoints at full size."""
    data = json.loads(gzip.decompress(KEY_TABLE.read_bytes()))
    if data.get("schema") != KEY_TABLE_SCHEMA:
        raise ModelError("unknown key-table schema", subject=str(KEY_TABLE), remedy="reinstall a2p")
    return {f: {k: (tuple(shape), dtype) for k, shape, dtype in rows} for f, rows in data["files"].items()}


def expected_keys(name: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (shape, dtype)} of one of the six checkpoints (e.g. "pose_guider.pth") at full size."""
    return dict(key_table()[name])


def build_key_table(source: Path, dest: Path = KEY_TABLE) -> None:
    """Write the compact table from the fixtures' keys/fullsize_keys.json (gzip, about 10 kB)."""
    src = json.loads(Path(source).read_text())
    table = {
        "schema": KEY_TABLE_SCHEMA,
        "note": "Key, shape and dtype of every tensor of AniPortrait's six released checkpoints at full size, as "
                "in shared/fixtures/aniportrait/keys/fullsize_keys.json (built with AniPortrait's own classes at "
                "commit 7f6593fd). Rebuild: python -m a2pcli.aniportrait.weights build-keys <that file>.",
        "files": src["files"],
    }
    data = json.dumps(table, separators=(",", ":"), sort_keys=True).encode()
    dest.write_bytes(gzip.compress(data, 9, mtime=0))


# --- reading and checking one checkpoint ---------------------------------------------------------------


def first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def read_checkpoint(path: Path, *, remedy: str = f"run `{PULL}`", mmap: bool = True) -> dict:
    """{key: tensor} of a `.safetensors` file or a torch checkpoint, read with `weights_only=True`
    (memory-mapped when the zip format allows). A `{"state_dict": {...}}` wrapper is unwrapped.
    Any failure to read it (truncated, not a checkpoint, a pickle with code) is a ModelError naming it."""
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors" or _looks_like_safetensors(path):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as exc:
                if not mmap or "mmap" not in str(exc):  # only the legacy (non-zip) format cannot be mapped
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ModelError("model file is missing", subject=str(path), remedy=remedy) from exc
    except Exception as exc:  # torch and safetensors raise many types for a damaged or foreign file
        raise ModelError(f"not a readable checkpoint ({first_line(exc)})", subject=str(path),
                         remedy=remedy) from exc
    if isinstance(state, Mapping) and set(state) == {"state_dict"} and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelError("not a {name: tensor} state dict", subject=str(path), remedy=remedy)
    return dict(state)


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte header length and a JSON header (a torch zip with PK,
    a legacy torch pickle with 0x80)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < (100 << 20)


_WEIGHT_NORM = ((".weight_g", ".parametrizations.weight.original0"),
                (".weight_v", ".parametrizations.weight.original1"))
_VAE_LEGACY = ((".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0."))


def _expected_shapes(expected) -> dict[str, tuple[int, ...] | None]:
    """{key: shape or None} from a module, a {key: tensor | shape | (shape, dtype)} mapping, or keys."""
    import torch

    if isinstance(expected, torch.nn.Module):
        expected = expected.state_dict()
    if isinstance(expected, Mapping):
        out = {}
        for k, v in expected.items():
            if isinstance(v, torch.Tensor):
                out[k] = tuple(v.shape)
            elif isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], str):
                out[k] = tuple(v[0])
            elif v is None:
                out[k] = None
            else:
                out[k] = tuple(v)
        return out
    return {k: None for k in expected}


def normalize_keys(state: dict, expected: Iterable[str] | None = None, *, vae: bool = False) -> dict:
    """Rename equivalent spellings towards `expected`: weight-norm g/v <-> parametrizations (only
    where `expected` has the other spelling), and, with `vae`, legacy diffusers attention names to
    the current ones (unconditionally: diffusers dropped the old names)."""
    out = dict(state)
    if vae:
        renamed = {}
        for k, v in out.items():
            if ".attentions." in k:
                for old, new in _VAE_LEGACY:
                    k = k.replace(old, new)
            renamed[k] = v
        out = renamed
    if expected is not None:
        want = set(expected)
        for k in [k for k in out if k not in want]:
            for a, b in _WEIGHT_NORM:
                for src, dst in ((a, b), (b, a)):
                    if k.endswith(src):
                        alt = k[: -len(src)] + dst
                        if alt in want and alt not in out:
                            out[alt] = out.pop(k)
    return out


def check_keys(state: Mapping, expected, *, subject: str, remedy: str, shapes: bool = True) -> None:
    """Strict: the keys of `state` are exactly those of `expected`, and (with `shapes`, where known)
    every shape matches. The error names the first offending key and counts the rest."""
    want = _expected_shapes(expected)
    unexpected = [k for k in state if k not in want]
    missing = [k for k in want if k not in state]
    if unexpected or missing:
        parts = []
        for what, keys in (("unexpected", unexpected), ("missing", missing)):
            if keys:
                parts.append(f"{what} key '{keys[0]}'" + (f" (+{len(keys) - 1} more)" if len(keys) > 1 else ""))
        raise ModelError("checkpoint keys do not match the model: " + ", ".join(parts), subject=subject, remedy=remedy)
    if shapes:
        for k, shape in want.items():
            got = tuple(state[k].shape) if hasattr(state[k], "shape") else tuple(state[k])
            if shape is not None and got != shape:
                raise ModelError(f"tensor '{k}' has shape {list(got)}, expected {list(shape)}", subject=subject,
                                 remedy=remedy)


def inspect_checkpoint(path: Path, *, remedy: str) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a checkpoint without reading its tensors (safetensors header, or a memory-mapped
    torch zip); a file that cannot be read this way is a ModelError naming it."""
    path = Path(path)
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as exc:
            raise ModelError(f"not a readable checkpoint ({first_line(exc)})", subject=str(path),
                             remedy=remedy) from exc
    return {k: tuple(v.shape) for k, v in read_checkpoint(path, remedy=remedy).items()}


def check_zip_crc(path: Path, *, remedy: str) -> None:
    """Read every member of a torch zip checkpoint against its CRC-32 (torch.save writes them; torch.load
    does not check them, so a flipped bit in a tensor would load silently). Reads the whole file."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise ModelError(f"checkpoint archive is damaged ({first_line(exc)})", subject=str(path),
                         remedy=remedy) from exc
    if bad is not None:
        raise ModelError(f"checkpoint data is damaged (CRC error in {bad})", subject=str(path), remedy=remedy)


def check_file(wf: WeightFile, path: Path, *, remedy: str, fullsize: bool = True, crc: bool = False) -> None:
    """Structural check of one file before it is recorded: a checkpoint reads (header only) and, for
    the six AniPortrait files, has exactly the full-size keys and shapes; with `crc`, a torch zip's
    data is read against its CRC-32s; a config is a JSON object with the fields that file must have;
    TorchScript is a zip archive."""
    path = Path(path)
    if wf.kind == CONFIG:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelError(f"not a readable JSON config ({first_line(exc)})", subject=str(path),
                             remedy=remedy) from exc
        lacking = [k for k in wf.needs if not isinstance(data, dict) or k not in data]
        if lacking:
            raise ModelError(f"config lacks '{lacking[0]}': not the expected {wf.name.replace('_', ' ')}",
                             subject=str(path), remedy=remedy)
        return
    if wf.kind == TORCHSCRIPT:
        if not zipfile.is_zipfile(path):
            raise ModelError("not a TorchScript archive (truncated or foreign file)", subject=str(path), remedy=remedy)
    else:
        shapes = inspect_checkpoint(path, remedy=remedy)
        if wf.table and fullsize:
            table = expected_keys(wf.name)
            check_keys(normalize_keys(shapes, table), table, subject=str(path), remedy=remedy)
    if crc:
        check_zip_crc(path, remedy=remedy)


# --- the weights of one folder --------------------------------------------------------------------------


class AniPortraitWeights:
    """The files of one pretrained_model folder. Build it with `open_weights()`."""

    def __init__(self, folder: Path, *, verified: bool, fullsize: bool = True, remedy: str = f"run `{PULL}`"):
        self.folder = Path(folder)
        self.verified = verified  # sha256 of every file checked against the record
        self.fullsize = fullsize  # check the six AniPortrait checkpoints against the full-size table
        self.remedy = remedy

    def __repr__(self) -> str:
        return f"AniPortraitWeights({str(self.folder)!r}, verified={self.verified})"

    def has(self, name: str) -> bool:
        return any((self.folder / p).is_file() for p in spec(name).paths)

    def path(self, name: str) -> Path:
        """The file for `name` (the first of its alternatives that exists); ModelError when none does."""
        wf = spec(name)
        for p in wf.paths:
            if (self.folder / p).is_file():
                return self.folder / p
        raise ModelError("model file is missing", subject=str(self.folder / wf.paths[0]), remedy=self.remedy)

    def config(self, name: str) -> dict:
        wf = spec(name)
        if wf.kind != CONFIG:
            raise ValueError(f"{name} is not a config")
        path = self.path(name)
        self._recheck(path)
        check_file(wf, path, remedy=self.remedy)
        return json.loads(path.read_text(encoding="utf-8"))

    def state_dict(self, name: str, *, expected="fullsize", shapes: bool = True, dtype=None,
                   cache: bool = False) -> dict:
        """{key: tensor} of one checkpoint, after its sha256 check, strictly key-checked.

        expected: "fullsize" (default) = the shipped table for the six AniPortrait files and no check
        for the others; a module, {key: shape} mapping or key list = exactly those keys; None = no
        check (the caller's builder is strict). dtype: cast floating tensors. cache: keep and reuse a
        safetensors copy (only for the verified registry model)."""
        wf = spec(name)
        if wf.kind != CHECKPOINT:
            raise ValueError(f"{name} is not a checkpoint")
        path = self.path(name)
        self._recheck(path)
        if expected == "fullsize":
            expected = expected_keys(wf.name) if (wf.table and self.fullsize) else None
        rel = path.relative_to(self.folder).as_posix()
        state = self._cached(rel, dtype) if cache and self.verified else None
        if state is None:
            state = read_checkpoint(path, remedy=self.remedy)
            if dtype is not None:
                state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
            if cache and self.verified:
                self._store(rel, dtype, state)
        state = normalize_keys(state, _expected_shapes(expected) if expected is not None else None, vae=name == "vae")
        if expected is not None:
            check_keys(state, expected, subject=str(path), remedy=self.remedy, shapes=shapes)
        return state

    def state_dicts(self, names: Iterable[str], **kw) -> dict[str, dict]:
        return {n: self.state_dict(n, **kw) for n in names}

    # -- sha256 re-check of one file before it is read ("checked on every load")

    def _recheck(self, path: Path) -> None:
        if not self.verified:
            return
        from a2pcli import registry

        entry = registry.get(MODEL_NAME)
        for s in registry.check_entry(entry):
            if s.path == path and s.status != registry.PRESENT:
                missing = s.status == registry.MISSING
                what = "model file is missing" if missing else f"model file is corrupt ({s.detail})"
                raise ModelError(what, subject=str(path), remedy=REPAIR)

    # -- the safetensors conversion cache

    def _record_sha(self, rel: str) -> str | None:
        from a2pcli import registry

        rec = registry.read_record(self.folder).get(rel)
        return rec["sha256"] if rec else None

    def _converted(self, rel: str, dtype) -> tuple[Path, Path] | None:
        sha = self._record_sha(rel)
        if sha is None:
            return None
        tag = str(dtype).replace("torch.", "") if dtype is not None else "orig"
        stem = f"{_flat(rel)}.{sha[:16]}.{tag}"
        base = self.folder / CONVERTED_DIR
        return base / f"{stem}.safetensors", base / f"{stem}.json"

    def _cached(self, rel: str, dtype) -> dict | None:
        from a2pcli import cache

        paths = self._converted(rel, dtype)
        if paths is None or not paths[0].is_file():
            return None
        data, meta = paths
        try:
            info = json.loads(meta.read_text())
            st = data.stat()
            changed = (info["size"], info["mtime_ns"]) != (st.st_size, st.st_mtime_ns)
            if changed and cache.sha256_file(data) != info["sha256"]:
                raise ValueError("converted copy changed")
            from safetensors.torch import load_file

            return load_file(str(data))
        except Exception:  # a damaged copy is dropped and rebuilt from the (verified) source
            for p in paths:
                p.unlink(missing_ok=True)
            return None

    def _store(self, rel: str, dtype, state: dict) -> None:
        from a2pcli import cache

        paths = self._converted(rel, dtype)
        if paths is None:
            return
        data, meta = paths
        try:
            from safetensors.torch import save_file

            seen: set = set()
            tensors = {}
            for k, v in state.items():  # safetensors refuses shared or strided storage
                v = v.contiguous()
                ptr = (v.untyped_storage().data_ptr(), v.storage_offset())
                tensors[k] = v.clone() if ptr in seen else v
                seen.add(ptr)
            data.parent.mkdir(parents=True, exist_ok=True)
            sha16 = data.name[len(_flat(rel)) + 1:].split(".")[0]
            for old in data.parent.glob(f"{_flat(rel)}.*"):  # copies made from an older version of the source
                if old.name[len(_flat(rel)) + 1:].split(".")[0] != sha16:
                    old.unlink(missing_ok=True)
            tmp = data.with_name(f".{data.name}.{os.getpid()}.part")
            save_file(tensors, str(tmp))
            os.replace(tmp, data)
            st = data.stat()
            info = {"source": rel, "sha256": cache.sha256_file(data), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
            cache.write_bytes_atomic(meta, json.dumps(info).encode())
        except Exception:  # a cache only: a read-only folder or a full disk must not fail the load
            for p in (data, meta):
                p.unlink(missing_ok=True)


def _flat(rel: str) -> str:
    return rel.replace("/", "__")


def open_weights(source: str | Path | None = None, *, fullsize: bool = True) -> AniPortraitWeights:
    """The weights to render with: None or "aniportrait" = the registry model in the cache (every
    file's recorded sha256 checked); a path = a folder with AniPortrait's layout, used in place.
    `fullsize=False` skips the full-size key table (tiny test configs; the model builders stay strict).
    Missing files: ModelError (exit 4) naming the first one and the command that fixes it."""
    from a2pcli import registry

    if source is None or str(source) == MODEL_NAME:
        try:
            folder = registry.require(registry.get(MODEL_NAME))
        except ModelError as exc:
            if exc.subject and "corrupt" in exc.message:  # pull replaces a file that is not the Hub's
                raise ModelError(exc.message, subject=exc.subject, remedy=REPAIR) from exc
            raise
        return AniPortraitWeights(folder, verified=True, fullsize=fullsize)
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise InputError("not a folder", subject=str(folder), remedy=f"give AniPortrait's pretrained_model folder, or "
                         f"leave the option out to use the model from `{PULL}`")
    remedy = f"put AniPortrait's file there (its pretrained_model layout), or use `{PULL}`"
    weights = AniPortraitWeights(folder, verified=False, fullsize=fullsize, remedy=remedy)
    for wf in FILES:
        if wf.required:
            weights.path(wf.name)
    return weights


def main(argv: list[str] | None = None) -> int:
    """python -m a2pcli.aniportrait.weights build-keys SHARED/fixtures/aniportrait/keys/fullsize_keys.json"""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "build-keys":
        print(main.__doc__, file=sys.stderr)
        return 2
    build_key_table(Path(argv[1]))
    print(f"wrote {KEY_TABLE} ({KEY_TABLE.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
