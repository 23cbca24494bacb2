"""The project's own errors share one base (callers catch ChoreoError to tell a refusal from a bug)
and keep the built-in base that callers already caught them by."""

from __future__ import annotations

import pytest

from processors.cli.contracts import InputError
from processors.contracts.compat import SchemaParseError
from processors.errors import ChoreoError
from processors.localbroker.broker import BrokerError
from processors.localbroker.jars import ToolchainError
from processors.settings import SettingsError
from processors.tooling.timeparse import TimeArgError


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (BrokerError, RuntimeError),
        (ToolchainError, RuntimeError),
        (SettingsError, ValueError),
        (TimeArgError, ValueError),
        (SchemaParseError, ValueError),
        (InputError, Exception),
    ],
)
def test_own_errors_are_choreo_errors_and_keep_their_builtin_base(error: type[Exception], builtin: type) -> None:
    with pytest.raises(ChoreoError):
        raise error("refused")
    with pytest.raises(builtin):
        raise error("refused")
