"""a2p: portrait + speech -> talking-head video.

The Python API (a2pcli.pipeline), without the CLI:

    from a2pcli import audio2video, TalkJob
    result = audio2video("face.png", "speech.wav", "talk.mp4", TalkJob(seed=3))
    print(result.frames, result.duration_s, result.device)

    extract_pose(video, output=None, job=ExtractJob())            -> PoseResult
    audio2video(portrait, audio, output, job=TalkJob())            -> VideoResult
    vid2vid(portrait, driving, output, job=DriveJob())             -> VideoResult
    pose2vid(portrait, motion, output, job=DriveJob(), audio=None) -> VideoResult
Each takes `reporter=` (progress.Reporter) and, for the video calls, `models=` (a Models, to load the models once
for several calls); failures raise subclasses of errors.A2PError.

Nothing here imports heavy modules: `import a2pcli` is instant and side-effect free; the names above load on
first use.
"""

__version__ = "0.1.0"

_API = {
    "extract_pose": "a2pcli.pipeline.poses",
    "audio2video": "a2pcli.pipeline.talking",
    "vid2vid": "a2pcli.pipeline.reenact",
    "pose2vid": "a2pcli.pipeline.reenact",
    "reenact": "a2pcli.pipeline.reenact",
    "load_portrait": "a2pcli.pipeline.portrait",
    "Portrait": "a2pcli.pipeline.portrait",
    "PortraitOptions": "a2pcli.pipeline.portrait",
    "TalkJob": "a2pcli.pipeline.options",
    "DriveJob": "a2pcli.pipeline.options",
    "ExtractJob": "a2pcli.pipeline.options",
    "RenderOptions": "a2pcli.pipeline.options",
    "VideoOptions": "a2pcli.pipeline.options",
    "OutputOptions": "a2pcli.pipeline.options",
    "RendererName": "a2pcli.pipeline.options",
    "MotionSource": "a2pcli.pipeline.options",
    "TalkOptions": "a2pcli.talk",
    "RetargetOptions": "a2pcli.retarget",
    "ExtractOptions": "a2pcli.extract",
    "DiffusionOptions": "a2pcli.aniportrait.render",
    "Models": "a2pcli.pipeline.models",
    "VideoResult": "a2pcli.pipeline.results",
    "PoseResult": "a2pcli.pipeline.results",
    "Reporter": "a2pcli.progress",
    "A2PError": "a2pcli.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'a2pcli' has no attribute {name!r}")
