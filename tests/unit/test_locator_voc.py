"""Pascal VOC -> COCO conversion, on a hand-written file and on the real microcontroller photos."""

from __future__ import annotations

from pathlib import Path

import pytest

from sorterbot_cloud.config import PROJECT_ROOT
from sorterbot_cloud.detection.data import load_coco, voc_to_coco

REAL = PROJECT_ROOT.parent / "shared" / "realdata" / "microcontrollers" / "images"

VOC = """<annotation><filename>{name}.jpg</filename><size><width>800</width><height>600</height><depth>3</depth></size>
<object><name>ESP8266</name><bndbox><xmin>316</xmin><ymin>205</ymin><xmax>465</xmax><ymax>313</ymax></bndbox></object>
<object><name>pen</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>10</ymax></bndbox></object>
</annotation>"""


def write_voc(folder: Path, name: str = "a") -> None:
    (folder / f"{name}.xml").write_text(VOC.format(name=name))
    (folder / f"{name}.jpg").write_bytes(b"")


@pytest.mark.parametrize(
    "class_map, default, expected",
    [
        pytest.param({}, "item", [("ESP8266", 1), ("pen", 1)], id="all-items"),
        pytest.param({"pen": "ignore"}, "item", [("ESP8266", 1)], id="ignore-pen"),
        pytest.param({"ESP8266": "container"}, None, [("ESP8266", 2)], id="map-and-drop-rest"),
    ],
)
def test_voc_to_coco_maps_classes(tmp_path, class_map, default, expected):
    write_voc(tmp_path)
    coco = voc_to_coco(tmp_path, tmp_path / "out.json", class_map, default)
    assert [(a["source_name"], a["category_id"]) for a in coco["annotations"]] == expected
    assert coco["images"] == [{"id": 1, "file_name": "a.jpg", "width": 800, "height": 600}]


def test_voc_boxes_become_zero_based_xywh(tmp_path):
    write_voc(tmp_path)
    coco = voc_to_coco(tmp_path, tmp_path / "out.json")
    assert coco["annotations"][0]["bbox"] == [315.0, 204.0, 150.0, 109.0]
    records = load_coco(tmp_path / "out.json", tmp_path)
    assert records[0].boxes_xyxy[0].tolist() == [315.0, 204.0, 465.0, 313.0]


@pytest.mark.parametrize(
    "content, match",
    [pytest.param("<annotation>", "malformed", id="truncated"),
     pytest.param("<annotation><size></size></annotation>", "malformed", id="no-size")],
)
def test_malformed_voc_raises(tmp_path, content, match):
    (tmp_path / "bad.xml").write_text(content)
    with pytest.raises(ValueError, match=match):
        voc_to_coco(tmp_path, tmp_path / "out.json")


def test_empty_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Pascal VOC"):
        voc_to_coco(tmp_path, tmp_path / "out.json")


@pytest.mark.skipif(not REAL.is_dir(), reason="real microcontroller photos not present beside the checkout")
@pytest.mark.parametrize("split, n_images, n_boxes", [pytest.param("train", 142, 170, id="train"),
                                                      pytest.param("test", 7, 7, id="test")])
def test_real_microcontroller_split_converts(tmp_path, split, n_images, n_boxes):
    coco = voc_to_coco(REAL / split, tmp_path / f"{split}.json")
    assert len(coco["images"]) == n_images and len(coco["annotations"]) == n_boxes
    assert {a["category_id"] for a in coco["annotations"]} == {1}
    assert {a["source_name"] for a in coco["annotations"]} <= {"ESP8266", "Heltec_ESP32_Lora", "Arduino_Nano",
                                                             "Raspberry_Pi_3"}
    records = load_coco(tmp_path / f"{split}.json", REAL / split)
    assert all(r.path.is_file() for r in records)
    assert all((r.boxes_xyxy[:, 2] <= 800).all() and (r.boxes_xyxy[:, 3] <= 600).all() for r in records)
