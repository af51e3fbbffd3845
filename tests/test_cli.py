"""`trl_soft.cli`: the `trl-soft` console script's usage and its `report` command."""


def test_cli_usage_and_report(tmp_path):
    from trl_soft.cli import main
    from trl_soft.state import SOFTState

    assert main(["--help"]) == 0
    assert main(["frobnicate"]) == 2
    assert main(["report", str(tmp_path)]) == 2
    state = SOFTState(config_hash="x", num_rounds=2)
    state.record_round({"round": 1, "prompts": 4, "kept": 3, "validation_nll": 2.5})
    state.save(tmp_path)
    assert main(["report", str(tmp_path)]) == 0


def test_report_prints_the_stop_and_plots_the_rounds(tmp_path, capsys):
    from trl_soft.cli import main
    from trl_soft.state import SOFTState

    state = SOFTState(config_hash="x", num_rounds=4, base_metrics={"round": 0, "validation_nll": 2.6,
                                                                   "sample_entropy": 2.0})
    for round_index, nll in ((1, 2.5), (2, 2.4), (3, 2.45)):
        state.record_round({"round": round_index, "prompts": 4, "kept": 3, "validation_nll": nll,
                            "sample_entropy": 2.0 - round_index / 10, "sample_distinct_2": 0.5})
    state.stopped_early, state.stop_reason, state.final_round = True, "validation_nll got worse", 2
    state.save(tmp_path)
    image = tmp_path / "rounds.png"
    assert main(["report", str(tmp_path), "--all", "--plot", str(image)]) == 0
    out = capsys.readouterr().out
    assert "Stopped early after round 3 of 4: validation_nll got worse. Final model: round 2." in out
    assert "entropy" in out and "distinct-2" in out
    assert image.is_file() and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
