"""PH2's colour-class regions (IMDnnn_roi/IMDnnn_Rk_Labelc), read by data.ph2.load_ph2_colour_regions."""
import numpy as np
import pytest
from PIL import Image

from xai_helpers.data.ph2 import PH2_COLOURS, load_ph2_colour_regions


def _write_ph2(root, regions):
    base = root / "ph2" / "PH2Dataset" / "PH2 Dataset images"
    for name, files in regions.items():
        img = base / name / f"{name}_Dermoscopic_Image"
        img.mkdir(parents=True)
        Image.fromarray(np.full((20, 30, 3), 120, np.uint8)).save(img / f"{name}.png")
        roi = base / name / f"{name}_roi"
        roi.mkdir()
        for fname, box in files:
            m = np.zeros((20, 30), np.uint8)
            m[box] = 255
            Image.fromarray(m).save(roi / fname)


def test_colour_regions_are_read_with_their_colour_and_mask(tmp_path):
    _write_ph2(tmp_path, {"IMD001": [("IMD001_R1_Label5.png", np.s_[:10, :15]), ("IMD001_R2_Label3.png", np.s_[10:, :])],
                          "IMD002": [("IMD002_R1_LabelStreaks.png", np.s_[:5, :5])],
                          "IMD003": [("IMD003_R1_Label6.png", np.s_[:, 15:])]})
    r = load_ph2_colour_regions(16, root=tmp_path)
    assert list(r["ids"]) == ["IMD001", "IMD003"] and r["images"].shape == (2, 16, 16, 3)
    assert list(r["colour"]) == ["blue-grey", "light brown", "black"] and list(r["label"]) == [5, 3, 6]
    assert list(r["image_index"]) == [0, 0, 1]
    assert r["masks"].shape == (3, 16, 16) and r["masks"].dtype == bool
    np.testing.assert_allclose(r["masks"].mean((1, 2)), [0.25, 0.5, 0.5], atol=0.07)
    assert len(r["skipped"]) == 1 and r["skipped"][0].endswith("IMD002_R1_LabelStreaks.png")
    assert PH2_COLOURS[1] == "white" and len(PH2_COLOURS) == 6


def test_no_colour_regions_says_so(tmp_path):
    _write_ph2(tmp_path, {"IMD001": []})
    with pytest.raises(Exception, match="colour-class region"):
        load_ph2_colour_regions(16, root=tmp_path)
