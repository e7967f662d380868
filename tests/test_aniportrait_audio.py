"""AniPortrait audio models against the golden fixtures (design note §6, rung 10; fixture README §4).

Weights come from the fixture recipe in AniPortrait's checkpoint format and load through
`from_checkpoint`, so the strict loader and the weight-norm rename are exercised by every test.
Tolerance: |diff| <= 1e-9 * max|expected| (fixture README §6); measured: 0 for the CNN and resampled
features, <= 7e-16 for every other array.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests import aniportrait_fixtures as fx

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from a2pcli.aniportrait import audio as A  # noqa: E402
from a2pcli.errors import ModelError  # noqa: E402

REL = 1e-9
F64 = torch.float64
AUDIO_MODELS = ("audio2mesh", "audio2pose")


def _state(ckpt: str) -> dict:
    """A copy of the recipe's {key: tensor} for `ckpt` (the cached dict itself is shared)."""
    return dict(fx.weights(*AUDIO_MODELS)[ckpt])


def _w2v():
    return fx.configs()["wav2vec2"]


@pytest.fixture(scope="module")
def audio():
    return fx.arrays("audio.npz")


@pytest.fixture(scope="module")
def a2m():
    return A.Audio2Mesh.from_checkpoint(_state("audio2mesh.pt"), _w2v())


@pytest.fixture(scope="module")
def a2p():
    return A.Audio2Pose.from_checkpoint(_state("audio2pose.pt"), _w2v())


def _input(audio, name: str) -> torch.Tensor:
    return torch.from_numpy(audio[f"{name}_input_values"]).to(F64)[None]


# ---- front end --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["wave1s", "wave10s"])
def test_waveform_normalisation_is_bit_exact(audio, name):
    """16-bit PCM / 32768 in float32 (what librosa gives for a 16 kHz WAV), then the feature extractor's
    whole-utterance zero-mean / unit-variance normalisation."""
    wave = audio[f"{name}_pcm16"].astype(np.float32) / 32768
    out = A.normalize_wave(wave)
    assert out.dtype == np.float32
    assert np.array_equal(out, audio[f"{name}_input_values"])


def test_frame_count():
    info = fx.summary()["fixtures"]["audio"]["info"]
    assert A.frame_count(16000) == info["wave1s"]["seq_len"] == 30
    assert A.frame_count(168000) == info["wave10s"]["seq_len"] == 315
    assert A.frame_count(16001) == 31


def test_wav2vec2_stages(audio, a2m):
    """CNN features (50 Hz), linear align_corners resampling to 30 frames, projection + encoder."""
    with torch.no_grad():
        st = A.encode_audio(a2m.audio_encoder, _input(audio, "wave1s"), 30)
    fx.close(st.cnn, audio["a2m_cnn_features"], REL, "cnn features")
    fx.close(st.resampled, audio["a2m_interp_features"], REL, "resampled features")
    fx.close(st.hidden, audio["a2m_last_hidden_state"], REL, "last hidden state")


def test_audio2mesh(audio, a2m):
    with torch.no_grad():
        out = a2m(_input(audio, "wave1s"), 30)
    fx.close(out, audio["a2m_out"], REL, "a2m_out")


# ---- Audio2Pose -----------------------------------------------------------------------------------------

def test_audio2pose_encoder(audio, a2p):
    with torch.no_grad():
        hidden = A.encode_audio(a2p.audio_encoder, _input(audio, "wave1s"), 30).hidden
    fx.close(hidden, audio["a2p_last_hidden_state"], REL, "a2p last hidden state")


@pytest.mark.parametrize("cached", [False, True], ids=["full-rerun", "kv-cache"])
@pytest.mark.parametrize("id_seed", [7, 93])
def test_audio2pose_infer(audio, a2p, id_seed, cached):
    """Autoregressive decoding with a fixed style id, both as the original re-runs the decoder at every
    step and with the key/value cache."""
    with torch.no_grad():
        out = a2p.infer(_input(audio, "wave1s"), 30, id_seed, cached=cached)
    fx.close(out, audio[f"a2p_out_id{id_seed}"], REL, f"a2p_out_id{id_seed}")


