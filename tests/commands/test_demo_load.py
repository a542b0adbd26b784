"""
`evl-hf demo` under load: 20 visitors at once, each sending clips through `gradio_client` and downloading the frames,
their attention overlays and the timeline the page shows, as a browser does.

The server is `python -m evl_hf demo` on a free loopback port (conftest.py's `serve_demo`) serving the tiny model, with
its Gradio cache in a temporary folder. Requests come in waves of 60 (3 per visitor); after each wave the test records
the server's resident memory and what its cache folder holds. `EVL_HF_DEMO_LOAD_WAVES` sets the number of waves (5
by default, 300 requests) and `EVL_HF_DEMO_LOAD_REPORT` names a JSON file the numbers are written to
(docs/quickstart.md quotes such a run).
"""

import hashlib
import io
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import encode_video, save_tiny_model, serve_demo


CLIENTS = 20
REQUESTS_PER_CLIENT = 3  # per wave
WAVES = int(os.environ.get("EVL_HF_DEMO_LOAD_WAVES", "5"))
# Two clips last one window of the tiny model (4 frames 4 apart: 13 frames), three are longer and get a timeline.
CLIP_LENGTHS = [12, 13, 20, 40, 60]
MAX_FILE_SIZE = 1024**2  # --max_file_size 1MB: the clips are 10-50 KB
MAX_QUEUE_SIZE = CLIENTS  # each visitor waits for its answer: the load never has more waiting
# Every second, delete what is older than 30 s: long enough for the slowest request of a wave on a busy machine, short
# enough for the test to wait for.
DELETE_CACHE = (1, 30)
# uvicorn closes a connection idle for 5 s; a browser retries a request sent on one it is closing, httpx does not, so
# the visitors' connections expire sooner.
KEEPALIVE_EXPIRY = 2


def rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def folder_contents(folder: Path) -> tuple[int, int]:
    """(number of files, bytes in them) under `folder`."""
    files = [path for path in folder.rglob("*") if path.is_file()]
    return len(files), sum(path.stat().st_size for path in files)


@pytest.fixture(scope="module")
def load_files(tmp_path_factory):
    """The tiny model, the clips, the pipeline's top label for each, and the folder the server's cache goes to."""
    from transformers import pipeline

    import evl_hf  # noqa: F401  (registers EVL with the Auto classes the pipeline uses)

    root = tmp_path_factory.mktemp("demo_load")
    model = save_tiny_model(root / "tiny-evl")
    clips = [encode_video(root / f"clip-{n}.mp4", n, seed=n) for n in CLIP_LENGTHS]
    classifier = pipeline("video-classification", model=str(model))
    expected = {clip.name: classifier(str(clip), top_k=1)[0]["label"] for clip in clips}
    return {"root": root, "model": model, "clips": clips, "expected": expected, "cache": root / "gradio-cache"}


@pytest.fixture(scope="module")
def load_server(load_files):
    # The test's own clients would report usage statistics otherwise (gradio_client reads the same variable).
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        with serve_demo(
            load_files["model"],
            load_files["root"] / "server.log",
            "--max_file_size",
            "1MB",
            "--max_queue_size",
            MAX_QUEUE_SIZE,
            "--delete_cache",
            *DELETE_CACHE,
            env={"GRADIO_TEMP_DIR": str(load_files["cache"])},
        ) as server:
            yield server


def connect(url: str):
    from gradio_client import Client

    # download_files=False: the visitor downloads the pictures itself, to check each response.
    return Client(url, verbose=False, download_files=False, httpx_kwargs={"timeout": 120})


def download(http, file_data: dict, digests: dict) -> bytes:
    """GETs a file the page shows; httpx raises when the body is shorter than its Content-Length."""
    response = http.get(file_data["url"])
    response.raise_for_status()
    body = response.content
    assert len(body) == int(response.headers["content-length"]) > 0, f"{file_data['url']}: empty or cut short"
    digests.setdefault(file_data["url"], set()).add(hashlib.sha256(body).hexdigest())
    return body


