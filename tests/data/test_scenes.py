import pickle

import pytest
import torch

from lyra_rl.data.scenes import Scene, make_scene


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene(0)


def test_scene_layout_respects_the_camera_region_and_the_room():
    for seed in range(10):
        scene = make_scene(seed)
        assert 3 <= scene.num_boxes <= 7
        assert scene.room_max[1] > 1.3 and scene.room_min[1] < -2.0  # floor below, ceiling above the camera
        assert (scene.box_min > scene.room_min).all() and (scene.box_max <= scene.room_max).all()
        assert torch.allclose(scene.box_max[:, 1], scene.room_max[1].expand(scene.num_boxes))  # on the floor
        in_column = (scene.box_max[:, 0] > -2.2) & (scene.box_min[:, 0] < 2.2) & (scene.box_min[:, 2] < 4.5)
        assert not in_column.any(), f"seed {seed}: a box enters the camera column"
        assert scene.face_texture.shape == (scene.num_faces,)
        assert 0.0 <= scene.textures.min() and scene.textures.max() <= 1.0
    assert make_scene(1, num_boxes=7).num_boxes == 7


def test_pivot_box_stands_under_the_pivot_and_leaves_the_rest_of_the_scene_alone():
    for seed in range(5):
        plain, pivoted = make_scene(seed), make_scene(seed, pivot_depth=3.0)
        assert pivoted.num_boxes == plain.num_boxes + 1 and pivoted.num_faces == plain.num_faces + 6
        assert torch.equal(pivoted.box_min[:-1], plain.box_min) and torch.equal(pivoted.box_max[:-1], plain.box_max)
        assert torch.equal(pivoted.face_texture[:-6], plain.face_texture)
        lo, hi = pivoted.box_min[-1], pivoted.box_max[-1]
        torch.testing.assert_close((lo + hi)[[0, 2]] / 2, torch.tensor([0.0, 3.0]))  # centred under the pivot
        assert lo[1] < 0 < hi[1] and hi[1] == pivoted.room_max[1]  # stands on the floor, reaches above the camera
    assert torch.equal(make_scene(4, pivot_depth=2.5).box_min, make_scene(4, pivot_depth=2.5).box_min)
    with pytest.raises(ValueError, match="pivot_depth"):
        make_scene(0, pivot_depth=6.0)


def test_scene_is_picklable(scene):
    restored = pickle.loads(pickle.dumps(scene))
    assert all(torch.equal(getattr(scene, name), getattr(restored, name)) for name in scene.__dataclass_fields__)
