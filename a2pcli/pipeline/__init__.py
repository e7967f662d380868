"""The pipelines behind every command, as library calls (the CLI is a thin layer over them).

    from a2pcli.pipeline import audio2video, TalkJob
    result = audio2video("face.png", "speech.wav", "talk.mp4", TalkJob(seed=3))

Modules: `options` (one frozen options object per job), `portrait` (the portrait loader), `renderers` (the
Renderer protocol and the embedded and diffusion renderers), `models` (loaded models, held by one object),
`talking` (audio2video), `reenact` (vid2vid, pose2vid), `poses` (extract-pose), `manifest` (a2p batch),
`shards` (a batch shared out over torchrun's processes or a scheduler's array tasks),
`plan` (where outputs go and whether they may be written), `sidecar` (--meta), `items` (runs of several items),
`results` (what the calls return), `write` (atomic outputs with their sidecar).
"""
