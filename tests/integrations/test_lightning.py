"""TorchkeepCheckpointIO inside real Lightning runs (tiny CPU models, a few steps each)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _pickle_scan import scan

import torchkeep as tk

L = pytest.importorskip("lightning")
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from torchkeep.integrations.lightning import TorchkeepCheckpointIO  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")  # Lightning's own hints (no GPU, few workers, ...)

HERE = Path(__file__).parent


class Opaque:
    """A picklable object with no pickle-free form (Lightning keeps it in hparams)."""


class Tiny(L.LightningModule):
    def __init__(self, hidden: int = 4, lr: float = 0.05, extra: Any = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1)}


def _loader() -> torch.utils.data.DataLoader[Any]:
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g))
    return torch.utils.data.DataLoader(data, batch_size=4)


def _trainer(epochs: int, callbacks: list[Any], plugins: list[Any] | None = None, root: Path | None = None) -> Any:
    return L.Trainer(
        max_epochs=epochs,
        plugins=[TorchkeepCheckpointIO()] if plugins is None else plugins,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        # without a ModelCheckpoint of the test's own, Lightning's default one would write into the cwd
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        default_root_dir=root,
    )


def test_model_checkpoint_top_k_last_and_steps_are_torchkeep_files(tmp_path: Path) -> None:
    steps = tmp_path / "steps"
    callbacks = [
        ModelCheckpoint(dirpath=tmp_path, save_top_k=2, monitor="train_loss", save_last=True),
        ModelCheckpoint(dirpath=steps, every_n_train_steps=5, save_top_k=-1),
    ]
    _trainer(3, callbacks).fit(Tiny(), _loader())
    names = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert len(names) == 3 and "last.ckpt" in names  # top-2 kept, the third deleted through the plugin
    assert sorted(p.name for p in steps.glob("*.ckpt")) == ["epoch=1-step=5.ckpt", "epoch=2-step=10.ckpt"]
    kinds = scan(tmp_path)
    assert set(kinds.values()) == {"safetensors"}
    info = tk.read_info(tmp_path / "last.ckpt")
    assert (info.epoch, info.step) == (2, 12)
    # the whole Lightning dict, natively: tensors are tensors, loops and callbacks are plain trees
    ckpt = TorchkeepCheckpointIO().load_checkpoint(tmp_path / "last.ckpt")
    assert {"state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks", "hyper_parameters"} <= set(ckpt)
    assert ckpt["hyper_parameters"]["hidden"] == 4 and ckpt["global_step"] == 12
    assert isinstance(ckpt["optimizer_states"][0]["state"][0]["exp_avg"], torch.Tensor)


def test_load_from_checkpoint_unchanged(tmp_path: Path) -> None:
    model = Tiny(hidden=5)
    trainer = _trainer(1, [ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    trainer.fit(model, _loader())
    loaded = Tiny.load_from_checkpoint(tmp_path / "last.ckpt")
    assert loaded.hparams.hidden == 5
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_last_continues_and_fit_twice_is_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    straight = Tiny()
    _trainer(3, []).fit(straight, _loader())

    torch.manual_seed(0)
    first = Tiny()
    _trainer(2, [ModelCheckpoint(dirpath=tmp_path, save_last=True)]).fit(first, _loader())
    resumed = Tiny()
    trainer = _trainer(3, [ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    trainer.fit(resumed, _loader(), ckpt_path="last")
    assert trainer.global_step == 12
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_unstorable_value_names_its_key(tmp_path: Path) -> None:
    model = Tiny(extra=Opaque())  # an arbitrary object in the hyper-parameters: no pickle-free form
    trainer = _trainer(1, [ModelCheckpoint(dirpath=tmp_path)])
    with pytest.raises(tk.UnsupportedValueError, match=r"checkpoint\['hyper_parameters'\]\['extra'\]: .*Opaque"):
        trainer.fit(model, _loader())
    assert not list(tmp_path.glob("*.ckpt"))  # nothing half-written


def test_corrupt_checkpoint_stops_with_typed_error_and_deletes_nothing(tmp_path: Path) -> None:
    _trainer(2, [ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, save_last=True)]).fit(Tiny(), _loader())
    last = tmp_path / "last.ckpt"
    data = bytearray(last.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in tensor data: the checksum catches it
    last.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(tk.CorruptCheckpointError, match=r"last\.ckpt") as err:
        _trainer(3, [ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, save_last=True)]).fit(
            Tiny(), _loader(), ckpt_path="last"
        )
    assert err.value.path is not None and err.value.path.endswith("last.ckpt")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # Lightning stops; nothing deleted
    # the earlier, intact checkpoint still resumes
    trainer = _trainer(3, [])
    trainer.fit(Tiny(), _loader(), ckpt_path=str(tmp_path / "epoch=0-step=4.ckpt"))
    assert trainer.global_step == 12


def test_pickled_ckpt_is_refused_then_resumes_after_convert(tmp_path: Path) -> None:
    from torchkeep.convert import convert

    old = tmp_path / "old"
    # Lightning's default CheckpointIO: a pickled .ckpt, as users have them today
    _trainer(2, [ModelCheckpoint(dirpath=old, save_last=True)], plugins=[]).fit(Tiny(), _loader())
    legacy = old / "last.ckpt"
    with pytest.raises(tk.CorruptCheckpointError, match="torchkeep convert"):
        _trainer(3, []).fit(Tiny(), _loader(), ckpt_path=str(legacy))
    converted = tmp_path / "converted.ckpt"
    convert(legacy, converted, trust_pickle=True)
    trainer = _trainer(3, [])
    trainer.fit(Tiny(), _loader(), ckpt_path=str(converted))
    assert trainer.global_step == 12 and trainer.current_epoch == 3


def test_remote_dirpath_on_s3(
    s3_url: str, s3_options: dict[str, Any], s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    # Lightning lists and deletes through its own fsspec filesystem, which reads the endpoint from
    # the environment; the plugin gets the same options explicitly.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    io = TorchkeepCheckpointIO(storage_options=s3_options)
    callbacks = [ModelCheckpoint(dirpath=s3_url, save_top_k=1, monitor="train_loss", save_last=True)]
    model = Tiny()
    _trainer(2, callbacks, plugins=[io]).fit(model, _loader())
    fs = s3fs.S3FileSystem(**s3_options)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(s3_url))
    assert len(names) == 2 and "last.ckpt" in names
    assert fs.cat_file(f"{s3_url}/last.ckpt")[8:9] == b"{"  # a torchkeep file, not a zip
    trainer = _trainer(
        3,
        [ModelCheckpoint(dirpath=s3_url, save_last=True)],
        plugins=[TorchkeepCheckpointIO(storage_options=s3_options)],
    )
    trainer.fit(Tiny(), _loader(), ckpt_path=f"{s3_url}/last.ckpt")
    assert trainer.global_step == 12


def test_pytorch_lightning_package(tmp_path: Path) -> None:
    pl = pytest.importorskip("pytorch_lightning")
    from torchkeep.integrations.pytorch_lightning import TorchkeepCheckpointIO as PLCheckpointIO

    class PLTiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(3, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def trainer(epochs: int) -> Any:
        return pl.Trainer(
            max_epochs=epochs,
            plugins=[PLCheckpointIO()],
            callbacks=[pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )

    trainer(1).fit(PLTiny(), _loader())
    assert set(scan(tmp_path).values()) == {"safetensors"}
    resumed = trainer(2)
    resumed.fit(PLTiny(), _loader(), ckpt_path="last")
    assert resumed.global_step == 8
    assert isinstance(PLTiny.load_from_checkpoint(tmp_path / "last.ckpt"), PLTiny)


class FineTune(L.LightningModule):
    """A frozen backbone (two 256×256 layers: blobs) and a trainable 256×256 head with Adam."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(
            torch.nn.Linear(3, 256), torch.nn.Tanh(), torch.nn.Linear(256, 256), torch.nn.Tanh()
        )
        self.backbone.requires_grad_(False)
        self.head = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Tanh(), torch.nn.Linear(256, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.head(self.backbone(x)), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.head.parameters(), lr=0.01)


