"""Fault injection: rewards that raise, hang, die, return inf, NaN or the wrong shape; non-finite losses and gradients;
checkpoints that are bad when written or corrupt when resumed."""

import logging
import math
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from grpo_helpers import Brightness, make_trainer

from lyra_rl.camera import Cameras, default_intrinsics, trajectory_preset
from lyra_rl.reward import RewardError, RewardOutput, RewardSet, VideoReward
from lyra_rl.training import latest_checkpoint

#: A GRPO trainer as small as the tests of the trainer's machinery need (no evaluation).
SMALL = dict(conditions_per_step=1, num_generations=2, num_sampling_steps=2, eval_conditions=0)


class Faulty(VideoReward):
    """0.5 for every video but the marked ones (first pixel above 0.5), on which it shows its ``fault``."""

    name = "faulty"
    floor = -1.0

    def __init__(self, fault: str):
        self.fault = fault

    def score_video(self, video, cam_from_world, intrinsics, *, image, cache):
        if self.fault == "nan":
            return math.nan, {}
        if self.fault == "inf_everywhere":
            return math.inf, {}
        if float(video[0, 0, 0, 0]) > 0.5:
            if self.fault == "raise":
                raise RuntimeError("a bug in the plugin")
            if self.fault == "inf":
                return math.inf, {"seen": 1.0}
            if self.fault == "exit":
                os._exit(3)  # the worker process dies
            if self.fault == "hang":
                time.sleep(60)
        return 0.5, {"seen": 1.0}


class WrongOutput:
    """A plugin that breaks the output contract on the marked videos: two values for one video, or no output."""

    floor = -1.0

    def __init__(self, fault: str):
        self.name, self.fault = "faulty", fault

    def __call__(self, videos, cameras, prompts, *, images=None, caches=None):
        if float(videos[0, 0, 0, 0, 0]) <= 0.5:
            return RewardOutput(torch.tensor([0.5]), torch.tensor([False]))
        if self.fault == "shape":
            return RewardOutput(torch.tensor([0.5, 0.5]), torch.tensor([False, False]))
        return 0.5


def messages(caplog, logger: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == logger]


def marked_batch(marked=(1, 3), num_videos=4):
    """Videos of mean ~0.25 (unmarked) whose first pixel is 0.9 for the ``marked`` ones."""
    videos = torch.rand(num_videos, 3, 3, 8, 12, generator=torch.Generator().manual_seed(0)) * 0.5
    videos[list(marked), 0, 0, 0, 0] = 0.9
    cameras = Cameras.from_trajectory(trajectory_preset("forward", 3), default_intrinsics(8, 12), num_videos)
    return videos, cameras, [""] * num_videos


@pytest.mark.parametrize(
    "reward, problem",
    [
        (Faulty("raise"), "raised RuntimeError: a bug in the plugin"),
        (Faulty("hang"), "took longer than 0.2 s (its timeout)"),
        (Faulty("inf"), "returned an infinite reward (inf)"),
        (WrongOutput("shape"), "returned rewards of shape (2,) for one video, expected (1,)"),
        (WrongOutput("type"), "returned float, not a RewardOutput"),
    ],
    ids=["raises", "hangs", "inf", "wrong-shape", "wrong-type"],
)
def test_a_reward_fault_scores_the_video_at_the_floor_and_is_counted(reward, problem, caplog):
    videos, cameras, prompts = marked_batch()
    reward_set = RewardSet([Brightness(), reward], timeouts=[0, 0.2])  # a limit the others never reach
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="lyra_rl.reward"):
        out = reward_set(videos, cameras, prompts)
        reward_set(videos, cameras, prompts)  # the same fault again: counted, not logged again
    assert time.perf_counter() - start < 10  # a hang is cut at 0.2 s, four times
    assert out.rewards["faulty"].tolist() == [0.5, -1.0, 0.5, -1.0]
    assert out.errors["faulty"].tolist() == out.failed["faulty"].tolist() == [False, True, False, True]
    assert not out.errors["brightness"].any() and not out.failed["brightness"].any()
    torch.testing.assert_close(out.total, out.rewards["brightness"] + out.rewards["faulty"])  # the floor counts
    assert messages(caplog, "lyra_rl.reward") == [
        f"reward 'faulty' {problem} (on 2 of 4 videos): they are scored at its floor -1 and counted in "
        "errors/faulty; later errors are counted, not logged (reward_errors 'raise' raises them)"
    ]


