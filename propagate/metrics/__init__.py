"""Benchmark metrics as pure numpy functions, each documented like the benchmark's own scorer.

One module per benchmark (docs/benchmarks.md): :mod:`.davis` (DAVIS-2017 J&F and the
folder scorer ``score_davis_folder``), :mod:`.jhmdb` (PCK), :mod:`.vip` (mIoU and the
nearest-neighbour resize it needs) and :mod:`.tapvid` (AJ, <delta^x_avg>, OA). The
benchmark constants they share with the readers (void id, class names and count, joint
names and count, query modes) are defined once in ``datasets/``. Every public name is
importable from this package as well as from its module.
"""
from .davis import (
    DAVIS_BOUNDARY_TH,
    DAVIS_DECAY_BINS,
    DAVIS_OBJECT_STATS,
    DAVIS_RECALL_THRESHOLD,
    DAVIS_SUMMARY_KEYS,
    davis_boundary_map,
    davis_boundary_radius,
    davis_disk,
    davis_sequence_scores,
    davis_summary,
    db_boundary_f,
    db_iou,
    db_statistics,
    read_davis_png,
    score_davis_folder,
)
from .jhmdb import (
    JHMDB_BOX_SCALE,
    JHMDB_PCK_THRESHOLDS,
    jhmdb_normalised_distances,
    jhmdb_pck,
    jhmdb_pck_per_joint,
)
from .tapvid import TAPVID_KEYS, TAPVID_THRESHOLDS, tapvid_metrics, tapvid_scored_frames, tapvid_summary
from .vip import resize_nearest, vip_confusion, vip_iou_from_confusion, vip_miou

__all__ = [
    "DAVIS_BOUNDARY_TH", "DAVIS_DECAY_BINS", "DAVIS_OBJECT_STATS", "DAVIS_RECALL_THRESHOLD",
    "DAVIS_SUMMARY_KEYS", "davis_boundary_map", "davis_boundary_radius", "davis_disk",
    "davis_sequence_scores", "davis_summary", "db_boundary_f", "db_iou", "db_statistics",
    "read_davis_png", "score_davis_folder",
    "JHMDB_BOX_SCALE", "JHMDB_PCK_THRESHOLDS", "jhmdb_normalised_distances", "jhmdb_pck",
    "jhmdb_pck_per_joint",
    "TAPVID_KEYS", "TAPVID_THRESHOLDS", "tapvid_metrics", "tapvid_scored_frames", "tapvid_summary",
    "resize_nearest", "vip_confusion", "vip_iou_from_confusion", "vip_miou",
]
