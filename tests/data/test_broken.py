import pytest
import torch

from lyra_rl.data.broken import (
    blur,
    crossfade,
    freeze_frames,
    random_displacement_fields,
    shuffle_frames,
    warp_nonrigid,
)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def video() -> torch.Tensor:
    """A textured (8, 3, 32, 48) clip in [0, 1] whose frames all differ."""
    return torch.rand(8, 3, 32, 48, generator=generator(1))


def check_video(output: torch.Tensor, video: torch.Tensor) -> None:
    assert output.shape == video.shape and output.dtype == video.dtype
    assert output.min() >= 0 and output.max() <= 1


@pytest.mark.parametrize("num_frames", [3, 4, 8, 16])
def test_shuffle_keeps_frame_zero_and_is_never_the_identity(num_frames):
    frames = (
        torch.arange(num_frames, dtype=torch.float32)[:, None, None, None].expand(num_frames, 3, 4, 4) / num_frames
    )
    for seed in range(30):
        shuffled = shuffle_frames(frames, generator(seed))
        check_video(shuffled, frames)
        order = (shuffled[:, 0, 0, 0] * num_frames).round().long()
        assert order[0] == 0
        assert sorted(order.tolist()) == list(range(num_frames))
        assert not torch.equal(order, torch.arange(num_frames))


def test_shuffle_is_seeded(video):
    assert torch.equal(shuffle_frames(video, generator(3)), shuffle_frames(video, generator(3)))


def test_shuffle_needs_three_frames(video):
    with pytest.raises(ValueError):
        shuffle_frames(video[:2], generator())


def test_freeze_repeats_frame_zero(video):
    frozen = freeze_frames(video)
    check_video(frozen, video)
    assert all(torch.equal(frame, video[0]) for frame in frozen)


def test_displacement_amplitude_grows_linearly_from_zero():
    fields = random_displacement_fields(6, 64, 96, strength_px=5.0, generator=generator())
    assert fields.shape == (6, 64, 96, 2)
    peaks = fields.norm(dim=-1).flatten(1).amax(1)
    assert torch.allclose(peaks, torch.linspace(0, 5.0, 6), atol=1e-5)
    # Smooth (low frequency): neighbouring pixels move almost together.
    assert (fields[:, 1:] - fields[:, :-1]).norm(dim=-1).max() < 0.2 * 5.0
    assert (fields[:, :, 1:] - fields[:, :, :-1]).norm(dim=-1).max() < 0.2 * 5.0


def test_warp_keeps_frame_zero_and_deforms_more_over_time():
    # A smooth ramp image: the warp's effect is proportional to the displacement.
    ramp = torch.linspace(0, 1, 64)[None, None, None, :].expand(6, 3, 40, 64).contiguous()
    warped = warp_nonrigid(ramp, strength_px=6.0, generator=generator())
    check_video(warped, ramp)
    assert torch.equal(warped[0], ramp[0])
    change = (warped - ramp).abs().flatten(1).mean(1)
    assert (change[1:] > change[:-1]).all()


def test_warp_default_strength_is_visible_and_seeded(video):
    warped = warp_nonrigid(video, generator=generator(2))
    check_video(warped, video)
    assert (warped[-1] - video[-1]).abs().mean() > 0.1
    assert torch.equal(warped, warp_nonrigid(video, generator=generator(2)))
    with pytest.raises(ValueError):
        warp_nonrigid(video)


def test_crossfade_blends_linearly(video):
    other = torch.rand(video.shape, generator=generator(5))
    blended = crossfade(video, other)
    check_video(blended, video)
    assert torch.equal(blended[0], video[0])
    assert torch.allclose(blended[-1], other[-1])
    alpha = 3 / (len(video) - 1)
    assert torch.allclose(blended[3], (1 - alpha) * video[3] + alpha * other[3])
    with pytest.raises(ValueError):
        crossfade(video, other[:-1])


def test_blur_keeps_frame_zero_and_removes_detail(video):
    blurred = blur(video)
    check_video(blurred, video)
    assert torch.equal(blurred[0], video[0])
    assert blurred[1:].std() < 0.5 * video[1:].std()
    # The average color is preserved (normalised kernel).
    assert torch.allclose(blurred[1:].mean((2, 3)), video[1:].mean((2, 3)), atol=0.02)


@pytest.mark.parametrize(
    "function",
    [
        freeze_frames,
        blur,
        lambda frames: shuffle_frames(frames, generator()),
        lambda frames: warp_nonrigid(frames, 2.0, generator()),
    ],
)
def test_invalid_videos_raise_value_error(function):
    with pytest.raises(ValueError):
        function(torch.rand(4, 1, 16, 16))
    with pytest.raises(ValueError):
        function(torch.rand(3, 16, 16))
