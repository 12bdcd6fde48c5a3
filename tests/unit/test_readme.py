"""README.md stays true: its set-up commands, event examples and settings table."""

from __future__ import annotations

import json
import re
from pathlib import Path

from eddy.streams.settings import settings_reference
from eddy.streams.wire.codec import CONTROL_EVENT_TYPES, schema_errors

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_two_set_up_commands_at_the_top() -> None:
    first = re.search(r"```sh\n(.*?)```", README, re.DOTALL)
    assert first and README.index(first.group(0)) < 200
    commands = [line.split("#")[0].strip() for line in first.group(1).splitlines()]
    assert commands == ["make demo", "make test"]


def test_every_event_example_is_valid_against_its_schema() -> None:
    blocks = re.findall(r"<!-- schema: ([\w.]+) -->\n```json\n(.*?)```", README, re.DOTALL)
    names = {name for name, _ in blocks}
    assert {"sample", "label", "prediction", "metrics", *CONTROL_EVENT_TYPES} <= names
    for name, text in blocks:
        assert schema_errors(name, json.loads(text)) == [], name


def test_configuration_reference_lists_every_setting_as_the_code_does() -> None:
    table = README.split("<!-- settings:start -->\n", 1)[1].split("<!-- settings:end -->", 1)[0]
    assert table == settings_reference(), "regenerate it: eddy config --markdown"


def test_dashboard_picture_is_there() -> None:
    assert "](docs/dashboard.png)" in README
    assert (Path(__file__).resolve().parents[2] / "docs/dashboard.png").stat().st_size > 20_000
