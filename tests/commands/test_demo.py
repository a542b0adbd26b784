"""
`evl-hf demo`: the page's helpers, and the page itself driven in headless Chromium.

The browser tests start `python -m evl_hf demo` on a free loopback port and use Selenium with the system's Chromium and
chromedriver (`make test-slow` installs them with apt). They run the tiny model of conftest.py, or the folder named by
`EVL_HF_DEMO_MODEL` (a model written by `make train`, say); `EVL_HF_DEMO_SCREENSHOT` names where the screenshot of
the page with a result is copied. docs/images/demo_attention.png was taken so, with a model trained on the
synthetic-motion set:

    EVL_HF_DEMO_MODEL=outputs/evl-synthetic-motion EVL_HF_DEMO_SCREENSHOT=docs/images/demo_attention.png \
        python -m pytest "tests/commands/test_demo.py::test_screenshot_of_the_result_is_saved"
"""

import io
import json
import os
import re
import shutil
import socket
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import torch
from torchcodec.encoders import VideoEncoder

from evl_hf.commands.demo import find_examples, parse_file_size, save_png

from .conftest import DEMO_START_TIMEOUT, save_tiny_model, serve_demo


# the synthetic-motion generator sits next to the training script
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from synthetic_data import SyntheticMotionConfig, render_clip  # noqa: E402


def write_motion_video(path, directions, seed=0):
    """Synthetic-motion clips (22 frames each at 12 fps, 64x64) one after the other, an object moving `directions`."""
    config = SyntheticMotionConfig()
    frames = torch.cat([render_clip(np.random.default_rng([seed, i]), d, config) for i, d in enumerate(directions)])
    VideoEncoder(frames, frame_rate=config.frame_rate).to_file(str(path), codec="libx264", pixel_format="yuv420p")
    return path


def test_examples_are_the_video_files_in_the_model_examples_folder(tmp_path):
    assert find_examples(str(tmp_path)) == []
    (tmp_path / "examples").mkdir()
    for name in ("b.mp4", "a.WEBM", "notes.txt"):
        (tmp_path / "examples" / name).write_bytes(b"")
    (tmp_path / "examples" / "c.mp4").mkdir()
    assert [os.path.basename(path) for path in find_examples(str(tmp_path))] == ["a.WEBM", "b.mp4"]


def test_pictures_are_saved_whole_under_the_hash_of_their_bytes(tmp_path):
    first = save_png(b"first picture", str(tmp_path / "results"))
    again = save_png(b"first picture", str(tmp_path / "results"))
    other = save_png(b"second picture", str(tmp_path / "results"))
    assert first == again != other
    assert Path(first).read_bytes() == b"first picture" and Path(other).read_bytes() == b"second picture"
    assert sorted(os.listdir(tmp_path / "results")) == sorted([os.path.basename(first), os.path.basename(other)])


def test_file_sizes_are_read_in_gradio_units():
    assert parse_file_size("200MB") == 200 * 1024**2
    assert parse_file_size("1.5 gb") == int(1.5 * 1024**3)
    assert parse_file_size("4096") == 4096
    for text in ("0MB", "200 megabytes", "-1KB", ""):
        with pytest.raises(Exception, match="write it like 200MB"):
            parse_file_size(text)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--max_file_size", "lots"], "argument --max_file_size: 'lots' is not a file size"),
        (["--max_queue_size", "0"], "argument --max_queue_size: must be at least 1, got 0"),
        (["--delete_cache", "60", "0"], "--delete_cache takes two positive numbers of seconds"),
    ],
)
def test_bad_limits_are_usage_errors_before_the_model_loads(arguments, message, capsys):
    from evl_hf.commands import main

    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--model", "no-such-model-folder", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_port_in_use_is_a_usage_error_before_the_model_loads(capsys):
    from evl_hf.commands import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            main(["demo", "--model", "no-such-model-folder", "--port", str(port)])
    assert exit_info.value.code == 2
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# The page in a real browser.

