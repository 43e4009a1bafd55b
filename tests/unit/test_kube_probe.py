"""The state-file probe the institution node's kubelet probes run."""

from __future__ import annotations

import json
from pathlib import Path

from fl.kube.probe import main


def test_the_probe_passes_only_for_an_accepted_status(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"status": "running"}))
    assert main([str(state), "running"]) == 0
    assert main([str(state), "starting"]) == 1
    state.write_text(json.dumps({"status": "refused"}))
    assert main([str(state), "starting", "running"]) == 1


def test_the_probe_fails_for_a_missing_or_broken_state_file(tmp_path: Path) -> None:
    assert main([str(tmp_path / "absent.json"), "running"]) == 1
    (tmp_path / "broken.json").write_text("{not json")
    assert main([str(tmp_path / "broken.json"), "running"]) == 1
    assert main([str(tmp_path / "broken.json")]) == 2
