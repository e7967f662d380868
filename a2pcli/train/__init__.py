"""Training a2p's models: `a2p train <name>`.

    core.py          what every trainer shares (options, runtime, seeds, schedule, weight average,
                     checkpoints, log, model folder, the epoch loop); its docstring says how a trainer plugs in
    clips.py         talking videos with speech, prepared once into the shared data cache
    audio2motion/    speech -> lower-face motion (a2pcli.audio2motion's model)
    mouth/           the embedded renderer's mouth (a2pcli.mouthnet's model), in self-reenactment
"""
