"""Training by the contrastive random walk and the other objectives (``--loss``), from named
presets (``--preset``; docs/objectives.md).

    python train.py --data /data/kinetics400/train --out runs/crw          # one GPU or the CPU
    torchrun --nproc_per_node=4 train.py --data /data/kinetics400/train    # DDP, one GPU each
    python train.py --out runs/crw --resume                                 # continue a run
    python train.py --loss cycle --data /data/vlog                          # TimeCycle's setup
    python train.py                                                         # the demo

Run folder ``--out``: ``checkpoint.pt`` (always the latest, written atomically),
``config.json`` (the resolved configuration), the TensorBoard event files (``tensorboard
--logdir OUT``) and, when videos could not be used, ``skipped_videos.txt`` (path and reason,
one per line; each is also logged once). Without ``--data`` the run trains on generated
synthetic clips in minutes on a CPU. Modules: ``config`` (options, presets), ``objectives``
(the loss registry), ``data``, ``module`` (what is trained, DDP, optimiser), ``checkpoint``
(exact resumption), ``figures``, ``report`` (logs, TensorBoard), ``loop``, ``command``.
"""
from corr.train.config import TrainConfig
from corr.train.loop import TrainResult, train
from corr.train.command import main

__all__ = ["TrainConfig", "TrainResult", "main", "train"]
