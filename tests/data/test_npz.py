""".npz archives of map files: replaced at once (a failed write keeps the file there before and leaves nothing beside
it), added to in place without rewriting what they hold, and read whole."""
import zipfile

import numpy as np
import pytest

from ov3d_ros.data.npz import add_to_npz, npz_names, read_npz, staged, write_npz


def _arrays(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"keys": np.sort(rng.integers(0, 1 << 40, 1000)), "xyz_sum": rng.normal(size=(1000, 3)),
            "format": np.array("test")}


def test_write_npz_replaces_the_file_at_once_and_a_failed_write_keeps_the_old_one(tmp_path):
    first, second = _arrays(0), _arrays(1)
    path = write_npz(tmp_path / "map", first)
    assert path == tmp_path / "map.npz"
    back = read_npz(path)
    for name, value in first.items():
        np.testing.assert_array_equal(back[name], value)

    with pytest.raises(RuntimeError, match="killed"), staged(path) as staging:
        with open(staging, "wb") as half:  # half a file, then the writer dies
            half.write(b"PK\x03\x04")
        raise RuntimeError("killed")
    np.testing.assert_array_equal(read_npz(path)["keys"], first["keys"])
    with staged(path):  # a block that writes nothing leaves the file as it was
        pass
    np.testing.assert_array_equal(read_npz(path)["keys"], first["keys"])

    write_npz(path, second)
    np.testing.assert_array_equal(read_npz(path)["xyz_sum"], second["xyz_sum"])
    assert [p.name for p in tmp_path.iterdir()] == ["map.npz"]


def test_add_to_npz_keeps_the_bytes_of_what_the_file_holds_and_refuses_a_name_it_has(tmp_path):
    voxels, features = _arrays(0), {"features.xyz": np.arange(12.0).reshape(4, 3), "features.meta": np.array("{}")}
    path = write_npz(tmp_path / "map.npz", voxels)
    before = path.read_bytes()
    add_to_npz(path, features)
    with zipfile.ZipFile(path) as archive:  # the new members start where the old ones ended
        added = min(info.header_offset for info in archive.infolist() if info.filename.startswith("features."))
    assert added > 1000 * 8 * 4 and path.read_bytes()[:added] == before[:added]  # the voxels were not rewritten
    back = read_npz(path)
    assert sorted(back) == sorted([*voxels, *features]) == sorted(npz_names(path))
    for name, value in {**voxels, **features}.items():
        np.testing.assert_array_equal(back[name], value)
    with pytest.raises(ValueError, match=r"holds \['features.xyz'\] already"):
        add_to_npz(path, {"features.xyz": np.zeros(3)})
    np.testing.assert_array_equal(read_npz(path)["features.xyz"], features["features.xyz"])


def test_damaged_archives_are_refused_by_name(tmp_path):
    path = write_npz(tmp_path / "map.npz", _arrays(0))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:5000])
    for read in (read_npz, npz_names):
        with pytest.raises(ValueError, match="cannot read .*truncated.npz as .npz"):
            read(truncated)
