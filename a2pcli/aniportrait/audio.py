"""AniPortrait's audio models on transformers/torch building blocks: the resampled wav2vec2 encoder,
Audio2Mesh (per-frame 3D mesh offsets) and Audio2Pose (autoregressive head pose), plus the
audio2vid script's 5-second chunking of the pose path.

Reproduces AniPortrait commit 7f6593f (`src/audio_models/{wav2vec2,model,pose_model,torch_utils}.py`,
`src/utils/audio_util.py`, the pose part of `scripts/audio2vid.py`); none of its code is used.

    wave = load_wave(path)                         (S,) float32 mono at 16 kHz
    x = normalize_wave(wave)[None]                 (1, S) float32, zero mean / unit variance
    T = frame_count(len(wave))                     frames at 30 fps
    a2m = Audio2Mesh.from_checkpoint(read_checkpoint("audio2mesh.pt"), wav2vec2_config)
    offsets = a2m(x, T)                            (1, T, 1404) = 468 x 3 offsets, canonical metric space
    a2p = Audio2Pose.from_checkpoint(read_checkpoint("audio2pose.pt"), wav2vec2_config)
    pose = pose_from_audio(a2p, x, T, id_seed)     (T, 6) Euler 'xyz' degrees + translation, smoothed

`from_checkpoint` returns models in eval mode, as audio2vid runs them (the plain constructors leave
nn.Module's train mode). Everything is batch-first; the original Audio2Pose decodes batch 1 only (its
per-head mask has no batch axis), this one any batch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from a2pcli.audio import SAMPLE_RATE  # wav2vec2-base-960h's rate too (audio_util.py: librosa.load(sr=16000))
from a2pcli.errors import ModelError

FPS = 30  # AniPortrait's audio models run at 30 frames per second
NORM_EPS = 1e-7  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm

MESH_VERTICES = 468  # Audio2Mesh predicts MediaPipe's 468-vertex canonical mesh (no iris points)
POSE_DIM = 6  # Euler 'xyz' degrees (3) + translation (3)
DECODER_LAYERS = 8  # hard-coded in Audio2PoseModel
DECODER_HEADS = 8
MAX_POSE_FRAMES = 600  # length of PPE and of the biased mask: the longest sequence one infer() handles
STYLE_IDS = 100  # rows of id_embed: the "identity" the pose style is drawn from

POSE_CHUNK_SECONDS = 5  # audio2vid.py runs Audio2Pose on 5-second chunks ...
POSE_CHUNK_SAMPLES = SAMPLE_RATE * POSE_CHUNK_SECONDS  # 80000
POSE_CHUNK_FRAMES = FPS * POSE_CHUNK_SECONDS  # 150
POSE_ROTATION_SCALE = 0.5  # ... halves the predicted rotation ...
POSE_SMOOTH_WINDOW = 7  # ... and smooths the result with a centred moving average of 7 frames

# torch >= 2.1 stores a weight-normed conv as parametrizations; AniPortrait's checkpoints (torch 2.0.1,
# transformers 4.30) carry the old names. Both name the same two tensors: g (1, 1, K) and v (C, C/groups, K).
_WEIGHT_NORM_NAMES = {"weight_g": "parametrizations.weight.original0",
                      "weight_v": "parametrizations.weight.original1"}


# ---- waveform --------------------------------------------------------------------------------------

def load_wave(path: str | Path) -> np.ndarray:
    """(S,) float32 mono at 16 kHz in [-1, 1], decoded by a2p's ffmpeg path (AniPortrait uses
    librosa.load: identical samples for 16 kHz PCM files, a different resampler otherwise)."""
    from a2pcli.audio import load_audio

    return load_audio(Path(path), sample_rate=SAMPLE_RATE)


def normalize_wave(wave: np.ndarray) -> np.ndarray:
    """Wav2Vec2FeatureExtractor(do_normalize=True) on one utterance: (S,) -> (S,) float32,
    (x - mean) / sqrt(var + 1e-7), computed in float32 over the whole utterance."""
    x = np.asarray(wave, np.float32)
    return (x - x.mean()) / np.sqrt(x.var() + NORM_EPS)


def frame_count(n_samples: int, fps: int = FPS) -> int:
    """Video frames for `n_samples` of 16 kHz audio: ceil(n / 16000 * fps), as audio_util.py computes it."""
    return math.ceil(n_samples / SAMPLE_RATE * fps)


# ---- wav2vec2, resampled to the video frame rate ---------------------------------------------------

class Wav2Vec2Stages(NamedTuple):
    cnn: torch.Tensor  # (B, F, C) convolutional features, ~50 Hz
    resampled: torch.Tensor  # (B, T, C) linearly resampled to the frame count
    hidden: torch.Tensor  # (B, T, H) last hidden state of the transformer encoder


def wav2vec2_config(config: dict):
    """transformers Wav2Vec2Config from a config dict (a wav2vec2-base-960h config.json), eager attention."""
    from transformers import Wav2Vec2Config

    cfg = Wav2Vec2Config(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    cfg._attn_implementation = "eager"  # what transformers 4.30 ran; sdpa differs by rounding only
    return cfg


def build_wav2vec2(config) -> nn.Module:
    """A randomly initialised transformers Wav2Vec2Model (`config`: dict or Wav2Vec2Config)."""
    from transformers import Wav2Vec2Model

    if isinstance(config, dict):
        config = wav2vec2_config(config)
    return Wav2Vec2Model(config)


def resample_frames(features: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(B, F, C) -> (B, seq_len, C): linear interpolation with align_corners=True (torch_utils.py)."""
    out = F.interpolate(features.transpose(1, 2), size=seq_len, mode="linear", align_corners=True)
    return out.transpose(1, 2)


