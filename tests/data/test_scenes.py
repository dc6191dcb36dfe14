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


def test_scene_is_picklable(scene):
    restored = pickle.loads(pickle.dumps(scene))
    assert all(torch.equal(getattr(scene, name), getattr(restored, name)) for name in scene.__dataclass_fields__)
