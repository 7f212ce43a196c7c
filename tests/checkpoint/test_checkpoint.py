"""save_checkpoint / load_checkpoint: what is captured, wrappers, strictness, bad input."""

from __future__ import annotations

import random
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import torchkeep as tk
from torchkeep.checkpoint import _checkpoint


class Net(nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 3) -> None:
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(6, 4)).pow(2).mean().backward()
        opt.step()


def test_seed_pattern(tmp_path) -> None:
    """The tutorial's save/load helper, the torchkeep way."""
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    _train(model, optimizer)
    scheduler.step()
    path = tmp_path / "ckpt.safetensors"
    saved = tk.save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, epoch=3, extra={"update_steps": 7})
    assert saved.epoch == 3 and saved.size_bytes == path.stat().st_size

    model2 = Net()
    optimizer2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    scheduler2 = torch.optim.lr_scheduler.StepLR(optimizer2, step_size=1, gamma=0.5)
    info = tk.load_checkpoint(path, model=model2, optimizer=optimizer2, scheduler=scheduler2, map_location="cpu")
    assert info.epoch == 3
    assert info.extra["update_steps"] == 7
    assert info.objects == {"model": "module", "optimizer": "optimizer", "scheduler": "scheduler"}
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k])
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 5e-4
    assert scheduler2.last_epoch == scheduler.last_epoch