def test_reward_errors_raise_for_debugging():
    videos, cameras, prompts = marked_batch()
    with pytest.raises(RuntimeError, match="a bug in the plugin"):
        RewardSet([Faulty("raise")], errors="raise")(videos, cameras, prompts)
    with pytest.raises(RewardError, match=r"reward 'faulty' returned an infinite reward \(inf\)"):
        RewardSet([Faulty("inf")], errors="raise")(videos, cameras, prompts)
    with pytest.raises(RewardError, match=r"reward 'faulty' took longer than 0.1 s \(its timeout\)"):
        RewardSet([Faulty("hang")], errors="raise", timeouts=[0.1])(videos, cameras, prompts)
    with pytest.raises(ValueError, match="reward errors must be one of"):
        RewardSet([Faulty("inf")], errors="ignore")
    with pytest.raises(ValueError, match=r"reward timeouts must be one per reward \(1\), each > 0 seconds"):
        RewardSet([Faulty("inf")], timeouts=[1, 2])


def test_a_reward_that_is_nan_for_every_video_is_flagged(caplog):
    with caplog.at_level(logging.WARNING, logger="lyra_rl.reward"):
        out = RewardSet([Brightness(), Faulty("nan")])(*marked_batch())
    assert out.rewards["faulty"].isnan().all() and not out.errors["faulty"].any()
    torch.testing.assert_close(out.total, out.rewards["brightness"])
    assert messages(caplog, "lyra_rl.reward") == [
        "reward 'faulty' returned NaN (not applicable) for every video of a batch of 4: it is left out of their total"
    ]


def test_faults_in_worker_processes_are_contained_and_a_dead_worker_is_replaced():
    videos, cameras, prompts = marked_batch()
    with RewardSet([Brightness(), Faulty("raise")], num_workers=1) as reward_set:
        out = reward_set(videos, cameras, prompts)
    assert out.errors["faulty"].tolist() == [False, True, False, True] and not out.errors["brightness"].any()
    with RewardSet([Brightness(), Faulty("hang")], num_workers=1, timeouts=[0, 0.2]) as reward_set:
        out = reward_set(videos, cameras, prompts)  # cut in the worker, which goes on scoring
    assert out.errors["faulty"].tolist() == [False, True, False, True] and not out.errors["brightness"].any()
    with RewardSet([Brightness(), Faulty("exit")], num_workers=1) as reward_set:
        out = reward_set(videos, cameras, prompts)  # video 1 kills the worker: its videos lose every score
        assert out.errors["faulty"][1] and out.errors["brightness"][1]
        assert out.errors["faulty"].tolist() == out.errors["brightness"].tolist()
        assert (out.rewards["brightness"][out.errors["brightness"]] == 0.0).all()  # the floor
        again = reward_set(*marked_batch(marked=()))  # a new pool
    assert not again.errors["faulty"].any() and again.rewards["faulty"].tolist() == [0.5] * 4


def test_a_reward_that_returns_inf_leaves_training_finite(tmp_path):
    """Without containment the inf total makes the advantages, then every trained weight, NaN."""
    trainer = make_trainer(tmp_path, **SMALL)
    trainer.reward_set = RewardSet([Brightness(), Faulty("inf_everywhere")])
    before = trainer.trained_state_dict()
    logged = trainer.train_step()
    assert logged["errors/faulty"] == logged["failed/faulty"] == 1.0 and logged["errors/brightness"] == 0.0
    assert math.isfinite(logged["reward/total"]) and logged["skipped_steps"] == 0
    after = trainer.trained_state_dict()
    assert all(torch.isfinite(value).all() for value in after.values())
    assert any(not torch.equal(before[key], after[key]) for key in before)  # brightness still ranks the group