def check_image(body: bytes, format: str | None = None, size: tuple[int, int] | None = None):
    from PIL import Image

    image = Image.open(io.BytesIO(body))
    image.load()  # decodes every byte: a cut file fails here
    assert format in (None, image.format) and size in (None, image.size), (image.format, image.size)


def visit(client, http, clip: Path, digests: dict) -> dict:
    """One request as a visitor makes it: the clip goes up, the answer comes back, the pictures are downloaded."""
    from gradio_client import handle_file

    start = time.monotonic()
    try:
        status, scores, gallery, attention, timeline = client.predict(handle_file(str(clip)), api_name="/predict")
        for item in [*gallery, *attention]:
            # Frames as the model saw them, bare and with the attention painted: lossless, at the processor's crop size.
            check_image(download(http, item["image"], digests), "PNG", (32, 32))
        if isinstance(timeline, dict) and timeline.get("__type__") == "update":
            timeline = timeline.get("value")
        if timeline is not None:
            check_image(download(http, timeline, digests))
        error = None
    except Exception as exception:  # every kind is counted, and the test shows them
        status = scores = gallery = attention = timeline = None
        error = f"{type(exception).__name__}: {exception}"
    return {
        "clip": clip.name,
        "label": scores["label"] if scores else None,
        "status": status,
        "frames": len(gallery) if gallery else 0,
        "attention_frames": len(attention) if attention else 0,
        "timeline": timeline is not None,
        "error": error,
        "seconds": time.monotonic() - start,
    }