def test_audio2pose_styles_differ(audio):
    """The two style ids give different poses (the fixture distinguishes id_seed)."""
    assert np.abs(audio["a2p_out_id7"] - audio["a2p_out_id93"]).max() > 1e-3


def test_pose_chunking_10s(audio, a2p):
    """audio2vid's pose path on 10.5 s: chunks [80000, 88000] samples / [150, 165] frames, raw Audio2Pose
    per chunk, rotation x 0.5 and concatenation, then the 7-frame moving average."""
    info = fx.summary()["fixtures"]["audio"]["info"]["wave10s"]
    x = _input(audio, "wave10s")
    chunks = A.pose_chunks(x.shape[1], info["seq_len"])
    assert [c.stop - c.start for c in chunks] == info["chunk_samples"]
    assert [c.frames for c in chunks] == info["chunk_seq_lens"]
    raw = A.pose_chunks_raw(a2p, x, info["seq_len"], info["id_seed"])
    for k, r in enumerate(raw):
        fx.close(r, audio[f"chunk{k}_raw"], REL, f"chunk{k}_raw")
    joined = A.join_pose_chunks(raw)
    fx.close(joined, audio["chunked_concat"], REL, "chunked_concat")
    from a2pcli.aniportrait.geometry import smooth_pose_seq

    fx.close(smooth_pose_seq(joined, A.POSE_SMOOTH_WINDOW), audio["chunked_smoothed7"], REL, "smoothed")


def _script_chunks(n_samples: int, seq_len: int):
    """audio2vid.py's own arithmetic (raises IndexError below two chunks)."""
    sizes = [min(A.POSE_CHUNK_SAMPLES, n_samples - s) for s in range(0, n_samples, A.POSE_CHUNK_SAMPLES)]
    frames = [A.POSE_CHUNK_FRAMES] * (len(sizes) - 1) + [seq_len % A.POSE_CHUNK_FRAMES]
    sizes[-2] += sizes[-1]
    frames[-2] += frames[-1]
    return list(zip(sizes[:-1], frames[:-1]))


@pytest.mark.parametrize("seconds", [5.5, 7.0, 10.5, 14.2, 19.0, 23.3])
def test_pose_chunks_match_the_script(seconds):
    n = int(seconds * A.SAMPLE_RATE)
    t = A.frame_count(n)
    plan = A.pose_chunks(n, t)
    assert [(c.stop - c.start, c.frames) for c in plan] == _script_chunks(n, t)
    assert sum(c.frames for c in plan) == t and plan[-1].stop == n


def test_pose_chunks_fix_the_script_edge_cases():
    """<= 5 s: one chunk (the script raises IndexError). seq_len a multiple of 150 (10 s, 9.99 s): every
    frame kept (the script decodes 150 frames for the whole 10 s)."""
    for n in (1, 16000, 80000):
        assert A.pose_chunks(n, A.frame_count(n)) == [A.PoseChunk(0, n, A.frame_count(n))]
        with pytest.raises(IndexError):
            _script_chunks(n, A.frame_count(n))
    for n in (160000, 159840):
        assert A.frame_count(n) == 300
        assert A.pose_chunks(n, 300) == [A.PoseChunk(0, n, 300)]
        assert _script_chunks(n, 300) == [(n, 150)]
    plan = A.pose_chunks(240000, 450)
    assert [c.frames for c in plan] == [150, 300] and sum(c.frames for c in plan) == 450


def test_pose_args_checked(a2p):
    x = torch.zeros(1, 16000, dtype=F64)
    with pytest.raises(ValueError, match="id_seed"):
        a2p.infer(x, 30, 100)
    with pytest.raises(ValueError, match="frames"):
        a2p.infer(x, A.MAX_POSE_FRAMES + 1, 0)