@pytest.mark.parametrize("fault", ["gradient", "loss"])
def test_a_non_finite_step_is_skipped_and_never_reaches_a_checkpoint(tmp_path, fault, caplog):
    """A NaN gradient (its norm is NaN) or an infinite loss with finite gradients: no optimizer step, the
    schedule stays, the step is counted and named; the next step trains and checkpoints as usual."""
    trainer = make_trainer(tmp_path, lr_scheduler_type="linear", max_steps=4, **SMALL)
    param = next(p for p in trainer.policy.trained_parameters().values())
    if fault == "gradient":
        hook = param.register_hook(lambda grad: torch.full_like(grad, math.nan))
    else:
        step_loss = trainer.step_loss
        trainer.step_loss = lambda *args: (lambda loss, metrics: (loss + math.inf, metrics))(*step_loss(*args))
    before = trainer.trained_state_dict()
    with caplog.at_level(logging.WARNING, logger="lyra_rl.training.trainer"):
        logged = trainer.train_step()
    cause = "gradient norm (nan)" if fault == "gradient" else "loss"
    assert messages(caplog, "lyra_rl.training.trainer") == [
        f"step 1: non-finite {cause}: optimizer step skipped (weights, optimizer state and learning-rate schedule "
        "unchanged; 1 skipped so far)"
    ]
    assert logged["skipped_steps"] == 1 and trainer.lr_scheduler.last_epoch == 0 and not trainer.optimizer.state
    assert all(torch.equal(before[key], value) for key, value in trainer.trained_state_dict().items())
    assert all(p.grad is None for p in trainer.policy.trained_parameters().values())  # cleared
    if fault == "loss":
        return
    hook.remove()
    logged = trainer.train_step()
    assert logged["skipped_steps"] == 1 and trainer.lr_scheduler.last_epoch == 1 and math.isfinite(logged["loss"])
    checkpoint = trainer.save_checkpoint()
    resumed = make_trainer(tmp_path, lr_scheduler_type="linear", max_steps=4, resume=True, **SMALL)
    assert resumed.resume() == checkpoint and resumed.skipped_steps == 1 and resumed.step == 2


def test_a_checkpoint_with_a_non_finite_weight_is_not_written(tmp_path):
    trainer = make_trainer(tmp_path, **SMALL)
    trainer.step = 1
    trainer.save_checkpoint()
    key, param = next(iter(trainer.policy.trained_parameters().items()))
    with torch.no_grad():
        param[0] = math.nan
    trainer.step = 2
    file = "camera_modules.safetensors" if "lora_" not in key else "pytorch_lora_weights.safetensors"
    with pytest.raises(RuntimeError) as raised:
        trainer.save_checkpoint()
    assert str(raised.value).startswith(f"{tmp_path / 'checkpoint-2' / file}: ") and str(raised.value).endswith(
        " has non-finite values: checkpoint not written"
    )
    assert latest_checkpoint(tmp_path).name == "checkpoint-1" and not list(tmp_path.glob("*checkpoint-2"))


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A 2-step run with a checkpoint after each step, and its step-2 loss."""
    run = tmp_path_factory.mktemp("two-checkpoints")
    history = make_trainer(run, max_steps=2, save_steps=1, **SMALL).train()
    return run, history


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "file, corrupt",
    [("pytorch_lora_weights.safetensors", truncate), ("trainer_state.pt", lambda path: path.write_bytes(b""))],
    ids=["truncated-safetensors", "empty-trainer-state"],
)
def test_resume_falls_back_to_the_previous_complete_checkpoint(tmp_path, two_checkpoints, file, corrupt, caplog):
    run, history = two_checkpoints
    shutil.copytree(run, tmp_path, dirs_exist_ok=True)
    corrupt(tmp_path / "checkpoint-2" / file)
    resumed = make_trainer(tmp_path, max_steps=2, save_steps=1, resume=True, **SMALL)
    with caplog.at_level(logging.WARNING, logger="lyra_rl.training.trainer"):
        redone = resumed.train()
    (warning,) = messages(caplog, "lyra_rl.training.trainer")
    assert warning.startswith(f"{tmp_path / 'checkpoint-2' / file}: does not load (")
    assert warning.endswith(f": resuming from {tmp_path / 'checkpoint-1'}, the previous complete checkpoint")
    assert [h["step"] for h in redone] == [1, 2] and redone[1]["loss"] == history[1]["loss"]  # step 2 redone alike
    assert redone[1]["reward/total"] == history[1]["reward/total"]
