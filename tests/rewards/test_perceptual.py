import pytest
import torch
import torchvision

from rewards.perceptual import PerceptualReward, build_lpips


def test_missing_backbone_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="backbone_weights"):
        PerceptualReward()


def test_backbone_loads_from_a_local_file(tmp_path):
    alexnet = torchvision.models.alexnet()
    path = tmp_path / "alexnet.pth"
    torch.save(alexnet.state_dict(), path)
    model = build_lpips("alex", backbone_weights=str(path))
    torch.testing.assert_close(model.net.slice1[0].weight, alexnet.features[0].weight)
    torch.testing.assert_close(model.net.slice5._modules["10"].weight, alexnet.features[10].weight)


def test_flicker_and_fidelity_lower_the_reward(small):
    torch.manual_seed(0)
    reward = PerceptualReward(allow_random_backbone=True)
    video = small.video("forward")
    cameras = small.cameras("forward")
    smooth = reward(video[None], cameras, [""], images=video[None, 0])
    flashing = video.clone()
    flashing[5] = 1 - flashing[5]
    flicker = reward(flashing[None], cameras, [""], images=video[None, 0])
    other = reward(video[None], cameras, [""], images=small.video("left")[None, -1])
    assert smooth.diagnostics["first_frame_lpips"][0] < 1e-6
    assert flicker.diagnostics["flicker"][0] > 2 * smooth.diagnostics["flicker"][0]
    assert smooth.rewards[0] > flicker.rewards[0] and smooth.rewards[0] > other.rewards[0]
