"""config/ravn-redis.yaml: its redis sections validate, and the rest stays config/ravn.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from ravn_transport_redis.config import RedisSinkConfig, RedisTransportConfig

ROOT = Path(__file__).resolve().parents[3]


def _load(name: str) -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "config" / name).read_text())  # type: ignore[no-any-return]


def test_redis_config_sections_validate() -> None:
    cfg = _load("ravn-redis.yaml")
    transport = {k: v for k, v in cfg["transport"].items() if k != "plugin"}
    t = RedisTransportConfig.model_validate(transport)
    assert (t.host, t.port, t.mode) == ("127.0.0.1", 6379, "stream")
    sinks = [s for s in cfg["sinks"] if s["plugin"] == "redis"]
    assert len(sinks) == 1
    RedisSinkConfig.model_validate({k: v for k, v in sinks[0].items() if k != "plugin"})


def test_redis_config_is_the_default_config_plus_redis() -> None:
    redis_cfg, default = _load("ravn-redis.yaml"), _load("ravn.yaml")
    assert redis_cfg["transport"]["plugin"] == "redis" and default["transport"]["plugin"] == "embedded"
    redis_cfg["sinks"] = [s for s in redis_cfg["sinks"] if s["plugin"] != "redis"]
    del redis_cfg["transport"], default["transport"]
    assert redis_cfg == default  # when config/ravn.yaml changes, config/ravn-redis.yaml follows


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"block_ms": 20_000, "socket_timeout_s": 10}, "block_ms (20000) must be below socket_timeout_s"),
        ({"cluster": True, "db": 3}, "Redis Cluster has only database 0"),
        ({"backoff_s": 10, "backoff_max_s": 1}, "backoff_s must not exceed"),
        ({"tls": {"enabled": True, "cert_file": "/x.pem"}}, "cert_file and tls.key_file go together"),
        ({"mode": "queue"}, "Input should be 'stream' or 'list'"),
        ({"maxlen": 10}, "greater than or equal to 100"),
        ({"nope": 1}, "Extra inputs are not permitted"),
        ({"backoff_initial_s": 0.1, "backoff_s": 0.2}, "backoff_initial_s is the old name of backoff_s"),
    ],
)
def test_bad_transport_config_is_refused(options: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValidationError, match=None) as info:
        RedisTransportConfig.model_validate(options)
    assert message in str(info.value)


def test_the_old_name_backoff_initial_s_still_works_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match="backoff_initial_s is deprecated, use backoff_s"):
        cfg = RedisTransportConfig.model_validate({"backoff_initial_s": 0.2, "backoff_max_s": 1})
    assert cfg.backoff_s == 0.2 and cfg.backoff_max_s == 1
