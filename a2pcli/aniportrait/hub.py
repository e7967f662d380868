"""Getting AniPortrait's weights into the cache: `a2p models pull aniportrait` and `a2p models import`.

Both write `<cache>/models/aniportrait/` in AniPortrait's `pretrained_model/` layout (see
`weights.FILES`) under the model's lock, record each file's sha256 and size in the folder's
`.recorded.json` (`registry.read_record`) once the file is complete and checked, and check every
file structurally first (`weights.check_file`: checkpoints read memory-mapped with full-size key
names and shapes, configs parse and have their fields). A file that is not recorded does not count
as present, so an interrupted run can never leave weights that load.

Pull
----
Downloads with huggingface_hub's own HTTP layer (`get_hf_file_metadata` for the HEAD of
`/{repo}/resolve/{revision}/{file}`, `http_get` for the body), from `HF_ENDPOINT` when set (a mirror,
or a local fake hub in the tests), with huggingface_hub's token and headers. The body is appended to
`.incomplete/<file>.<hash of the ETag>.part` in the model folder, so a download cut by the network or Ctrl-C
resumes with an HTTP Range request where it stopped, in this run (huggingface_hub retries) and in
the next `pull` (hf_hub_download itself deletes partial files, which is why it is not used for
multi-GB files here). A completed file must have the size the Hub announced and its sha256 must
equal the Hub's ETag (the LFS sha256; small git-stored files: the git blob sha1) before it is moved
into place and recorded. Files already recorded with the Hub's current ETag and unchanged on disk
are skipped; a file present but unrecorded is adopted when its hash equals the ETag.

Revisions are pinned below. Where a commit hash could be taken from public code that names the
repository's snapshot folder, it is used; AniPortrait's own repository is pinned to its `main`
branch because no commit hash could be verified offline: the commit that `main` resolves to is
recorded with each file, and a later pull resumes from that same commit.

Import
------
Adopts a folder with AniPortrait's file names (other files in it are ignored). Nothing is written
until every file passed its structural check, and for torch zip checkpoints a read of all their data
against the CRC-32s that torch.save stores (torch.load does not check them, and an imported file
has no Hub hash to compare with). Files are then **hard-linked** into the cache when the
folder is on the same filesystem (no extra disk space; the cache keeps the data if the folder is
later moved or deleted; a replaced file in the folder does not change the cache, and a file edited
in place is caught by the sha256 check), and copied otherwise or with `copy=True`. Symlinks are not
used: moving the original folder would silently break them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from a2pcli import cache, registry
from a2pcli.aniportrait import weights
from a2pcli.errors import EnvironmentProblem, InputError, ModelError
from a2pcli.outputs import temp_path_for
from a2pcli.progress import Reporter

MODEL_NAME = weights.MODEL_NAME
PULL = weights.PULL
INCOMPLETE_DIR = ".incomplete"
MB = 1_000_000
DISK_MARGIN = 200 * MB  # free space kept beyond the files being written
HASH_CHUNK = 8 << 20

# --- pinned sources --------------------------------------------------------------------------------------
# Commit hashes were read from public code that names these repositories' snapshot folders
# (models--<org>--<repo>/snapshots/<commit>); they were not checked against the Hub from here (no network),
# and the sha256 of each file is recorded at pull time, not known in advance.
ANIPORTRAIT_REPO = "ZJYang/AniPortrait"
ANIPORTRAIT_REVISION = "main"  # NOT a commit pin: no commit hash could be verified offline (see the module doc)
SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # runwayml/stable-diffusion-v1-5 was taken down; its mirror
SD15_REVISION = "451f4fe16113bff5a5d2269ed5ad43b0592e9a14"
VAE_REPO = "stabilityai/sd-vae-ft-mse"
VAE_REVISION = "31f26fdeee1355a5c34592e401dd41e45d25a493"
IMAGE_ENCODER_REPO = "lambdalabs/sd-image-variations-diffusers"
IMAGE_ENCODER_REVISION = "42bc0ee1726b141d49f519a6ea02ccfbf073db2e"
WAV2VEC2_REPO = "facebook/wav2vec2-base-960h"
WAV2VEC2_REVISION = "22aad52d435eb6dbaf354bdad9b0da84ce7d6156"


@dataclass(frozen=True)
class HubFile:
    rel: str  # path in the model folder (AniPortrait's layout)
    repo: str
    revision: str
    path: str  # path in the repository


def _hub_files() -> tuple[HubFile, ...]:
    ani = lambda rel: HubFile(rel, ANIPORTRAIT_REPO, ANIPORTRAIT_REVISION, rel)  # noqa: E731
    return (
        ani("denoising_unet.pth"),
        ani("reference_unet.pth"),
        ani("pose_guider.pth"),
        ani("motion_module.pth"),
        ani("audio2mesh.pt"),
        ani("audio2pose.pt"),
        ani("film_net_fp16.pt"),
        HubFile("stable-diffusion-v1-5/unet/config.json", SD15_REPO, SD15_REVISION, "unet/config.json"),
        HubFile("sd-vae-ft-mse/config.json", VAE_REPO, VAE_REVISION, "config.json"),
        HubFile("sd-vae-ft-mse/diffusion_pytorch_model.safetensors", VAE_REPO, VAE_REVISION,
                "diffusion_pytorch_model.safetensors"),
        HubFile("image_encoder/config.json", IMAGE_ENCODER_REPO, IMAGE_ENCODER_REVISION, "image_encoder/config.json"),
        HubFile("image_encoder/pytorch_model.bin", IMAGE_ENCODER_REPO, IMAGE_ENCODER_REVISION,
                "image_encoder/pytorch_model.bin"),
        HubFile("wav2vec2-base-960h/config.json", WAV2VEC2_REPO, WAV2VEC2_REVISION, "config.json"),
        HubFile("wav2vec2-base-960h/preprocessor_config.json", WAV2VEC2_REPO, WAV2VEC2_REVISION,
                "preprocessor_config.json"),
        HubFile("wav2vec2-base-960h/pytorch_model.bin", WAV2VEC2_REPO, WAV2VEC2_REVISION, "pytorch_model.bin"),
    )


HUB_FILES = _hub_files()


def weight_file(rel: str) -> weights.WeightFile:
    for wf in weights.FILES:
        if rel in wf.paths:
            return wf
    raise ValueError(f"{rel} is not an AniPortrait file")


# --- helpers -------------------------------------------------------------------------------------------


def folder() -> Path:
    return cache.model_cache_dir(MODEL_NAME)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    from filelock import Timeout

    try:
        with cache.model_lock(MODEL_NAME):
            yield
    except Timeout as exc:
        raise ModelError("another a2p process has been writing this model for too long", subject=MODEL_NAME,
                         remedy=f"wait for it to finish, or remove {cache.lock_path(MODEL_NAME)} if none runs") from exc


def _hash_file(path: Path, reporter: Reporter | None = None, git: bool = False) -> tuple[str, str | None]:
    """(sha256, git blob sha1 or None) of a file, advancing `reporter` by MB read."""
    sha = hashlib.sha256()
    blob = None
    if git:
        blob = hashlib.sha1()
        blob.update(b"blob %d\0" % path.stat().st_size)
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            sha.update(chunk)
            if blob is not None:
                blob.update(chunk)
            done += len(chunk)
            if reporter is not None and done >= MB:
                reporter.advance(done // MB)
                done %= MB
    return sha.hexdigest(), (blob.hexdigest() if blob is not None else None)


def _is_sha256(etag: str) -> bool:
    return len(etag) == 64 and all(c in "0123456789abcdef" for c in etag)


def _is_sha1(etag: str) -> bool:
    return len(etag) == 40 and all(c in "0123456789abcdef" for c in etag)


def _matches_etag(path: Path, etag: str, reporter: Reporter | None = None) -> tuple[bool, str]:
    """Whether the file's content is what the Hub's ETag names; and its sha256."""
    sha, blob = _hash_file(path, reporter, git=_is_sha1(etag))
    if _is_sha256(etag):
        return sha == etag, sha
    if _is_sha1(etag):
        return blob == etag, sha
    return True, sha  # an ETag that names no content hash (not the Hub's): only the size was checked


def _check_disk(target: Path, need: int) -> None:
    probe = target
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need + DISK_MARGIN:
        raise EnvironmentProblem(f"not enough free disk space: {need / MB:,.0f} MB to write, {free / MB:,.0f} MB free",
                                 subject=str(target), remedy="free some space or set A2P_CACHE_DIR to a larger disk")


class _Bar:
    """What huggingface_hub's http_get needs of a tqdm bar: one for the whole download stage, which
    forwards bytes to a Reporter in MB (http_get calls it as `tqdm_class(**kw)` once per file)."""

    def __init__(self, reporter: Reporter):
        self.reporter, self.bytes = reporter, 0

    def __call__(self, **_) -> _Bar:
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int) -> None:
        before = self.bytes // MB
        self.bytes = max(0, self.bytes + n)
        step = self.bytes // MB - before
        if step:
            self.reporter.advance(step)

    def close(self) -> None:
        pass


# --- pull ----------------------------------------------------------------------------------------------


@dataclass
class _Remote:
    hub: HubFile
    url: str
    headers: dict
    etag: str
    size: int | None
    commit: str


def _endpoint() -> str | None:
    value = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return value or None


def _head(hub: HubFile, revision: str, endpoint: str | None) -> _Remote:
    import httpx2
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    from huggingface_hub.utils import build_hf_headers

    from a2pcli import __version__

    where = f"{hub.repo}@{revision}/{hub.path}"
    retry = f"check the network (and HF_ENDPOINT, HF_TOKEN), then run `{PULL}` again (it resumes)"
    url = hf_hub_url(hub.repo, hub.path, revision=revision, endpoint=endpoint)
    headers = build_hf_headers(library_name="a2p", library_version=__version__)
    try:
        meta = get_hf_file_metadata(url, headers=headers, endpoint=endpoint, retry_on_errors=True)
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise ModelError(f"the Hub refuses or lacks the repository ({_short(exc)})", subject=where,
                         remedy=retry) from exc
    except RevisionNotFoundError as exc:
        raise ModelError("the pinned revision is not on the Hub", subject=where,
                         remedy="update a2p, or import the files with `a2p models import`") from exc
    except EntryNotFoundError as exc:
        raise ModelError("file not found on the Hub", subject=where,
                         remedy="update a2p, or import the files with `a2p models import`") from exc
    except OfflineModeIsEnabled as exc:
        raise ModelError("huggingface_hub is in offline mode (HF_HUB_OFFLINE)", subject=where,
                         remedy="unset HF_HUB_OFFLINE, or import the files with `a2p models import`") from exc
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as exc:
        raise ModelError(f"cannot reach the Hub ({_short(exc)})", subject=where, remedy=retry) from exc
    if not meta.commit_hash or not meta.etag:
        raise ModelError("the server did not answer like a Hugging Face Hub (no commit or ETag header)", subject=where,
                         remedy="check HF_ENDPOINT")
    target = meta.location or url
    hdrs = dict(headers)
    if _origin(target) != _origin(url):  # a signed CDN address: no credentials leave the Hub
        hdrs.pop("authorization", None)
        hdrs.pop("Authorization", None)
    return _Remote(hub, target, hdrs, meta.etag, meta.size, meta.commit_hash)


def _origin(url: str) -> tuple:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def _short(exc: BaseException) -> str:
    return weights.first_line(exc, 120)


def _part_path(base: Path, rel: str, etag: str) -> Path:
    tag = hashlib.sha256(etag.encode()).hexdigest()[:24]  # one part per version of the file
    return base / INCOMPLETE_DIR / f"{rel.replace('/', '__')}.{tag}.part"


class _HashingFile:
    """The .part file as http_get writes it (opened for appending), hashing what it holds as it grows:
    sha256, and the git blob sha1 when the final size is known. A truncate (the server ignored the
    Range request and sends the whole file again) re-hashes what is left."""

    def __init__(self, f, final_size: int | None):
        self.f, self.final_size = f, final_size
        self._rehash(f.tell())

    def _rehash(self, upto: int) -> None:
        self.sha = hashlib.sha256()
        self.blob = None
        if self.final_size is not None:
            self.blob = hashlib.sha1()
            self.blob.update(b"blob %d\0" % self.final_size)
        self.f.flush()
        with open(self.f.name, "rb") as r:
            left = upto
            while left > 0 and (chunk := r.read(min(HASH_CHUNK, left))):
                self._update(chunk)
                left -= len(chunk)

    def _update(self, chunk: bytes) -> None:
        self.sha.update(chunk)
        if self.blob is not None:
            self.blob.update(chunk)

    def write(self, chunk: bytes) -> int:
        n = self.f.write(chunk)
        self._update(chunk)
        return n

    def tell(self) -> int:
        return self.f.tell()

    def seek(self, *args) -> int:
        return self.f.seek(*args)

    def truncate(self, size: int | None = None) -> int:
        out = self.f.truncate(size)
        self._rehash(self.f.tell() if size is None else size)
        return out

    def matches(self, etag: str) -> bool:
        if _is_sha256(etag):
            return self.sha.hexdigest() == etag
        if _is_sha1(etag) and self.blob is not None:
            return self.blob.hexdigest() == etag
        return True  # an ETag that names no content hash (not the Hub's): only the size was checked


def _download(remote: _Remote, base: Path, reporter: Reporter, bar: _Bar) -> tuple[Path, int, _HashingFile]:
    """Append the body to the file's .part (resuming from its size); returns (part, bytes resumed, hashes)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.file_download import http_get

    rel = remote.hub.rel
    part = _part_path(base, rel, remote.etag)
    part.parent.mkdir(parents=True, exist_ok=True)
    for stale in part.parent.glob(f"{rel.replace('/', '__')}.*.part"):  # parts of another version of the file
        if stale != part:
            stale.unlink(missing_ok=True)
    resumed = part.stat().st_size if part.exists() else 0
    if remote.size is not None and resumed > remote.size:
        part.unlink()
        resumed = 0
    if resumed:
        reporter.info(f"{rel}: resuming at {_size(resumed)}")
    where = f"{remote.hub.repo}@{remote.commit[:12]}/{remote.hub.path}"
    try:
        with open(part, "ab") as f:
            hashed = _HashingFile(f, remote.size)
            http_get(remote.url, hashed, resume_size=resumed, headers=remote.headers, expected_size=remote.size,
                     displayed_filename=rel, tqdm_class=bar)
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as exc:
        got = part.stat().st_size if part.exists() else 0
        raise ModelError(f"download interrupted at {_size(got)} ({_short(exc)})", subject=where,
                         remedy=f"run `{PULL}` again: it resumes from there") from exc
    return part, resumed, hashed


