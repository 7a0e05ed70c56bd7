"""launch/segment.launch.py cannot run here (no `launch`/`launch_ros`), so check it statically against the package:
executables are console scripts, config files exist and every parameter it or the YAML sets is declared."""
import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml

from ov3d_ros.nodes.fusion_node import FUSION_PARAMS
from ov3d_ros.nodes.segmenter_node import SEGMENTER_PARAMS
from ov3d_ros.nodes.synthetic_camera_node import CAMERA_PARAMS

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch" / "segment.launch.py"
DECLARED = {
    "fusion_node": {p.name for p in FUSION_PARAMS},
    "segmenter_node": {p.name for p in SEGMENTER_PARAMS},
    "synthetic_camera_node": {p.name for p in CAMERA_PARAMS},
}


def _console_scripts() -> dict[str, str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    entries = [ast.literal_eval(e) for e in value.elts]
                    return dict(re.match(r"\s*([\w.-]+)\s*=\s*(\S+)\s*$", e).groups() for e in entries)
    raise AssertionError("setup.py declares no console_scripts")


def _launch_tree():
    return ast.parse(LAUNCH.read_text())


def _launch_nodes(package: str = "ov3d_ros"):
    """(executable, name, parameters AST list) of every launch_ros Node(...) call of ``package``."""
    out = []
    for call in ast.walk(_launch_tree()):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Node":
            kw = {k.arg: k.value for k in call.keywords}
            if ast.literal_eval(kw["package"]) == package:
                out.append((ast.literal_eval(kw["executable"]), ast.literal_eval(kw["name"]),
                            kw.get("parameters")))
    return out


def _dict_assignments() -> dict[str, ast.Dict]:
    return {t.id: node.value for node in ast.walk(_launch_tree()) if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Dict) for t in node.targets if isinstance(t, ast.Name)}


def test_every_executable_is_a_console_script_with_a_main():
    scripts = _console_scripts()
    nodes = _launch_nodes()
    assert {n[0] for n in nodes} == {"fusion_node", "segmenter_node", "synthetic_camera_node"}
    for executable, _, _ in nodes:
        assert executable in scripts, f"launch names '{executable}', which setup.py does not install"
        module, func = scripts[executable].split(":")
        assert callable(getattr(importlib.import_module(module), func))
    # the in-process bring-up and the query client too
    for script in ("ov3d-run", "ov3d-query"):
        module, func = scripts[script].split(":")
        assert callable(getattr(importlib.import_module(module), func))


def test_every_config_file_exists_and_is_installed():
    names = [c.value for c in ast.walk(_launch_tree()) if isinstance(c, ast.Constant)
             and isinstance(c.value, str) and c.value.endswith(".yaml")]
    assert sorted(names) == ["ov3d.yaml", "sim_camera.yaml"]
    for name in names:
        assert (ROOT / "config" / name).is_file()
    setup = (ROOT / "setup.py").read_text()
    assert 'glob("config/*.yaml")' in setup and 'glob("launch/*.launch.py")' in setup


def test_every_parameter_set_by_the_launch_file_is_declared():
    dicts = _dict_assignments()
    checked = 0
    for executable, name, params in _launch_nodes():
        assert name == executable  # the YAML sections are keyed by these names
        for item in params.elts:
            node = dicts.get(item.id) if isinstance(item, ast.Name) else item
            if isinstance(node, ast.Dict):
                for key in node.keys:
                    assert ast.literal_eval(key) in DECLARED[executable], \
                        f"launch sets '{ast.literal_eval(key)}' on {executable}, which does not declare it"
                    checked += 1
    assert checked >= 8


def test_launch_arguments_used_are_declared():
    tree = _launch_tree()
    declared = {ast.literal_eval(c.args[0]) for c in ast.walk(tree) if isinstance(c, ast.Call)
                and getattr(c.func, "id", None) == "DeclareLaunchArgument"}
    used = {ast.literal_eval(c.args[0]) for c in ast.walk(tree) if isinstance(c, ast.Call)
            and getattr(c.func, "id", None) == "LaunchConfiguration"}
    assert used == declared
    assert {"checkpoint", "config", "device", "use_sim_camera", "color_topic", "depth_topic",
            "camera_info_topic", "rviz"} <= declared


class _Recorder:
    """Stands in for one launch / launch_ros class: keeps its arguments (launch is not installable here)."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _run_launch_file(path: Path, monkeypatch) -> list:
    import importlib.util
    import sys
    import types

    for name, attrs in {"launch": ["LaunchDescription"], "launch.actions": ["DeclareLaunchArgument"],
                        "launch.conditions": ["IfCondition", "UnlessCondition"],
                        "launch.substitutions": ["LaunchConfiguration"], "launch_ros.actions": ["Node"],
                        "launch_ros": []}.items():
        module = types.ModuleType(name)
        for attr in attrs:
            setattr(module, attr, type(attr, (_Recorder,), {}))
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv("AMENT_PREFIX_PATH", "/nonexistent")  # nothing indexed: the files must be found by path
    spec = importlib.util.spec_from_file_location("segment_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description().args[0]


def test_launch_file_given_by_path_finds_its_files(monkeypatch):
    actions = _run_launch_file(LAUNCH, monkeypatch)

    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from strings(item)

    paths = [v for a in actions for v in strings(list(a.args) + list(a.kwargs.values()))
             if v.startswith("/") and v.endswith((".yaml", ".rviz"))]
    assert {Path(p).name for p in paths} == {"ov3d.yaml", "sim_camera.yaml", "ov3d.rviz"}
    assert all(Path(p).is_file() for p in paths), paths


def test_rviz_config_shows_what_the_nodes_publish():
    rviz = yaml.safe_load((ROOT / "rviz" / "ov3d.rviz").read_text())
    topics = {d["Topic"]["Value"] for d in rviz["Visualization Manager"]["Displays"] if "Topic" in d}
    assert topics == {"/fusion_node/global_cloud", "/segmenter_node/labelled_map", "/segmenter_node/labelled_cloud",
                      "/segmenter_node/markers"}
    sources = {"fusion_node": (ROOT / "ov3d_ros/nodes/fusion_node.py").read_text(),
               "segmenter_node": (ROOT / "ov3d_ros/nodes/segmenter_node.py").read_text()}
    for topic in topics:
        node, name = topic.strip("/").split("/")
        assert f'"~/{name}"' in sources[node], f"{node} publishes no ~/{name}"
    assert 'glob("rviz/*.rviz")' in (ROOT / "setup.py").read_text()


@pytest.mark.parametrize("config", ["ov3d.yaml", "sim_camera.yaml"])
def test_every_yaml_parameter_is_declared_by_its_node(config):
    data = yaml.safe_load((ROOT / "config" / config).read_text())
    for node_name, section in data.items():
        assert node_name in DECLARED, f"{config}: unknown node '{node_name}'"
        unknown = set(section["ros__parameters"]) - DECLARED[node_name]
        assert not unknown, f"{config}: {node_name} does not declare {sorted(unknown)}"


@pytest.mark.parametrize("module", ["ov3d_ros.nodes.run_cli", "ov3d_ros.nodes.query_client"])
def test_cli_help(module, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and ("--demo" in out or "--min-score" in out)
