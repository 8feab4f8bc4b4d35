"""The gymnasium environments: API conformance, episodes, invalid actions, observations."""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from mgsd.envs import ENV_IDS, PlanningEnv, register_envs
from mgsd.tasks import TASK_NAMES, get_task


def task_or_skip(name: str):
    try:
        return get_task(name)
    except ImportError as exc:  # the module of another task may not exist yet
        pytest.skip(f"task module for {name} is not available: {exc}")


@pytest.fixture(params=TASK_NAMES)
def task(request):
    return task_or_skip(request.param)


def test_check_env_passes(task) -> None:
    env = PlanningEnv(task.name, level=task.levels[0], render_mode="rgb_array", image_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no spec" notice for a directly built env
        check_env(env)
    made = gymnasium.make(ENV_IDS[task.name], level=task.levels[-1], image_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(made.unwrapped)


def test_solver_episode_ends_with_reward_one(task) -> None:
    env = PlanningEnv(task.name, level=task.levels[0], image_size=64)
    for seed in range(3):
        obs, info = env.reset(seed=seed)
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
        state = task.load_state(info["state"])
        plan = task.solve(state)
        assert plan is not None and info["optimal_length"] == len(plan)
        for i, action in enumerate(plan):
            obs, reward, terminated, truncated, info = env.step(task.actions.index(action))
            last = i == len(plan) - 1
            assert (reward, terminated, truncated) == ((1.0, True, False) if last else (0.0, False, False))
            assert "invalid" not in info
        assert info["success"]
        with pytest.raises(RuntimeError):
            env.step(0)


def test_invalid_action_terminates_with_reason(task) -> None:
    env = PlanningEnv(task.name, level=task.levels[0], image_size=64)
    for seed in range(20):
        _, info = env.reset(seed=seed)
        state = task.load_state(info["state"])
        sim = task.initial(state)
        bad = [(i, t.invalid) for i, a in enumerate(task.actions) if (t := task.step(state, sim, a)).invalid]
        if bad:
            index, reason = bad[0]
            _, reward, terminated, truncated, info = env.step(index)
            assert (reward, terminated, truncated) == (0.0, True, False)
            assert info["invalid"] == reason
            assert info["position"] == task.position(sim)
            return
    pytest.fail("no start state with an invalid first action in 20 seeds")


def test_reset_is_deterministic_and_accepts_a_given_state(task) -> None:
    env = PlanningEnv(task.name, image_size=64)
    a, info_a = env.reset(seed=11)
    b, info_b = env.reset(seed=11)
    assert info_a["state"] == info_b["state"] and np.array_equal(a, b)
    assert task.level_of(task.load_state(info_a["state"])) in task.levels
    _, info_c = env.reset(options={"state": info_a["state"]})
    assert info_c["state"] == info_a["state"]
    _, info_d = env.reset(options={"state": task.load_state(info_a["state"])})
    assert info_d["state"] == info_a["state"]
    fixed = PlanningEnv(task.name, state=task.load_state(info_a["state"]), image_size=64)
    assert fixed.reset(seed=99)[1]["state"] == info_a["state"]


def test_bad_constructor_arguments(task) -> None:
    with pytest.raises(ValueError):
        PlanningEnv(task.name, level=99)
    with pytest.raises(ValueError):
        PlanningEnv(task.name, render_mode="human")
    with pytest.raises(ValueError):
        PlanningEnv("sokoban")


def test_registration_is_idempotent_and_make_works() -> None:
    register_envs()
    register_envs()
    for name, env_id in ENV_IDS.items():
        assert env_id in gymnasium.registry
        assert gymnasium.registry[env_id].kwargs == {"task": name}
    env = gymnasium.make("mgsd.envs:mgsd/MiniBehaviour-v0", level=5, image_size=64)
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and info["carrying"] is False


def test_minibehaviour_observation_follows_the_agent_and_the_printer() -> None:
    task = get_task("minibehaviour")
    table = [[3, 2], [3, 3], [3, 4], [4, 2], [4, 3], [4, 4]]
    state = {"size": 5, "agent": [0, 1], "printer": [0, 0], "table": table}
    env = PlanningEnv("minibehaviour", state=state, render_mode="rgb_array")

    def colour(obs, cell):
        w = 256 / 5
        return tuple(obs[int((cell[0] + 0.5) * w), int((cell[1] + 0.5) * w)])

    obs, info = env.reset(seed=0)
    assert colour(obs, (0, 1)) == (255, 24, 16) and colour(obs, (0, 0)) == (255, 255, 255)
    obs, _, _, _, info = env.step(task.actions.index("PICK"))
    assert info["carrying"] is True
    assert colour(obs, (0, 0)) == (0, 0, 0)  # the printer is carried now
    obs, _, terminated, _, info = env.step(task.actions.index("L"))
    assert not terminated and info["position"] == (0, 0)
    assert colour(obs, (0, 0)) == (255, 24, 16) and colour(obs, (0, 1)) == (0, 0, 0)
    assert np.array_equal(env.render(), obs)
    for action in ("D", "D", "R", "R", "DROP"):
        obs, reward, terminated, _, info = env.step(task.actions.index(action))
    assert reward == 1.0 and terminated and info["carrying"] is False and info["success"]