def test_biased_mask_restates_the_original():
    """ALiBi slopes 1/2 .. 1/256 for 8 heads, slope * (j - i) on and below the diagonal, -inf above."""
    assert A.alibi_slopes(8) == [2.0 ** -(k + 1) for k in range(8)]
    m = A.biased_mask(8, 5)
    assert m.shape == (8, 5, 5)
    assert m[2, 4, 1].item() == -3 * 2.0**-3 and m[0, 3, 3].item() == 0
    assert torch.isinf(m[:, 1, 2]).all() and not torch.isinf(m[:, 2, 1]).any()
    mm = A.memory_mask(3, 4)
    assert mm.tolist() == [[False, True, True, True], [True, False, True, True], [True, True, False, True]]


# ---- strict loading -------------------------------------------------------------------------------------

POS_G = "audio_encoder.encoder.pos_conv_embed.conv.weight_g"
POS_V = "audio_encoder.encoder.pos_conv_embed.conv.weight_v"


def test_checkpoint_uses_old_weight_norm_names():
    """AniPortrait's files carry torch < 2.1 names; they must be consumed, not skipped."""
    state = _state("audio2mesh.pt")
    assert POS_G in state and POS_V in state


def test_weight_norm_is_loaded(a2m):
    """g and v reach the pos-conv: weight = g * v / ||v|| (norm over dims 0, 1 per kernel tap)."""
    state = _state("audio2mesh.pt")
    g, v = state[POS_G], state[POS_V]
    expected = g * v / v.norm(dim=(0, 1), keepdim=True)
    conv = a2m.audio_encoder.encoder.pos_conv_embed.conv
    assert torch.allclose(conv.weight, expected, rtol=1e-12, atol=0)


def test_new_weight_norm_names_load_too():
    state = _state("audio2mesh.pt")
    state["audio_encoder.encoder.pos_conv_embed.conv.parametrizations.weight.original0"] = state.pop(POS_G)
    state["audio_encoder.encoder.pos_conv_embed.conv.parametrizations.weight.original1"] = state.pop(POS_V)
    A.Audio2Mesh.from_checkpoint(state, _w2v())


@pytest.mark.parametrize("key", [POS_G, "in_fn.bias", "audio_encoder.encoder.layers.1.attention.k_proj.weight"])
def test_missing_key_is_named(key):
    state = _state("audio2mesh.pt")
    del state[key]
    with pytest.raises(ModelError) as err:
        A.Audio2Mesh.from_checkpoint(state, _w2v())
    assert f"missing tensor '{key}'" in err.value.message and err.value.subject == "audio2mesh.pt"


@pytest.mark.parametrize("key", [POS_V, "transformer_decoder.layers.3.norm2.weight", "PPE.pe"])
def test_renamed_key_is_named(key):
    state = _state("audio2pose.pt")
    state[key + "_renamed"] = state.pop(key)
    with pytest.raises(ModelError) as err:
        A.Audio2Pose.from_checkpoint(state, _w2v())
    assert f"'{key}_renamed'" in err.value.message and err.value.subject == "audio2pose.pt"
    assert err.value.remedy


def test_wrong_shape_is_named():
    state = _state("audio2pose.pt")
    state["id_embed.weight"] = state["id_embed.weight"][:50]
    with pytest.raises(ModelError, match="id_embed.weight"):
        A.Audio2Pose.from_checkpoint(state, _w2v())


def test_read_checkpoint(tmp_path):
    state = {k: v for k, v in _state("audio2mesh.pt").items() if k.startswith("in_fn")}
    torch.save(state, tmp_path / "a.pt")
    back = A.read_checkpoint(tmp_path / "a.pt")
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable checkpoint"):
        A.read_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="not found"):
        A.read_checkpoint(tmp_path / "absent.pt")
