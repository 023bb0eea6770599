"""Trajectory stage: replay == teacher decode, batching/sharding/resume invariance, chunk checks, d3LLM import."""

from __future__ import annotations

import shutil
from pathlib import Path

import datasets
import pytest
import torch
from conftest import CONF
from hydra import compose, initialize_config_dir

from d3llm_pipeline.decoding import DecodeSpec, decode
from d3llm_pipeline.models.tiny import build_tiny_teacher, save_tiny_teacher
from d3llm_pipeline.stages import call_stage
from d3llm_pipeline.trajectories import store
from d3llm_pipeline.trajectories.d3llm_format import convert_d3llm_dataset, from_d3llm_row, to_d3llm_row
from d3llm_pipeline.trajectories.states import TrajectoryError, state_at, unmask_steps_from_states

MASK = 1


def test_state_at_and_inverse_by_hand():
    response = torch.tensor([5, 6, 7, 2])
    steps = torch.tensor([1, 0, 2, 2])  # position 1 first, then 0, then 2 and 3 together (a tie)
    assert state_at(response, steps, 0, MASK).tolist() == [1, 6, 1, 1]
    assert state_at(response, steps, 1, MASK).tolist() == [5, 6, 1, 1]
    assert state_at(response, steps, 2, MASK).tolist() == [5, 6, 7, 2]
    states = torch.stack([state_at(response, steps, j, MASK) for j in range(3)])
    final, recovered = unmask_steps_from_states(states, MASK)
    assert final.tolist() == response.tolist() and recovered.tolist() == steps.tolist()


@pytest.mark.parametrize(
    ("states", "message"),
    [([[4, 5], [4, 1], [4, 5]], "masked again"), ([[4, 1], [5, 6]], "changes"), ([[4, 1], [4, 1]], "still MASK")],
)
def test_invalid_reveal_orders_are_rejected(states, message):
    with pytest.raises(TrajectoryError, match=message):
        unmask_steps_from_states(torch.tensor(states), MASK)


class RecordingLM(torch.nn.Module):
    """Records the generation region the model sees at every forward (batch 1)."""

    def __init__(self, inner, prompt_len: int) -> None:
        super().__init__()
        self.inner, self.prompt_len, self.seen = inner, prompt_len, []
        self.mask_token_id, self.eos_token_id = inner.mask_token_id, inner.eos_token_id
        self.pad_token_id, self.shift_logits = inner.pad_token_id, inner.shift_logits

    def logits(self, ids, attention_mask=None, keep=None):
        self.seen.append(ids[0, self.prompt_len :].clone())
        return self.inner.logits(ids, attention_mask, keep)


@pytest.mark.parametrize("early_stop", [False, True])
def test_replaying_unmask_steps_recreates_every_state_the_teacher_saw(tokenizer, early_stop):
    lm = build_tiny_teacher(tokenizer, max_positions=40, n_embd=32, n_layer=1, n_head=2, seed=3).eval()
    prompt = torch.randint(4, 44, (1, 8), generator=torch.Generator().manual_seed(0))
    recorder = RecordingLM(lm, prompt_len=8)
    spec = DecodeSpec(gen_length=32, block_size=8, rule="vanilla", score="confidence", early_stop=early_stop)
    result = decode(recorder, prompt, spec)
    final, steps = result.sequences[0, 8:], result.unmask_step[0]
    assert len(recorder.seen) == int(result.nfe[0])
    # The input of forward j+1 is the state after forward j; the state before forward 0 is all MASK.
    assert (recorder.seen[0] == MASK).all()
    for j in range(len(recorder.seen) - 1):
        assert torch.equal(state_at(final, steps, j, MASK), recorder.seen[j + 1])
    assert torch.equal(state_at(final, steps, len(recorder.seen) - 1, MASK), final)
    if not early_stop:  # exactly one token per forward: a total order
        assert sorted(steps.tolist()) == list(range(32))


# ------------------------------------------------------------------------------------ the stage itself


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    from d3llm_pipeline.tasks.tokenizer import build_tokenizer

    tok = build_tokenizer()
    path = tmp_path_factory.mktemp("teacher") / "teacher"
    save_tiny_teacher(build_tiny_teacher(tok, max_positions=88, n_embd=32, n_layer=1, n_head=2, seed=0), tok, path)
    return path


def run_trajectory(teacher_dir: Path, out_dir: Path, *overrides: str, stage: str = "trajectory") -> dict:
    base = [f"stage={stage}", f"paths.root_dir={out_dir.parent}", f"model.path={teacher_dir}", "threads=1",
            f"stage.out_dir={out_dir}", f"+output_dir={out_dir.parent / 'run'}"]
    if stage == "trajectory":
        base += ["stage.n_prompts=40", "stage.chunk_size=16", "decode.batch_size=8", "task.n_train=200"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*base, *overrides])
    return call_stage(cfg)


def rows_of(out_dir: Path) -> list[dict]:
    return store.load_trajectories(out_dir).to_list()


