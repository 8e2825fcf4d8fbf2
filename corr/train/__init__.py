"""Training of correspondence encoders: the contrastive random walk and the other objectives
(docs/objectives.md), from named presets. ``python train.py`` is :func:`main`; ``--help``
lists the options, presets and objectives.

    from corr.train import TrainConfig, train
    result = train(TrainConfig(data="/data/kinetics400/train", out="runs/crw"))   # the crw preset

Modules, lowest first: ``figures`` (loss images), ``objectives`` (the loss registry),
``config`` (options, presets, resolution), ``data`` (datasets, data order, the demo's clips),
``module`` (what is trained, DDP, optimiser), ``checkpoint`` (checkpoints, exact resumption),
``report`` (log lines, progress, TensorBoard), ``loop`` (:func:`train`), ``command`` (:func:`main`).
"""
from corr.train.command import main
from corr.train.config import TrainConfig
from corr.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "main", "train"]
