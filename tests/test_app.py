"""movie app: the edit service behind the page (no browser), and the page itself, served by `movie app` on a loopback
port and driven in headless Chromium (Debian's chromium + chromium-driver, through selenium): upload a clip with
audio, preview, edit, download the result and check its frames, size, frame rate and audio.

MOVIE_APP_SCREENSHOT=docs/app.png writes the page's screenshot after the edit there (the one in the docs)."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from movie_core.video import make_test_video, open_source, probe

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1060")


def clip(tmp_path: Path) -> Path:
    """1 s at 8 frames/s, 64x48, H.264 with AAC audio: 8 frames."""
    return make_test_video(tmp_path / "clip.mp4", seconds=1, fps=8, width=64, height=48, audio=True)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):
    from movie_plugins.commands._app import EditService, model_choices

    return EditService(tmp_path_factory.mktemp("app") / "work", model_choices())


def test_the_service_edits_as_movie_edit_does_and_the_preview_shows_its_frames(service, tmp_path: Path) -> None:
    src = clip(tmp_path)
    seen: list[tuple[int, int | None]] = []
    out = service.edit(str(src), "make it sepia", s_t=7.5, s_i=1.5, on_progress=lambda d, t: seen.append((d, t)))
    assert out.is_relative_to(service.work) and out.suffix == ".mp4"
    info = probe(out)
    assert (info["frame_count"], info["width"], info["height"], info["fps"]) == (8, 64, 48, 8)
    assert info["audio_codec"] is not None and abs(info["audio_duration_s"] - 1.0) < 0.05
    assert seen and seen[-1] == (8, 8) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    with open_source(out) as result:
        decoded = [f.astype(np.int16) for f in result.frames()]
    preview = service.preview_frames(str(src), "make it sepia", s_t=7.5, s_i=1.5)
    assert [i for i, _, _ in preview] == [0, 2, 5, 7]
    for index, source_frame, edited in preview:
        # the preview's frames are the run's frames (the same anchor and noise), up to H.264 at crf 18
        assert np.abs(edited.astype(np.int16) - decoded[index]).mean() < 3
        assert np.abs(edited.astype(np.int16) - source_frame).mean() > 10  # and the edit changed them
    (index, _, weaker), = service.preview_frames(str(src), "make it sepia", s_t=2.0, s_i=3.0, count=1)
    assert index == 0 and not np.array_equal(weaker, preview[0][2])  # the sliders reach the model
    sheet = service.preview(str(src), "make it sepia", count=1)
    assert sheet.suffix == ".png" and sheet.is_relative_to(service.work)


@pytest.mark.parametrize("video, prompt, says", [
    (None, "make it sepia", "no video"),
    ("clip", "  ", "instruction is empty"),
    ("text", "make it sepia", "not a video"),
])
def test_the_service_fails_in_one_line_and_leaves_nothing(service, tmp_path: Path, video, prompt, says) -> None:
    from movie_plugins.commands._app import AppError

    path = {"clip": lambda: clip(tmp_path), "text": lambda: tmp_path / "notes.mp4", None: lambda: None}[video]()
    if video == "text":
        path.write_text("not a video")
    before = sorted(service.work.rglob("*")) if service.work.exists() else []
    for call in (service.edit, service.preview):
        with pytest.raises(AppError) as err:
            call(str(path) if path else None, prompt)
        assert says in str(err.value) and "\n" not in str(err.value)
    after = sorted(service.work.rglob("*")) if service.work.exists() else []
    assert after == before  # no half-written result, no empty folder


def test_model_menu_and_known_edits(service) -> None:
    from movie_core.errors import UsageError
    from movie_plugins.commands._app import model_choices

    assert service.default.startswith("movie:") and len(service.choices) == 4
    assert "make it sepia" in service.examples() and len(service.examples()) == 12
    assert service.guidance() == (7.5, 1.5)
    assert service.warning("make it sepia") is None and "closest edits" in service.warning("paint it like Van Gogh")
    assert [c.label.split(":")[0] for c in model_choices(preset="mmg")] == ["mmg", "movie", "mobile", "base"]
    assert model_choices(model="nano:mobile-pix2pix")[0].label == "nano:mobile-pix2pix (--model)"
    with pytest.raises(UsageError):
        model_choices(preset="nope")


# ----------------------------------------------------------------------------------- the page in a real browser


def _browser_missing() -> str | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        return ("no headless browser: install Debian's chromium and chromium-driver "
                "(apt-get install chromium chromium-driver) to drive the page")
    for module in ("gradio", "selenium"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[test]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`movie app` in a subprocess; its stderr lines are collected by a thread."""

    def __init__(self, port: int) -> None:
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
        # Ctrl-C must reach it as it does from a terminal: a run started in the background (`cmd &` in a
        # non-interactive shell, as CI may be) ignores SIGINT, the server would inherit that and never stop
        self.proc = subprocess.Popen([sys.executable, "-m", "movie_core.cli", "app", "--port", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"movie app never said {text!r}; its stderr:\n" + "\n".join(self.seen))

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Ctrl-C (or `sig`) and wait for the server to exit; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            start = time.monotonic()
            try:  # generous: a loaded 2-core machine is slow
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                # SIGABRT makes the server's faulthandler print every thread's stack: where the shutdown hangs
                self.proc.send_signal(signal.SIGABRT)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.seen.append(f"(test: the server exited {time.monotonic() - start:.1f} s after signal {sig})")
            time.sleep(0.5)  # the reader thread drains the last lines
            while not self.lines.empty():
                self.seen.append(self.lines.get())
        return int(self.proc.returncode)


def _chromium(profile: Path, downloads: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def _small_png(png: bytes, path: Path) -> None:
    """The screenshot as a 256-colour PNG (a few hundred KB less in the repository)."""
    import io

    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256).save(path, optimize=True)


@pytest.mark.slow
def test_sigterm_stops_the_server_as_ctrl_c_does() -> None:
    """kill / docker stop / systemd send SIGTERM: the server unwinds as on Ctrl-C (movie_core.cleanup), its temporary
    work folder goes, and it exits 128 + SIGTERM as a terminated process does."""
    pytest.importorskip("gradio", reason="the app needs the app extra (pip install -e '.[app]')")
    server = Server(_free_port())
    try:
        line = server.wait_for("serving on", timeout=120)
        work = Path(line.split("(work folder ")[1].split(")")[0])
        assert work.is_dir()
    finally:
        code = server.stop(signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, "\n".join(server.seen)
    assert not work.exists()


@pytest.mark.slow
def test_the_page_in_headless_chromium(tmp_path: Path) -> None:
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium never looks for a driver online: the system's is used
    src = clip(tmp_path)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    server = Server(_free_port())
    browser = None
    try:
        line = server.wait_for("serving on", timeout=120)
        url = line.split("serving on ")[1].split()[0]
        work = Path(line.split("(work folder ")[1].split(")")[0])
        assert url.startswith("http://127.0.0.1:") and work.is_dir()
        browser = _chromium(tmp_path / "profile", downloads)
        browser.get(url)
        wait = WebDriverWait(browser, 90)

        def css(selector: str):
            return wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, selector)))

        # a mistake is one line on the page, not a traceback
        css("#edit-button").click()
        message = wait.until(lambda b: css(".toast-message-text.error").get_attribute("textContent").strip())
        assert "no video" in message and "\n" not in message
        assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text
        browser.find_element(By.CSS_SELECTOR, ".toast-close").click()

        css("#input-video input[type=file]").send_keys(str(src))
        css("#input-video video")
        browser.find_element(By.CSS_SELECTOR, "#instruction textarea").send_keys("make it sepia")
        css("#preview-button").click()
        css("#preview img")
        css("#edit-button").click()
        link = css("#result-file a[download]")
        css("#result-video video")
        wait.until(lambda b: "Edited 8 frames" in b.find_element(By.ID, "status").text)
        status = browser.find_element(By.ID, "status").text
        assert "64x48" in status and "audio" in status and "no audio" not in status
        browser.execute_script("window.scrollTo(0, 0)")
        height = browser.execute_script("return Math.max(document.body.scrollHeight, "
                                        "document.documentElement.scrollHeight)")
        browser.set_window_size(1280, height + 160)
        shot = browser.get_screenshot_as_png()  # the whole page
        _small_png(shot, Path(os.environ.get("MOVIE_APP_SCREENSHOT") or tmp_path / "app.png"))

        link.click()  # the browser downloads the result
        wait.until(lambda b: [p for p in downloads.iterdir() if p.suffix == ".mp4"])
        result = next(p for p in downloads.iterdir() if p.suffix == ".mp4")
        info = probe(result)
        assert (info["frame_count"], info["width"], info["height"], info["fps"]) == (8, 64, 48, 8)
        assert info["audio_codec"] is not None and abs(info["audio_duration_s"] - 1.0) < 0.05
    finally:
        if browser is not None:
            browser.quit()
        code = server.stop()
    assert code == 0, "\n".join(server.seen)
    assert not work.exists()  # the app's temporary work folder goes with it
