"""Tests of qsmprep.config: validation and the TOML round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from qsmprep import config
from qsmprep.config import Settings, load_plugin_settings, normalize_labels


def _settings(**changes) -> Settings:
    base = dict(bids_dir="/data/bids", output_dir="/data/out", analysis_level="participant")
    return Settings(**{**base, **changes})


def test_defaults_and_normalisation():
    s = _settings(participant_label=["sub-01", "02", "01"], session_label="ses-pre", nprocs=2)
    assert s.bids_dir == Path("/data/bids") and isinstance(s.output_dir, Path)
    assert s.participant_label == ("01", "02")
    assert s.session_label == ("pre",)
    assert (s.masking, s.combination, s.unwrapping) == ("magnitude", "linear-fit", "laplacian")
    assert (s.bfr, s.inversion, s.reference) == ("resharp", "single-step-tv", "brain")
    assert s.tkd_threshold == 0.19 and s.vsharp_max_radius_mm == 12.0
    assert s.vsharp_min_radius_mm is None and s.mask_erosions == 0
    assert s.phase_sign == 1 and s.seed == 0 and s.omp_nthreads == 1
    assert _settings().nprocs >= 1


def test_defaults_are_valid_choices():
    s = _settings()
    assert s.masking in config.MASKING_CHOICES
    assert s.combination in config.COMBINATION_CHOICES
    assert s.unwrapping in config.UNWRAPPING_CHOICES
    assert s.bfr in config.BFR_CHOICES
    assert s.inversion in config.INVERSION_CHOICES
    assert s.reference in config.REFERENCE_CHOICES


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _settings().inversion = "tkd"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"inversion": "chisep"}, "inversion must be one of single-step-tv, tv, rts, tkd"),
        ({"masking": "synthstrip"}, "masking must be one of"),
        ({"reference": "csf?"}, "reference must be one of"),
        ({"reference": "csf", "regions": False}, "needs the atlas"),
        ({"analysis_level": "session"}, "analysis_level must be one of"),
        ({"phase_sign": 0}, "phase_sign must be 1 or -1"),
        ({"phase_sign": 2}, "phase_sign must be 1 or -1"),
        ({"nprocs": 0}, "nprocs must be an integer >= 1"),
        ({"omp_nthreads": 0}, "omp_nthreads"),
        ({"b0_tesla": 0.0}, "b0_tesla"),
        ({"b0_tesla": -3.0}, "b0_tesla"),
        ({"mem_gb": 0}, "mem_gb"),
        ({"tkd_threshold": 0.0}, "tkd_threshold"),
        ({"tkd_threshold": 0.7}, "below 2/3"),
        ({"vsharp_min_radius_mm": 20.0}, "must not exceed"),
        ({"mask_erosions": -1}, "mask_erosions"),
        ({"seed": -1}, "seed"),
        ({"participant_label": ["sub-01_x"]}, "not a BIDS label"),
    ],
)
def test_validation_errors(changes, match):
    with pytest.raises(ValueError, match=match):
        _settings(**changes)


def test_replace_validates_and_rejects_unknown_keys():
    s = _settings()
    assert s.replace(inversion="tkd").inversion == "tkd"
    assert s.inversion == "single-step-tv"
    with pytest.raises(ValueError, match="phase_sign"):
        s.replace(phase_sign=-2)
    with pytest.raises(ValueError, match="unknown"):
        s.replace(inverson="tkd")


def test_toml_round_trip(tmp_path):
    s = _settings(
        participant_label=("01", "02"),
        work_dir=tmp_path / "work",
        mem_gb=8,
        b0_tesla=7,
        phase_sign=-1,
        inversion="tv",
        vsharp_min_radius_mm=1.5,
        dry_run=True,
        verbose=2,
    )
    path = s.to_toml(tmp_path / "log" / "settings.toml")
    text = path.read_text()
    assert text.startswith("# qsmprep ")
    assert "use_plugin" not in text  # None values are omitted
    assert f'work_dir = "{tmp_path / "work"}"' in text
    back = Settings.from_toml(path)
    assert back == s
    assert isinstance(back.work_dir, Path) and back.participant_label == ("01", "02")
    assert back.mem_gb == 8.0 and isinstance(back.mem_gb, float)


def test_from_toml_overrides_and_errors(tmp_path):
    path = _settings(inversion="tkd").to_toml(tmp_path / "s.toml")
    assert Settings.from_toml(path, inversion="rts", nprocs=3).inversion == "rts"
    (tmp_path / "bad.toml").write_text("inversion = [")
    with pytest.raises(ValueError, match="invalid TOML"):
        Settings.from_toml(tmp_path / "bad.toml")
    (tmp_path / "unknown.toml").write_text('bids_dir = "/x"\ninverson = "tkd"\n')
    with pytest.raises(ValueError, match=r"unknown settings key\(s\): inverson"):
        Settings.from_toml(tmp_path / "unknown.toml")
    (tmp_path / "partial.toml").write_text('inversion = "tkd"\n')
    with pytest.raises(ValueError, match="lack required key"):
        Settings.from_toml(tmp_path / "partial.toml")
    partial = Settings.from_toml(
        tmp_path / "partial.toml", bids_dir="/b", output_dir="/o", analysis_level="group"
    )
    assert partial.inversion == "tkd" and partial.analysis_level == "group"


def test_normalize_labels():
    assert normalize_labels(None, prefix="sub-") == ()
    assert normalize_labels("sub-01", prefix="sub-") == ("01",)
    assert normalize_labels(["ses-1", "2"], prefix="ses-") == ("1", "2")
    with pytest.raises(ValueError, match="not a BIDS label"):
        normalize_labels(["01-a"], prefix="sub-")


def test_load_plugin_settings(tmp_path):
    path = tmp_path / "plugin.yml"
    path.write_text("plugin: MultiProc\nplugin_args:\n  n_procs: 4\n  memory_gb: 8\n")
    assert load_plugin_settings(path) == ("MultiProc", {"n_procs": 4, "memory_gb": 8})
    path.write_text("plugin_args: {}\n")
    with pytest.raises(ValueError, match="plugin: <name>"):
        load_plugin_settings(path)
    path.write_text("plugin: Slurm\n")
    with pytest.raises(ValueError, match="Nipype has no plugin 'Slurm'"):
        load_plugin_settings(path)


@pytest.mark.parametrize(
    ("graph", "sibling"),
    [("SLURMGraph", "plugin: SLURM"), ("SGEGraph", "plugin: SGE"), ("PBSGraph", "plugin: PBS"),
     ("CondorDAGMan", "plugin: Condor"), ("SomaFlow", "SLURM, SGE or PBS")],
)
def test_graph_plugins_are_refused_with_their_waiting_sibling(tmp_path, graph, sibling):
    """Nipype's graph plugins return before their jobs run (seen with SLURMGraph on a Slurm
    cluster: every acquisition was reported failed while the jobs went on writing outputs);
    the plugins that wait for their jobs are accepted with the same arguments."""
    path = tmp_path / "plugin.yml"
    path.write_text(f"plugin: {graph}\nplugin_args:\n  sbatch_args: --mem=8G\n")
    with pytest.raises(ValueError, match="returns before they run") as err:
        load_plugin_settings(path)
    assert sibling in str(err.value)
    for waiting in ("SLURM", "SGE", "PBS", "Linear"):
        path.write_text(f"plugin: {waiting}\nplugin_args:\n  sbatch_args: --mem=8G\n")
        assert load_plugin_settings(path) == (waiting, {"sbatch_args": "--mem=8G"})


def test_method_parameters_are_the_methods_own_arguments():
    assert config.method_parameters("bfr", "resharp") == {
        "radius_mm": 6.0, "lambda_reg": 1e-3, "tol": 1e-3, "max_iter": 200,
    }  # fmt: skip
    tv = config.method_parameters("inversion", "tv")
    # None: TV's lambda is set from the voxel size (per jump between voxels)
    assert tv["regularization"] is None and "workers" not in tv and "b0_direction" not in tv
    assert "magnitude" not in config.method_parameters("inversion", "medi")
    assert "weights" not in config.method_parameters("bfr", "pdf")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("radius_mm=8", ("radius_mm", 8)),
        ("lambda_reg=1e-4", ("lambda_reg", 1e-4)),
        ("correct_scaling=TRUE", ("correct_scaling", True)),
        ("rho=none", ("rho", None)),
        ("radii_mm=12,9,6", ("radii_mm", (12.0, 9.0, 6.0))),
    ],
)
def test_parse_param(text, expected):
    assert config.parse_param(text) == expected


@pytest.mark.parametrize("text", ["radius_mm", "=3", "radius_mm=", "9x=1", "radii_mm=1,a"])
def test_parse_param_rejects_malformed(text):
    with pytest.raises(ValueError, match="KEY=VALUE|numbers separated"):
        config.parse_param(text)


def test_method_params_are_checked_and_typed():
    s = _settings(bfr="resharp", bfr_params={"radius_mm": 8, "max_iter": 50.0},
                  inversion="tkd", inversion_params={"correct_scaling": True})  # fmt: skip
    assert s.bfr_params == {"radius_mm": 8.0, "max_iter": 50}
    assert isinstance(s.bfr_params["radius_mm"], float)
    assert isinstance(s.bfr_params["max_iter"], int)
    v = _settings(bfr="vsharp", bfr_params={"radii_mm": [12, 6]})
    assert v.bfr_params == {"radii_mm": (12.0, 6.0)}
    with pytest.raises(ValueError, match=r"--bfr-param: resharp has no parameter 'radius'.*"
                                         r"radius_mm \(default 6.0\)"):  # fmt: skip
        _settings(bfr_params={"radius": 8})
    with pytest.raises(ValueError, match="max_iter must be an integer"):
        _settings(bfr_params={"max_iter": 2.5})
    with pytest.raises(ValueError, match="--inversion-param for single-step-tv: regularization"):
        _settings(inversion_params={"regularization": "high"})
    with pytest.raises(ValueError, match="correct_scaling must be true or false"):
        _settings(inversion="tkd", inversion_params={"correct_scaling": 1})
    # parameters belong to the chosen method: switching method re-checks them
    with pytest.raises(ValueError, match="lbv has no parameter 'radius_mm'"):
        _settings(bfr_params={"radius_mm": 8}).replace(bfr="lbv")


def test_method_params_round_trip_toml(tmp_path):
    s = _settings(bfr="vsharp", bfr_params={"radii_mm": (12.0, 8.0)},
                  inversion_params={"regularization": 2e-4})  # fmt: skip
    back = Settings.from_toml(s.to_toml(tmp_path / "s.toml"))
    assert back.bfr_params == {"radii_mm": (12.0, 8.0)}
    assert back.inversion_params == {"regularization": 2e-4}


def test_docs_list_every_method_parameter_and_default():
    """docs/algorithms.md's parameter tables match the methods' own signatures."""
    from qsmprep.algorithms.background import BFR_METHODS
    from qsmprep.algorithms.inversion import INVERSION_METHODS, SINGLE_STEP_METHODS

    text = (Path(__file__).resolve().parents[1] / "docs" / "algorithms.md").read_text()
    inversions = {**INVERSION_METHODS, **SINGLE_STEP_METHODS}
    for stage, registry in (("bfr", BFR_METHODS), ("inversion", inversions)):
        for method in registry:
            params = config.method_parameters(stage, method)
            row = f"| `{method}` | " + ", ".join(f"`{k}={v}`" for k, v in params.items()) + " |"
            assert row in text, f"docs/algorithms.md lacks or misstates: {row}"


def test_stage_choices_are_the_algorithm_registries():
    """Every --bfr/--inversion choice runs a registered method and every method is a choice."""
    from qsmprep.algorithms.background import BFR_METHODS
    from qsmprep.algorithms.inversion import INVERSION_METHODS, SINGLE_STEP_METHODS

    assert set(config.BFR_CHOICES) == set(BFR_METHODS)
    assert set(config.SINGLE_STEP_CHOICES) == set(SINGLE_STEP_METHODS)
    assert set(config.INVERSION_CHOICES) == set(INVERSION_METHODS) | set(SINGLE_STEP_METHODS)