@pytest.fixture(scope="module")
def reference_rows(teacher_dir, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("single") / "traj"
    summary = run_trajectory(teacher_dir, out)
    assert summary["samples"] == 40 and summary["labelled_now"] == 40
    return rows_of(out)


def test_rows_hold_the_documented_fields(reference_rows):
    row = reference_rows[0]
    assert [r["sample_id"] for r in reference_rows] == list(range(40))
    assert len(row["prompt_ids"]) == 24 and len(row["response_ids"]) == len(row["unmask_step"]) == 64
    assert row["nfe"] == max(row["unmask_step"]) + 1  # every forward reveals something
    assert row["attempt"] == 0 and row["temperature"] == 0.0 and len(row["reference_ids"]) == 64


def test_batch_one_equals_batched(teacher_dir, tmp_path, reference_rows):
    run_trajectory(teacher_dir, tmp_path / "traj", "decode.batch_size=1")
    assert rows_of(tmp_path / "traj") == reference_rows


def test_shards_then_merge_equal_one_process(teacher_dir, tmp_path, reference_rows):
    out = tmp_path / "traj"
    for shard in (1, 0):  # order of completion must not matter
        run_trajectory(teacher_dir, out, "stage.num_shards=2", f"stage.shard={shard}")
    run_trajectory(teacher_dir, out, "stage.num_shards=3", "stage.shard=0")  # a stale shard of another layout
    with pytest.raises(store.ChunkError, match="different runs"):
        store.merge_shards(out)
    for stale in out.glob("shard-*-of-00003"):
        shutil.rmtree(stale)
    run_trajectory(teacher_dir, out, stage="trajectory_merge")
    assert rows_of(out) == reference_rows


def test_eight_shards_merge_to_the_one_process_dataset(teacher_dir, tmp_path, reference_rows):
    """The node-local layout of issue 12 (one shard per GPU, 8 GPUs), here on the CPU: 8 shards of 5 rows."""
    out = tmp_path / "traj"
    for shard in reversed(range(8)):
        run_trajectory(teacher_dir, out, "stage.num_shards=8", f"stage.shard={shard}")
    run_trajectory(teacher_dir, out, stage="trajectory_merge")
    assert rows_of(out) == reference_rows


def test_each_multirun_job_gets_its_own_gpu():
    from d3llm_pipeline.config import job_device

    assert [job_device(n, 8) for n in (0, 7, 8, 13)] == ["cuda:0", "cuda:7", "cuda:0", "cuda:5"]
    assert job_device(3, 1) == "cuda:0"  # Slurm: each job sees only its own GPU
    assert job_device(3, 0) == "auto" and job_device(None, 8) == "auto"  # no GPU / not a multirun job


def test_resume_after_crash_equals_uninterrupted_run(teacher_dir, tmp_path, reference_rows, monkeypatch):
    out = tmp_path / "traj"
    real_write = store.write_chunk
    calls = {"n": 0}

    def crash_on_third(directory, chunk, rows, fp, ids):
        calls["n"] += 1
        if calls["n"] == 3:  # die midway through writing: a half parquet and no manifest
            (directory / f"chunk-{chunk:05d}.parquet").write_bytes(b"half a file")
            raise KeyboardInterrupt("simulated kill")
        real_write(directory, chunk, rows, fp, ids)

    monkeypatch.setattr(store, "write_chunk", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_trajectory(teacher_dir, out)
    monkeypatch.setattr(store, "write_chunk", real_write)
    summary = run_trajectory(teacher_dir, out)
    assert summary["resumed_chunks"] == 2 and summary["labelled_now"] == 40 - 32
    assert rows_of(out) == reference_rows


def test_corrupt_and_foreign_chunks_are_reported(teacher_dir, tmp_path):
    out = tmp_path / "traj"
    run_trajectory(teacher_dir, out)
    chunk = store.shard_dir(out, 0, 1) / "chunk-00001.parquet"
    chunk.write_bytes(chunk.read_bytes()[:-10])
    with pytest.raises(store.ChunkError, match="corrupt"):
        run_trajectory(teacher_dir, out)
    with pytest.raises(store.ChunkError, match="different configuration"):
        run_trajectory(teacher_dir, out, "decode.tokens_per_step=2")


def test_d3llm_import_round_trip(reference_rows, tmp_path):
    imported = [from_d3llm_row(to_d3llm_row(r, MASK), MASK) for r in reference_rows[:5]]
    for ours, back in zip(reference_rows[:5], imported, strict=True):
        for key in ("sample_id", "prompt_ids", "response_ids", "unmask_step", "nfe", "answer", "predicted",
                    "is_correct", "text"):
            assert back[key] == ours[key], key
    # Through the stage, from a d3LLM-format dataset saved on disk.
    source = tmp_path / "d3llm"
    datasets.Dataset.from_list([to_d3llm_row(r, MASK) for r in reference_rows[:5]]).save_to_disk(str(source))
    summary = run_trajectory(Path("/nonexistent"), tmp_path / "imported", f"stage.source={source}",
                             "stage.mask_token_id=1", stage="trajectory_import")
    assert summary["rows"] == 5
    assert [r["unmask_step"] for r in rows_of(tmp_path / "imported")] == [r["unmask_step"] for r in imported]


def test_d3llm_import_rejects_a_remasking_trajectory(reference_rows):
    row = to_d3llm_row(reference_rows[0], MASK)
    row["trajectory"][-2][30] = MASK if row["trajectory"][-3][30] != MASK else row["trajectory"][-2][30]
    row["trajectory"][-3][30] = 5
    with pytest.raises(TrajectoryError, match="sample 0"):
        convert_d3llm_dataset(datasets.Dataset.from_list([row]), MASK)
