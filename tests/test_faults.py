"""Fault injection: the usual user mistakes and accidents, through both commands.

Each case asserts the message (one line, naming the file or option and what to do), the exit
status (2 for a user error) and that no earlier file changed. The commands run in this
process (``corr.train.main`` and ``evaluate.main``, which are what ``train.py`` and
``evaluate.py`` call); one case runs the real scripts to check that no traceback is printed.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
from corr.errors import OptionError, run_command
from corr.train import main as train_main
from corr.train.run_folder import read_loss_log
from datasets.palette import write_indexed_png
from datasets.synthetic import generate_davis

REPO = Path(__file__).resolve().parents[1]
#: A training run of two steps on two tiny frame folders (seconds on a CPU).
TINY = ["--mode", "dense", "--crop-size", "32", "--batch-size", "2", "--clip-len", "3", "--frame-skip", "1",
        "--clips-per-video", "2", "--num-workers", "0", "--no-progress", "--image-every", "0", "--log-every", "1",
        "--checkpoint-every", "2", "--encoder", "pixel"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Two frame folders of 6 textured 40x40 frames."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    for video in ("a", "b"):
        (root / video).mkdir()
        base = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
        for k in range(6):
            Image.fromarray(base[k % 8:k % 8 + 40, :40]).save(root / video / f"{k:05d}.jpg")
    return root


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory) -> Path:
    return generate_davis(tmp_path_factory.mktemp("davis") / "DAVIS", num_sequences=2, num_frames=5, size=(48, 64),
                          seed=1)


def train(clips: Path, out: Path, *extra: str) -> None:
    train_main(["--data", str(clips), "--out", str(out), *TINY, *extra])


def fails(command, *args, capsys) -> str:
    """Run ``command(*args)``; it must exit with status 2; returns the one-line message."""
    with pytest.raises(SystemExit) as stop:
        command(*args)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and "Traceback" not in "\n".join(err)
    return err[-1]


def fingerprint(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative path -> digest)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


# ----------------------------------------------------------------------------- training


def test_rerun_into_a_finished_run_stops_and_overwrite_starts_over(clips, tmp_path, capsys):
    out = tmp_path / "run"
    train(clips, out, "--steps", "2")
    before = fingerprint(out)
    message = fails(train, clips, out, "--steps", "2", capsys=capsys)
    assert message.startswith("train.py: error: ") and str(out) in message
    assert "--resume" in message and "--overwrite" in message
    assert fingerprint(out) == before
    message = fails(train, clips, out, "--steps", "2", "--resume", "--overwrite", capsys=capsys)
    assert "give one of them" in message and fingerprint(out) == before
    train(clips, out, "--steps", "2", "--overwrite", "--seed", "1")
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    assert [entry["step"] for entry in read_loss_log(out / "losses.jsonl")] == [1, 2]
    assert len(list(out.glob("events.out.tfevents.*"))) == 1      # the old run's events are gone


def test_corrupt_checkpoint_on_resume_names_the_file(clips, tmp_path, capsys):
    out = tmp_path / "run"
    train(clips, out, "--steps", "2")
    checkpoint = out / "checkpoint.pt"
    data = checkpoint.read_bytes()
    for corrupt in (data[: len(data) // 2], os.urandom(4096), b""):
        checkpoint.write_bytes(corrupt)
        message = fails(train, clips, out, "--steps", "4", "--resume", capsys=capsys)
        assert f"{checkpoint}: not a readable PyTorch file" in message
        assert "weights_only" not in message and "allow_pickle" not in message
        assert checkpoint.read_bytes() == corrupt


@pytest.mark.parametrize("option, value, expected", [
    ("--steps", "0", "--steps must be >= 1, got 0"),
    ("--steps", "-1", "--steps must be >= 1, got -1"),
    ("--crop-size", "0", "--crop-size must be >= 16, got 0"),
    ("--batch-size", "0", "--batch-size must be >= 1, got 0"),
    ("--edge-dropout", "1.5", "--edge-dropout in [0, 1)"),
    ("--fps", "0", "--fps must be > 0"),
    ("--clip-len", "2", "--loss crw walks there and back along the clip: at least 3 frames, got --clip-len 2"),
])
def test_invalid_training_options_fail_before_anything_is_written(clips, tmp_path, capsys, option, value,
                                                                  expected):
    out = tmp_path / "run"
    message = fails(train, clips, out, option, value, capsys=capsys)
    assert expected in message and not out.exists()


def test_disk_full_during_a_checkpoint_write_keeps_the_last_checkpoint(clips, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    train(clips, out, "--steps", "2")
    before = fingerprint(out)["checkpoint.pt"]
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if hasattr(f, "write"):
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    message = fails(train, clips, out, "--steps", "4", "--resume", capsys=capsys)
    assert f"{out / 'checkpoint.pt'}: cannot write (No space left on device); the disk is full" in message
    assert fingerprint(out)["checkpoint.pt"] == before and temporaries(out) == []


def test_kill_during_a_checkpoint_write_then_resume_equals_an_uninterrupted_run(clips, tmp_path):
    whole = tmp_path / "whole"
    train(clips, whole, "--steps", "4")
    killed = tmp_path / "killed"
    train(clips, killed, "--steps", "2")
    # As a kill -9 after step 3 leaves it: step 3 logged (its line cut short), a half-written
    # temporary checkpoint, and checkpoint.pt still at step 2.
    with open(killed / "losses.jsonl", "a") as log:
        log.write(json.dumps({"step": 3, "loss": 0.5, "lr": 1e-4}) + "\n" + '{"step": 4, "lo')
    (killed / ".checkpoint.pt.k1ll3d_x.tmp").write_bytes(b"\x00" * 1000)
    train(clips, killed, "--steps", "4", "--resume")
    assert temporaries(killed) == []
    assert read_loss_log(killed / "losses.jsonl") == read_loss_log(whole / "losses.jsonl")
    assert [e["step"] for e in read_loss_log(killed / "losses.jsonl")] == [1, 2, 3, 4]


def tensorboard_scalars(out: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for events in sorted(out.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        values.update({event.step: event.value for event in accumulator.Scalars(tag)})
    return values


def test_a_resumed_runs_windowed_tensorboard_loss_equals_an_uninterrupted_runs(clips, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train(clips, whole, "--steps", "4", "--log-every", "4")
    train(clips, resumed, "--steps", "2", "--log-every", "4")
    train(clips, resumed, "--steps", "4", "--log-every", "4", "--resume")
    want = tensorboard_scalars(whole, "train/loss")
    assert list(want) == [4] and tensorboard_scalars(resumed, "train/loss")[4] == pytest.approx(want[4], rel=1e-6)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_kill_9_mid_run_then_resume_equals_an_uninterrupted_run(clips, tmp_path):
    """A real ``kill -9`` of ``train.py`` at whatever point it has reached (checkpoint every step)."""
    args = ["--data", str(clips), *TINY, "--steps", "8", "--checkpoint-every", "1"]
    whole = tmp_path / "whole"
    train_main([*args, "--out", str(whole)])
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "train.py", *args, "--out", str(killed)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(read_loss_log(killed / "losses.jsonl")) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    train_main([*args, "--out", str(killed), "--resume"])
    assert temporaries(killed) == []
    assert read_loss_log(killed / "losses.jsonl") == read_loss_log(whole / "losses.jsonl")


# --------------------------------------------------------------------------- evaluation


def evaluate_cli(*argv: str) -> None:
    evaluate.main(list(argv))


def davis_args(davis_root: Path, out: Path, *extra: str) -> list[str]:
    return ["--data-root", str(davis_root), "--encoder", "pixel", "--context", "2", "--out", str(out), *extra]


def test_rerun_with_other_settings_stops_and_keeps_the_results(davis_root, tmp_path, capsys):
    out = tmp_path / "eval"
    evaluate_cli(*davis_args(davis_root, out, "--topk", "10"))
    before = fingerprint(out)
    message = fails(evaluate_cli, *davis_args(davis_root, out, "--topk", "5"), capsys=capsys)
    assert message == (f"evaluate.py: error: {out} holds results of other settings (propagation.topk: 10 -> 5); "
                       "choose another --out, or give --overwrite to replace them")
    assert fingerprint(out) == before
    evaluate_cli(*davis_args(davis_root, out, "--topk", "5", "--overwrite"))
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["propagation"]["topk"] == 5
    assert json.loads((out / "run.json").read_text())["run_key"] == results["run_key"]


def test_binary_first_frame_mask_is_an_error_with_a_hint(davis_root, tmp_path, capsys):
    root = tmp_path / "DAVIS"
    import shutil

    shutil.copytree(davis_root, root)
    for folder in sorted((root / "Annotations" / "480p").iterdir()):
        for png in folder.glob("*.png"):
            ids = np.asarray(Image.open(png))
            write_indexed_png(png, np.where(ids > 0, 255, 0).astype(np.uint8))
    first = sorted((root / "Annotations" / "480p").iterdir())[0] / "00000.png"
    message = fails(evaluate_cli, *davis_args(root, tmp_path / "eval"), capsys=capsys)
    assert f"{first}: the first frame's annotation holds no object" in message and "--binary-masks" in message
    results = evaluate.evaluate(evaluate.parse_args(davis_args(root, tmp_path / "eval", "--binary-masks")))
    assert results["unscored_sequences"] == {} and results["metrics"]["num_objects"] == 2


def test_unscored_sequences_are_listed_with_their_reason(davis_root, tmp_path):
    import shutil

    root = tmp_path / "DAVIS"
    shutil.copytree(davis_root, root)
    folder = sorted((root / "Annotations" / "480p").iterdir())[1]
    for png in sorted(folder.glob("*.png"))[1:]:
        png.unlink()                                             # first-frame-only (test-dev layout)
    short = sorted((root / "Annotations" / "480p").iterdir())[0].name
    for kind, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
        for frame in sorted((root / kind / "480p" / short).glob(f"*.{ext}"))[2:]:
            frame.unlink()                                       # two frames: nothing DAVIS can score
    results = evaluate.evaluate(evaluate.parse_args(davis_args(root, tmp_path / "eval")))
    assert results["unscored_sequences"] == {folder.name: "only the first frame is annotated (test-dev layout)",
                                             short: "fewer than 3 frames (DAVIS scores frames 1 .. T-2)"}
    assert results["metrics"] is None and "per_sequence" not in results


@pytest.mark.parametrize("extra, expected", [
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--topk", "0"], "topk must be >= 1, got 0"),
    (["--sequences", "nope"], "--sequences names ['nope'] not in the dataset"),
    (["--preset", "nope"], "--preset: unknown propagation preset 'nope'"),
])
def test_invalid_evaluation_options(davis_root, tmp_path, capsys, extra, expected):
    message = fails(evaluate_cli, *davis_args(davis_root, tmp_path / "eval", *extra), capsys=capsys)
    assert expected in message


def test_checkpoint_of_another_encoder_and_corrupt_checkpoints(clips, davis_root, tmp_path, capsys):
    run = tmp_path / "run"
    train(clips, run, "--steps", "2")
    checkpoint = run / "checkpoint.pt"
    message = fails(evaluate_cli, *davis_args(davis_root, tmp_path / "a", "--checkpoint", str(checkpoint),
                                              "--encoder", "resnet50"), capsys=capsys)
    assert f"{checkpoint} holds a 'pixel' encoder, not the 'resnet50' asked for" in message
    for name, data in (("random.pt", os.urandom(2048)), ("truncated.pt", checkpoint.read_bytes()[:500])):
        path = tmp_path / name
        path.write_bytes(data)
        message = fails(evaluate_cli, *davis_args(davis_root, tmp_path / "b", "--checkpoint", str(path)),
                        capsys=capsys)
        assert f"{path}: not a readable PyTorch file" in message and "Python objects" not in message
        assert "weights_only" not in message and "allow_pickle" not in message
    message = fails(evaluate_cli, *davis_args(davis_root, tmp_path / "c", "--checkpoint", str(tmp_path / "no.pt")),
                    capsys=capsys)
    assert message == f"evaluate.py: error: {tmp_path / 'no.pt'}: checkpoint file not found"


def test_disk_full_during_a_prediction_write_names_the_file(davis_root, tmp_path, capsys, monkeypatch):
    import corr.io

    real_replace = os.replace

    def full_disk(src, dst):
        if str(dst).endswith(".png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(corr.io.os, "replace", full_disk)
    out = tmp_path / "eval"
    message = fails(evaluate_cli, *davis_args(davis_root, out), capsys=capsys)
    assert message.startswith(f"evaluate.py: error: {out / 'predictions'}") and ".png: cannot write" in message
    assert "the disk is full" in message and temporaries(out) == [] and not (out / "results.json").exists()


def test_stale_temporaries_of_an_interrupted_evaluation_are_removed(davis_root, tmp_path):
    out = tmp_path / "eval"
    evaluate.main(davis_args(davis_root, out))
    stale = [out / ".results.json.ab12cd34.tmp", out / "sequences" / ".x.json.zz99yy88.tmp"]
    for path in stale:
        path.write_text("partial")
    keep = out / "notes.tmp"
    keep.write_text("mine")
    evaluate.main(davis_args(davis_root, out))
    assert not any(path.exists() for path in stale) and keep.read_text() == "mine"


# ------------------------------------------------------------------------------ commands


def test_debug_shows_the_traceback_and_bugs_always_do(capsys):
    def bad_option():
        raise OptionError("--x must be >= 1")

    with pytest.raises(OptionError):
        run_command(bad_option, debug=True, name="cmd")
    with pytest.raises(ZeroDivisionError):                        # a bug is never a one-line message
        run_command(lambda: 1 / 0, debug=False, name="cmd")
    with pytest.raises(SystemExit) as stop:
        run_command(bad_option, debug=False, name="cmd")
    assert stop.value.code == 2 and capsys.readouterr().err == "cmd: error: --x must be >= 1\n"


def test_the_scripts_print_one_line_and_no_traceback(tmp_path):
    for script, argv in (("train.py", ["--steps", "0", "--out", str(tmp_path / "t")]),
                         ("evaluate.py", ["--data-root", str(tmp_path / "missing")])):
        done = subprocess.run([sys.executable, script, *argv], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert done.stderr.startswith(f"{script}: error: ")
    done = subprocess.run([sys.executable, "train.py", "--steps", "0", "--debug"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 1 and "Traceback" in done.stderr and "OptionError" in done.stderr


def test_every_process_checks_the_output_folder_and_only_one_writes(tmp_path):
    from corr.errors import OutputError
    from propagate.run_folder import claim_output

    out = tmp_path / "eval"
    out.mkdir()
    claim_output(out, "k1", {"topk": 10}, overwrite=False, write=False)
    assert not (out / "run.json").exists()
    claim_output(out, "k1", {"topk": 10}, overwrite=False)
    with pytest.raises(OutputError, match=r"other settings \(topk: 10 -> 5\)"):
        claim_output(out, "k2", {"topk": 5}, overwrite=False, write=False)      # another rank stops too
    claim_output(out, "k2", {"topk": 5}, overwrite=True, write=False)
    assert json.loads((out / "run.json").read_text())["run_key"] == "k1"         # only the writer replaces it
