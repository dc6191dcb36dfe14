"""A run killed with SIGKILL at any moment (mid-step, mid-checkpoint, mid-sample) resumes with ``--resume`` to the
weights of a run never interrupted, redoing only the step that was in flight and leaving no partial output."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from grpo_helpers import make_trainer
from safetensors.torch import load_file

from lyra_rl.training import latest_checkpoint
from lyra_rl.video import probe_video

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
