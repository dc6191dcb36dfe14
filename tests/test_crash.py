"""A run killed with SIGKILL at any moment (mid-step, mid-checkpoint, mid-sample) resumes with ``--resume`` to the
weights of a run never interrupted, redoing only the step that was in flight and leaving no partial output; the
processes it started (under a killed launcher, or its reward workers) do not live on."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from grpo_helpers import make_trainer
from safetensors.torch import load_file

from lyra_rl.orphans import is_launcher
from lyra_rl.training import latest_checkpoint
from lyra_rl.video import probe_video

ROOT = Path(__file__).resolve().parents[1]
#: Four steps, a checkpoint and a sample after step 2 and step 4, the rolling state after steps 1 and 3.
RUN = dict(
    conditions_per_step=1, num_generations=2, num_sampling_steps=2, max_steps=4, save_steps=2, eval_conditions=1
)

#: Runs ``RUN`` in ``argv[1]`` and SIGKILLs itself at ``argv[2]`` of step ``argv[3]``: ``step`` (after the
#: backward pass, before the optimizer step), ``checkpoint`` (its weights and state written, not yet renamed) or
#: ``sample`` (the evaluation video half written).
DRIVER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from grpo_helpers import make_trainer
import lyra_rl.training.checkpoint as checkpoint, lyra_rl.video as video

output_dir, point, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
trainer = make_trainer(output_dir, **{run!r})
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if point == "step":
    optimizer_step = trainer.optimizer_step
    trainer.optimizer_step = lambda: die() if trainer.step == step - 1 else optimizer_step()
elif point == "checkpoint":
    verify = checkpoint.verify_checkpoint
    dies = lambda folder: folder.name.endswith(f"-{{step}}")
    checkpoint.verify_checkpoint = lambda folder, **kw: die() if dies(folder) else verify(folder, **kw)
else:
    get_writer = video.imageio.get_writer

    def dying_writer(path, *args, **kwargs):
        writer = get_writer(path, *args, **kwargs)
        if f"step-{{step}}-" in str(path):
            append = writer.append_data
            writer.append_data = lambda frame: (append(frame), die())
        return writer

    video.imageio.get_writer = dying_writer
trainer.train()
"""


def trained_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    files = ("pytorch_lora_weights.safetensors", "camera_modules.safetensors")
    return {key: value for file in files for key, value in load_file(checkpoint / file).items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final weights, the history and the number of frames of a sample of the run never killed."""
    run = tmp_path_factory.mktemp("uninterrupted")
    history = make_trainer(run, **RUN).train()
    return trained_weights(run / "checkpoint-4"), history, probe_video(run / "samples" / "step-2-0.mp4")


@pytest.mark.parametrize(
    "point, step, resumes_from",
    [("step", 4, "last-step-3"), ("checkpoint", 3, "checkpoint-2"), ("sample", 2, "last-step-1")],
    ids=["mid-step", "mid-checkpoint", "mid-sample"],
)
def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(
    tmp_path, uninterrupted, point, step, resumes_from
):
    driver = DRIVER.format(tests=str(Path(__file__).parent), run=RUN)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    command = [sys.executable, "-c", driver, str(tmp_path), point, str(step)]
    killed = subprocess.run(command, env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    # what the kill left: the last completed step's state, and no partial video or checkpoint under a final name
    assert latest_checkpoint(tmp_path).name == resumes_from
    weights, expected_history, frames = uninterrupted
    assert all(probe_video(path) == frames for path in (tmp_path / "samples").glob("step-*.mp4"))
    resuming = make_trainer(tmp_path, resume=True, **RUN)
    steps_run, train_step = [], resuming.train_step
    resuming.train_step = lambda: steps_run.append(resuming.step + 1) or train_step()
    history = resuming.train()
    completed = int(resumes_from.rsplit("-", 1)[1])
    assert steps_run == list(range(completed + 1, 5))  # only the step in flight and those after it
    resumed = trained_weights(tmp_path / "checkpoint-4")
    assert resumed.keys() == weights.keys()
    assert all(torch.equal(resumed[key], weights[key]) for key in weights)  # bit-identical
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert [h["loss"] for h in history] == [h["loss"] for h in expected_history]
    outputs = ["checkpoint-2", "checkpoint-4", "logs", "reward_curve.png", "samples"]  # no .tmp-*, no last-step-*
    assert sorted(p.name for p in tmp_path.iterdir()) == outputs
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step-2-0.mp4", "step-4-0.mp4"]
    assert all(probe_video(path) == frames for path in (tmp_path / "samples").iterdir())


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_launchers_are_told_from_shells():
    assert is_launcher(["/venv/bin/python", "/venv/bin/accelerate", "launch", "recipes/grpo.py"])
    assert is_launcher(["/usr/bin/python3", "-m", "torch.distributed.run", "--nproc_per_node", "2", "x.py"])
    assert is_launcher(["torchrun", "x.py"])
    assert not is_launcher(["/bin/bash"]) and not is_launcher(["nohup", "python", "recipes/grpo.py"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_training_process_exits_when_its_launcher_is_killed(tmp_path):
    """``accelerate launch`` killed with SIGKILL: its training process (which would train on alone) follows."""
    accelerate = Path(sys.executable).parent / "accelerate"
    recipe, config = ROOT / "recipes" / "grpo.py", ROOT / "recipes" / "configs" / "grpo_tiny.yaml"
    command = [str(accelerate), "launch", "--cpu", "--num_processes", "1", "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", str(recipe), "--config", str(config)]
    command += ["--output_dir", str(tmp_path / "run"), "--max_steps", "10000", "--save_steps", "10000"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        assert wait_until(lambda: (tmp_path / "run" / "logs").is_dir(), 120)  # training has started
        workers = children(launcher.pid)
        assert len(workers) == 1
        launcher.kill()
        launcher.wait()
        assert wait_until(lambda: not alive(workers[0]), 30)
    finally:
        launcher.kill()
        for pid in workers + (children(launcher.pid) if alive(launcher.pid) else []):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_reward_workers_exit_when_their_trainer_is_killed(tmp_path):
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from grpo_helpers import Brightness\n"
        "from test_faults import marked_batch\n"
        "from lyra_rl.reward import RewardSet\n"
        "rewards = RewardSet([Brightness()], num_workers=1)\n"
        "rewards(*marked_batch())\n"
        "print(*rewards._pool._processes, flush=True)\n"
        "time.sleep(600)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    trainer = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    workers = []
    try:
        workers = [int(pid) for pid in trainer.stdout.readline().split()]
        assert workers and all(alive(pid) for pid in workers)
        trainer.kill()
        trainer.wait()
        assert wait_until(lambda: not any(alive(pid) for pid in workers), 30)
    finally:
        trainer.kill()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
