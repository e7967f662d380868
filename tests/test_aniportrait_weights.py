"""AniPortrait's weights: `a2p models pull/import/verify aniportrait` and `a2pcli.aniportrait.weights`.

Nothing here touches the network. `pull` runs against a fake Hugging Face Hub: two tiny HTTP servers in
threads, a "hub" that answers HEAD/GET /{repo}/resolve/{revision}/{file} the way huggingface_hub 2.x
expects (X-Repo-Commit, ETag / X-Linked-Etag / X-Linked-Size, a 302 to the CDN for LFS files) and a
"CDN" that serves blobs with Range support, and can cut a transfer or lie about a hash. The fake
checkpoints carry the full-size key names and shapes (broadcast views of one value, so each file is a
few hundred kB) and everything else is a tiny file with AniPortrait's file name.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import threading
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch

from a2pcli import registry
from a2pcli.aniportrait import hub, weights
from a2pcli.cli.app import main
from a2pcli.errors import ModelError
from tests.aniportrait_fixtures import FIXTURES

EXIT_MODEL = 4
PULL = "a2p models pull aniportrait"


# --- fake files ---------------------------------------------------------------------------------------------


def _fake_checkpoint(name: str, rename: dict | None = None, drop: str | None = None) -> bytes:
    """A torch.save file with every full-size key and shape of `name` (values: one number per file)."""
    value = float(int(hashlib.sha256(name.encode()).hexdigest()[:6], 16) % 1000) / 1000
    state = {}
    for key, (shape, dtype) in weights.expected_keys(name).items():
        if key == drop:
            continue
        t = torch.full((), value, dtype=getattr(torch, dtype)).expand(shape)
        state[(rename or {}).get(key, key)] = t
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _torch_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _safetensors_bytes(state: dict) -> bytes:
    from safetensors.torch import save

    return save(state)


def _film() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("film_net/constants.pkl", b"fake torchscript")
    return buf.getvalue()


CONFIGS = {
    "stable-diffusion-v1-5/unet/config.json": {"_class_name": "UNet2DConditionModel", "in_channels": 4,
                                               "block_out_channels": [320, 640, 1280, 1280],
                                               "cross_attention_dim": 768},
    "sd-vae-ft-mse/config.json": {"_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512],
                                  "latent_channels": 4},
    "image_encoder/config.json": {"architectures": ["CLIPVisionModelWithProjection"], "hidden_size": 1024,
                                  "projection_dim": 768},
    "wav2vec2-base-960h/config.json": {"model_type": "wav2vec2", "hidden_size": 768, "conv_dim": [512] * 7},
    "wav2vec2-base-960h/preprocessor_config.json": {"sampling_rate": 16000},
}


@pytest.fixture(scope="module")
def fake_files() -> dict[str, bytes]:
    """{path in pretrained_model/: bytes} for every file `pull` fetches."""
    files = {name: _fake_checkpoint(name) for name in weights.key_table()}
    files["film_net_fp16.pt"] = _film()
    files.update({rel: json.dumps(cfg).encode() for rel, cfg in CONFIGS.items()})
    files["sd-vae-ft-mse/diffusion_pytorch_model.safetensors"] = _safetensors_bytes({
        "encoder.conv_in.weight": torch.ones(2, 3),
        "encoder.mid_block.attentions.0.query.weight": torch.ones(2, 2),  # diffusers' legacy attention names
        "encoder.mid_block.attentions.0.proj_attn.bias": torch.ones(2),
    })
    files["image_encoder/pytorch_model.bin"] = _torch_bytes({
        "visual_projection.weight": torch.arange(6.0).reshape(2, 3),
        "vision_model.embeddings.position_ids": torch.arange(4)[None],  # persistent in transformers 4.30
    })
    files["wav2vec2-base-960h/pytorch_model.bin"] = _torch_bytes({"lm_head.weight": torch.ones(3, 2)})
    assert set(files) == {h.rel for h in hub.HUB_FILES}
    return files


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


# --- the fake hub -------------------------------------------------------------------------------------------


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """HEAD/GET /{org}/{repo}/resolve/{revision}/{path} on `url`; LFS blobs on a second origin (the CDN)."""

    def __init__(self, files: dict[str, bytes]):
        self.commits = {h.repo: h.revision if len(h.revision) == 40 else hashlib.sha1(h.repo.encode()).hexdigest()
                        for h in hub.HUB_FILES}  # a commit pin resolves to itself, a branch to some commit
        self.content = {(h.repo, h.path): files[h.rel] for h in hub.HUB_FILES}
        self.lie = {}  # (repo, path) -> bytes served instead of the announced content
        self.cut = {}  # (repo, path) -> serve only this many bytes on the next GET, then close
        self.refuse = set()  # (repo, path): GETs answer 503
        self.down_after_cut = set()  # (repo, path): once cut, refuse
        self.no_range = set()  # (repo, path): Range requests get the whole file (200)
        self.log = []  # (method, server, path, Range header)
        self._servers = [self._serve(self._hub_handler()), self._serve(self._cdn_handler())]
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn = f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def _serve(self, handler):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return server

    def close(self):
        for s in self._servers:
            s.shutdown()
            s.server_close()

    @staticmethod
    def is_lfs(path: str) -> bool:
        return not path.endswith(".json")

    def blob(self, key) -> tuple[str, bytes]:
        announced = self.content[key]
        return hashlib.sha256(announced).hexdigest(), self.lie.get(key, announced)

    def gets(self, server: str = "cdn") -> list:
        return [e for e in self.log if e[0] == "GET" and e[1] == server]

    def _hub_handler(self):
        fake = self

        class Hub(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _resolve(self, head: bool):
                fake.log.append((self.command, "hub", self.path, self.headers.get("Range")))
                parts = unquote(urlsplit(self.path).path).split("/")
                if len(parts) < 6 or parts[3] != "resolve":
                    return self._error(404, "RepoNotFound")
                repo, revision, path = f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:])
                if repo not in fake.commits:
                    return self._error(404, "RepoNotFound")
                commit = fake.commits[repo]
                if revision not in ("main", commit):
                    return self._error(404, "RevisionNotFound")
                if (repo, path) not in fake.content:
                    return self._error(404, "EntryNotFound", commit)
                sha, data = fake.blob((repo, path))
                if fake.is_lfs(path):
                    self.send_response(302)
                    self.send_header("Location", f"{fake.cdn}/blobs/{sha}?repo={repo}&path={path}")
                    self.send_header("X-Repo-Commit", commit)
                    self.send_header("X-Linked-Etag", f'"{sha}"')
                    self.send_header("X-Linked-Size", str(len(fake.content[(repo, path)])))
                    self.send_header("ETag", '"0123"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{_git_sha1(fake.content[(repo, path)])}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)
                return None

            def _error(self, code, error_code, commit=None):
                self.send_response(code)
                self.send_header("X-Error-Code", error_code)
                self.send_header("X-Error-Message", error_code)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):
                self._resolve(head=True)

            def do_GET(self):
                self._resolve(head=False)

        return Hub

    def _cdn_handler(self):
        fake = self

        class Cdn(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                fake.log.append(("GET", "cdn", self.path, self.headers.get("Range")))
                query = dict(p.split("=", 1) for p in urlsplit(self.path).query.split("&"))
                key = (query["repo"], query["path"])
                if key in fake.refuse:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                _, data = fake.blob(key)
                start = 0
                rng = self.headers.get("Range")
                if rng and key not in fake.no_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if key in fake.cut:
                    if key in fake.down_after_cut:
                        fake.refuse.add(key)
                    self.wfile.write(body[: fake.cut.pop(key)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        return Cdn


@pytest.fixture
def fake_hub(fake_files, monkeypatch):
    from huggingface_hub import constants

    server = FakeHub(fake_files)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True, raising=False)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)  # so that a cut transfer keeps what it received
    yield server
    server.close()


def a2p(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def cache_folder() -> Path:
    return registry.get("aniportrait").folder()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _flip_a_byte(path: Path, at: int = -10) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


# --- the file list, the registry entry, the key table -------------------------------------------------------


def test_models_list_shows_what_a_pull_would_download(capsys):
    """Before `models pull`, the fetched model's size is the download (about 12 GB), marked as an estimate."""
    import math

    code, out, _ = a2p(capsys, "models", "list", "--json")
    row = next(m for m in json.loads(out)["models"] if m["name"] == "aniportrait")
    assert code == 0 and row["status"] == "missing"
    assert 11e9 < row["size_bytes"] < 13e9 and row["size_is_download_estimate"], row
    # the estimates are the tensor bytes of the full-size checkpoints, and name only files pull fetches
    sizes = registry.get("aniportrait").download_sizes
    assert set(sizes) <= {h.rel for h in hub.HUB_FILES}
    nbytes = {"float32": 4, "float16": 2, "int64": 8}
    for name, keys in weights.key_table().items():
        assert sizes[name] == sum(math.prod(shape) * nbytes[dtype] for shape, dtype in keys.values()), name
    code, out, _ = a2p(capsys, "models", "list")
    assert "~12155" in out.replace("\n", " ")


