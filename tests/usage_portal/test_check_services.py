from __future__ import annotations

import pytest

from usage_portal.check_services import main


def test_unreachable_services_fail_with_a_message_naming_each(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main("postgres://postgres@127.0.0.1:1/usage_portal", "redis://127.0.0.1:1/0") == 1
    err = capsys.readouterr().err
    assert "PostgreSQL is unreachable at postgres://postgres@127.0.0.1:1/usage_portal" in err
    assert "Redis is unreachable at redis://127.0.0.1:1/0" in err
    assert "does not skip" in err
