"""PrivacyConfig: validated on creation, saved and loaded as JSON."""

import json

import pytest

import memsinks
from memsinks.privacy.config import PRIVACY_CONFIG_NAME, PrivacyConfig


@pytest.mark.parametrize("kwargs, message", [
    ({}, "neither was given"),
    ({"target_epsilon": 8.0, "noise_multiplier": 1.0}, "both were given"),
    ({"target_epsilon": 0}, "target_epsilon must be a finite number > 0"),
    ({"target_epsilon": float("inf")}, "target_epsilon must be a finite number > 0"),
    ({"noise_multiplier": 0.0}, "no privacy at all"),
    ({"noise_multiplier": 1.0, "delta": 1.0}, "delta must be in"),
    ({"noise_multiplier": 1.0, "max_grad_norm": 0}, "max_grad_norm"),
    ({"noise_multiplier": 1.0, "accountant": "gdp"}, "accountant must be one of"),
    ({"noise_multiplier": 1.0, "clipping": "functorch"}, "clipping must be one of"),
    ({"noise_multiplier": 1.0, "privacy_unit": "user"}, "privacy_unit must be one of"),
    ({"noise_multiplier": 1.0, "physical_batch_size": 0}, "physical_batch_size"),
    ({"noise_multiplier": True}, "noise_multiplier"),
])
def test_bad_settings_fail_on_creation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrivacyConfig(**kwargs)


def test_defaults_and_json_round_trip(tmp_path):
    cfg = memsinks.PrivacyConfig(target_epsilon=3, privacy_unit="sequence_id", physical_batch_size=4)
    assert (cfg.accountant, cfg.clipping, cfg.delta, cfg.max_grad_norm) == ("prv", "auto", None, 1.0)
    assert isinstance(cfg.target_epsilon, float)
    path = cfg.save_pretrained(tmp_path)
    assert path.endswith(PRIVACY_CONFIG_NAME)
    data = json.loads(open(path).read())
    assert data["memsinks_version"] == memsinks.__version__ and data["target_epsilon"] == 3.0
    assert PrivacyConfig.from_pretrained(tmp_path) == cfg


def test_unknown_field_names_a_close_match(tmp_path):
    with pytest.raises(ValueError, match="'noise_multipler' \\(did you mean 'noise_multiplier'\\?\\)"):
        PrivacyConfig.from_dict({"noise_multipler": 1.0})
    with pytest.raises(FileNotFoundError, match=PRIVACY_CONFIG_NAME):
        PrivacyConfig.from_pretrained(tmp_path)
