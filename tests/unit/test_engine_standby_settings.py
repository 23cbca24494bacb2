"""The warm standby setting: from the environment (or the file), checked."""

from __future__ import annotations

import pytest

from processors.settings import Settings, SettingsError


def test_the_setting_comes_from_the_environment_and_is_checked():
    assert Settings.load(env={}).standby_replicas == 0
    assert Settings.load(env={"CHOREO_STANDBY_REPLICAS": "2"}).standby_replicas == 2
    with pytest.raises(SettingsError, match="standby_replicas: must be 0"):
        Settings.load(env={"CHOREO_STANDBY_REPLICAS": "-1"})
    with pytest.raises(SettingsError, match="standby_replicas must be an integer"):
        Settings.load(env={"CHOREO_STANDBY_REPLICAS": "many"})
