"""AniPortrait's diffusion renderer on diffusers building blocks.

Nothing here is imported by the embedded renderer; torch, diffusers and transformers load only
when a command asks for `--renderer aniportrait` (or a test does).
"""