def test_info_fields_and_read_info(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    extra = {"tokens": torch.arange(3), "note": "warm", "pair": (1, 2)}
    tk.save_checkpoint(path, model=Net(), epoch=1, step=40, metrics={"loss": torch.tensor(0.25), "acc": np.float32(0.5), "bad": float("nan")}, extra=extra)
    info = tk.read_info(path)
    assert (info.epoch, info.step) == (1, 40)
    assert info.metrics == {"loss": 0.25, "acc": 0.5, "bad": "nan"}
    assert info.env["torch"] == torch.__version__ and info.env["numpy"] == np.__version__
    assert {"python", "platform", "torchkeep", "cuda"} <= set(info.env)
    assert info.created_at is not None and info.rng
    loaded = tk.load_checkpoint(path, model=Net())
    assert torch.equal(loaded.extra["tokens"], torch.arange(3)) and loaded.extra["pair"] == (1, 2)


def test_rng_states_restored(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    tk.save_checkpoint(path, model=Net())
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    tk.load_checkpoint(path, model=Net())
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_rng_false_leaves_generators_alone(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    tk.save_checkpoint(path, model=Net(), rng=False)
    assert not tk.read_info(path).rng
    torch.manual_seed(5)
    expected = torch.rand(3)
    target = Net()
    torch.manual_seed(5)
    tk.load_checkpoint(path, model=target)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.gpu
def test_cuda_rng_every_device_and_devices_cross(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    model = Net().cuda()
    opt = torch.optim.Adam(model.parameters())
    opt.zero_grad()
    model(torch.randn(6, 4, device="cuda")).sum().backward()
    opt.step()
    for i in range(torch.cuda.device_count()):
        torch.cuda.manual_seed_all(10 + i)
    tk.save_checkpoint(path, model=model, optimizer=opt)
    expected = [torch.rand(4, device=f"cuda:{i}") for i in range(torch.cuda.device_count())]
    torch.cuda.manual_seed_all(99)
    cpu_model = Net()
    cpu_opt = torch.optim.Adam(cpu_model.parameters())
    tk.load_checkpoint(path, model=cpu_model, optimizer=cpu_opt)  # GPU checkpoint -> CPU objects
    assert all(t.device.type == "cpu" for t in cpu_opt.state_dict()["state"][0].values())
    got = [torch.rand(4, device=f"cuda:{i}") for i in range(torch.cuda.device_count())]
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    # and back: CPU checkpoint -> GPU model and optimizer, no map_location
    tk.save_checkpoint(tmp_path / "cpu.safetensors", model=cpu_model, optimizer=cpu_opt)
    gpu_model = Net().cuda()
    gpu_opt = torch.optim.Adam(gpu_model.parameters())
    tk.load_checkpoint(tmp_path / "cpu.safetensors", model=gpu_model, optimizer=gpu_opt)
    assert torch.equal(gpu_model.fc1.weight.cpu(), cpu_model.fc1.weight)
    assert gpu_opt.state_dict()["state"][0]["exp_avg"].device.type == "cuda"


def test_wrapped_models_save_plain_keys_and_load_both_ways(tmp_path) -> None:
    net = Net()
    for wrapped in (nn.DataParallel(net), torch.compile(net), torch.compile(nn.DataParallel(net))):
        path = tmp_path / "w.safetensors"
        tk.save_checkpoint(path, model=wrapped)
        names = tk.load(path)["model"].keys()
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in names), names
        plain = Net()
        tk.load_checkpoint(path, model=plain)
        assert torch.equal(plain.fc1.weight, net.fc1.weight)
        # and from a plain model into a wrapped one
        tk.save_checkpoint(path, model=plain)
        target = Net()
        tk.load_checkpoint(path, model=torch.compile(nn.DataParallel(target)))
        assert torch.equal(target.fc2.bias, net.fc2.bias)


def test_ddp_single_process_unwrapped(tmp_path) -> None:
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        net = Net()
        ddp = nn.parallel.DistributedDataParallel(net)
        path = tmp_path / "ddp.safetensors"
        tk.save_checkpoint(path, model=ddp)
        assert "fc1.weight" in tk.load(path)["model"]
        plain = Net()
        tk.load_checkpoint(path, model=plain)
        assert torch.equal(plain.fc1.weight, net.fc1.weight)
    finally:
        dist.destroy_process_group()


def test_legacy_module_prefix_is_stripped(tmp_path) -> None:
    net = Net()
    state = OrderedDict(("module." + k, v) for k, v in net.state_dict().items())
    tree, section = _checkpoint.collect_state({"model": Net()}, rng=False)
    tree["model"] = state
    path = tmp_path / "legacy.safetensors"
    with open(path, "wb") as f:
        _checkpoint.write_checkpoint(f, tree, section)
    plain = Net()
    tk.load_checkpoint(path, model=plain)
    assert torch.equal(plain.fc1.weight, net.fc1.weight)


def test_mismatched_architecture_lists_keys_and_both_shapes(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    tk.save_checkpoint(path, model=Net(hidden=8))
    other = nn.Sequential()
    other.fc1 = nn.Linear(4, 16)
    other.fc3 = nn.Linear(16, 2)
    before = other.fc1.weight.clone()
    with pytest.raises(tk.StateMismatchError) as err:
        tk.load_checkpoint(path, model=other)
    msg = str(err.value)
    assert "missing in checkpoint (2): fc3.weight, fc3.bias" in msg
    assert "unexpected in checkpoint" in msg and "fc2.weight" in msg and "bn.running_mean" in msg
    assert "shape mismatch fc1.weight: checkpoint [8, 4] vs model [16, 4]" in msg
    assert "strict=False" in msg
    assert ("fc1.weight", (8, 4), (16, 4)) in err.value.mismatched
    assert torch.equal(other.fc1.weight, before)  # nothing was loaded


def test_non_strict_loads_what_fits_and_reports(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    source = Net(hidden=8)
    tk.save_checkpoint(path, model=source)
    target = Net(hidden=8)
    target.extra_head = nn.Linear(2, 2)
    target.fc2 = nn.Linear(8, 3)
    info = tk.load_checkpoint(path, model=target, strict=False)
    assert torch.equal(target.fc1.weight, source.fc1.weight)
    assert info.missing_keys["model"] == ["extra_head.weight", "extra_head.bias"]
    assert info.unexpected_keys["model"] == []
    assert info.mismatched_keys["model"] == ["fc2.weight", "fc2.bias"]


def test_optimizer_over_other_parameters(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    model = Net()
    opt = torch.optim.Adam(model.parameters())
    _train(model, opt)
    tk.save_checkpoint(path, optimizer=opt)
    other = torch.optim.Adam(nn.Linear(4, 2).parameters())
    with pytest.raises(tk.StateMismatchError, match="same parameters, in the same groups"):
        tk.load_checkpoint(path, optimizer=other)
    info = tk.load_checkpoint(path, optimizer=other, strict=False)
    assert "optimizer" in info.skipped


def test_missing_object_names_what_the_file_holds(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    model = Net()
    tk.save_checkpoint(path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(tk.MissingObjectError) as err:
        tk.load_checkpoint(path, model=Net(), ema=Net())
    assert err.value.name == "ema" and err.value.available == ["model", "optimizer"]
    assert "holds no 'ema'; it holds ['model', 'optimizer']" in str(err.value)
    assert isinstance(err.value, KeyError)


def test_optimizer_passed_as_model_is_refused(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tk.save_checkpoint(path, model=model, optimizer=opt)
    target = Net()
    before = target.fc1.weight.clone()
    with pytest.raises(tk.StateMismatchError, match="state of a module, but a optimizer"):
        tk.load_checkpoint(path, model=opt)
    with pytest.raises(tk.StateMismatchError, match="state of a optimizer, but a module"):
        tk.load_checkpoint(path, model=target, optimizer=Net())
    assert torch.equal(target.fc1.weight, before)  # the model was not loaded before the error


def test_not_stateful_and_reserved_names(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    with pytest.raises(tk.UnsupportedValueError, match=r"lr= must have state_dict\(\)"):
        tk.save_checkpoint(path, lr=0.1)
    with pytest.raises(tk.UnsupportedValueError, match="reserved"):
        tk.save_checkpoint(path, __rng__=Net())
    assert not path.exists()


def test_failed_save_keeps_previous_checkpoint(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    tk.save_checkpoint(path, model=Net(), epoch=1)
    before = path.read_bytes()
    with pytest.raises(tk.UnsupportedValueError, match=r"\['__extra__'\]\['fn'\]: cannot store a function"):
        tk.save_checkpoint(path, model=Net(), epoch=2, extra={"fn": _train})
    with pytest.raises(tk.UnsupportedValueError, match="metrics must be numbers"):
        tk.save_checkpoint(path, model=Net(), epoch=2, metrics={"hist": [1, 2]})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


def test_newer_format_version_is_refused(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    tk.save_checkpoint(path, model=Net())
    raw = path.read_bytes()
    assert raw.count(b'"torchkeep.format":"1"') == 1
    path.write_bytes(raw.replace(b'"torchkeep.format":"1"', b'"torchkeep.format":"2"'))
    with pytest.raises(tk.FormatVersionError, match="upgrade"):
        tk.load_checkpoint(path, model=Net())


def test_plain_file_is_not_a_checkpoint(tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    tk.save(Net().state_dict(), path)
    with pytest.raises(tk.CorruptCheckpointError, match="not a training checkpoint"):
        tk.load_checkpoint(path, model=Net())
    with pytest.raises(tk.CheckpointNotFoundError):
        tk.load_checkpoint(tmp_path / "nope.safetensors", model=Net())


def test_corrupt_tensor_is_named_and_nothing_loaded(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    tk.save_checkpoint(path, model=Net())
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(tk.CorruptCheckpointError, match="checksum mismatch"):
        tk.load_checkpoint(path, model=Net())


def test_user_object_and_multistep_counter(tmp_path) -> None:
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def state_dict(self) -> dict[str, int]:
            return {"n": self.n}

        def load_state_dict(self, state: dict[str, int]) -> None:
            self.n = state["n"]

    c = Counter()
    c.n = 41
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1, 1, 3])
    path = tmp_path / "c.safetensors"
    tk.save_checkpoint(path, counter=c, optimizer=opt, scheduler=sched)
    c2 = Counter()
    opt2 = torch.optim.SGD(Net().parameters(), lr=1.0)
    sched2 = torch.optim.lr_scheduler.MultiStepLR(opt2, milestones=[2])
    info = tk.load_checkpoint(path, counter=c2, optimizer=opt2, scheduler=sched2)
    assert c2.n == 41 and info.objects["counter"] == "object"
    assert sched2.milestones == sched.milestones and type(sched2.milestones).__name__ == "Counter"


def test_loading_some_objects_reads_and_verifies_only_those(tmp_path) -> None:
    from torchkeep.io import _format

    path = tmp_path / "c.safetensors"
    model = Net()
    opt = torch.optim.Adam(model.parameters())
    _train(model, opt)
    tk.save_checkpoint(path, model=model, optimizer=opt)
    begin = _format.open_file(path).info("optimizer/state/0/exp_avg").begin
    raw = bytearray(path.read_bytes())
    raw[begin] ^= 0xFF
    path.write_bytes(bytes(raw))
    plain = Net()
    tk.load_checkpoint(path, model=plain)  # the damaged optimizer state is not needed
    assert torch.equal(plain.fc1.weight, model.fc1.weight)
    with pytest.raises(tk.CorruptCheckpointError, match="optimizer/state/0/exp_avg"):
        tk.load_checkpoint(path, model=Net(), optimizer=torch.optim.Adam(Net().parameters()))


def test_large_tensors_are_stored_64_byte_aligned(tmp_path) -> None:
    """Step counters and BatchNorm's int64 counter must not shift the big tensors off alignment."""
    from torchkeep.io import _format

    path = tmp_path / "c.safetensors"
    model = Net(hidden=64)
    opt = torch.optim.Adam(model.parameters())
    _train(model, opt)
    tk.save_checkpoint(path, model=model, optimizer=opt, extra={"ids": torch.arange(3)})
    reader = _format.open_file(path)
    big = [reader.info(n) for n in reader.names if reader.info(n).nbytes % 64 == 0]
    assert len(big) >= 10
    assert all((i.begin - reader.data_start) % 64 == 0 for i in big), [(i.name, i.begin) for i in big]
    target = Net(hidden=64)
    target_opt = torch.optim.Adam(target.parameters())
    tk.load_checkpoint(path, model=target, optimizer=target_opt)
    exp_avg = target_opt.state_dict()["state"][0]["exp_avg"]
    assert exp_avg.data_ptr() % 64 == 0
    assert torch.equal(exp_avg, opt.state_dict()["state"][0]["exp_avg"])
