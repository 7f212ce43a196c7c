"""Fixtures for the framework integrations: the loopback S3 server of the manager tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "_tk_manager_conftest", Path(__file__).parent.parent / "manager" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_manager = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_manager)

# the same moto_server fixtures (real S3 API on 127.0.0.1) as tests/manager
s3_endpoint = _manager.s3_endpoint
s3_options = _manager.s3_options
s3_url = _manager.s3_url
_no_aws_env = _manager._no_aws_env
