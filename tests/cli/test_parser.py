"""Tests of qsmprep.cli.parser (pure command-line parsing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qsmprep import config
from qsmprep.__about__ import __version__
from qsmprep.cli.parser import build_parser, parse_args


@pytest.fixture
def dirs(tmp_path):
    bids_dir = tmp_path / "bids"
    bids_dir.mkdir()
    return bids_dir, tmp_path / "out"


def _args(dirs, *extra):
    bids_dir, out_dir = dirs
    return [str(bids_dir), str(out_dir), "participant", *extra]


def _exit_2(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # one line, no usage block
    return err


def test_minimal_command_line_gives_defaults(dirs):
    s = parse_args(_args(dirs))
    assert s.bids_dir == dirs[0] and s.output_dir == dirs[1]
    assert s.analysis_level == "participant"
    assert s.participant_label == () and s.work_dir is None
    assert (
        s.inversion == "single-step-tv"
        and s.bfr == "resharp"
        and s.phase_sign == 1
        and not s.dry_run
        and s.verbose == 0
    )


def test_relative_paths_become_absolute(dirs, monkeypatch):
    monkeypatch.chdir(dirs[0].parent)
    s = parse_args(["bids", "out", "group", "-w", "work"])
    assert s.bids_dir.is_absolute() and s.work_dir == dirs[0].parent / "work"
    assert s.analysis_level == "group"


@pytest.mark.parametrize("option", ["--participant-label", "--participant_label"])
def test_participant_label_with_or_without_prefix(dirs, option):
    s = parse_args(_args(dirs, option, "sub-01", "02", "sub-02"))
    assert s.participant_label == ("01", "02")


def test_session_label(dirs):
    assert parse_args(_args(dirs, "--session-label", "ses-pre", "post")).session_label == (
        "pre",
        "post",
    )


def test_options_and_aliases(dirs, tmp_path):
    s = parse_args(
        _args(
            dirs,
            "--n-cpus", "3", "--omp-nthreads", "2", "--mem", "16000MB", "--b0-tesla", "7",
            "--phase-sign", "-1", "--dry-run", "-vv", "--seed", "42", "--inversion", "tkd",
            "--tkd-threshold", "0.15", "--mask-erosions", "2", "--masking", "phase-quality",
            "--use-plugin", str(tmp_path / "plugin.yml"),
            "--bids-filter-file", str(tmp_path / "filter.json"),
        )
    )  # fmt: skip
    assert (s.nprocs, s.omp_nthreads, s.mem_gb, s.b0_tesla) == (3, 2, 16.0, 7.0)
    assert s.phase_sign == -1 and s.dry_run and s.verbose == 2 and s.seed == 42
    assert (s.inversion, s.tkd_threshold, s.mask_erosions) == ("tkd", 0.15, 2)
    assert s.masking == "phase-quality"
    assert s.use_plugin == tmp_path / "plugin.yml"
    assert s.bids_filter_file == tmp_path / "filter.json"


@pytest.mark.parametrize(("text", "gb"), [("8", 8.0), ("8GB", 8.0), ("512mb", 0.512), ("1T", 1e3)])
def test_memory_units(dirs, text, gb):
    assert parse_args(_args(dirs, "--mem-gb", text)).mem_gb == pytest.approx(gb)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"qsmprep {__version__}"


@pytest.mark.parametrize(
    ("option", "choices"),
    [
        ("--masking", config.MASKING_CHOICES),
        ("--combination", config.COMBINATION_CHOICES),
        ("--unwrapping", config.UNWRAPPING_CHOICES),
        ("--bfr", config.BFR_CHOICES),
        ("--inversion", config.INVERSION_CHOICES),
    ],
)
def test_stage_choices_come_from_config(dirs, option, choices, capsys):
    for choice in choices:
        parse_args(_args(dirs, option, choice))
    err = _exit_2(_args(dirs, option, "not-a-method"), capsys)
    assert "invalid choice" in err and option in err


def test_reference_takes_the_named_choices_or_an_atlas_region(dirs, capsys):
    for choice in (*config.REFERENCE_CHOICES, "putamen", "white_matter"):
        assert parse_args(_args(dirs, "--reference", choice)).reference == choice
    # a region reference needs the atlas; checked against the atlas's names at run time
    err = _exit_2(_args(dirs, "--reference", "csf", "--no-regions"), capsys)
    assert "--no-regions" in err
    err = _exit_2(_args(dirs, "--reference", "not a region!"), capsys)
    assert "reference" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--phase-sign", "2"], "invalid choice"),
        (["--nprocs", "0"], "--nprocs"),
        (["--mem", "lots"], "--mem"),
        (["--b0-tesla", "-3"], "--b0-tesla"),
        (["--tkd-threshold", "0.9"], "below 2/3"),
        (["--participant-label", "01_x"], "not a BIDS label"),
        (["--vsharp-min-radius-mm", "20"], "must not exceed"),
        (["--unknown-option"], "unrecognized arguments"),
    ],
)
def test_invalid_values_exit_2(dirs, extra, message, capsys):
    err = _exit_2(_args(dirs, *extra), capsys)
    assert message in err
    assert err.strip().splitlines()[-1].startswith("qsmprep: error:")


def test_invalid_analysis_level_exits_2(dirs, capsys):
    err = _exit_2([str(dirs[0]), str(dirs[1]), "subject"], capsys)
    assert "invalid choice" in err


def test_missing_bids_dir_exits_2(tmp_path, capsys):
    err = _exit_2([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"], capsys)
    assert "BIDS dataset folder not found" in err and "nope" in err


def test_output_equal_to_input_exits_2(dirs, capsys):
    err = _exit_2([str(dirs[0]), str(dirs[0]), "participant"], capsys)
    assert "output_dir must differ" in err


def test_command_line_overrides_config_file(dirs, tmp_path):
    saved = config.Settings(
        bids_dir=tmp_path / "elsewhere",
        output_dir=tmp_path / "elsewhere-out",
        analysis_level="group",
        inversion="tkd",
        nprocs=4,
        phase_sign=-1,
        dry_run=True,
        participant_label=("09",),
    )
    path = saved.to_toml(tmp_path / "settings.toml")
    s = parse_args(_args(dirs, "--config-file", str(path), "--inversion", "tv", "--no-dry-run"))
    assert s.bids_dir == dirs[0] and s.analysis_level == "participant"  # positionals win
    assert s.inversion == "tv" and not s.dry_run  # explicit options win
    assert s.nprocs == 4 and s.phase_sign == -1 and s.participant_label == ("09",)


def test_config_file_alone_fills_settings(dirs, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('reference = "none"\nmask_erosions = 3\n')
    s = parse_args(_args(dirs, "--config-file", str(path)))
    assert s.reference == "none" and s.mask_erosions == 3 and s.inversion == "single-step-tv"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("inversion = [", "invalid TOML"),
        ('inverson = "tkd"', "unknown settings key(s): inverson"),
        ('inversion = "chisep"', "inversion must be one of"),
    ],
)
def test_bad_config_file_exits_2(dirs, tmp_path, content, message, capsys):
    path = tmp_path / "c.toml"
    path.write_text(content)
    err = _exit_2(_args(dirs, "--config-file", str(path)), capsys)
    assert message in err


def test_missing_config_file_exits_2(dirs, tmp_path, capsys):
    err = _exit_2(_args(dirs, "--config-file", str(tmp_path / "none.toml")), capsys)
    assert "file not found" in err


def test_help_states_units():
    text = " ".join(build_parser().format_help().split())
    for unit in ("tesla", "ppm", "in mm", "in GB"):
        assert unit in text


def test_parse_args_returns_paths(dirs):
    s = parse_args(_args(dirs))
    assert isinstance(s.bids_dir, Path) and isinstance(s.output_dir, Path)


def test_method_params_from_command_line_and_config_file(dirs, tmp_path, capsys):
    s = parse_args(_args(dirs, "--bfr-param", "radius_mm=8", "--bfr-param", "lambda_reg=1e-4",
                         "--inversion-param", "regularization=2e-4"))  # fmt: skip
    assert s.bfr_params == {"radius_mm": 8.0, "lambda_reg": 1e-4}
    assert s.inversion_params == {"regularization": 2e-4}
    path = s.to_toml(tmp_path / "settings.toml")
    # KEY=VALUE on the command line adds to (and overrides) the file's table
    again = parse_args(_args(dirs, "--config-file", str(path), "--bfr-param", "radius_mm=9"))
    assert again.bfr_params == {"radius_mm": 9.0, "lambda_reg": 1e-4}
    assert again.inversion_params == {"regularization": 2e-4}
    err = _exit_2(_args(dirs, "--bfr-param", "radius=8"), capsys)
    assert "resharp has no parameter 'radius'" in err.strip().splitlines()[-1]
    err = _exit_2(_args(dirs, "--inversion-param", "regularization"), capsys)
    assert "expected KEY=VALUE" in err