def encode_audio(encoder: nn.Module, input_values: torch.Tensor, seq_len: int) -> Wav2Vec2Stages:
    """AniPortrait's Wav2Vec2Model.forward: CNN -> resample to `seq_len` -> feature projection -> encoder.
    input_values: (B, S) normalised waveform. No attention mask and no time masking (eval)."""
    cnn = encoder.feature_extractor(input_values).transpose(1, 2)
    resampled = resample_frames(cnn, seq_len)
    hidden, _ = encoder.feature_projection(resampled)
    hidden = encoder.encoder(hidden).last_hidden_state
    if getattr(encoder, "adapter", None) is not None:
        hidden = encoder.adapter(hidden)
    return Wav2Vec2Stages(cnn, resampled, hidden)


# ---- Audio2Mesh --------------------------------------------------------------------------------------

class Audio2Mesh(nn.Module):
    """wav2vec2 -> Linear(hidden, latent) -> Linear(latent, 1404), no nonlinearity (Audio2MeshModel)."""

    def __init__(self, wav2vec2, latent_dim: int = 512, out_dim: int = MESH_VERTICES * 3):
        super().__init__()
        self.audio_encoder = build_wav2vec2(wav2vec2)
        hidden = self.audio_encoder.config.hidden_size
        self.in_fn = nn.Linear(hidden, latent_dim)
        self.out_fn = nn.Linear(latent_dim, out_dim)

    @classmethod
    def from_checkpoint(cls, state: dict, wav2vec2, source: str = "audio2mesh.pt",
                        dtype: torch.dtype | None = None) -> Audio2Mesh:
        """Dimensions read from the checkpoint's shapes, built in `dtype` (default: the checkpoint's),
        every tensor loaded strictly (ModelError naming the key otherwise). Returned in eval mode."""
        latent, out = _shape(state, "out_fn.weight", source, 2)[::-1]
        model = cls(wav2vec2, latent_dim=latent, out_dim=out)
        model.to(dtype or _float_dtype(state))
        load_weights(model, state, source)
        return model.eval()

    def forward(self, input_values: torch.Tensor, seq_len: int) -> torch.Tensor:
        """(B, S) normalised waveform -> (B, seq_len, out_dim) vertex offsets (Audio2MeshModel.infer)."""
        hidden = encode_audio(self.audio_encoder, input_values, seq_len).hidden
        return self.out_fn(self.in_fn(hidden))