def _refs(path: Path) -> set[str]:
    """The blobs one torchkeep file refers to."""
    from torchkeep.checkpoint.layouts import DedupLayout
    from torchkeep.io._storage import LocalStorage

    return DedupLayout().read_header_blobs(LocalStorage(str(path.parent), create=False), path.name)


def _blobs_of(directory: Path) -> tuple[set[str], set[str]]:
    """(blobs the torchkeep files in ``directory`` refer to, blobs on disk)."""
    referenced: set[str] = set().union(*(_refs(p) for p in directory.glob("*.ckpt")))
    return referenced, {p.name for p in (directory / "blobs").iterdir()}


def _assert_blobs_are_exactly_the_referenced_ones(directory: Path) -> None:
    referenced, on_disk = _blobs_of(directory)
    assert referenced and referenced == on_disk, (sorted(referenced - on_disk), sorted(on_disk - referenced))


def _dedup_trainer(epochs: int, root: Path, io: Any) -> Any:
    return _trainer(
        epochs,
        [ModelCheckpoint(dirpath=root, every_n_train_steps=2, save_top_k=2, monitor="step", mode="max", save_last=True)],
        plugins=[io],
    )


def test_dedup_writes_the_frozen_backbone_once_and_sweeps_what_retention_drops(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FineTune()
    _dedup_trainer(3, tmp_path, TorchkeepCheckpointIO(dedup=True)).fit(model, _loader())
    names = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert names == ["epoch=2-step=10.ckpt", "epoch=2-step=12.ckpt", "last.ckpt"]  # 6 saves, top-2 + last kept
    assert not (tmp_path / ".torchkeep.lock").exists()  # released at teardown
    _assert_blobs_are_exactly_the_referenced_ones(tmp_path)  # what the 4 removed saves alone used is gone
    # the frozen 256×256 weight is one blob shared by every file; the head and Adam's moments change
    refs = {n: _refs(tmp_path / n) for n in names}
    assert len(set.intersection(*refs.values())) == 1  # the 3×256 layer and the biases stay inline
    assert refs["last.ckpt"] == refs["epoch=2-step=12.ckpt"] != refs["epoch=2-step=10.ckpt"]
    # every file stays one loadable torchkeep file, bit-exact
    loaded = FineTune.load_from_checkpoint(tmp_path / "last.ckpt")
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert subprocess.run(
        [sys.executable, "-m", "torchkeep", "verify", str(tmp_path / "epoch=2-step=10.ckpt")], capture_output=True
    ).returncode == 0
    # `torchkeep gc` reads the .ckpt files too: it removes nothing that one of them needs
    assert tk.manager.collect_garbage(tmp_path) == []
    _assert_blobs_are_exactly_the_referenced_ones(tmp_path)
    # on disk: one full checkpoint plus small deltas, where plain files would be 3 full ones
    stored = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    full = tk.consolidate(tmp_path / "last.ckpt", tmp_path.parent / "full.safetensors")
    assert full is not None
    assert stored < 2.0 * (tmp_path.parent / "full.safetensors").stat().st_size


def test_dedup_resume_is_exact_and_a_missing_blob_is_named(tmp_path: Path) -> None:
    torch.manual_seed(0)
    straight = FineTune()
    _trainer(3, []).fit(straight, _loader())

    torch.manual_seed(0)
    first = FineTune()
    _dedup_trainer(2, tmp_path, TorchkeepCheckpointIO(dedup=True)).fit(first, _loader())
    resumed = FineTune()
    trainer = _dedup_trainer(3, tmp_path, TorchkeepCheckpointIO(dedup=True))
    trainer.fit(resumed, _loader(), ckpt_path="last")
    assert trainer.global_step == 12
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    blob = tmp_path / "blobs" / sorted(_refs(tmp_path / "last.ckpt"))[0]
    blob.unlink()
    survivors = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(tk.CorruptCheckpointError, match=blob.name):
        TorchkeepCheckpointIO().load_checkpoint(tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == survivors  # nothing else deleted


def test_dedup_refuses_a_remote_dirpath_and_a_second_writer(tmp_path: Path) -> None:
    state = {"state_dict": {"w": torch.ones(256, 256)}, "global_step": 1}
    with pytest.raises(tk.UsageError, match="local directories only"):
        TorchkeepCheckpointIO(dedup=True).save_checkpoint(state, "memory://bucket/run/last.ckpt")
    first, second = TorchkeepCheckpointIO(dedup=True), TorchkeepCheckpointIO(dedup=True)
    first.save_checkpoint(state, tmp_path / "a.ckpt")
    with pytest.raises(tk.CheckpointLockedError):
        second.save_checkpoint(state, tmp_path / "b.ckpt")
    assert not (tmp_path / "b.ckpt").exists()
    first.teardown()
    second.save_checkpoint(state, tmp_path / "b.ckpt")
    second.remove_checkpoint(tmp_path / "a.ckpt")
    assert len(list((tmp_path / "blobs").iterdir())) == 1  # still needed by b.ckpt
    second.remove_checkpoint(tmp_path / "b.ckpt")
    assert list((tmp_path / "blobs").iterdir()) == []
    second.teardown()


def test_a_pickled_dedup_plugin_leaves_its_locks_behind(tmp_path: Path) -> None:
    import pickle

    state = {"state_dict": {"w": torch.ones(256, 256)}, "global_step": 1}
    io = TorchkeepCheckpointIO(dedup=True)
    io.save_checkpoint(state, tmp_path / "a.ckpt")  # holds the directory lock from here on
    copy = pickle.loads(pickle.dumps(io))  # what process-spawning strategies do to plugins
    assert copy.dedup and copy._locks == {}
    with pytest.raises(tk.CheckpointLockedError):
        copy.save_checkpoint(state, tmp_path / "b.ckpt")  # the original still holds it
    io.teardown()
    copy.save_checkpoint(state, tmp_path / "b.ckpt")
    copy.teardown()
    assert copy.load_checkpoint(tmp_path / "b.ckpt")["global_step"] == 1


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent.parent / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(HERE / "_lightning_run.py"), *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
@pytest.mark.parametrize("dedup", [False, True], ids=["plain", "dedup"])
def test_sigkill_midway_then_resume_is_bitwise_equal(tmp_path: Path, dedup: bool) -> None:
    flags = ["--dedup"] if dedup else []
    straight = _run(str(tmp_path / "a"), str(tmp_path / "a.out"), "--epochs", "4", *flags)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _run(str(tmp_path / "b"), str(tmp_path / "b.out"), "--epochs", "4", "--kill-at-step", "10", *flags)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL in epoch 3, after epoch 2's checkpoint
    assert not (tmp_path / "b.out").exists()
    if dedup:  # the dead run's lock is free again (flock dies with its process), its blobs shared
        assert (tmp_path / "b" / "blobs").is_dir()
    resumed = _run(str(tmp_path / "b"), str(tmp_path / "b.out"), "--epochs", "4", "--resume", *flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    a, b = tk.load(tmp_path / "a.out"), tk.load(tmp_path / "b.out")
    assert a["global_step"] == b["global_step"] == 16
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    if dedup:
        for run in ("a", "b"):
            _assert_blobs_are_exactly_the_referenced_ones(tmp_path / run)
            _assert_blobs_are_exactly_the_referenced_ones(tmp_path / run / "steps")
    kinds = scan(tmp_path / "a", tmp_path / "b")
    assert set(kinds.values()) == ({"safetensors", "blob"} if dedup else {"safetensors"}) and "last.ckpt" in kinds


@pytest.mark.parametrize(
    "name",
    [
        "torchkeep.integrations",
        "torchkeep.integrations._files",
        "torchkeep.integrations._lightning_io",
        "torchkeep.integrations.lightning",
        "torchkeep.integrations.pytorch_lightning",
    ],
)
def test_docstring_examples(name: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_import_torchkeep_imports_no_framework() -> None:
    code = (
        "import sys, torchkeep, torchkeep.integrations; "
        "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers', 'accelerate') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "framework", "extra"),
    [
        ("lightning", "lightning", "lightning"),
        ("pytorch_lightning", "pytorch_lightning", "pytorch-lightning"),
        ("transformers", "transformers", "transformers"),
        ("accelerate", "accelerate", "accelerate"),
    ],
)
def test_missing_framework_is_a_missing_dependency_error(module: str, framework: str, extra: str) -> None:
    code = (
        f"import sys; sys.modules[{framework!r}] = None\n"
        "import torchkeep as tk\n"
        "try:\n"
        f"    import torchkeep.integrations.{module}\n"
        "except tk.MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert f"pip install 'torchkeep[{extra}]'" in out
