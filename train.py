"""Train a space-time correspondence encoder with the contrastive random walk.

    python train.py                                   # demo on generated synthetic clips
    python train.py --data /data/kinetics400/train    # real training (see corr/train/)
    python train.py --preset cycle --data /data/vlog  # a named configuration (listed by --help)
    torchrun --nproc_per_node=4 train.py --data ...   # several GPUs
    python train.py --help                            # every option
"""
from corr.train import main

if __name__ == "__main__":
    main()