def test_registry_entry_lists_the_weight_files():
    raw = json.loads((Path(registry.__file__).parents[1] / "models" / "registry.json").read_text())["models"]
    entry = raw["aniportrait"]
    assert entry["kind"] == "fetched" and entry["hashes"] == "recorded"
    assert entry["files"] == weights.registry_groups()
    pulled = {h.rel for h in hub.HUB_FILES}
    for wf in weights.FILES:  # pull fetches the first (preferred) path of every file
        assert wf.paths[0] in pulled, wf
        hub.weight_file(wf.paths[0])
    revisions = {h.repo: h.revision for h in hub.HUB_FILES}
    for repo, rev in revisions.items():
        assert rev == "main" or (len(rev) == 40 and int(rev, 16) >= 0), (repo, rev)


def test_key_table_equals_the_fixture_key_lists():
    source = FIXTURES / "keys" / "fullsize_keys.json"
    if not source.exists():
        pytest.skip(f"{source} not present (set A2P_ANIPORTRAIT_FIXTURES)")
    files = json.loads(source.read_text())["files"]
    table = weights.key_table()
    assert set(table) == set(files)
    for name, rows in files.items():
        assert table[name] == {k: (tuple(shape), dtype) for k, shape, dtype in rows}, name
    assert weights.KEY_TABLE.stat().st_size < 20_000


