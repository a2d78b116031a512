"""`hyperlex train` end to end through click, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from hyperlex_console.cli import main


def test_train_json_last_line_names_the_outputs(tmp_path: Path):
    profile = tmp_path / "p.toml"
    profile.write_text('extends = "tiny-test"\nname = "p"\n[device]\nthreads = 1\n'
                       "[training]\nmax_seq_len = 160\nbatch_size = 2\neval_every = 0\n"
                       "checkpoint_every = 0\n")
    result = CliRunner().invoke(main, ["train", "--profile", str(profile), "--max-steps", "2",
                                       "--run-dir", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(last) == {"run_dir", "adapter_dir", "final_loss", "eval_loss"}
    assert Path(last["adapter_dir"], "adapter_config.json").is_file()
    again = CliRunner().invoke(main, ["train", "--profile", str(profile), "--resume",
                                      str(tmp_path / "nowhere"), "--json"])
    assert again.exit_code == 1 and "no run" in again.stderr
