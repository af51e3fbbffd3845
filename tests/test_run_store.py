"""`trl_soft.run_store`: the one store the round loop asks what is done, on folders built by hand (no model): a fresh
store has nothing done; what it writes (generations, a trained round, a decision) is what a resumed store answers."""

import json

from trl_soft.acceptance import AcceptanceSettings
from trl_soft.callbacks import RoundControl
from trl_soft.decision import decide_round
from trl_soft.run_folder import CHECKPOINT_DONE, RunFolder
from trl_soft.run_store import RunStore
from trl_soft.state import SOFTState

from .test_rounds import _round


def opened(out, resume):
    folder = RunFolder(out)
    folder.check({"num_rounds": 3}, "h", False, resume, lambda *a: True)
    return RunStore.open(folder, {"num_rounds": 3}, "h", 3, resume, False, seed=5)


def test_a_fresh_store_has_nothing_done_and_a_resumed_one_answers_from_disk(tmp_path):
    out = tmp_path / "out"
    store = opened(out, resume=False)
    try:
        assert store.next_round() == 1
        assert (store.generated(2), store.trained(2), store.checkpoint(2)) == (None, None, None)
        round_ = _round(out)  # round 2's record, its files under out/round_2
        store.save_generations(round_)
        store.save_trained(lambda folder: (out / "round_2").joinpath(folder).mkdir(parents=True), round_, 6, 0.5)
        checkpoint = round_.paths.checkpoints / "checkpoint-3"
        checkpoint.mkdir(parents=True)
        (checkpoint / CHECKPOINT_DONE).write_text(json.dumps({"global_step": 3, "loss_sum": 1.5}))
        decision = decide_round(2, {"round": 2, "train_loss": 0.5}, None, [], None, AcceptanceSettings(), False,
                                lambda record: RoundControl(should_stop=True, stop_reason="scripted"))
        store.record(round_, decision)
    finally:
        store.folder.release()

    state = SOFTState.load(out)
    assert state.rounds_completed == 2 and state.history == [decision.metrics]
    assert state.stopped_early and state.stop_reason == "scripted" and state.final_round == 2
    assert json.loads((out / "round_2" / "metrics.json").read_text()) == decision.metrics

    again = opened(out, resume=True)
    try:
        assert again.next_round() == 4  # a stopped run has no round left to run
        back = again.generated(2)
        assert back.rows() == round_.rows() and back.seed == 5 + 2 and "seconds_generate" in back.timings
        assert again.trained(2) == (6, 0.5) and again.checkpoint(2) == str(checkpoint)
        assert again.generated(3) is None and again.trained(3) is None
    finally:
        again.folder.release()
