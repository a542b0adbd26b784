"""The record store of `evl-hf predict` (evl_hf/commands/records.py): resumable JSON lines and CSV, part files."""

import csv
import json

import pytest

from evl_hf.commands import UsageError
from evl_hf.commands.records import (
    EmbeddingShards,
    ResultsFile,
    embedded_videos,
    merge_part_files,
    open_results,
    part_file,
    part_files,
    read_records,
    write_records,
)


def record(video, label="left", score=0.9):
    return {"video": video, "labels": [label], "scores": [score]}


def test_a_record_torn_by_a_kill_is_left_out_and_truncated_away(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps(record("a.mp4")) + "\n" + '{"video": "b.mp4", "lab')
    header, records = read_records(str(path))
    assert header is None and [video for video, _, _ in records] == ["a.mp4"]
    assert path.read_text().endswith('"lab')  # reading alone changes nothing
    read_records(str(path), truncate=True)
    assert path.read_text() == json.dumps(record("a.mp4")) + "\n"


def test_csv_records_are_read_by_their_header(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("video,label_1,score_1,error\na.mp4,left,0.9,\nb.mp4,,,OSError: gone\n")
    header, records = read_records(str(path))
    assert header == ["video", "label_1", "score_1", "error"]
    assert [(video, failed) for video, failed, _ in records] == [("a.mp4", False), ("b.mp4", True)]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("out.csv", "path,label\na.mp4,left\n", "CSV file without a `video` column"),
        ("out.jsonl", '{"video": "a.mp4"}\n[1, 2]\n', "line 2 is not a record of evl-hf predict"),
    ],
)
def test_a_file_predict_did_not_write_is_a_usage_error(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        read_records(str(path))


def test_write_records_replaces_the_file_whole_or_not_at_all(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")
    with pytest.raises(TypeError):
        write_records(str(path), None, ['{"video": "a.mp4"}\n', 42])  # fails part way through
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]
    write_records(str(path), None, ['{"video": "a.mp4"}\n'])
    assert path.read_text() == '{"video": "a.mp4"}\n'


@pytest.mark.parametrize("name", ["out.jsonl", "out.csv"])
def test_a_results_file_resumes_and_retries_failures_on_request(tmp_path, name):
    path = str(tmp_path / name)
    results = ResultsFile(path, top_k=1)
    results.write(record("a.mp4"))
    results.write({"video": "b.mp4", "error": "OSError: gone"})
    results.close()

    assert ResultsFile(path, top_k=1).done == {"a.mp4": False, "b.mp4": True}
    retried = ResultsFile(path, top_k=1, retry_failed=True)
    retried.close()
    assert retried.done == {"a.mp4": False}
    assert [video for video, _, _ in read_records(path)[1]] == ["a.mp4"]  # the error record is gone from the file


def test_a_multi_label_csv_has_an_above_threshold_column(tmp_path):
    path = tmp_path / "out.csv"
    results = ResultsFile(str(path), top_k=2, multi_label=True)
    results.write({**record("a.mp4"), "above_threshold": ["left", "up"]})
    results.close()
    with open(path, newline="") as file:
        (row,) = list(csv.DictReader(file))
    assert row == {
        "video": "a.mp4",
        "label_1": "left",
        "score_1": "0.9",
        "label_2": "",
        "score_2": "",
        "above_threshold": "left;up",
        "error": "",
    }


def test_without_a_path_records_go_to_standard_output_and_it_stays_open(capsys):
    import sys

    results, done = open_results(None, top_k=1)
    results.write(record("a.mp4"))
    results.close()
    assert done == {} and not sys.stdout.closed
    assert json.loads(capsys.readouterr().out) == record("a.mp4")


def test_part_files_fold_into_the_output_once_per_video_in_the_runs_order(tmp_path):
    output = str(tmp_path / "out.jsonl")
    write_records(output, None, [json.dumps(record("c.mp4")) + "\n"])
    write_records(part_file(output, 1), None, [json.dumps(record("a.mp4", "up")) + "\n"])
    write_records(part_file(output, 0), None, [json.dumps(record(v)) + "\n" for v in ("a.mp4", "b.mp4", "c.mp4")])
    assert [p.rsplit(".", 1)[-1] for p in part_files(output)] == ["part-00000", "part-00001"]

    merge_part_files(output, order=["a.mp4", "b.mp4", "c.mp4"])
    merged = [json.loads(line) for line in open(output)]
    assert [r["video"] for r in merged] == ["a.mp4", "b.mp4", "c.mp4"]
    assert merged[0]["labels"] == ["left"]  # rank 0's record is found before rank 1's
    assert part_files(output) == []


def test_a_distributed_run_writes_its_part_and_reads_what_the_output_held(tmp_path):
    output = str(tmp_path / "out.jsonl")
    write_records(output, None, [json.dumps(record("a.mp4")) + "\n"])
    write_records(part_file(output, 0), None, [json.dumps(record("b.mp4")) + "\n"])  # left by a stopped run
    waited = []
    results, done = open_results(output, top_k=1, rank=0, world_size=2, barrier=lambda: waited.append(True))
    results.write(record("c.mp4"))
    results.close()
    assert waited == [True] and done == {"a.mp4": False, "b.mp4": False}
    assert results.path == part_file(output, 0)
    assert [video for video, _, _ in read_records(output)[1]] == ["a.mp4", "b.mp4"]


def test_embedding_shards_are_written_in_chunks_and_resume(tmp_path):
    pytest.importorskip("pyarrow")
    folder = tmp_path / "embeddings"
    shards = EmbeddingShards(str(folder), flush_every=2)
    for video in ("a.mp4", "b.mp4", "c.mp4"):
        shards.add(video, [0.5, 1.5])
    assert sorted(p.name for p in folder.iterdir()) == ["embeddings-r00000-00000.parquet"]  # c.mp4 still pending
    shards.close()
    assert embedded_videos(str(folder)) == {"a.mp4", "b.mp4", "c.mp4"}

    again = EmbeddingShards(str(folder), flush_every=2)
    assert again.done == {"a.mp4", "b.mp4", "c.mp4"} and again.next_shard == 2
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="is a file; give a folder"):
        EmbeddingShards(str(tmp_path / "file"))
