"""Feature cache (propagate.cache, evaluate.py --cache): keys, exactness, encoder skipped when warm."""
import json

import numpy as np
import pytest
import torch

from datasets.synthetic import generate_davis
from datasets.synthetic_tasks import generate_tapvid
from evaluate import evaluate
from propagate import video as video_pipeline
from propagate.cache import (
    FeatureCache,
    cache_key,
    cache_slot,
    encoder_identity,
    preprocessing_identity,
    video_identity,
)
from propagate.config import PropagationConfig
from propagate.eval_config import EvalConfig
from propagate.propagator import Matcher
from propagate.run import run_key
from propagate.tasks import configure
from propagate.video import feature_cache


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache-davis") / "DAVIS"
    return generate_davis(root, num_sequences=2, num_frames=7, size=(48, 64), seed=5)


def davis_config(root, out, cache=None, **kw):
    return EvalConfig(data_root=str(root), encoder="pixel", context=3, out=str(out),
                      cache=str(cache) if cache else None, batch_size=3, **kw)


@pytest.fixture
def count_encoder(monkeypatch):
    """Counts calls of the feature extractor every task goes through."""
    calls = []
    original = video_pipeline.extract_features
    monkeypatch.setattr(video_pipeline, "extract_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def test_warm_cache_gives_identical_results_without_the_encoder(davis_root, tmp_path, count_encoder):
    plain = evaluate(davis_config(davis_root, tmp_path / "plain"))
    encoder_calls = len(count_encoder)
    assert encoder_calls == 6  # 2 sequences x ceil(7 / 3) batches
    cold = evaluate(davis_config(davis_root, tmp_path / "cold", tmp_path / "cache"))
    assert len(count_encoder) == 2 * encoder_calls
    assert cold["timings"]["cache_hits"] == 0
    warm = evaluate(davis_config(davis_root, tmp_path / "warm", tmp_path / "cache"))
    assert len(count_encoder) == 2 * encoder_calls  # no encoder call with a warm cache
    assert warm["timings"]["cache_hits"] == 2
    assert warm["metrics"] == cold["metrics"] == plain["metrics"]  # float32 storage is exact
    assert warm["per_object"] == plain["per_object"]
    assert warm["factors"]["feature_cache"] == {"dtype": "float32"}
    entries = sorted(p for p in (tmp_path / "cache").iterdir())
    assert len(entries) == 2
    meta = json.loads((entries[0] / "meta.json").read_text())
    assert meta["dtype"] == "float32" and meta["num_frames"] == 7 and meta["shape"][0] == 3
    assert meta["encoder"]["encoder"] == "pixel" and meta["preprocessing"]["input_size"] == "native"
    # An entry without meta.json (a killed run) is recomputed, the other one reused.
    (entries[0] / "meta.json").unlink()
    again = evaluate(davis_config(davis_root, tmp_path / "again", tmp_path / "cache"))
    assert len(count_encoder) == 2 * encoder_calls + 3
    assert again["metrics"] == plain["metrics"]
    # With test-time adaptation the cache is bypassed (neither read nor written).
    assert feature_cache(davis_config(davis_root, tmp_path, tmp_path / "cache", tta_steps=1), {}, {}, "x") is None


def test_warm_matches_skip_the_similarity_search_and_serve_other_label_settings(davis_root, tmp_path,
                                                                               monkeypatch):
    searches = []
    original = Matcher.match
    monkeypatch.setattr(Matcher, "match", lambda self, feat: searches.append(1) or original(self, feat))
    cold = evaluate(davis_config(davis_root, tmp_path / "cold", tmp_path / "cache", topk=4, cache_topk=6))
    assert len(searches) == 12 and cold["timings"]["match_hits"] == 0  # 2 sequences x 6 later frames
    warm = evaluate(davis_config(davis_root, tmp_path / "warm", tmp_path / "cache", topk=4))
    assert len(searches) == 12 and warm["timings"]["match_hits"] == 2
    assert warm["metrics"] == cold["metrics"] and warm["per_object"] == cold["per_object"]
    for seq in ("synth-000", "synth-001"):  # identical prediction files
        for png in sorted((tmp_path / "cold" / "predictions" / seq).iterdir()):
            assert png.read_bytes() == (tmp_path / "warm" / "predictions" / seq / png.name).read_bytes()
    # Another top-k (<= 6 kept), temperature and label normalisation: read, and equal to a run without cache.
    other = dict(topk=6, temperature=0.2, label_norm="minmax")
    read = evaluate(davis_config(davis_root, tmp_path / "read", tmp_path / "cache", **other))
    assert len(searches) == 12 and read["timings"]["match_hits"] == 2
    plain = evaluate(davis_config(davis_root, tmp_path / "plain", **other))
    assert read["metrics"] == plain["metrics"] and read["per_object"] == plain["per_object"]
    # More matches than kept, or another radius: searched again (features still read).
    more = evaluate(davis_config(davis_root, tmp_path / "more", tmp_path / "cache", topk=8))
    assert more["timings"]["match_hits"] == 0 and more["timings"]["cache_hits"] == 2
    evaluate(davis_config(davis_root, tmp_path / "radius", tmp_path / "cache", radius=2.0))
    assert len(searches) == 12 * 4  # the run without cache, topk 8 and radius 2 searched
    entries = sorted((tmp_path / "cache").glob("*/matches-*/meta.json"))
    assert len(entries) == 4  # (radius 12, radius 2) x 2 sequences; topk 8 replaced topk 6
    assert {json.loads(p.read_text())["topk"] for p in entries} == {8, 10}


def test_float16_storage_agrees_between_cold_and_warm(davis_root, tmp_path, count_encoder):
    cfg = davis_config(davis_root, tmp_path / "cold", tmp_path / "cache16", cache_dtype="float16")
    cold = evaluate(cfg)
    calls = len(count_encoder)
    warm = evaluate(davis_config(davis_root, tmp_path / "warm", tmp_path / "cache16", cache_dtype="float16"))
    assert len(count_encoder) == calls and warm["metrics"] == cold["metrics"]
    chunk = next((tmp_path / "cache16").glob("*/chunk-000000.npy"))
    assert np.load(chunk).dtype == np.float16
    # Rounded features may change results: float16 runs never reuse float32 records and vice versa.
    info, identity = {"encoder": "pixel"}, {"name": "d", "listing_sha256": "0"}
    assert run_key(configure(cfg), info, identity) != \
        run_key(configure(davis_config(davis_root, tmp_path, tmp_path / "cache16")), info, identity)
    with pytest.raises(ValueError, match="cache-dtype"):
        configure(davis_config(davis_root, tmp_path, tmp_path, cache_dtype="bfloat16"))


def test_cache_key_follows_encoder_preprocessing_and_video():
    video = video_identity({"name": "DAVIS-2017", "listing_sha256": "abc", "root": "/somewhere"}, "bear")
    base = encoder_identity({"encoder": "resnet18-crw", "kwargs": {"out_layer": "layer3"}, "format": "corr",
                             "sha256": "1" * 64, "path": "/a/ckpt.pt", "step": 10})
    key = cache_key(base, preprocessing_identity((320, 320)), video)
    other_checkpoint = encoder_identity({"encoder": "resnet18-crw", "kwargs": {"out_layer": "layer3"},
                                         "format": "corr", "sha256": "2" * 64, "path": "/a/ckpt.pt"})
    assert cache_key(other_checkpoint, preprocessing_identity((320, 320)), video) != key
    # The checkpoint's path and step are not part of the identity: a copied file still hits.
    moved = encoder_identity({"encoder": "resnet18-crw", "kwargs": {"out_layer": "layer3"}, "format": "corr",
                              "sha256": "1" * 64, "path": "/b/copy.pt"})
    assert cache_key(moved, preprocessing_identity((320, 320)), video) == key
    other_layer = encoder_identity({"encoder": "resnet18-crw", "kwargs": {"out_layer": "layer4"}, "format": "corr",
                                    "sha256": "1" * 64})
    assert cache_key(other_layer, preprocessing_identity((320, 320)), video) != key
    assert cache_key(base, preprocessing_identity((256, 256)), video) != key
    assert cache_key(base, preprocessing_identity(None, "480p"), video) != \
        cache_key(base, preprocessing_identity(None, "Full-Resolution"), video)
    assert cache_key(base, preprocessing_identity((320, 320)), {**video, "video": "cows"}) != key
    assert cache_key(base, preprocessing_identity((320, 320)), {**video, "listing_sha256": "abd"}) != key
    seed0 = encoder_identity({"encoder": "resnet18-crw", "format": "random-init", "seed": 0})
    seed1 = encoder_identity({"encoder": "resnet18-crw", "format": "random-init", "seed": 1})
    preprocessing = preprocessing_identity(None)
    assert cache_key(seed0, preprocessing, video) != cache_key(seed1, preprocessing, video)


def test_config_input_size_selects_another_entry(tmp_path):
    identity = {"name": "JHMDB", "listing_sha256": "x"}
    info = {"encoder": "pixel", "format": "random-init", "seed": 0}
    a = feature_cache(configure(EvalConfig(task="jhmdb", cache=str(tmp_path))), info, identity, "v")
    b = feature_cache(configure(EvalConfig(task="jhmdb", cache=str(tmp_path), input_size=(256, 256))),
                      info, identity, "v")
    assert a.key != b.key and a.material["preprocessing"]["input_size"] == [320, 320]


def test_writer_and_reader_round_trip_across_chunks(tmp_path):
    slot = cache_slot(FeatureCache(tmp_path), {"encoder": "pixel"}, preprocessing_identity(None),
                      {"name": "d", "listing_sha256": "0"}, "v")
    feats = torch.randn(7, 4, 3, 5)
    writer = slot.writer(7)
    for i in range(0, 7, 3):
        writer.add(feats[i:i + 3])
    assert slot.lookup() is None  # incomplete until finish()
    writer.finish(frame_size=[24, 40])
    cached = slot.lookup()
    assert torch.equal(cached.read(0, 7), feats)
    assert torch.equal(cached.read(2, 5), feats[2:5])  # spans two chunks
    assert FeatureCache(tmp_path, "float16").lookup(slot.key) is None  # another storage dtype misses
    with pytest.raises(IndexError):
        cached.read(5, 9)


def test_tapvid_reads_features_from_the_cache(tmp_path, count_encoder):
    root = generate_tapvid(tmp_path / "tapvid", num_videos=2, num_frames=6, size=(48, 64), num_points=8, seed=2)

    def cfg(out):
        return EvalConfig(task="tapvid", data_root=str(root), encoder="pixel", context=3, input_size=(64, 64),
                          out=str(tmp_path / out), cache=str(tmp_path / "cache"))

    cold = evaluate(cfg("cold"))
    calls = len(count_encoder)
    assert calls > 0
    warm = evaluate(cfg("warm"))
    assert len(count_encoder) == calls and warm["metrics"] == cold["metrics"]
    assert warm["timings"]["cache_hits"] == 2


def test_match_entry_round_trip_and_completeness(tmp_path, monkeypatch):
    slot = cache_slot(FeatureCache(tmp_path), {"encoder": "pixel"}, preprocessing_identity(None),
                      {"name": "d", "listing_sha256": "0"}, "v", match_topk=6)
    cfg = PropagationConfig(context=2, topk=3, radius=3.0)
    matcher = Matcher(cfg, topk=6)
    feats = torch.randn(6, 4, 5, 7)
    matcher.start(feats[0])
    matches = [matcher.match(f) for f in feats[1:]]
    entry = slot.matches(cfg)
    assert entry.topk == 6
    writer = entry.writer(6)
    writer.add(matches[:3])
    writer.add(matches[3:])
    assert entry.lookup(3) is None  # incomplete until finish()
    writer.finish()
    cached = entry.lookup(6)
    assert entry.lookup(7) is None  # fewer kept than asked
    read = cached.read(1, 4, topk=3)  # entries 1..3 are frames 2..4, spanning both chunks
    for got, want in zip(read, matches[1:4]):
        assert torch.equal(got.values, want.values[:, :3]) and torch.equal(got.source, want.source[:, :3])
    # Reads in order load each chunk file once, values and source alike (2 chunks x 2 arrays).
    loads = []
    original = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(a[0]) or original(*a, **k))
    in_order = entry.lookup(6)
    read = [m for start in range(0, 5, 2) for m in in_order.read(start, min(start + 2, 5), topk=6)]
    assert len(loads) == 4 and len(read) == 5
    assert all(torch.equal(got.source, want.source) for got, want in zip(read, matches))
    # Settings that change which keys are chosen have their own entry; label settings share one.
    assert slot.matches(PropagationConfig(context=2, topk=3, radius=4.0)).entry != entry.entry
    assert slot.matches(PropagationConfig(context=2, topk=5, radius=3.0, temperature=0.5)).entry == entry.entry
