"""The operations settings: a bad value names its variable; secrets stay out of reprs."""

from __future__ import annotations

import bcrypt
import pytest

from coup.config import ConfigError, Settings

ENV = {"JWT_SECRET": "tV3q-8kLmZ0pXw2rYc7nB4hJ6dF1gS9a"}
HASH = bcrypt.hashpw(b"a-long-admin-password", bcrypt.gensalt(4)).decode()


@pytest.mark.parametrize(("env", "message"), [
    ({"COUP_LOG_FORMAT": "xml"}, "COUP_LOG_FORMAT must be text or json"),
    ({"COUP_METRICS_PORT": "http"}, "COUP_METRICS_PORT must be an integer"),
    ({"COUP_METRICS_TOKEN": "short"}, "COUP_METRICS_TOKEN must be at least 16 bytes"),
    ({"COUP_ADMIN_USER": "admin", "COUP_ADMIN_PASSWORD": "plain-text-password"},
     "COUP_ADMIN_PASSWORD must be a bcrypt hash"),
    ({"COUP_ADMIN_USER": "admin"}, "must be set together"),
    ({"COUP_ADMIN_PASSWORD": HASH}, "must be set together"),
    ({"COUP_ADMIN_READONLY": "perhaps"}, "COUP_ADMIN_READONLY must be a boolean"),
])
def test_bad_values_name_their_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({**ENV, **env})


def test_good_values_and_what_turns_counting_on() -> None:
    assert not Settings.from_env(ENV).counts_metrics
    assert Settings.from_env({**ENV, "COUP_METRICS_PORT": "9100"}).metrics_port == 9100
    token = Settings.from_env({**ENV, "COUP_METRICS_TOKEN": "t" * 20})
    assert token.counts_metrics and "t" * 20 not in repr(token)
    admin = Settings.from_env({**ENV, "COUP_ADMIN_USER": "admin", "COUP_ADMIN_PASSWORD": HASH,
                               "COUP_ADMIN_READONLY": "0", "COUP_LOG_FORMAT": "JSON"})
    assert admin.admin_enabled and admin.counts_metrics and not admin.admin_readonly
    assert admin.log_format == "json" and HASH not in repr(admin)
