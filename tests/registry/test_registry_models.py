"""register / save_model / load_model: records, files, rebuilds, errors."""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import torchkeep as tk
from torchkeep.io import _format
from torchkeep.models import _registry


class Act(enum.Enum):
    RELU = "relu"
    TANH = "tanh"


@dataclasses.dataclass
class MLPConfig:
    sizes: tuple[int, ...] = (4, 8, 2)
    act: Act = Act.RELU
    dropout: float = 0.0


def _make_mlp_class() -> type[nn.Module]:
    @tk.register(name="test-mlp")
    class MLP(nn.Module):
        def __init__(self, config: MLPConfig, *, scale: float = 1.0) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            for a, b in itertools.pairwise(config.sizes):
                layers += [nn.Linear(a, b), nn.ReLU() if config.act is Act.RELU else nn.Tanh()]
            self.net = nn.Sequential(*layers)
            self.register_buffer("scale", torch.tensor(scale))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x) * self.scale

    return MLP


def test_class_records_bound_arguments_with_defaults() -> None:
    MLP = _make_mlp_class()
    model = MLP(MLPConfig(act=Act.TANH))
    entry = tk.model_entry(model)
    assert entry is not None
    assert entry["name"] == "test-mlp"
    assert entry["version"] == 1
    assert entry["kind"] == "class"
    assert entry["target"].endswith(":_make_mlp_class.<locals>.MLP")
    args = entry["arguments"]["items"]
    assert args["scale"] == 1.0
    assert args["config"]["t"] == "dataclass"
    assert args["config"]["fields"]["act"] == {"t": "enum", "cls": f"{__name__}:Act", "v": "tanh"}


def test_save_and_load_roundtrip_with_dataclass_and_enum(tmp_path: Path) -> None:
    MLP = _make_mlp_class()
    model = MLP(MLPConfig(sizes=(3, 5, 1), act=Act.TANH), scale=2.0)
    path = tmp_path / "mlp.safetensors"
    tk.save_model(model, path)
    loaded = tk.load_model(path)
    assert type(loaded) is MLP
    assert not loaded.training
    x = torch.randn(4, 3)
    assert torch.equal(model(x), loaded(x))
    assert tk.model_entry(loaded) == tk.model_entry(model)


def test_file_is_a_plain_state_dict_for_safetensors(tmp_path: Path) -> None:
    model = _make_mlp_class()(MLPConfig())
    path = tmp_path / "mlp.safetensors"
    tk.save_model(model, path)
    plain = load_file(str(path))
    own = model.state_dict()
    assert list(plain) != [] and set(plain) == set(own)
    for k, v in own.items():
        assert torch.equal(plain[k], v), k
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    meta = json.loads(path.read_bytes()[8 : 8 + header_len])["__metadata__"]
    assert json.loads(meta["torchkeep.model"])["name"] == "test-mlp"
    assert "torchkeep.tree" not in meta


def test_tied_weights_every_key_stored_and_retied_on_load(tmp_path: Path) -> None:
    @tk.register(name="tied-lm")
    class TiedLM(nn.Module):
        def __init__(self, vocab: int = 11, dim: int = 4) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.head = nn.Linear(dim, vocab, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(ids))

    model = TiedLM()
    path = tmp_path / "lm.safetensors"
    tk.save_model(model, path)
    plain = load_file(str(path))
    assert set(plain) == {"embed.weight", "head.weight"}
    assert torch.equal(plain["embed.weight"], plain["head.weight"])
    meta = _format.open_file(path).section("model")
    assert meta["tied"] == [["embed.weight", "head.weight"]]
    loaded = tk.load_model(path)
    assert loaded.head.weight is loaded.embed.weight
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(model(ids), loaded(ids))