def pull(reporter: Reporter | None = None, endpoint: str | None = None) -> dict:
    """Fetch every file of HUB_FILES into the cache (see the module doc). Returns a summary."""
    reporter = reporter or Reporter()
    endpoint = endpoint or _endpoint()
    base = folder()
    base.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    with _locked():
        record = registry.read_record(base)
        # a branch pin resolves once per repository, and a later pull resumes from the commit already recorded
        pins = {h.repo: h.revision for h in HUB_FILES}
        commits = {r["repo"]: r["commit"] for r in record.values()
                   if r.get("origin") == "pull" and r.get("commit") and r.get("revision") == pins.get(r.get("repo"))}
        remotes = []
        reporter.stage("check the Hub", len(HUB_FILES))
        for hub in HUB_FILES:
            remote = _head(hub, commits.get(hub.repo, hub.revision), endpoint)
            commits.setdefault(hub.repo, remote.commit)
            remotes.append(remote)
            reporter.advance()

        todo = []
        for remote in remotes:
            action = _current(base, record, remote, reporter)
            if action:
                results.append(_result(base, remote.hub.rel, record, action))
            else:
                todo.append(remote)
        need = sum((r.size or 0) - _part_size(base, r) for r in todo)
        _check_disk(base, need)

        bar = _Bar(reporter)
        if todo:
            reporter.stage("download (MB)", max(1, -(-need // MB)))
        for remote in todo:
            rel = remote.hub.rel
            reporter.info(f"{rel}: {_size(remote.size)} from {remote.hub.repo}@{remote.commit[:12]}")
            part, resumed, hashed = _download(remote, base, reporter, bar)
            _finish_download(base, record, remote, part, hashed)
            results.append(_result(base, rel, record, "resumed" if resumed else "downloaded"))
    summary = _summary(base, results, "pull", endpoint or _default_endpoint())
    summary["downloaded_bytes"] = bar.bytes
    return summary


def _size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    return f"{n / MB:,.1f} MB" if n >= MB else f"{n / 1000:,.1f} kB"


def _part_size(base: Path, remote: _Remote) -> int:
    part = _part_path(base, remote.hub.rel, remote.etag)
    return part.stat().st_size if part.exists() else 0


def _current(base: Path, record: dict, remote: _Remote, reporter: Reporter) -> str | None:
    """'up to date' or 'adopted' when the file in the cache already is the Hub's; None to download."""
    rel = remote.hub.rel
    dest = base / rel
    if not dest.is_file():
        return None
    rec = record.get(rel)
    if rec and rec.get("etag") == remote.etag and rec["size"] == dest.stat().st_size:
        if registry.stamp_matches(base, rel, rec["sha256"]):
            return "up to date"
    if remote.size is not None and dest.stat().st_size != remote.size:
        return None
    reporter.info(f"{rel}: checking the file already in the cache")
    ok, sha = _matches_etag(dest, remote.etag)
    if not ok:
        return None
    weights.check_file(weight_file(rel), dest, remedy=f"delete it and run `{PULL}`")
    _record(base, record, rel, sha, remote_fields(remote))
    return "up to date" if rec and rec["sha256"] == sha else "adopted"


def remote_fields(remote: _Remote) -> dict:
    return {"origin": "pull", "repo": remote.hub.repo, "revision": remote.hub.revision, "commit": remote.commit,
            "path": remote.hub.path, "etag": remote.etag}


def _finish_download(base: Path, record: dict, remote: _Remote, part: Path, hashed: _HashingFile) -> None:
    rel = remote.hub.rel
    dest = base / rel
    again = f"run `{PULL}` again"
    size = part.stat().st_size
    if remote.size is not None and size != remote.size:
        part.unlink(missing_ok=True)
        raise ModelError(f"downloaded {size} bytes, the Hub announced {remote.size}", subject=str(dest), remedy=again)
    sha = hashed.sha.hexdigest()
    if not hashed.matches(remote.etag):
        part.unlink(missing_ok=True)  # the bytes are wrong somewhere: start this file over
        raise ModelError(f"downloaded file's hash does not match the Hub's ({sha[:12]}... is not "
                         f"{remote.etag[:12]}...)", subject=str(dest), remedy=again)
    # the bytes are the Hub's: a structural failure now means a2p expects another file (keys, format)
    weights.check_file(weight_file(rel), part, remedy="the file is the Hub's (its hash was checked), so a2p "
                       "expects something else: please report it with this message")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, dest)
    _record(base, record, rel, sha, remote_fields(remote))


def _record(base: Path, record: dict, rel: str, sha: str, fields: dict) -> None:
    size = (base / rel).stat().st_size
    record[rel] = {"sha256": sha, "size": size, **fields}
    registry.write_record(base, record)
    registry.stamp_verified(base, rel, sha)


def _result(base: Path, rel: str, record: dict, action: str) -> dict:
    rec = record[rel]
    return {"path": rel, "file": str(base / rel), "action": action, "sha256": rec["sha256"], "size": rec["size"]}


def _default_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _summary(base: Path, results: list[dict], how: str, source: str) -> dict:
    with contextlib.suppress(OSError):
        (base / INCOMPLETE_DIR).rmdir()  # only when empty
    return {"model": MODEL_NAME, "action": how, "source": source, "folder": str(base), "files": results,
            "bytes": sum(r["size"] for r in results)}


# --- import --------------------------------------------------------------------------------------------


def import_folder(src: Path, *, copy: bool = False, reporter: Reporter | None = None) -> dict:
    """Adopt AniPortrait's pretrained_model folder `src` (see the module doc). Returns a summary."""
    reporter = reporter or Reporter()
    src = Path(src).expanduser()
    if not src.is_dir():
        raise InputError("folder not found", subject=str(src), remedy="pass AniPortrait's pretrained_model folder")
    base = folder()
    if src.resolve() == base.resolve():
        raise InputError("this is the cache folder itself", subject=str(src), remedy="pass AniPortrait's folder")
    missing_fix = f"add it to the folder (AniPortrait's pretrained_model layout), or run `{PULL}`"
    chosen: list[tuple[str, Path]] = []
    for wf in weights.FILES:
        present = [p for p in wf.paths if (src / p).is_file()]
        if present:
            chosen.append((present[0], src / present[0]))
        elif wf.required:
            raise ModelError("model file is missing", subject=str(src / wf.paths[0]), remedy=missing_fix)
    reporter.stage("check files", len(chosen))
    for rel, path in chosen:  # nothing is written before every file passed
        weights.check_file(weight_file(rel), path, remedy=f"replace it with AniPortrait's file, or run `{PULL}`",
                           crc=True)
        reporter.advance()

    results = []
    base.mkdir(parents=True, exist_ok=True)
    with _locked():
        record = registry.read_record(base)
        total = sum(p.stat().st_size for _, p in chosen)
        if copy:
            _check_disk(base, total)
        reporter.stage("import (MB)", max(1, -(-total // MB)))
        for rel, path in chosen:
            dest = base / rel
            mode, sha = _place(path.resolve(), dest, copy, reporter)
            _record(base, record, rel, sha, {"origin": "import", "source": str(path.resolve()), "mode": mode})
            results.append(_result(base, rel, record, mode))
    return _summary(base, results, "import", str(src))


def _place(src: Path, dest: Path, copy: bool, reporter: Reporter) -> tuple[str, str]:
    """Hard-link (or copy) `src` to `dest` atomically; returns (mode, sha256 of what is now at dest)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(dest)
    try:
        mode = "copied"
        if not copy:
            try:
                os.link(src, tmp)
                mode = "linked"
            except OSError:  # another filesystem, or links not allowed: copy
                pass
        if mode == "copied":
            _check_disk(dest.parent, src.stat().st_size)
            sha = _copy_hashing(src, tmp, reporter)
        else:
            sha, _ = _hash_file(tmp, reporter)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return mode, sha


def _copy_hashing(src: Path, dest: Path, reporter: Reporter) -> str:
    sha = hashlib.sha256()
    done = 0
    with open(src, "rb") as fi, open(dest, "wb") as fo:
        while chunk := fi.read(HASH_CHUNK):
            sha.update(chunk)
            fo.write(chunk)
            done += len(chunk)
            if done >= MB:
                reporter.advance(done // MB)
                done %= MB
    shutil.copystat(src, dest, follow_symlinks=True)
    return sha.hexdigest()
