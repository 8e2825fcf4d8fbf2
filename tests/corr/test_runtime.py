"""corr.runtime: one Runtime (device, rank, world size, AMP) for training and evaluation."""
import pytest
import torch

from corr.runtime import Runtime, code_version, resolve_device, start_runtime


def test_a_single_process_is_rank_0_of_1(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    runtime = start_runtime("cpu")
    assert runtime == Runtime(torch.device("cpu"), rank=0, world_size=1, local_rank=0, amp=False)
    assert runtime.is_main and not runtime.distributed
    runtime.barrier()                           # nothing to wait for
    runtime.close()                             # no group was joined


def test_amp_needs_cuda(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert start_runtime("cpu", amp=True).amp is False
    assert start_runtime("cpu", amp=None).amp is False


def test_shard_and_owns_split_round_robin():
    names = [f"v{i}" for i in range(7)]
    shards = [Runtime(rank=r, world_size=3).shard(names) for r in range(3)]
    assert shards == [["v0", "v3", "v6"], ["v1", "v4"], ["v2", "v5"]]
    assert sorted(sum(shards, [])) == sorted(names)
    assert [i for i in range(7) if Runtime(rank=1, world_size=3).owns(i)] == [1, 4]
    assert Runtime().shard(names) == names


def test_mean_of_one_process_is_the_value_detached():
    value = torch.tensor(2.5, requires_grad=True)
    mean = Runtime().mean(value)
    assert float(mean) == 2.5 and not mean.requires_grad


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cuda", 0)
        assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1 % torch.cuda.device_count())
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(RuntimeError, match="--device cuda was requested but CUDA is not available"):
            resolve_device("cuda")


def test_code_version_is_a_git_description():
    version = code_version()
    assert version and "\n" not in version