UPLOAD = "#video input[type=file]"
PAGE_TIMEOUT = DEMO_START_TIMEOUT


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    """The model folder the app serves (with an example clip), a long clip, a broken file, and where to put output."""
    root = tmp_path_factory.mktemp("demo")
    given = os.environ.get("EVL_HF_DEMO_MODEL")
    model = root / (os.path.basename(os.path.normpath(given)) if given else "tiny-evl")  # the page's title
    if given:
        # Links to the given folder's files, so that the example clip added here stays out of it.
        model.mkdir()
        for entry in os.scandir(given):
            if entry.is_file():
                (model / entry.name).symlink_to(os.path.abspath(entry.path))
    else:
        save_tiny_model(model)
    (model / "examples").mkdir()
    write_motion_video(model / "examples" / "moving-up.mp4", ["up"], seed=1)
    broken = root / "broken.mp4"
    broken.write_text("this is a text file with a video's name\n")
    return {
        "model": model,
        "clip": write_motion_video(root / "right-down-left.mp4", ["right", "down", "left"]),
        "broken": broken,
        "root": root,
    }


@pytest.fixture(scope="module")
def demo_server(demo_files):
    with serve_demo(demo_files["model"], demo_files["root"] / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def browser(demo_server):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("Selenium is needed: pip install -e '.[dev]'.")

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.fail("Chromium and chromedriver are needed: `make browser` (apt-get install chromium chromium-driver).")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    # Every request the page makes goes to the performance log, read by the offline test.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # Paths given explicitly: Selenium would otherwise run its manager, which looks for drivers online.
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.requested_urls = []
    driver.get(demo_server["url"])
    yield driver
    driver.quit()


def requested_urls(driver) -> list[str]:
    """URLs the page requested since the last call (Chromium's performance log is read once)."""
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            driver.requested_urls.append(message["params"]["request"]["url"])
    return driver.requested_urls


def wait_for_status(driver, name: str, kind: str):
    """Waits until the status line names the file `name` with `kind` ("ok" or "error") and returns its text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def status_text(driver):
        for element in driver.find_elements(By.CSS_SELECTOR, f"#status [data-status={kind}]"):
            if name in element.text:
                return element.text
        return False

    return WebDriverWait(driver, PAGE_TIMEOUT).until(status_text, f"no {kind} status naming {name} on the page")


def upload(driver, path):
    """Clears the video box (when it holds a video) and uploads `path` into it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    for button in driver.find_elements(By.CSS_SELECTOR, "#video button[aria-label=Clear]"):
        # A click from script: a toast passing over the button would take a real click.
        driver.execute_script("arguments[0].click()", button)
    WebDriverWait(driver, 30).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, UPLOAD))
    driver.find_element(By.CSS_SELECTOR, UPLOAD).send_keys(str(path))


def save_screenshot(driver, path):
    """The whole page, also what lies below the window (Chromium's DevTools screenshot)."""
    import base64

    screenshot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    with open(path, "wb") as file:
        file.write(base64.b64decode(screenshot["data"]))


