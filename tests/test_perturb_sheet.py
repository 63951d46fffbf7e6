"""``wam-policy perturb-sheet``: contact sheets from an image file, a real rosbag2 bag and a sim frame."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from perturbation_node import ops
from wam_apps.sheets import perturb as sheet
from wam_common import topics
from wam_apps.cli import main as cli
from wam_common.imageio import Stamp, encode_image

pytestmark = pytest.mark.unit


def _png(path, img):
    assert cv2.imwrite(str(path), img[:, :, ::-1])


def _read(path):
    out = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert out is not None
    return out[:, :, ::-1]


def test_sheet_from_image_file(tmp_path):
    img, _ = sheet.synthetic_scene(240, 320)
    _png(tmp_path / "in.png", img)
    out = tmp_path / "s.png"
    assert cli(["perturb-sheet", str(tmp_path / "in.png"), "--ops", "light,jpeg", "--cell-width", "80",
                "-o", str(out)]) == 0
    s = _read(out)
    n = len(ops.families()["light"]) + 1
    assert s.shape == (n * 60, 6 * 80, 3)
    # the clean column is the input; the level columns differ from it (below the label)
    clean = cv2.resize(img, (80, 60), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(s[30:60, :80].astype(int), clean[30:60].astype(int), atol=1)
    for col in range(1, 6):
        assert np.abs(s[30:60, col * 80:(col + 1) * 80].astype(int) - clean[30:60]).mean() > 1


def test_sheet_from_bag(tmp_path):
    from wam_common.bag.writer import BagWriter

    bag = tmp_path / "bag"
    topic = topics.camera_topic("cam_left_wrist")
    w = BagWriter(bag)
    w.add_topic(topic, "sensor_msgs/msg/Image")
    frames = []
    for k in range(3):
        img = np.full((48, 64, 3), 40 * (k + 1), np.uint8)
        img[10:20, 10:30] = (200, 30, 30)
        frames.append(img)
        w.write(topic, 10**9 * (k + 1), encode_image(img, "rgb8", Stamp(k + 1, 0), "f"))
    w.close()
    out = tmp_path / "b.png"
    assert cli(["perturb-sheet", str(bag), "--camera", "cam_left_wrist", "--index", "2", "--ops", "brightness",
                "--cell-width", "64", "-o", str(out)]) == 0
    s = _read(out)
    assert s.shape == (48, 6 * 64, 3)
    np.testing.assert_array_equal(s[30:, :64], frames[2][30:])
    mcap = sorted(bag.glob("*.mcap"))[0]  # the storage file works too
    assert cli(["perturb-sheet", str(mcap), "--camera", "cam_left_wrist", "--ops", "gamma", "-o", str(out)]) == 0
    # a missing topic or message is a clear error naming it (exit 2), not a traceback
    assert cli(["perturb-sheet", str(bag), "--topic", "/nope", "-o", str(out)]) == 2
    assert cli(["perturb-sheet", str(bag), "--camera", "cam_left_wrist", "--index", "9", "-o", str(out)]) == 2
    with pytest.raises(Exception, match="/nope"):
        sheet._from_bag(bag, "/nope", 0)


def test_sheet_bad_arguments(tmp_path, capsys):
    assert cli(["perturb-sheet", str(tmp_path / "missing.png")]) == 2
    assert cli(["perturb-sheet", "--synthetic", "--ops", "brightnes", "-o", str(tmp_path / "x.png")]) == 2
    assert "brightnes" in capsys.readouterr().err
    assert cli(["perturb-sheet", "--synthetic", "--ops", "joint_noise", "-o", str(tmp_path / "x.png")]) == 2


def test_sheet_from_sim_frame_with_mask(tmp_path):
    pytest.importorskip("sim_bridge.env")
    img, mask = sheet.sim_frame("transfer_cube", "cam_high", 120, 160)
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8 and img.std() > 5
    fg = mask == 0
    assert 0.02 < fg.mean() < 0.9  # robot and cube are foreground, table/floor background
    red = (img[..., 0] > 150) & (img[..., 1] < 80) & (img[..., 2] < 80)  # the red cube
    assert red.any() and fg[red].all()
    out = tmp_path / "sim.png"
    assert cli(["perturb-sheet", "--sim", "transfer_cube", "--ops", "background", "--cell-width", "80",
                "-o", str(out)]) == 0
    assert _read(out).shape == (60, 480, 3)
