import pytest

from lit_rlhf.rl.kl_control import AdaptiveKLController, FixedKLController


def test_fixed_controller_never_moves_and_has_no_state():
    ctl = FixedKLController(0.1)
    ctl.update(current_kl=50.0, n_steps=1000)
    assert ctl.value == 0.1
    assert ctl.state_dict() == {}
    ctl.load_state_dict({"value": 9.0})  # an adaptive checkpoint: the configured beta wins
    assert ctl.value == 0.1
    with pytest.raises(ValueError, match="beta"):
        FixedKLController(-1.0)


def test_adaptive_controller_by_hand():
    ctl = AdaptiveKLController(init_beta=0.2, target=6.0, horizon=10_000)
    # KL 9: error = 9/6 - 1 = 0.5, clipped to 0.2; beta = 0.2 * (1 + 0.2 * 256 / 10000) = 0.201024
    ctl.update(current_kl=9.0, n_steps=256)
    assert ctl.value == pytest.approx(0.201024)
    # KL 5.4: error = 0.9 - 1 = -0.1; beta = 0.201024 * (1 - 0.1 * 0.0256) = 0.20050937856
    ctl.update(current_kl=5.4, n_steps=256)
    assert ctl.value == pytest.approx(0.20050937856)


def test_adaptive_controller_clips_large_decreases():
    ctl = AdaptiveKLController(init_beta=1.0, target=1.0, horizon=100)
    ctl.update(current_kl=0.0, n_steps=50)  # error -1 clipped to -0.2: 1 * (1 - 0.2 * 0.5) = 0.9
    assert ctl.value == pytest.approx(0.9)


def test_adaptive_state_dict_round_trip():
    ctl = AdaptiveKLController(init_beta=0.2, target=6.0, horizon=10_000)
    ctl.update(current_kl=9.0, n_steps=256)
    assert ctl.state_dict() == pytest.approx({"value": 0.201024})
    resumed = AdaptiveKLController(init_beta=0.2, target=6.0, horizon=10_000)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.value == pytest.approx(0.201024)
    with pytest.raises(ValueError, match="value"):
        resumed.load_state_dict({})


def test_adaptive_controller_reports_every_bad_setting_at_once():
    with pytest.raises(ValueError, match="init_beta.*target.*horizon"):
        AdaptiveKLController(init_beta=0.0, target=-1.0, horizon=0)