def test_unpulled_model_is_missing_and_named(capsys):
    code, out, err = a2p(capsys, "models", "verify", "aniportrait", "--json")
    assert code == 0, err  # a fetched model not pulled yet is reported, not failed
    assert json.loads(out)["models"][0]["status"] == "missing"
    with pytest.raises(ModelError) as exc:
        weights.open_weights()
    line = exc.value.one_line()
    assert str(cache_folder() / "denoising_unet.pth") in line and PULL in line
    assert exc.value.exit_code == EXIT_MODEL


# --- pull ---------------------------------------------------------------------------------------------------


def test_pull_verify_load(capsys, fake_hub, fake_files):
    code, out, err = a2p(capsys, "models", "pull", "aniportrait", "--json", "--progress", "json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["source"] == fake_hub.url
    assert {f["path"]: f["action"] for f in summary["files"]} == {rel: "downloaded" for rel in fake_files}
    assert any('"stage": "download (MB)"' in line for line in err.splitlines())
    folder = cache_folder()
    record = registry.read_record(folder)
    for rel, data in fake_files.items():
        assert (folder / rel).read_bytes() == data
        assert record[rel]["sha256"] == _sha(data) and record[rel]["size"] == len(data)
    assert record["denoising_unet.pth"]["repo"] == hub.ANIPORTRAIT_REPO
    assert record["denoising_unet.pth"]["commit"] == fake_hub.commits[hub.ANIPORTRAIT_REPO]
    assert record["sd-vae-ft-mse/config.json"]["revision"] == hub.VAE_REVISION
    assert not (folder / hub.INCOMPLETE_DIR).exists()

    code, out, err = a2p(capsys, "models", "verify", "aniportrait", "--json")
    assert code == 0 and json.loads(out)["models"][0]["status"] == "present", err
    listing = json.loads(a2p(capsys, "models", "list", "--json")[1])
    row = next(m for m in listing["models"] if m["name"] == "aniportrait")
    assert row["status"] == "present" and row["size_bytes"] == sum(map(len, fake_files.values()))

    w = weights.open_weights()
    assert w.verified and w.folder == folder
    sd = w.state_dict("denoising_unet.pth")  # full-size keys and shapes
    assert set(sd) == set(weights.expected_keys("denoising_unet.pth"))
    assert w.config("unet_config")["cross_attention_dim"] == 768
    assert w.path("film_net_fp16.pt").name == "film_net_fp16.pt"
    vae = w.state_dict("vae")  # legacy attention names converted for diffusers
    assert set(vae) == {"encoder.conv_in.weight", "encoder.mid_block.attentions.0.to_q.weight",
                        "encoder.mid_block.attentions.0.to_out.0.bias"}

    fake_hub.log.clear()  # a second pull only asks the hub; nothing is downloaded again
    code, out, err = a2p(capsys, "models", "pull", "aniportrait", "--json")
    assert code == 0, err
    assert {f["action"] for f in json.loads(out)["files"]} == {"up to date"}
    assert not fake_hub.gets("cdn") and not fake_hub.gets("hub")


@pytest.mark.parametrize("server_ignores_range", [False, True])
def test_pull_resumes_a_cut_transfer_in_the_same_run(capsys, fake_hub, fake_files, server_ignores_range):
    key = (hub.ANIPORTRAIT_REPO, "pose_guider.pth")
    size = len(fake_files["pose_guider.pth"])
    fake_hub.cut[key] = size // 2
    if server_ignores_range:  # a 200 with the whole file: the partial file is started over, hashes too
        fake_hub.no_range.add(key)
    code, _, err = a2p(capsys, "models", "pull", "aniportrait")
    assert code == 0, err
    ranges = [e[3] for e in fake_hub.gets("cdn") if "path=pose_guider.pth" in e[2]]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and 0 < int(ranges[1][6:-1]) <= size // 2
    assert (cache_folder() / "pose_guider.pth").read_bytes() == fake_files["pose_guider.pth"]
    assert registry.read_record(cache_folder())["pose_guider.pth"]["sha256"] == _sha(fake_files["pose_guider.pth"])


def test_pull_resumes_an_interrupted_download_in_the_next_run(capsys, fake_hub, fake_files):
    key = (hub.ANIPORTRAIT_REPO, "motion_module.pth")
    size = len(fake_files["motion_module.pth"])
    fake_hub.cut[key] = size // 2
    fake_hub.down_after_cut.add(key)  # the transfer is cut, and every retry finds the CDN down
    code, _, err = a2p(capsys, "models", "pull", "aniportrait")
    line = error_line(err)
    assert code == EXIT_MODEL and "motion_module.pth" in line and "interrupted" in line and PULL in line
    folder = cache_folder()
    assert not (folder / "motion_module.pth").exists()
    assert "motion_module.pth" not in registry.read_record(folder)
    parts = list((folder / hub.INCOMPLETE_DIR).glob("motion_module.pth.*.part"))
    assert len(parts) == 1 and 0 < parts[0].stat().st_size <= size // 2
    kept = parts[0].stat().st_size
    with pytest.raises(ModelError) as exc:  # an interrupted pull never yields loadable weights
        weights.open_weights()
    assert "motion_module.pth" in exc.value.one_line()

    fake_hub.refuse.discard(key)  # the network is back
    fake_hub.log.clear()
    code, out, err = a2p(capsys, "models", "pull", "aniportrait", "--json")
    assert code == 0, err
    actions = {f["path"]: f["action"] for f in json.loads(out)["files"]}
    assert actions["motion_module.pth"] == "resumed" and actions["denoising_unet.pth"] == "up to date"
    assert [e[3] for e in fake_hub.gets("cdn") if "path=motion_module.pth" in e[2]] == [f"bytes={kept}-"]
    assert (folder / "motion_module.pth").read_bytes() == fake_files["motion_module.pth"]
    assert not list(folder.glob(f"{hub.INCOMPLETE_DIR}/*"))


def test_pull_rejects_a_file_whose_hash_is_not_the_hubs(capsys, fake_hub, fake_files):
    key = (hub.ANIPORTRAIT_REPO, "reference_unet.pth")
    bad = bytearray(fake_files["reference_unet.pth"])
    bad[len(bad) // 2] ^= 0xFF  # same size, one byte off: only the sha256 can tell
    fake_hub.lie[key] = bytes(bad)
    code, _, err = a2p(capsys, "models", "pull", "aniportrait")
    line = error_line(err)
    folder = cache_folder()
    assert code == EXIT_MODEL
    assert str(folder / "reference_unet.pth") in line and "hash" in line and PULL in line
    assert not (folder / "reference_unet.pth").exists()
    assert "reference_unet.pth" not in registry.read_record(folder)
    assert not list(folder.glob(f"{hub.INCOMPLETE_DIR}/reference_unet*"))  # the next pull starts it over

    del fake_hub.lie[key]
    code, _, err = a2p(capsys, "models", "pull", "aniportrait")
    assert code == 0, err
    weights.open_weights().state_dict("reference_unet.pth")


def test_pull_names_a_file_the_hub_lacks(capsys, fake_hub):
    del fake_hub.content[(hub.WAV2VEC2_REPO, "preprocessor_config.json")]
    code, _, err = a2p(capsys, "models", "pull", "aniportrait")
    line = error_line(err)
    assert code == EXIT_MODEL and f"{hub.WAV2VEC2_REPO}@{hub.WAV2VEC2_REVISION}/preprocessor_config.json" in line
    assert "not found" in line


def test_two_pull_processes_at_once(fake_hub, fake_files):
    """As a user runs it (HF_ENDPOINT in the environment of a fresh interpreter), twice at the same time:
    the model's lock serialises them, the second finds every file up to date."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("A2P_DEBUG", None)
    procs = [subprocess.Popen([sys.executable, "-m", "a2pcli", "models", "pull", "aniportrait", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    actions = sorted(tuple(sorted({f["action"] for f in json.loads(out)["files"]})) for out, _ in outs)
    assert actions == [("downloaded",), ("up to date",)]
    assert len(fake_hub.gets("cdn")) == len([h for h in hub.HUB_FILES if fake_hub.is_lfs(h.path)])  # once each
    for rel, data in fake_files.items():
        assert (cache_folder() / rel).read_bytes() == data


def test_pull_of_a_model_without_a_source_is_not_available(capsys):
    code, _, err = a2p(capsys, "models", "pull", "audio2motion")
    assert code == 5 and "not available" in err


# --- import -------------------------------------------------------------------------------------------------


def test_import_hard_links_records_and_loads(capsys, tmp_path, fake_files):
    src = write_folder(tmp_path / "pretrained_model", fake_files)
    (src / "stable-diffusion-v1-5" / "v1-inference.yaml").write_text("unused\n")  # other files are left alone
    code, out, err = a2p(capsys, "models", "import", "aniportrait", src, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert {f["action"] for f in summary["files"]} == {"linked"}
    folder = cache_folder()
    record = registry.read_record(folder)
    for rel, data in fake_files.items():
        assert os.path.samefile(src / rel, folder / rel)
        assert record[rel]["sha256"] == _sha(data) and record[rel]["origin"] == "import"
    assert not (folder / "stable-diffusion-v1-5" / "v1-inference.yaml").exists()
    assert a2p(capsys, "models", "verify", "aniportrait")[0] == 0
    w = weights.open_weights()
    assert set(w.state_dict("audio2pose.pt")) == set(weights.expected_keys("audio2pose.pt"))

    code, out, err = a2p(capsys, "models", "import", "aniportrait", src, "--copy", "--json")
    assert code == 0, err
    assert {f["action"] for f in json.loads(out)["files"]} == {"copied"}
    assert not os.path.samefile(src / "pose_guider.pth", folder / "pose_guider.pth")
    assert (folder / "pose_guider.pth").read_bytes() == fake_files["pose_guider.pth"]


def test_import_takes_the_alternative_file_names(capsys, tmp_path, fake_files):
    files = dict(fake_files)
    files["sd-vae-ft-mse/diffusion_pytorch_model.bin"] = _torch_bytes({"decoder.conv_out.bias": torch.ones(3)})
    del files["sd-vae-ft-mse/diffusion_pytorch_model.safetensors"]
    del files["film_net_fp16.pt"]  # optional
    src = write_folder(tmp_path / "pm", files)
    code, _, err = a2p(capsys, "models", "import", "aniportrait", src, "--copy")
    assert code == 0, err
    w = weights.open_weights()
    assert w.path("vae").name == "diffusion_pytorch_model.bin" and not w.has("film_net_fp16.pt")
    assert set(w.state_dict("vae")) == {"decoder.conv_out.bias"}


def test_import_missing_file_is_one_line_naming_it(capsys, tmp_path, fake_files):
    files = {k: v for k, v in fake_files.items() if k != "pose_guider.pth"}
    src = write_folder(tmp_path / "pm", files)
    code, _, err = a2p(capsys, "models", "import", "aniportrait", src)
    line = error_line(err)
    assert code == EXIT_MODEL and str(src / "pose_guider.pth") in line and PULL in line
    assert not (cache_folder() / registry.RECORD_FILE).exists()  # nothing adopted


def _flip_tensor_byte(data: bytes) -> bytes:
    """Flip a byte inside a tensor's data in a torch zip: torch.load still loads it, the CRC-32 tells."""
    import struct

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size)
    n, m = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    at = info.header_offset + 30 + n + m
    out = bytearray(data)
    out[at] ^= 0xFF
    return bytes(out)


@pytest.mark.parametrize("damage, words", [
    ("rename", ["unexpected key 'conv_layers.0.weight_renamed'", "missing key 'conv_layers.0.weight'"]),
    ("drop", ["missing key 'final_proj.bias'"]),
    ("truncate", ["not a readable checkpoint"]),
    ("foreign", ["not a readable checkpoint"]),
    ("bitflip", ["damaged (CRC error in"]),
])
def test_import_rejects_a_damaged_checkpoint_naming_it(capsys, tmp_path, fake_files, damage, words):
    files = dict(fake_files)
    name = "pose_guider.pth"
    if damage == "rename":
        files[name] = _fake_checkpoint(name, rename={"conv_layers.0.weight": "conv_layers.0.weight_renamed"})
    elif damage == "drop":
        files[name] = _fake_checkpoint(name, drop="final_proj.bias")
    elif damage == "truncate":
        files[name] = files[name][: len(files[name]) // 2]
    elif damage == "bitflip":
        files[name] = _flip_tensor_byte(files[name])
        torch.load(io.BytesIO(files[name]), weights_only=True)  # torch alone would not notice
    else:
        files[name] = b"<html>403 Forbidden</html>"
    src = write_folder(tmp_path / "pm", files)
    code, _, err = a2p(capsys, "models", "import", "aniportrait", src)
    line = error_line(err)
    assert code == EXIT_MODEL and str(src / name) in line, line
    for w in words:
        assert w in line, line
    assert not (cache_folder() / registry.RECORD_FILE).exists()


def test_import_rejects_a_wrong_config(capsys, tmp_path, fake_files):
    files = dict(fake_files)
    files["sd-vae-ft-mse/config.json"] = json.dumps({"hidden_size": 3}).encode()
    src = write_folder(tmp_path / "pm", files)
    code, _, err = a2p(capsys, "models", "import", "aniportrait", src)
    line = error_line(err)
    assert code == EXIT_MODEL and "sd-vae-ft-mse/config.json" in line and "block_out_channels" in line


def test_import_not_a_folder(capsys, tmp_path):
    code, _, err = a2p(capsys, "models", "import", "aniportrait", tmp_path / "nope")
    assert code == 2 and "nope" in err


# --- corruption after the fact ------------------------------------------------------------------------------


@pytest.fixture
def imported(capsys, tmp_path, fake_files) -> Path:
    src = write_folder(tmp_path / "pm", fake_files)
    code, _, err = a2p(capsys, "models", "import", "aniportrait", src, "--copy")
    assert code == 0, err
    return cache_folder()


def test_verify_and_load_catch_a_corrupted_file(capsys, imported):
    target = imported / "motion_module.pth"
    _flip_a_byte(target)  # same size: the sha256 tells
    code, out, err = a2p(capsys, "models", "verify", "aniportrait")
    assert code == 1 and "hash mismatch" in out and str(target) in err
    with pytest.raises(ModelError) as exc:
        weights.open_weights()
    line = exc.value.one_line()
    assert exc.value.exit_code == EXIT_MODEL and str(target) in line and "corrupt" in line and PULL in line


def test_a_file_changed_after_open_is_caught_before_it_is_read(imported):
    w = weights.open_weights()
    _flip_a_byte(imported / "audio2mesh.pt")
    with pytest.raises(ModelError) as exc:
        w.state_dict("audio2mesh.pt")
    assert str(imported / "audio2mesh.pt") in exc.value.one_line()


def test_a_deleted_or_unrecorded_file_is_missing(capsys, imported):
    (imported / "pose_guider.pth").unlink()
    with pytest.raises(ModelError) as exc:
        weights.open_weights()
    assert str(imported / "pose_guider.pth") in exc.value.one_line() and PULL in exc.value.one_line()
    (imported / "pose_guider.pth").write_bytes(b"a file an interrupted run left")
    status = {s.file.path: s for s in registry.check_entry(registry.get("aniportrait"))}
    assert status["pose_guider.pth"].status == registry.MISSING or status["pose_guider.pth"].status == registry.MISMATCH
    record = registry.read_record(imported)
    del record["pose_guider.pth"]
    registry.write_record(imported, record)
    status = {s.file.path: s for s in registry.check_entry(registry.get("aniportrait"))}
    assert status["pose_guider.pth"].status == registry.MISSING and "not recorded" in status["pose_guider.pth"].detail


# --- loading: strict keys, equivalent spellings, the conversion cache ---------------------------------------


def test_local_folder_loads_strictly(tmp_path, fake_files):
    files = dict(fake_files)
    files["denoising_unet.pth"] = _fake_checkpoint("denoising_unet.pth", rename={"conv_out.bias": "conv_out.b"})
    files["reference_unet.pth"] = _fake_checkpoint("reference_unet.pth", drop="conv_in.weight")
    w = weights.open_weights(write_folder(tmp_path / "pm", files))
    assert not w.verified
    with pytest.raises(ModelError) as exc:
        w.state_dict("denoising_unet.pth")
    line = exc.value.one_line()
    assert "denoising_unet.pth" in line and "unexpected key 'conv_out.b'" in line
    assert "missing key 'conv_out.bias'" in line
    with pytest.raises(ModelError) as exc:
        w.state_dict("reference_unet.pth")
    assert "missing key 'conv_in.weight'" in exc.value.one_line()
    unchecked = w.state_dict("reference_unet.pth", expected=None)  # for builders that check themselves
    assert set(unchecked) == set(weights.expected_keys("reference_unet.pth")) - {"conv_in.weight"}


def test_shapes_and_caller_expectations(tmp_path, fake_files):
    w = weights.open_weights(write_folder(tmp_path / "pm", fake_files))
    model = torch.nn.Module()
    model.visual_projection = torch.nn.Linear(3, 2)  # the fake holds a (2, 3) weight and no bias
    with pytest.raises(ModelError) as exc:
        w.state_dict("image_encoder", expected=model)
    line = exc.value.one_line()
    assert "unexpected key 'vision_model.embeddings.position_ids'" in line
    assert "missing key 'visual_projection.bias'" in line
    with pytest.raises(ModelError) as exc:
        w.state_dict("image_encoder", expected={"visual_projection.weight": (3, 2),
                                                "vision_model.embeddings.position_ids": (1, 4)})
    assert "tensor 'visual_projection.weight' has shape [2, 3], expected [3, 2]" in exc.value.one_line()
    sd = w.state_dict("image_encoder", expected={"visual_projection.weight": (2, 3),
                                                 "vision_model.embeddings.position_ids": (1, 4)})
    assert sd["visual_projection.weight"].shape == (2, 3)


def test_missing_file_in_a_local_folder(tmp_path, fake_files):
    files = {k: v for k, v in fake_files.items() if k != "image_encoder/config.json"}
    with pytest.raises(ModelError) as exc:
        weights.open_weights(write_folder(tmp_path / "pm", files))
    assert str(tmp_path / "pm" / "image_encoder/config.json") in exc.value.one_line()


def test_weight_norm_spellings_are_equivalent(tmp_path, fake_files):
    name = "audio2mesh.pt"
    keys = [k for k in weights.expected_keys(name) if k.endswith((".weight_g", ".weight_v"))]
    assert len(keys) == 2
    new = {k: k.replace(".weight_g", ".parametrizations.weight.original0").replace(
        ".weight_v", ".parametrizations.weight.original1") for k in keys}
    files = dict(fake_files)
    files[name] = _fake_checkpoint(name, rename=new)  # saved by torch >= 2.1
    w = weights.open_weights(write_folder(tmp_path / "pm", files))
    assert set(w.state_dict(name)) == set(weights.expected_keys(name))
    model_keys = {new.get(k, k): v for k, v in weights.expected_keys(name).items()}
    assert set(w.state_dict(name, expected=model_keys)) == set(model_keys)


def test_conversion_cache(imported, monkeypatch):
    w = weights.open_weights()
    first = w.state_dict("image_encoder", cache=True, dtype=torch.float16)
    assert first["visual_projection.weight"].dtype == torch.float16
    assert first["vision_model.embeddings.position_ids"].dtype == torch.int64
    converted = list((imported / weights.CONVERTED_DIR).glob("image_encoder__pytorch_model.bin.*.float16.safetensors"))
    assert len(converted) == 1

    def no_source_read(*a, **k):
        raise AssertionError("the source was read again")

    with monkeypatch.context() as m:
        m.setattr(weights, "read_checkpoint", no_source_read)
        again = w.state_dict("image_encoder", cache=True, dtype=torch.float16)
    assert torch.equal(again["visual_projection.weight"], first["visual_projection.weight"])

    good = converted[0].read_bytes()
    _flip_a_byte(converted[0])  # a damaged copy is dropped and rebuilt from the verified source
    rebuilt = weights.open_weights().state_dict("image_encoder", cache=True, dtype=torch.float16)
    assert torch.equal(rebuilt["visual_projection.weight"], first["visual_projection.weight"])
    assert converted[0].read_bytes() == good
