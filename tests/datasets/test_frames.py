"""The shared pieces of the benchmark readers (datasets/frames.py)."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from datasets.frames import DatasetError, FrameVideo, VideoSet, find_split_file, listing_sha256, read_name_list


def test_listing_sha256_is_the_hash_of_sorted_relative_lines(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.txt").write_bytes(b"12345")
    (tmp_path / "a.txt").write_bytes(b"1")
    expected = hashlib.sha256(b"a.txt\t1\nb/x.txt\t5\n").hexdigest()
    assert listing_sha256([tmp_path / "b" / "x.txt", tmp_path / "a.txt"], tmp_path) == expected
    (tmp_path / "a.txt").write_bytes(b"12")  # a resized file changes the identity
    assert listing_sha256([tmp_path / "a.txt", tmp_path / "b" / "x.txt"], tmp_path) != expected


def test_frame_video_reads_checks_size_and_index(tmp_path):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i:05d}.png")
        Image.fromarray(np.full((6, 8, 3), 40 * i, np.uint8)).save(paths[-1])
    video = FrameVideo(name="v", frame_paths=paths)
    assert video.size == (6, 8) and video.num_frames == 2
    assert video.read_frames().shape == (2, 6, 8, 3) and video.read_frame(-1)[0, 0, 0] == 40
    with pytest.raises(IndexError, match="'v': frame index 2 out of range"):
        video.read_frame(2)
    Image.fromarray(np.zeros((5, 8, 3), np.uint8)).save(paths[1])
    with pytest.raises(DatasetError, match=r"00001\.png: frame is 8x5"):
        video.read_frame(1)


def test_video_set_indexing_and_duplicates(tmp_path):
    class Videos(VideoSet):
        def __init__(self, names):
            self._set_videos((FrameVideo(name=n, frame_paths=[]) for n in names), tmp_path / "split.txt")

    videos = Videos(["a", "b"])
    assert len(videos) == 2 and [v.name for v in videos] == ["a", "b"] and videos["b"] is videos[-1]
    with pytest.raises(KeyError, match="no video 'c'"):
        videos["c"]
    with pytest.raises(DatasetError, match=r"split\.txt: video 'a' is listed twice"):
        Videos(["a", "b", "a"])
    with pytest.raises(DatasetError, match="lists no videos"):
        Videos([])


def test_split_files(tmp_path):
    (tmp_path / "lists").mkdir()
    split = tmp_path / "lists" / "val.txt"
    split.write_text("# comment\nbear\n\n  cows \n")
    assert read_name_list(split) == ["bear", "cows"]
    assert find_split_file(tmp_path, "val", split) == split
    assert find_split_file(tmp_path, "lists/val.txt", tmp_path / "unused") == split  # relative to the root
    with pytest.raises(DatasetError, match="split file not found"):
        find_split_file(tmp_path, "test", tmp_path / "lists" / "test.txt")
