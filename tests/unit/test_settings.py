import argparse
from pathlib import Path

import pytest

from eddy.streams.exceptions import ConfigError
from eddy.streams.settings import Settings, add_settings_arguments


def test_defaults_work_without_any_environment():
    s = Settings.from_env({})
    assert s.kafka.bootstrap is None
    assert s.topics.prefix == "eddy."
    assert s.state.data_dir == Path("eddy-data")


def test_environment_is_parsed_per_field():
    s = Settings.from_env(
        {
            "EDDY_BOOTSTRAP": "kafka:9092",
            "EDDY_PARTITIONS": "8",
            "EDDY_DATA_DIR": "/var/lib/eddy",
            "EDDY_SECURITY_PROTOCOL": "sasl_ssl",
            "EDDY_SASL_MECHANISM": "scram-sha-512",
            "EDDY_SASL_USERNAME": "u",
            "EDDY_SASL_PASSWORD": "p",
        }
    )
    assert s.kafka.bootstrap == "kafka:9092"
    assert s.topics.partitions == 8
    assert s.state.data_dir == Path("/var/lib/eddy")
    assert s.kafka.security_protocol == "SASL_SSL"
    assert s.kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert s.redacted()["sasl_password"] == "***"


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("EDDY_PARTITIONS", "zero", "EDDY_PARTITIONS='zero'"),
        ("EDDY_PARTITIONS", "0", "at least 1"),
        ("EDDY_SECURITY_PROTOCOL", "TLS", "must be one of"),
    ],
)
def test_bad_values_name_the_variable_and_the_rule(var, value, needle):
    with pytest.raises(ConfigError, match=needle):
        Settings.from_env({var: value})


def test_sasl_without_credentials_is_refused_with_what_to_set():
    with pytest.raises(ConfigError, match="EDDY_SASL_USERNAME"):
        Settings.from_env({"EDDY_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})


def test_flags_override_the_environment_only_when_given(monkeypatch):
    monkeypatch.setenv("EDDY_TOPIC_PREFIX", "env.")
    monkeypatch.setenv("EDDY_PARTITIONS", "5")
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    s = Settings.load(parser.parse_args(["--partitions", "2"]))
    assert s.topics.partitions == 2
    assert s.topics.prefix == "env."


def test_bad_flag_value_is_an_argparse_error(capsys):
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--partitions", "-1"])
    assert "at least 1" in capsys.readouterr().err