@pytest.fixture(scope="module")
def load_run(load_server, load_files):
    import httpx

    url, pid, clips = load_server["url"], load_server["process"].pid, load_files["clips"]
    digests = {}
    with ThreadPoolExecutor(CLIENTS) as pool:
        clients = list(pool.map(lambda _: connect(url), range(CLIENTS)))
        https = [httpx.Client(timeout=120, limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY)) for _ in clients]

        def visitor(index: int, wave: int) -> list[dict]:
            # Each visitor goes through the clips from its own starting point: every clip is asked for at once.
            return [
                visit(clients[index], https[index], clips[(index + wave + k) % len(clips)], digests)
                for k in range(REQUESTS_PER_CLIENT)
            ]

        requests, waves = [], []
        for wave in range(WAVES):
            start = time.monotonic()
            answers = [answer for answers in pool.map(visitor, range(CLIENTS), [wave] * CLIENTS) for answer in answers]
            files, size = folder_contents(load_files["cache"])
            waves.append(
                {
                    "requests": len(answers),
                    "errors": sum(answer["error"] is not None for answer in answers),
                    "seconds": round(time.monotonic() - start, 1),
                    "median_latency_s": round(statistics.median(answer["seconds"] for answer in answers), 2),
                    "rss_mib": round(rss_mib(pid)),
                    "cache_files": files,
                    "cache_bytes": size,
                }
            )
            requests += answers
        for client, http in zip(clients, https):
            client.close()
            http.close()
    result = {
        "clients": CLIENTS,
        "clips": CLIP_LENGTHS,
        "waves": waves,
        "cpu_count": os.cpu_count(),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    if os.environ.get("EVL_HF_DEMO_LOAD_REPORT"):
        Path(os.environ["EVL_HF_DEMO_LOAD_REPORT"]).write_text(json.dumps(result, indent=2) + "\n")
    return {**result, "requests": requests, "digests": digests}


def assert_still_serving(load_server, load_files):
    """One more visitor sends the longest clip and gets the pipeline's label, with every picture whole."""
    import httpx

    clip = load_files["clips"][-1]
    client = connect(load_server["url"])
    with httpx.Client(timeout=120) as http:
        answer = visit(client, http, clip, {})
    client.close()
    assert answer["error"] is None and answer["label"] == load_files["expected"][clip.name], answer


@pytest.mark.slow
def test_no_request_fails_under_load(load_run):
    errors = [answer for answer in load_run["requests"] if answer["error"]]
    assert len(load_run["requests"]) == CLIENTS * REQUESTS_PER_CLIENT * WAVES >= 200
    assert not errors, f"{len(errors)} of {len(load_run['requests'])} failed, first: {errors[:3]}"


@pytest.mark.slow
def test_every_answer_is_the_pipeline_top_label(load_run, load_files):
    expected = load_files["expected"]
    answered = [answer for answer in load_run["requests"] if answer["error"] is None]
    assert answered
    for answer in answered:
        assert answer["label"] == expected[answer["clip"]], answer
        assert f"{answer['clip']} (" in answer["status"] and f": {expected[answer['clip']]} (" in answer["status"]
        assert answer["frames"] == answer["attention_frames"] == 4  # the tiny model's clip
        assert answer["timeline"] == (int(answer["clip"].split("-")[1].split(".")[0]) > 13), answer


@pytest.mark.slow
def test_every_download_of_a_picture_is_the_same_whole_file(load_run):
    assert load_run["digests"]
    torn = {url: digests for url, digests in load_run["digests"].items() if len(digests) != 1}
    assert not torn, f"{len(torn)} pictures came back with different bytes: {list(torn)[:3]}"


@pytest.mark.slow
def test_memory_stays_bounded_under_load(load_run):
    rss = [wave["rss_mib"] for wave in load_run["waves"]]
    assert rss[-1] - rss[1] < 100, f"resident memory after each wave (MiB): {rss}"


@pytest.mark.slow
def test_the_cache_does_not_grow_with_repeated_requests(load_run):
    # The same clips give the same uploads and the same pictures: after the first waves nothing new is stored.
    contents = [(wave["cache_files"], wave["cache_bytes"]) for wave in load_run["waves"]]
    assert contents[-1][0] <= contents[1][0] and contents[-1][1] <= contents[1][1], contents


@pytest.mark.slow
def test_an_upload_over_max_file_size_is_refused_and_the_server_keeps_serving(load_server, load_files, load_run):
    import httpx

    big = load_files["root"] / "too-big.mp4"
    big.write_bytes(os.urandom(MAX_FILE_SIZE + 1))
    with open(big, "rb") as file:
        response = httpx.post(
            load_server["url"] + "gradio_api/upload", files={"files": (big.name, file, "video/mp4")}, timeout=120
        )
    assert response.status_code == 413
    assert response.text == f"File size exceeded maximum allowed size of {MAX_FILE_SIZE} bytes."
    assert not any(path.name == big.name for path in load_files["cache"].rglob("*"))

    assert_still_serving(load_server, load_files)


@pytest.mark.slow
def test_a_full_queue_turns_visitors_away_and_the_server_keeps_serving(load_server, load_files, load_run):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    clip = load_files["clips"][-1]  # the longest: each request holds the queue longest
    clients = [connect(load_server["url"]) for _ in range(3)]
    # Two and a half times the queue, all at once (a client sends up to 40 at a time).
    jobs = [client.submit(handle_file(str(clip)), api_name="/predict") for client in clients for _ in range(20)]
    outcomes = []
    for job in jobs:
        try:
            outcomes.append(job.result(timeout=300)[1]["label"])
        except (QueueError, AppError) as error:
            outcomes.append(str(error))
    for client in clients:
        client.close()
    turned_away = [outcome for outcome in outcomes if "queue is full" in outcome.lower()]
    answered = [outcome for outcome in outcomes if outcome == load_files["expected"][clip.name]]
    assert turned_away and answered and len(turned_away) + len(answered) == len(jobs), outcomes


@pytest.mark.slow
def test_uploads_and_results_are_deleted_after_their_age(load_server, load_files, load_run):

    cache = load_files["cache"]
    assert folder_contents(cache)[0] > 0
    frequency, age = DELETE_CACHE
    deadline = time.monotonic() + age + 10 * frequency + 30
    while folder_contents(cache)[0] > 0 and time.monotonic() < deadline:
        time.sleep(frequency)
    assert folder_contents(cache)[0] == 0, sorted(str(path) for path in cache.rglob("*") if path.is_file())

    assert_still_serving(load_server, load_files)
