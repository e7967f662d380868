"""a2p: portrait + speech -> talking-head video.

Nothing here imports heavy modules: `import a2pcli` is instant and side-effect free.
"""

__version__ = "0.1.0"
