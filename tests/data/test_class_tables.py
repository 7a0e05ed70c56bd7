"""Class tables: the built-in ScanNet tables, tables from files, and labels read through them (refused when the table
does not list them), including ScanNet200's labels from a scan's object annotations through the labels TSV."""
import json

import numpy as np
import pytest

from ov3d_ros.data.class_tables import SCANNET200_IDS, class_table, read_category_ids
from ov3d_ros.data.scannet import write_scannet_scene
from ov3d_ros.training.datasets import load_labelled_scene

from test_scannet import _nyu_labels_ply


def test_built_in_tables_follow_the_benchmarks():
    scannet20, scannet200, nyu40 = class_table("scannet20"), class_table("scannet200"), class_table("nyu40")
    assert len(scannet20) == 20 and len(scannet200) == 200 and len(nyu40) == 40
    assert dict(zip(scannet20.values, scannet20.names))[39] == "otherfurniture"
    assert dict(zip(scannet20.values, scannet20.names))[5] == nyu40.names[4] == "chair"
    assert scannet200.values == SCANNET200_IDS and scannet200.names[:4] == ("wall", "chair", "floor", "table")
    assert dict(zip(scannet200.values, scannet200.names))[1191] == "mattress"
    # NYU40 ids outside the benchmark's 20 are not scored; a value that is no NYU40 id is refused.
    np.testing.assert_array_equal(scannet20.indices(np.array([0, 1, 13, 39, -1])), [-1, 0, -1, 19, -1])
    with pytest.raises(ValueError, match="label values 57 that class table scannet20 does not list"):
        scannet20.indices(np.array([1, 57]))
    np.testing.assert_array_equal(scannet200.indices(np.array([3, 1190, 12])), [2, 198, -1])


def test_tables_from_files_list_every_value_or_refuse(tmp_path):
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("# my robot's classes\nindex\tname\n7\tdock\n3\tmug\n\n")
    table = class_table(tsv)
    assert table.names == ("dock", "mug") and table.values == (7, 3)
    np.testing.assert_array_equal(table.indices(np.array([3, 7, -1])), [1, 0, -1])
    with pytest.raises(ValueError, match=r"label values 0, 5 that class table .*labels.tsv does not list"):
        table.indices(np.array([0, 5, 7]))
    listed = tmp_path / "classes.json"
    listed.write_text(json.dumps(["floor", "mug"]))
    assert class_table(listed).values == (0, 1)
    for text, message in (("3 mug\n", "expected 'value<TAB>name'"), ("x\tmug\n", "not an integer"),
                          ("1\tmug\n2\tmug\n", "listed twice")):
        tsv.write_text(text)
        with pytest.raises(ValueError, match=message):
            class_table(tsv)
    with pytest.raises(ValueError, match="no such file"):
        class_table(tmp_path / "none.tsv")


def test_scannet200_labels_come_from_the_annotations_through_the_labels_tsv(tmp_path, clean_frames):
    path = write_scannet_scene(tmp_path / "scene0042_00", [clean_frames[0].frame])
    _nyu_labels_ply(path / "scene0042_00_vh_clean_2.labels.ply", [1, 5, 5, 7, 0, 0])
    (path / "scene0042_00_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"segIndices": [0, 1, 1, 2, 3, 3]}))
    (path / "scene0042_00.aggregation.json").write_text(json.dumps({"segGroups": [
        {"objectId": 0, "segments": [1], "label": "office chair"},
        {"objectId": 1, "segments": [2], "label": "coffee table"},
        {"objectId": 2, "segments": [3], "label": "kitchen thing"}]}))
    ids = dict(zip(class_table("scannet200").names, SCANNET200_IDS))  # ScanNet's label ids of these categories
    tsv = tmp_path / "scannetv2-labels.combined.tsv"
    tsv.write_text(f"id\traw_category\tcategory\tcount\tnyu40id\n{ids['office chair']}\toffice chair\tchair\t1\t5\n"
                   f"{ids['coffee table']}\tcoffee table\ttable\t1\t7\n1192\tkitchen thing\tthing\t1\t40\n")
    assert read_category_ids(tsv)["coffee table"] == ids["coffee table"]
    assert read_category_ids(tsv, "nyu40id")["office chair"] == 5
    scene = load_labelled_scene(path, class_table("scannet200"), read_category_ids(tsv))
    names = scene.class_names
    got = [names[i] if i >= 0 else None for i in scene.cloud.label]
    # vertex 0 is in no object; 1192 is no ScanNet200 class (not scored)
    assert got == [None, "office chair", "office chair", "coffee table", None, None]
    # ScanNet20 from the same annotations, through the TSV's NYU40 ids
    scene = load_labelled_scene(path, class_table("scannet20"), read_category_ids(tsv, "nyu40id"))
    assert [scene.class_names[i] if i >= 0 else None for i in scene.cloud.label] == \
        [None, "chair", "chair", "table", None, None]
    # and from the labels PLY (its NYU40 ids) without the TSV
    scene = load_labelled_scene(path, class_table("scannet20"))
    assert [scene.class_names[i] if i >= 0 else None for i in scene.cloud.label] == \
        ["wall", "chair", "chair", "table", None, None]
    tsv.write_text("id\tname\n1\twall\n")
    with pytest.raises(ValueError, match="raw_category"):
        read_category_ids(tsv)
