"""The command line lists what the registries hold (help text a newcomer reads first)."""

from click.testing import CliRunner

from occsynth.benchmarks import list_builders
from occsynth.cli import main
from occsynth.occluders import list_occluders


def test_occluders_command_lists_every_registered_occluder():
    result = CliRunner().invoke(main, ["occluders"])
    assert result.exit_code == 0
    listed = {line.split()[1] for line in result.output.splitlines() if line.strip()}
    assert listed == set(list_occluders())
    assert {"block", "polygon", "sunglasses", "mask3d", "maskthefaces", "fit_area", "grid_cell"} <= listed


def test_build_group_offers_every_builder_with_its_definition():
    result = CliRunner().invoke(main, ["build", "--help"])
    assert result.exit_code == 0
    for name in list_builders():
        assert name in result.output
    help_text = CliRunner().invoke(main, ["build", "lfw-occ", "--help"]).output
    assert "43.09%" in help_text and "--ratio" in help_text and "--check" in help_text


def test_unknown_build_and_bad_spec_fail_clearly(tmp_path):
    result = CliRunner().invoke(main, ["build", "lfw-nope"])
    assert result.exit_code != 0 and "unknown build" in result.output
    result = CliRunner().invoke(
        main,
        [
            "align",
            "embedded",
            "--out",
            str(tmp_path / "o"),
            "--occlude",
            "nosuch(ratio=1)",
            "--workers",
            "1",
            "--no-cache",
            "--quiet",
        ],
    )
    assert result.exit_code != 0 and "unknown occluder 'nosuch'" in result.output


def test_the_command_lines_exit_leaves_what_is_alive_out_of_the_shutdown_collections():
    """Called as a program (console script, python -m), a command that exits freezes what is
    alive (gc.freeze), so the interpreter's collections at shutdown do not go through a
    build's results again; the exit code is kept. CliRunner calls main() and freezes nothing."""
    import gc

    import pytest

    before = gc.get_freeze_count()  # (another test's in-process build may have frozen some)
    assert CliRunner().invoke(main, ["occluders"]).exit_code == 0
    assert gc.get_freeze_count() == before
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["build", "lfw-nope"], prog_name="occsynth")
        assert exit_.value.code == 2
        assert gc.get_freeze_count() > before
    finally:
        if before == 0:
            gc.unfreeze()


def test_garbage_cycles_alive_at_the_exit_are_still_finalised(tmp_path):
    """What the exit freezes is what is alive; a garbage cycle (here one holding an object
    whose finalizer writes a file, as an unflushed file would) is collected first."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import click
        from occsynth.clikit import OccsynthGroup

        class Last:
            def __del__(self):
                open({str(tmp_path / "finalised")!r}, "w").write("yes")

        @click.group(cls=OccsynthGroup)
        def cli():
            pass

        @cli.command()
        def run():
            cycle = [Last()]
            cycle.append(cycle)

        cli(["run"])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "finalised").read_text() == "yes"