def test_tie_lost_in_rebuild_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    @tk.register(name="late-tie")
    class LateTie(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(2, 2, bias=False)
            self.b = nn.Linear(2, 2, bias=False)

    model = LateTie()
    model.b.weight = model.a.weight  # tied after construction: the rebuild cannot know
    path = tmp_path / "late.safetensors"
    tk.save_model(model, path)
    with caplog.at_level(logging.WARNING, logger="torchkeep.models._modelfile"):
        loaded = tk.load_model(path)
    assert "tie them in the constructor" in caplog.text
    assert torch.equal(loaded.a.weight, loaded.b.weight)


def test_factory_records_and_rebuilds(tmp_path: Path) -> None:
    @tk.register(name="seq-factory", version=2)
    def build(width: int, depth: int = 2, *extra: int, bias: bool = True, **opts: str) -> nn.Module:
        layers = [nn.Linear(width, width, bias=bias) for _ in range(depth + len(extra))]
        return nn.Sequential(*layers)

    model = build(3, 1, 7, bias=False, note="x")
    entry = tk.model_entry(model)
    assert entry is not None and entry["kind"] == "factory" and entry["version"] == 2
    assert entry["arguments"]["items"] == {
        "width": 3,
        "depth": 1,
        "extra": {"t": "tuple", "items": [7]},
        "bias": False,
        "opts": {"t": "dict", "items": {"note": "x"}},
    }
    path = tmp_path / "f.safetensors"
    tk.save_model(model, path)
    loaded = tk.load_model(path)
    assert len(loaded) == 2 and loaded[0].bias is None
    x = torch.randn(2, 3)
    assert torch.equal(model(x), loaded(x))


def test_bare_decorator_uses_qualname() -> None:
    @tk.register
    class Bare(nn.Module):
        pass

    assert tk.model_entry(Bare())["name"] == Bare.__qualname__  # type: ignore[index]


def test_name_collision_raises_but_same_object_may_register_again() -> None:
    @tk.register(name="taken")
    class A(nn.Module):
        pass

    with pytest.raises(tk.RegistryError, match="'taken' is already registered by"):

        @tk.register(name="taken")
        class B(nn.Module):
            pass

    tk.register(name="taken")(A)  # a re-run cell / reloaded module: quietly fine
    assert tk.model_entry(A())["name"] == "taken"  # type: ignore[index]


def test_module_reload_reregisters(write_module) -> None:  # type: ignore[no-untyped-def]
    import importlib

    write_module(
        "reload_me",
        """
        import torch, torchkeep as tk
        @tk.register(name="reload-me")
        class M(torch.nn.Module):
            def __init__(self, n=1):
                super().__init__()
                self.fc = torch.nn.Linear(n, n)
        """,
    )
    import reload_me  # type: ignore[import-not-found]

    importlib.reload(reload_me)
    assert _registry.lookup("reload-me").builder is reload_me.M


@pytest.mark.parametrize("bad", [object, 3, "x".upper])
def test_register_rejects_non_modules(bad: object) -> None:
    with pytest.raises(tk.UsageError, match=r"nn.Module subclasses and factory functions"):
        tk.register(name="bad")(bad)


@pytest.mark.parametrize("version", [0, -1, 1.5, "2", True])
def test_register_rejects_bad_versions(version: object) -> None:
    with pytest.raises(tk.UsageError, match="int >= 1"):
        tk.register(name="v", version=version)  # type: ignore[arg-type]


def test_factory_must_return_a_module() -> None:
    @tk.register(name="not-a-module")
    def build() -> object:
        return 3

    with pytest.raises(tk.RegistryError, match=r"must return an nn.Module"):
        build()


def test_unstorable_argument_is_named_at_save_time(tmp_path: Path) -> None:
    @tk.register(name="takes-act")
    class TakesAct(nn.Module):
        def __init__(self, act: object = nn.ReLU, weight: object = None) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

    model = TakesAct()  # building is fine; saving must name the argument
    path = tmp_path / "m.safetensors"
    with pytest.raises(tk.UnsupportedValueError, match="argument 'act' of takes-act") as info:
        tk.save_model(model, path)
    assert info.value.path == "act"
    assert not path.exists()
    with pytest.raises(tk.UnsupportedValueError, match=r"argument 'weight' .* holds a tensor"):
        tk.save_model(TakesAct(act="relu", weight=torch.ones(2)), path)
    with pytest.raises(tk.UnsupportedValueError, match=r"argument 'weight'.*\['k'\]"):
        tk.save_model(TakesAct(act="relu", weight={"k": lambda: 1}), path)


def test_failed_save_keeps_the_previous_file(tmp_path: Path) -> None:
    @tk.register(name="keeps")
    class Keeps(nn.Module):
        def __init__(self, act: object = "relu") -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

    path = tmp_path / "m.safetensors"
    tk.save_model(Keeps(), path)
    before = path.read_bytes()
    with pytest.raises(tk.UnsupportedValueError):
        tk.save_model(Keeps(act=print), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_unregistered_model_and_unregistered_subclass(tmp_path: Path) -> None:
    with pytest.raises(tk.ModelNotRegisteredError, match=r"is not registered.*@tk.register"):
        tk.save_model(nn.Linear(2, 2), tmp_path / "x.safetensors")

    @tk.register(name="base")
    class Base(nn.Module):
        def __init__(self, n: int = 2) -> None:
            super().__init__()
            self.lin = nn.Linear(n, n)

    class Sub(Base):
        def __init__(self) -> None:
            super().__init__(3)
            self.extra = nn.Linear(3, 3)

    assert tk.model_entry(Sub()) is None
    with pytest.raises(tk.ModelNotRegisteredError, match="subclass of the registered Base"):
        tk.save_model(Sub(), tmp_path / "x.safetensors")

    @tk.register(name="sub")
    class Sub2(Base):
        def __init__(self, m: int = 3) -> None:
            super().__init__(m)

    entry = tk.model_entry(Sub2())
    assert entry is not None and entry["name"] == "sub" and entry["arguments"]["items"] == {"m": 3}
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.filterwarnings("ignore:Lazy modules are a new feature:UserWarning")
def test_lazy_modules_must_be_initialized_before_saving(tmp_path: Path) -> None:
    @tk.register(name="lazy")
    def lazy() -> nn.Module:
        return nn.Sequential(nn.LazyLinear(3))

    model = lazy()
    with pytest.raises(tk.UnsupportedValueError, match="uninitialized lazy parameter; run one forward pass"):
        tk.save_model(model, tmp_path / "lazy.safetensors")
    model(torch.randn(2, 5))
    tk.save_model(model, tmp_path / "lazy.safetensors")
    assert load_file(str(tmp_path / "lazy.safetensors"))["0.weight"].shape == (3, 5)
    x = torch.randn(2, 5)
    assert torch.equal(tk.load_model(tmp_path / "lazy.safetensors")(x), model(x))


def test_wrapped_models_save_unwrapped(tmp_path: Path) -> None:
    MLP = _make_mlp_class()
    model = MLP(MLPConfig())
    path = tmp_path / "dp.safetensors"
    tk.save_model(nn.DataParallel(model), path)
    assert not any(k.startswith("module.") for k in load_file(str(path)))
    assert type(tk.load_model(path)) is MLP


def test_plain_file_has_no_model_entry(tmp_path: Path) -> None:
    path = tmp_path / "sd.safetensors"
    tk.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(tk.MissingObjectError, match="holds no model entry"):
        tk.load_model(path)


def test_unknown_name_says_which_module_to_import(tmp_path: Path) -> None:
    MLP = _make_mlp_class()
    path = tmp_path / "m.safetensors"
    tk.save_model(MLP(MLPConfig()), path)
    _registry._unregister("test-mlp")
    with pytest.raises(tk.ModelNotRegisteredError, match=f"`import {__name__}` before loading") as info:
        tk.load_model(path)
    assert info.value.module == __name__
    assert info.value.name == "test-mlp"


def test_strict_mismatch_and_non_strict(tmp_path: Path) -> None:
    @tk.register(name="grows")
    class Grows(nn.Module):
        def __init__(self, n: int = 2) -> None:
            super().__init__()
            self.lin = nn.Linear(n, n)

    model = Grows()
    path = tmp_path / "g.safetensors"
    tk.save_model(model, path)
    _registry._unregister("grows")

    @tk.register(name="grows")
    class Grows2(nn.Module):
        def __init__(self, n: int = 2) -> None:
            super().__init__()
            self.lin = nn.Linear(n, n)
            self.more = nn.Linear(n, 1)

    with pytest.raises(tk.StateMismatchError, match=r"missing in file \(2\): more.weight, more.bias") as info:
        tk.load_model(path)
    assert "bump its version" in str(info.value)
    loaded = tk.load_model(path, strict=False)
    assert torch.equal(loaded.lin.weight, model.lin.weight)


def test_signature_changed_without_migration(tmp_path: Path) -> None:
    @tk.register(name="sig")
    class Sig(nn.Module):
        def __init__(self, width: int = 2) -> None:
            super().__init__()

    path = tmp_path / "s.safetensors"
    tk.save_model(Sig(), path)
    _registry._unregister("sig")

    @tk.register(name="sig")
    class Sig2(nn.Module):
        def __init__(self, size: int) -> None:
            super().__init__()

    with pytest.raises(tk.RegistryError, match=r"does not accept argument\(s\) \['width'\]"):
        tk.load_model(path)


def test_load_model_from_training_checkpoint(tmp_path: Path) -> None:
    MLP = _make_mlp_class()
    model = MLP(MLPConfig())
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = tmp_path / "ckpt.safetensors"
    info = tk.save_checkpoint(path, net=model, optimizer=opt, epoch=3)
    assert info.model is not None and info.model["name"] == "test-mlp"
    loaded = tk.load_model(path)
    x = torch.randn(3, 4)
    assert torch.equal(loaded(x), model(x))
    assert not loaded.training


def test_checkpoint_without_registered_model(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    tk.save_checkpoint(path, model=nn.Linear(2, 2))
    with pytest.raises(tk.MissingObjectError, match="no model entry"):
        tk.load_model(path)


def test_map_location_forms(tmp_path: Path) -> None:
    model = _make_mlp_class()(MLPConfig())
    path = tmp_path / "m.safetensors"
    tk.save_model(model, path)
    for loc in ("cpu", torch.device("cpu"), {"cpu": "cpu"}, lambda t, dev: t.clone()):
        loaded = tk.load_model(path, map_location=loc)
        assert next(loaded.parameters()).device.type == "cpu"


@pytest.mark.gpu
def test_load_onto_cuda(tmp_path: Path) -> None:
    model = _make_mlp_class()(MLPConfig())
    path = tmp_path / "m.safetensors"
    tk.save_model(model.cuda(), path)
    loaded = tk.load_model(path, map_location="cuda:0")
    assert {p.device.type for p in loaded.state_dict().values()} == {"cuda"}
    cpu = tk.load_model(path)
    assert {p.device.type for p in cpu.state_dict().values()} == {"cpu"}


def test_corrupt_model_section(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    with open(path, "wb") as f:
        _format.write(f, {"w": torch.ones(1)}, sections={"model": {"name": 3}})
    with pytest.raises(tk.CorruptCheckpointError, match="model section is malformed"):
        tk.load_model(path)
    with open(path, "wb") as f:
        _format.write(
            f,
            {"w": torch.ones(1)},
            sections={"model": {"name": "x", "version": 1, "target": "a:b", "arguments": {"t": "nope"}}},
        )

    @tk.register(name="x")
    class X(nn.Module):
        pass

    with pytest.raises(tk.CorruptCheckpointError, match="cannot decode the arguments"):
        tk.load_model(path)


@pytest.mark.parametrize(
    "section",
    [
        {"name": "x", "version": 0, "target": "a:b", "arguments": {"t": "dict", "items": {}}},
        {"name": "x", "version": True, "target": "a:b", "arguments": {"t": "dict", "items": {}}},
        {"name": "x", "version": 1, "target": "a:b"},
        ["not", "an", "object"],
    ],
)
def test_hostile_model_sections(tmp_path: Path, section: object) -> None:
    path = tmp_path / "bad.safetensors"
    with open(path, "wb") as f:
        _format.write(f, {"w": torch.ones(1)}, sections={"model": section})
    with pytest.raises(tk.CorruptCheckpointError, match="model section is malformed"):
        tk.load_model(path, import_module=True)


@pytest.mark.parametrize("tied", [[[{"a": 1}]], [[["fc.weight"]]], "fc.weight", [[1, 2]], [None]])
def test_hostile_tied_hint_is_ignored(tmp_path: Path, tied: object) -> None:
    model = _make_mlp_class()(MLPConfig())
    good, bad = tmp_path / "m.safetensors", tmp_path / "bad.safetensors"
    tk.save_model(model, good)
    reader = _format.open_file(good)
    section = {**reader.section("model"), "tied": tied}
    with open(bad, "wb") as f:
        _format.write(f, {k: reader.tensor(k) for k in reader.names}, sections={"model": section})
    loaded = tk.load_model(bad)  # "tied" only feeds a warning: a malformed one must not break loading
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("target", ["os; import shutil:x", "../evil:x", "__main__:Net", ":x", "a b:c"])
def test_import_module_refuses_odd_module_names(tmp_path: Path, target: str) -> None:
    path = tmp_path / "odd.safetensors"
    section = {"name": "odd", "version": 1, "target": target, "arguments": {"t": "dict", "items": {}}}
    with open(path, "wb") as f:
        _format.write(f, {"w": torch.ones(1)}, sections={"model": section})
    with pytest.raises(tk.ModelNotRegisteredError, match="cannot be imported"):
        tk.load_model(path, import_module=True)


def test_arguments_referring_to_tensors_are_refused(tmp_path: Path) -> None:
    @tk.register(name="t-args")
    class TArgs(nn.Module):
        def __init__(self, w: object = None) -> None:
            super().__init__()

    path = tmp_path / "t.safetensors"
    section = {
        "name": "t-args",
        "version": 1,
        "target": "m:TArgs",
        "arguments": {"t": "dict", "items": {"w": {"t": "tensor", "ref": "w"}}},
    }
    with open(path, "wb") as f:
        _format.write(f, {"w": torch.ones(1)}, sections={"model": section})
    with pytest.raises(tk.CorruptCheckpointError, match="refer to tensor 'w'"):
        tk.load_model(path)


def test_dataclass_argument_class_not_loaded(tmp_path: Path, write_module) -> None:  # type: ignore[no-untyped-def]
    write_module(
        "cfg_only",
        """
        import dataclasses
        @dataclasses.dataclass
        class Cfg:
            n: int = 2
        """,
    )
    import cfg_only  # type: ignore[import-not-found]

    @tk.register(name="uses-cfg")
    class UsesCfg(nn.Module):
        def __init__(self, cfg: object) -> None:
            super().__init__()
            self.lin = nn.Linear(cfg.n, 1)  # type: ignore[attr-defined]

    path = tmp_path / "c.safetensors"
    tk.save_model(UsesCfg(cfg_only.Cfg(3)), path)
    import sys

    del sys.modules["cfg_only"]
    with pytest.raises(tk.CorruptCheckpointError, match="import cfg_only before loading"):
        tk.load_model(path)
    assert tk.load_model(path, import_module=True).lin.in_features == 3  # opt-in imports it


def _fast(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record whether each load_model call took the no-initialization (meta) path."""
    from torchkeep.models import _modelfile

    taken: list[bool] = []
    original = _modelfile._build_on_meta

    def spy(*args: object, **kwargs: object) -> object:
        model = original(*args, **kwargs)  # type: ignore[arg-type]
        taken.append(model is not None)
        return model

    monkeypatch.setattr(_modelfile, "_build_on_meta", spy)
    return taken


def test_fast_path_skips_init_maps_the_file_and_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    MLP = _make_mlp_class()
    model = MLP(MLPConfig())
    path = tmp_path / "m.safetensors"
    tk.save_model(model, path)
    before = path.read_bytes()
    taken = _fast(monkeypatch)
    rng = torch.get_rng_state()
    loaded = tk.load_model(path)
    assert taken == [True]
    assert torch.equal(torch.get_rng_state(), rng)  # no weight init ran
    assert all(p.device.type == "cpu" and p.requires_grad for p in loaded.parameters())
    x = torch.randn(3, 4)
    assert torch.equal(loaded(x), model(x))
    loaded.train()
    opt = torch.optim.SGD(loaded.parameters(), lr=0.5)
    loaded(x).sum().backward()
    opt.step()
    assert not torch.equal(loaded(x), model(x))
    assert path.read_bytes() == before  # the mapping is copy-on-write: the file never changes


@pytest.mark.filterwarnings("ignore:.*holds state that its state_dict")  # Trap is saved on purpose
def test_fallbacks_build_normally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    @tk.register(name="np-buffer")
    class NonPersistent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.register_buffer("pos", torch.arange(4), persistent=False)

    @tk.register(name="needs-data")
    class NeedsData(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            n = int(torch.tensor(3).item())  # impossible on the meta device
            self.lin = nn.Linear(n, n)

    @tk.register(name="trap")
    class Trap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.offset = torch.ones(2)

    taken = _fast(monkeypatch)
    for cls in (NonPersistent, NeedsData, Trap):
        path = tmp_path / f"{cls.__name__}.safetensors"
        model = cls()
        tk.save_model(model, path)
        loaded = tk.load_model(path)
        assert all(t.device.type == "cpu" for t in loaded.state_dict().values())
        assert torch.equal(loaded.lin.weight, model.lin.weight)
    assert taken == [False, False, False]
    assert torch.equal(loaded.offset, torch.ones(2))  # built by __init__, not left on meta
    assert torch.equal(tk.load_model(tmp_path / "NonPersistent.safetensors").pos, torch.arange(4))


def test_dtype_of_the_constructor_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    @tk.register(name="halfable")
    class Halfable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

    model = Halfable().half()
    tk.save_model(model, tmp_path / "h.safetensors")
    taken = _fast(monkeypatch)
    loaded = tk.load_model(tmp_path / "h.safetensors")
    assert taken == [False] and loaded.lin.weight.dtype == torch.float32
    assert torch.equal(loaded.lin.weight, model.lin.weight.float())


def test_custom_loading_that_ignores_assign_falls_back(tmp_path: Path) -> None:
    @tk.register(name="custom-load")
    class CustomLoad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(2))

        def _load_from_state_dict(self, state_dict, prefix, *args) -> None:  # type: ignore[no-untyped-def]
            with torch.no_grad():
                self.w.copy_(state_dict[prefix + "w"])  # copies in place: assign=True has no effect

    model = CustomLoad()
    tk.save_model(model, tmp_path / "c.safetensors")
    loaded = tk.load_model(tmp_path / "c.safetensors")
    assert loaded.w.device.type == "cpu" and torch.equal(loaded.w, model.w)


def test_checkpoint_of_a_registered_model_with_an_unstorable_argument(tmp_path: Path) -> None:
    @tk.register(name="ckpt-act")
    class CkptAct(nn.Module):
        def __init__(self, act: object = torch.tanh) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

    path = tmp_path / "ckpt.safetensors"
    with pytest.raises(tk.UnsupportedValueError, match="argument 'act' of ckpt-act"):
        tk.save_checkpoint(path, model=CkptAct())
    assert not path.exists()
    tk.save_checkpoint(path, model=CkptAct(act="tanh"))
    assert tk.read_info(path).model["arguments"]["items"] == {"act": "tanh"}  # type: ignore[index]


def test_meta_and_sparse_state_are_refused_naming_the_key(tmp_path: Path) -> None:
    @tk.register(name="odd-state")
    def odd(kind: str) -> nn.Module:
        m = nn.Linear(2, 2)
        if kind == "meta":
            return m.to("meta")
        m.register_buffer("sparse", torch.eye(2).to_sparse())
        return m

    with pytest.raises(tk.UnsupportedValueError, match=r"\['weight'\]: meta tensors have no data"):
        tk.save_model(odd("meta"), tmp_path / "m.safetensors")
    with pytest.raises(tk.UnsupportedValueError, match=r"\['sparse'\].*to_dense"):
        tk.save_model(odd("sparse"), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_save_model_refuses_non_modules(tmp_path: Path) -> None:
    state = nn.Linear(2, 2).state_dict()
    with pytest.raises(tk.UsageError, match=r"save_model\(\) takes a torch.nn.Module.*got OrderedDict"):
        tk.save_model(state, tmp_path / "m.safetensors")  # type: ignore[arg-type]
    assert not (tmp_path / "m.safetensors").exists()