@pytest.fixture(scope="module")
def clip_result(browser, demo_files):
    """The page after uploading the long clip: what it shows, and the pipeline's answer for the same file."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from transformers import pipeline

    clip = demo_files["clip"]
    upload(browser, clip)
    status = wait_for_status(browser, clip.name, "ok")
    # The pictures are set with the status, but arrive afterwards: the screenshot waits for them to be drawn.
    WebDriverWait(browser, PAGE_TIMEOUT).until(
        lambda driver: driver.execute_script(
            "const images = document.querySelectorAll('#frames img, #attention img');"
            "return images.length > 0 && [...images].every(image => image.complete && image.naturalWidth > 0);"
        ),
        "the frames and their attention overlays were not drawn",
    )
    screenshot = demo_files["root"] / "demo.png"
    save_screenshot(browser, screenshot)
    if os.environ.get("EVL_HF_DEMO_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["EVL_HF_DEMO_SCREENSHOT"])

    classifier = pipeline("video-classification", model=str(demo_files["model"]))
    return {
        "status": status,
        "top_label": browser.find_element(By.CSS_SELECTOR, "#scores [data-testid=label-output-value]").text,
        "listed_labels": [element.text for element in browser.find_elements(By.CSS_SELECTOR, "#scores dt")],
        "thumbnails": len(browser.find_elements(By.CSS_SELECTOR, "#frames img")),
        "timeline_images": len(browser.find_elements(By.CSS_SELECTOR, "#timeline img")),
        "frame_sources": [
            image.get_attribute("src") for image in browser.find_elements(By.CSS_SELECTOR, "#frames img")
        ],
        "attention_sources": [
            image.get_attribute("src") for image in browser.find_elements(By.CSS_SELECTOR, "#attention img")
        ],
        # textContent, not text: a caption can lie outside the window
        "attention_captions": [
            caption.get_attribute("textContent").strip()
            for caption in browser.find_elements(By.CSS_SELECTOR, "#attention .caption-label")
        ],
        "attention_box": browser.find_element(By.CSS_SELECTOR, "#attention").rect,
        "frames_box": browser.find_element(By.CSS_SELECTOR, "#frames").rect,
        "pipeline": classifier(str(clip), top_k=5),
        "num_frames": classifier.model.config.num_frames,
        "screenshot": screenshot,
    }


@pytest.mark.slow
def test_top_label_shown_is_the_pipeline_top_1(clip_result):
    assert clip_result["top_label"] == clip_result["pipeline"][0]["label"]
    assert clip_result["listed_labels"] == [prediction["label"] for prediction in clip_result["pipeline"]]
    assert f": {clip_result['pipeline'][0]['label']} (" in clip_result["status"]


@pytest.mark.slow
def test_the_frames_the_model_saw_are_shown(clip_result):
    assert clip_result["thumbnails"] == clip_result["num_frames"]


@pytest.mark.slow
def test_a_clip_longer_than_one_window_gets_a_timeline(clip_result):
    assert clip_result["timeline_images"] == 1


def fetch_image(url: str) -> np.ndarray:
    """A picture the page shows, as the browser gets it: uint8 `(height, width, 3)`."""
    import urllib.request

    from PIL import Image

    with urllib.request.urlopen(url, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


@pytest.mark.slow
def test_each_frame_is_shown_again_with_the_attention_painted_over_it(clip_result):
    frames, overlays = clip_result["frame_sources"], clip_result["attention_sources"]
    assert len(overlays) == len(frames) == clip_result["num_frames"]
    reddening = []
    for frame_url, overlay_url in zip(frames, overlays):
        frame, overlay = fetch_image(frame_url).astype(int), fetch_image(overlay_url).astype(int)
        assert overlay.shape == frame.shape
        # Painting blends toward pure red: red never falls and green and blue never rise (1 for rounding).
        assert (overlay[..., 0] >= frame[..., 0] - 1).all() and (overlay[..., 1:] <= frame[..., 1:] + 1).all()
        reddening.append((overlay[..., 0] - frame[..., 0]).max())
    # The patch with the most attention in the clip changes visibly; a frame the query hardly reads may not.
    assert max(reddening) > 40, reddening


@pytest.mark.slow
def test_overlay_captions_give_each_frame_share_of_the_attention(clip_result):
    captions = clip_result["attention_captions"]
    assert len(captions) == clip_result["num_frames"]
    shares = []
    for caption in captions:
        match = re.fullmatch(r"(\d+\.\d)% of attention", caption)
        assert match, f"caption {caption!r} names no share of the attention"
        shares.append(float(match[1]))
    # Each share is rounded to 0.1%: together they are the whole attention, up to that rounding.
    assert abs(sum(shares) - 100) <= 0.05 * len(shares) + 1e-9


@pytest.mark.slow
def test_screenshot_of_the_result_is_saved(clip_result):
    from PIL import Image

    with open(clip_result["screenshot"], "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    # The overlays are in the picture: the two galleries are laid out alike, and where the attention gallery differs
    # from the frames' it is painted, redder and less green (text and borders differ by turning darker or lighter).
    screenshot = np.asarray(Image.open(clip_result["screenshot"]).convert("RGB")).astype(int)

    def crop(box):
        return screenshot[int(box["y"]) : int(box["y"] + box["height"]), int(box["x"]) : int(box["x"] + box["width"])]

    attention, frames = crop(clip_result["attention_box"]), crop(clip_result["frames_box"])
    assert attention.size and attention.shape == frames.shape, "the galleries lie outside the screenshot"
    painted = (attention[..., 0] - frames[..., 0] > 30) & (frames[..., 1] - attention[..., 1] > 5)
    # at least about one patch of one thumbnail (an 8-pixel patch of a 64-pixel frame drawn 115 pixels wide: 200)
    assert painted.sum() > 200, f"{painted.sum()} pixels of the attention gallery are painted"


@pytest.mark.slow
def test_broken_upload_shows_a_message_and_the_page_keeps_serving(browser, demo_server, demo_files, clip_result):
    upload(browser, demo_files["broken"])
    message = wait_for_status(browser, "broken.mp4", "error")
    assert message.startswith("Cannot read video 'broken.mp4': it is a text file, not a video")
    assert "Traceback" not in browser.page_source and demo_server["process"].poll() is None

    upload(browser, demo_files["clip"])
    assert wait_for_status(browser, demo_files["clip"].name, "ok") == clip_result["status"]
    assert "Traceback" not in demo_server["log"].read_text()


@pytest.mark.slow
def test_an_example_clip_next_to_the_model_can_be_picked(browser, demo_files, clip_result):
    from selenium.webdriver.common.by import By

    upload(browser, demo_files["broken"])  # leaves the box with a file, as a user would
    wait_for_status(browser, "broken.mp4", "error")
    examples = browser.find_elements(By.XPATH, "//*[@id='examples']//*[normalize-space(text())='moving-up.mp4']")
    assert examples, "the example clip is not listed on the page"
    examples[0].click()
    assert "moving-up.mp4 (22 frames" in wait_for_status(browser, "moving-up.mp4", "ok")


@pytest.mark.slow
def test_the_page_requests_nothing_from_other_hosts(browser, clip_result):
    urls = requested_urls(browser)
    assert any("/gradio_api/upload" in url for url in urls), "the performance log saw no upload"
    parts = [urllib.parse.urlsplit(url) for url in urls]
    schemes = {part.scheme for part in parts}
    assert schemes <= {"http", "data", "blob"}, f"unexpected request schemes: {schemes}"
    hosts = {part.hostname for part in parts if part.scheme == "http"}
    assert hosts == {"127.0.0.1"}, f"requests to other hosts: {sorted(hosts - {'127.0.0.1'})}"


@pytest.mark.slow
def test_an_upload_over_the_size_limit_gets_a_message_and_the_page_keeps_serving(browser, demo_files, clip_result):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    big = demo_files["root"] / "too-big.mp4"
    with open(big, "wb") as file:
        file.truncate(200 * 1024**2 + 1)  # one byte over the default --max_file_size, sparse: it takes no disk space
    upload(browser, big)

    def shown_message(driver):
        # Selenium's `text` is what is shown: empty while the toast fades in.
        elements = driver.find_elements(By.XPATH, "//*[contains(text(), 'exceed the maximum allowed size')]")
        return next((element.text for element in elements if element.text), False)

    message = WebDriverWait(browser, PAGE_TIMEOUT).until(shown_message, "no message about the upload's size shown")
    assert "200" in message and "too-big.mp4" in message, message

    upload(browser, demo_files["clip"])
    assert wait_for_status(browser, demo_files["clip"].name, "ok") == clip_result["status"]
