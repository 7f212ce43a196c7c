"""Pins the public API: adding or removing a name is a deliberate change to this list."""

import torchkeep


def test_all_names_exist() -> None:
    for name in torchkeep.__all__:
        assert hasattr(torchkeep, name), name


def test_errors_share_one_root_and_builtins() -> None:
    from torchkeep import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.TorchkeepError)
    assert issubclass(errors.CheckpointNotFoundError, FileNotFoundError)
    assert issubclass(errors.CorruptCheckpointError, ValueError)
    assert issubclass(errors.UnsupportedValueError, TypeError)
    assert issubclass(errors.MissingDependencyError, ImportError)
    assert str(errors.MissingObjectError("no 'ema' in file")) == "no 'ema' in file"


def test_file_io_verbs_are_public() -> None:
    # torch.save/torch.load drop-ins, plus the safetensors-style bytes pair (issue 18, item 19).
    for name in ("save", "load", "save_bytes", "load_bytes"):
        assert name in torchkeep.__all__, name