# ---- Audio2Pose ----------------------------------------------------------------------------------------

def alibi_slopes(n_head: int) -> list[float]:
    """ALiBi head slopes (pose_model.init_biased_mask.get_slopes): 2^(-8i/n) for n a power of two."""
    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_head).is_integer():
        return power_of_2(n_head)
    closest = 2 ** math.floor(math.log2(n_head))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: n_head - closest]


def biased_mask(n_head: int, length: int) -> torch.Tensor:
    """(n_head, length, length) float additive mask: slope_h * (j - i) for j <= i, -inf above the
    diagonal (init_biased_mask with period 1)."""
    i = torch.arange(length, dtype=torch.float64)
    dist = i[None, :] - i[:, None]  # j - i
    slopes = torch.tensor(alibi_slopes(n_head), dtype=torch.float64)
    mask = slopes[:, None, None] * dist.clamp(max=0)[None]
    return mask.masked_fill(dist[None] > 0, float("-inf"))


def memory_mask(tgt_len: int, src_len: int) -> torch.Tensor:
    """(tgt_len, src_len) bool, True = blocked: step i sees only audio frame i (enc_dec_mask)."""
    return ~torch.eye(tgt_len, src_len, dtype=torch.bool)


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """(1, length, dim) sin/cos table computed in float32, as PositionalEncoding does."""
    pos = torch.arange(0, length).unsqueeze(1).float()
    div = torch.exp(torch.arange(0, dim, 2).float() * -(math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe.unsqueeze(0)


class PositionalEncoding(nn.Module):
    """The `PPE` buffer `pe` (1, 600, latent); it is part of the checkpoint."""

    def __init__(self, dim: int, max_len: int = MAX_POSE_FRAMES):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(max_len, dim))

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        return x + self.pe[:, start : start + x.shape[1]]


class Audio2Pose(nn.Module):
    """FaceFormer-style pose decoder (Audio2PoseModel): wav2vec2 -> in_fn is the memory; each step feeds
    the previous pose through pose_map + PPE + id embedding into an 8-layer post-norm TransformerDecoder
    with an ALiBi causal mask and a memory mask that shows step i only audio frame i."""

    def __init__(self, wav2vec2, latent_dim: int = 512, out_dim: int = POSE_DIM):
        super().__init__()
        self.out_dim = out_dim
        self.audio_encoder = build_wav2vec2(wav2vec2)
        hidden = self.audio_encoder.config.hidden_size
        self.pose_map = nn.Linear(out_dim, latent_dim)
        self.in_fn = nn.Linear(hidden, latent_dim)
        self.PPE = PositionalEncoding(latent_dim)
        layer = nn.TransformerDecoderLayer(d_model=latent_dim, nhead=DECODER_HEADS,
                                           dim_feedforward=2 * latent_dim, batch_first=True)
        self.transformer_decoder = nn.TransformerDecoder(layer, num_layers=DECODER_LAYERS)
        self.pose_map_r = nn.Linear(latent_dim, out_dim)
        self.id_embed = nn.Embedding(STYLE_IDS, latent_dim)

    @classmethod
    def from_checkpoint(cls, state: dict, wav2vec2, source: str = "audio2pose.pt",
                        dtype: torch.dtype | None = None) -> Audio2Pose:
        """As Audio2Mesh.from_checkpoint (the 8-layer, 8-head decoder shape is fixed, as in AniPortrait)."""
        latent, out = _shape(state, "pose_map.weight", source, 2)
        model = cls(wav2vec2, latent_dim=latent, out_dim=out)
        model.to(dtype or _float_dtype(state))
        load_weights(model, state, source)
        return model.eval()

    def memory(self, input_values: torch.Tensor, seq_len: int) -> torch.Tensor:
        """(B, S) -> (B, seq_len, latent): the decoder's memory, one vector per video frame."""
        return self.in_fn(encode_audio(self.audio_encoder, input_values, seq_len).hidden)

    @torch.no_grad()
    def infer(self, input_values: torch.Tensor, seq_len: int, id_seed: int, cached: bool = True) -> torch.Tensor:
        """(B, S) normalised waveform -> (B, seq_len, 6) poses, autoregressively, style `id_seed` in [0, 100).

        cached=False re-runs the whole decoder on the growing sequence at every step, as the original does
        (O(T^3)); cached=True decodes one step at a time with per-layer key/value caches (O(T^2)), equal up to
        rounding because the decoder is causal and each step's cross-attention sees a single audio frame."""
        _check_pose_args(seq_len, id_seed)
        memory = self.memory(input_values, seq_len)
        ids = torch.full((memory.shape[0],), int(id_seed), dtype=torch.long, device=memory.device)
        style = self.id_embed(ids).unsqueeze(1)
        decode = self._decode_cached if cached else self._decode_full
        return decode(memory, style, seq_len)

    def _decode_full(self, memory: torch.Tensor, style: torch.Tensor, seq_len: int) -> torch.Tensor:
        b, device = memory.shape[0], memory.device
        mask = biased_mask(DECODER_HEADS, seq_len).to(device=device, dtype=memory.dtype)
        pose_emb = self.pose_map(memory.new_zeros(b, 1, self.out_dim))
        for i in range(seq_len):
            n = i + 1
            tgt = self.PPE(pose_emb) + style
            tgt_mask = mask[:, :n, :n].repeat(b, 1, 1)  # (B * heads, n, n), batch-major
            out = self.transformer_decoder(tgt, memory, tgt_mask=tgt_mask,
                                           memory_mask=memory_mask(n, seq_len).to(device))
            out = self.pose_map_r(out)
            pose_emb = torch.cat((pose_emb, self.pose_map(out[:, -1:, :])), 1)
        return out

    def _decode_cached(self, memory: torch.Tensor, style: torch.Tensor, seq_len: int) -> torch.Tensor:
        b, d = memory.shape[0], memory.shape[2]
        heads, dh = DECODER_HEADS, memory.shape[2] // DECODER_HEADS
        layers = list(self.transformer_decoder.layers)
        # step i's cross-attention has one visible key, so its softmax weight is exactly 1:
        # the block returns out_proj(v_proj(memory_i))
        cross = [lay.multihead_attn.out_proj(F.linear(memory, lay.multihead_attn.in_proj_weight[2 * d:],
                                                      lay.multihead_attn.in_proj_bias[2 * d:]))
                 for lay in layers]
        slopes = torch.tensor(alibi_slopes(heads), dtype=memory.dtype, device=memory.device)[:, None, None]
        keys: list[torch.Tensor | None] = [None] * len(layers)
        values: list[torch.Tensor | None] = [None] * len(layers)
        token = self.pose_map(memory.new_zeros(b, 1, self.out_dim))
        outputs = []
        for i in range(seq_len):
            x = self.PPE(token, start=i) + style
            dist = torch.arange(-i, 1, dtype=memory.dtype, device=memory.device)  # j - i for j = 0..i
            bias = (slopes * dist).unsqueeze(0)  # (1, heads, 1, i + 1)
            for k, lay in enumerate(layers):
                q, key, val = F.linear(x, lay.self_attn.in_proj_weight, lay.self_attn.in_proj_bias).split(d, -1)
                q, key, val = (t.view(b, 1, heads, dh).transpose(1, 2) for t in (q, key, val))
                keys[k] = key if keys[k] is None else torch.cat((keys[k], key), 2)
                values[k] = val if values[k] is None else torch.cat((values[k], val), 2)
                att = F.scaled_dot_product_attention(q, keys[k], values[k], attn_mask=bias)
                att = lay.self_attn.out_proj(att.transpose(1, 2).reshape(b, 1, d))
                x = lay.norm1(x + att)
                x = lay.norm2(x + cross[k][:, i : i + 1])
                x = lay.norm3(x + lay.linear2(lay.activation(lay.linear1(x))))
            out = self.pose_map_r(x)
            outputs.append(out)
            token = self.pose_map(out)
        return torch.cat(outputs, 1)


def _check_pose_args(seq_len: int, id_seed: int) -> None:
    if not 1 <= seq_len <= MAX_POSE_FRAMES:
        raise ValueError(f"Audio2Pose decodes 1..{MAX_POSE_FRAMES} frames per call, got {seq_len}")
    if not 0 <= int(id_seed) < STYLE_IDS:
        raise ValueError(f"id_seed must be in [0, {STYLE_IDS}), got {id_seed}")


# ---- the audio2vid pose path: 5-second chunks ----------------------------------------------------------

class PoseChunk(NamedTuple):
    start: int  # first sample
    stop: int  # end sample (exclusive)
    frames: int  # frames Audio2Pose decodes for it


def pose_chunks(n_samples: int, seq_len: int) -> list[PoseChunk]:
    """audio2vid.py's chunking: 80000-sample chunks of 150 frames, the short tail merged into the chunk
    before it with seq_len % 150 extra frames.

    Two fixes where the script breaks (both documented upstream: issues #137, #200):
    - audio of at most one chunk is decoded whole with seq_len frames (the script raises IndexError);
    - the merged chunk gets seq_len - 150 * (n - 1) frames, which equals 150 + seq_len % 150 except when
      seq_len is a multiple of 150, where the script would silently drop 150 frames."""
    n = max(1, math.ceil(n_samples / POSE_CHUNK_SAMPLES))
    if n == 1:
        return [PoseChunk(0, n_samples, seq_len)]
    chunks = [PoseChunk(k * POSE_CHUNK_SAMPLES, (k + 1) * POSE_CHUNK_SAMPLES, POSE_CHUNK_FRAMES) for k in range(n - 2)]
    chunks.append(PoseChunk((n - 2) * POSE_CHUNK_SAMPLES, n_samples, seq_len - POSE_CHUNK_FRAMES * (n - 2)))
    return chunks


@torch.no_grad()
def pose_chunks_raw(model: Audio2Pose, input_values: torch.Tensor, seq_len: int, id_seed: int,
                    cached: bool = True) -> list[np.ndarray]:
    """Audio2Pose on each chunk of `pose_chunks` (batch 1): list of (frames, 6) arrays, before any scaling."""
    out = []
    for c in pose_chunks(input_values.shape[1], seq_len):
        pred = model.infer(input_values[:, c.start : c.stop], c.frames, id_seed, cached=cached)
        out.append(pred[0].detach().cpu().numpy())
    return out


def join_pose_chunks(chunks: list[np.ndarray]) -> np.ndarray:
    """Rotation columns x 0.5, chunks concatenated: (sum frames, 6), in the chunks' dtype."""
    scaled = [c.copy() for c in chunks]
    for c in scaled:
        c[:, :3] *= POSE_ROTATION_SCALE
    return np.concatenate(scaled, 0)


def pose_from_audio(model: Audio2Pose, input_values: torch.Tensor, seq_len: int, id_seed: int,
                    cached: bool = True) -> np.ndarray:
    """audio2vid's head pose: (1, S) normalised waveform -> (seq_len, 6): Audio2Pose per 5-second chunk
    with style `id_seed` (the script draws it from an unseeded random.randint(0, 99); pass one derived
    from the run's seed), rotation x 0.5, concatenated, centred moving average of 7 frames."""
    from a2pcli.aniportrait.geometry import smooth_pose_seq

    raw = pose_chunks_raw(model, input_values, seq_len, id_seed, cached=cached)
    return smooth_pose_seq(join_pose_chunks(raw), POSE_SMOOTH_WINDOW)


# ---- checkpoints ----------------------------------------------------------------------------------------

def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """{key: tensor} from a torch `.pt`/`.pth` (loaded with weights_only) or a `.safetensors` file."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ModelError("checkpoint not found", subject=str(path),
                         remedy="download AniPortrait's weights (`a2p models pull`) or fix the path") from exc
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise ModelError(f"not a readable checkpoint ({str(exc)[:120]})", subject=str(path),
                         remedy="download it again; the file is damaged or not a PyTorch checkpoint") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError("checkpoint is not a flat {name: tensor} state dict", subject=str(path),
                         remedy="pass AniPortrait's audio2mesh.pt / audio2pose.pt")
    return state


def rename_weight_norm(state: dict, model_keys) -> dict:
    """Map pos-conv weight-norm names between torch < 2.1 (`weight_g`/`weight_v`) and parametrizations
    (`parametrizations.weight.original0/1`), whichever way `model_keys` needs."""
    model_keys = set(model_keys)
    out = {}
    for key, value in state.items():
        if key not in model_keys:
            prefix, _, leaf = key.rpartition(".")
            for old, new in _WEIGHT_NORM_NAMES.items():
                if leaf == old and f"{prefix}.{new}" in model_keys:
                    key = f"{prefix}.{new}"
                elif key.endswith("." + new) and key[: -len(new)] + old in model_keys:
                    key = key[: -len(new)] + old
        out[key] = value
    return out


def load_weights(model: nn.Module, state: dict, source: str) -> None:
    """Strict load: every checkpoint tensor consumed, every model tensor given, shapes equal; otherwise a
    ModelError naming the file and the first unexpected and/or missing key (in the checkpoint's naming)."""
    expected = model.state_dict()
    mapped = rename_weight_norm(state, expected)
    names = dict(zip(mapped, state))  # model key -> checkpoint key, for messages
    remedy = "the file is not an AniPortrait checkpoint for this model, or it is damaged; download it again"
    unexpected = sorted(names[k] for k in mapped if k not in expected)
    missing = sorted(_ckpt_name(k) for k in expected if k not in mapped)
    problems = [f"{what} tensor '{keys[0]}'" + (f" (and {len(keys) - 1} more)" if len(keys) > 1 else "")
                for what, keys in (("unexpected", unexpected), ("missing", missing)) if keys]
    if problems:
        raise ModelError("; ".join(problems), subject=source, remedy=remedy)
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ModelError(f"tensor '{names[key]}' has shape {tuple(value.shape)}, the model needs "
                             f"{tuple(expected[key].shape)}", subject=source, remedy=remedy)
    model.load_state_dict(mapped, strict=True)


def _ckpt_name(model_key: str) -> str:
    """A model key as AniPortrait's checkpoints name it (old weight-norm names)."""
    for old, new in _WEIGHT_NORM_NAMES.items():
        if model_key.endswith("." + new):
            return model_key[: -len(new)] + old
    return model_key


def _shape(state: dict, key: str, source: str, ndim: int) -> tuple[int, ...]:
    if key not in state:
        raise ModelError(f"missing tensor '{key}'", subject=source,
                         remedy="the file is not an AniPortrait checkpoint for this model; download it again")
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise ModelError(f"tensor '{key}' has shape {shape}", subject=source, remedy="download it again")
    return shape


def _float_dtype(state: dict) -> torch.dtype:
    """The dtype most of the checkpoint's float tensors have (the model is built in it)."""
    counts: dict[torch.dtype, int] = {}
    for v in state.values():
        if v.is_floating_point():
            counts[v.dtype] = counts.get(v.dtype, 0) + v.numel()
    return max(counts, key=counts.get) if counts else torch.float32
