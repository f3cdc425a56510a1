"""The grouped ``sorterbot-cloud`` command tree and the former flat names."""

from __future__ import annotations

from collections.abc import Mapping

import click
import pytest
from click.testing import CliRunner

from sorterbot_cloud import cli


def _leaves(tree, prefix=()):
    for name, node in tree.items():
        if isinstance(node, Mapping):
            yield from _leaves(node, prefix + (name,))
        else:
            yield prefix + (name,)


@pytest.mark.parametrize("path", list(_leaves(cli.COMMANDS)), ids=lambda p: " ".join(p))
def test_every_command_of_the_tree_imports_as_a_click_command(path):
    command = cli.resolve(path)
    assert isinstance(command, click.Command), f"{' '.join(path)} did not resolve"


@pytest.mark.parametrize("former, path", sorted(cli.FORMER_NAMES.items()))
def test_former_names_run_the_command_of_their_new_path(former, path):
    via_former = cli.main.get_command(click.Context(cli.main), former)
    assert via_former is not None
    assert via_former.callback is cli.resolve(path).callback
    result = CliRunner().invoke(cli.main, [former, "--help"])
    assert result.exit_code == 0, result.output


def test_help_lists_the_groups_and_hides_former_names():
    result = CliRunner().invoke(cli.main, ["--help"])
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == set(cli.COMMANDS)
    assert not listed & set(cli.FORMER_NAMES)


def test_nested_group_help_and_unknown_commands():
    runner = CliRunner()
    result = runner.invoke(cli.main, ["detector", "--help"])
    assert result.exit_code == 0
    for name in cli.COMMANDS["detector"]:
        assert name in result.output
    assert runner.invoke(cli.main, ["detector", "no-such-command"]).exit_code == 2
    assert runner.invoke(cli.main, ["no-such-group"]).exit_code == 2
    assert cli.resolve(("detector", "no-such-command")) is None
