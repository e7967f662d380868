"""The loaded models of a run, held by one object that the caller passes from call to call.

    models = Models()
    audio2video("a.png", "one.wav", "a1.mp4", job, models=models)   # loads the speech model
    audio2video("b.png", "two.wav", "b2.mp4", job, models=models)   # reuses it

Nothing is kept anywhere else: a call without `models` loads what it needs and lets it go.
"""

from __future__ import annotations

from a2pcli.progress import Reporter


class Models:
    """audio2motion, audio2pose and mouth models (by name and device), the face reference, and one set of
    AniPortrait networks (by weights, dtype and device; a different set replaces it)."""

    def __init__(self, clip_group=None):
        self._audio2motion: dict[tuple[str, str], object] = {}
        self._audio2pose: dict[tuple[str, str], object] = {}
        self._mouth: dict[tuple[str, str], object] = {}
        self._reference = None
        self._aniportrait_key: tuple | None = None
        self._aniportrait = None
        self.clip_group = clip_group  # aniportrait.split.ClipGroup: the processes that render each clip together

    def audio2motion(self, name_or_path: str | None = None, device: str = "cpu"):
        """audio2motion.Audio2Motion: the shipped model, a registry name or a model folder (verified when loaded)."""
        key = (str(name_or_path), device)
        if key not in self._audio2motion:
            from a2pcli.audio2motion import load_model

            self._audio2motion[key] = load_model(name_or_path, device=device)
        return self._audio2motion[key]

    def audio2pose(self, name_or_path: str | None = None, device: str = "cpu"):
        """audio2pose.Audio2PoseModel (head motion): the shipped model, a registry name or a model folder (verified
        when loaded)."""
        key = (str(name_or_path), device)
        if key not in self._audio2pose:
            from a2pcli.audio2pose import load_model

            self._audio2pose[key] = load_model(name_or_path, device=device)
        return self._audio2pose[key]

    def mouth(self, name_or_path: str | None = None, device: str = "cpu"):
        """mouthnet.MouthModel: the embedded renderer's mouth model, the shipped one, a registry name or a model
        folder (verified when loaded)."""
        key = (str(name_or_path), device)
        if key not in self._mouth:
            from a2pcli.mouthnet import load_model

            self._mouth[key] = load_model(name_or_path, device=device)
        return self._mouth[key]

    def reference(self):
        """headpose.FaceReference: the shipped frontal face the head pose is fitted to."""
        if self._reference is None:
            from a2pcli.headpose import load_reference

            self._reference = load_reference()
        return self._reference

    def aniportrait(self, weights: str | None, dtype: str, device: str, reporter: Reporter | None = None):
        """The diffusion renderer's networks (aniportrait.render.load_models): read and checked once per set."""
        key = (str(weights), dtype, device)
        if key != self._aniportrait_key:
            from a2pcli.aniportrait.render import load_models

            self._aniportrait, self._aniportrait_key = None, None  # the old set goes before the new one loads
            self._aniportrait = load_models(weights, dtype, device, reporter)
            self._aniportrait_key = key
        return self._aniportrait
