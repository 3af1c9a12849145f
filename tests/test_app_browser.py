"""The review app in a real browser: a real `streamlit run` server on a free localhost port, Debian's headless Chromium
driven by selenium. Enter a reviewer name, make a decision, reload, and see it persisted in the page and the store.

Skips (saying why) only when Chromium or its driver is not installed; test.sh installs both with apt-get.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from labels.store import LabelStore
from tests.review_workdir import HOSTILE, OUTLIER, build_workdir, planted

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(work: Path, log_path: Path):
    """`streamlit run app.py` on a free localhost port over WORK; yields its URL once it answers."""
    port = free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
         "--", "--workdir", str(work)],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def server(tmp_path, glint_dir, models_dir):
    """A work folder and a `streamlit run app.py` serving it; yields (url, work)."""
    work = build_workdir(glint_dir, models_dir / "mobilefacenet.onnx", tmp_path)
    with serve(work, tmp_path / "streamlit.log") as url:
        yield url, work


@pytest.fixture
def browser(tmp_path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER} not found): "
                    "apt-get install -y chromium chromium-driver (test.sh does this when run as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,2000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_decision_in_the_browser_survives_a_reload(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, work = server
    with LabelStore.open(work) as store:
        outlier = store.image_ids([OUTLIER])[OUTLIER]
    wait = WebDriverWait(browser, 60, poll_frequency=0.1)

    def click(css: str) -> None:
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, css))).click()

    def page_text() -> str:
        return browser.find_element(By.TAG_NAME, "body").text

    browser.get(url)
    name = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, ".st-key-reviewer_input input")))
    name.send_keys("ana")
    click(".st-key-reviewer_start button")
    click(".st-key-open_0 button")  # a reviewer lands on the queue  # the identity most worth a review: Hugh Laurie
    click(f".st-key-rm_{outlier} button")
    wait.until(lambda d: "removed 1 photo(s)" in page_text())
    with LabelStore.open(work) as store:  # written at once, by the server, with the reviewer's name
        assert store.images(ids=[outlier]).removed.item() == 1
        assert [(d.reviewer, d.action) for d in store.history()] == [("ana", "remove")]

    browser.refresh()  # a new session: the URL brings back the reviewer and the identity, the store the decision
    wait.until(lambda d: "Removed (1)" in page_text() and "ana: remove 1 photo(s)" in page_text())
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f".st-key-restore_{outlier} button")))
    text = page_text()
    assert "Hugh Laurie" in text and "Reviewer name" not in text
    shot = tmp_path / "review_app.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_hostile_names_render_as_plain_text_in_the_browser(tmp_path, glint_dir, models_dir, browser):
    """Issue 14: identity, file and reviewer names that Markdown, Streamlit or plotly would format show as they are."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    work = build_workdir(glint_dir, models_dir / "mobilefacenet.onnx", tmp_path, hostile=True)
    hugh, obama = HOSTILE["Hugh Laurie"], HOSTILE["Barack Obama"]
    file_name = planted(hostile=True)[0].split("/")[1]
    reviewer = "**ana** [me](http://x.example)"
    with LabelStore.open(work) as store:  # a decision by that reviewer, for the history panel
        store.decide("mark_fake", reviewer=reviewer, image_ids=[store.images(identity=hugh).id.iloc[0]])
    with serve(work, tmp_path / "streamlit.log") as url:
        query = urllib.parse.urlencode({"reviewer": reviewer, "view": "Identity", "identity": hugh})
        browser.get(f"{url}/?{query}")
        wait = WebDriverWait(browser, 60, poll_frequency=0.2)

        def page_text() -> str:
            return browser.find_element(By.TAG_NAME, "body").text.replace("\u2060", "")

        literals = (hugh, obama, file_name, reviewer)
        # the page renders in pieces (the photo captions can come after the matrix): wait for all of it, then check
        try:
            wait.until(lambda d: "Similarity matrix" in page_text() and "Decisions on this identity" in page_text()
                       and all(literal in page_text() for literal in literals))
        except TimeoutException:
            pass  # the assertions below say which name is missing
        text = page_text()
        for literal in literals:
            assert literal in text, literal
        content = "[data-testid='stMarkdownContainer'], [data-testid='stHeadingWithActionElements'], .stImage"
        # what Markdown, Streamlit's :red[] and $math$, HTML and autolinking would have made of the names
        made = {"a": ("click me", "me", "www.evil.example", "ana@evil.example", "x.example"), "strong": ("bold", "ana"),
                "em": ("star", "it"), "code": ("tick",), "b": ("Obama",), "i": ("i",), ".katex": ("x2",)}
        for tag, fragments in made.items():
            texts = {e.text.replace("\u2060", "") for e in browser.find_elements(By.CSS_SELECTOR, f":is({content}) {tag}")}
            assert not texts & set(fragments), (tag, texts & set(fragments))
        assert not browser.find_elements(By.CSS_SELECTOR, "a[href^='javascript']")
        ticks = browser.execute_script(
            "return Array.from(document.querySelectorAll('.js-plotly-plot .xtick text')).map(t => t.textContent)"
        )
        assert any(t.startswith(file_name[:20]) for t in ticks), ticks  # plotly shows the name's <i> as text


def test_keys_drive_the_identity_page_wherever_the_focus_is(server, browser):
    """Issue 15: N after a decision did nothing (Streamlit ignores its shortcuts while a checkbox has the focus)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, work = server
    with LabelStore.open(work) as store:
        outlier = store.image_ids([OUTLIER])[OUTLIER]
    wait = WebDriverWait(browser, 60, poll_frequency=0.1)

    def header() -> str:
        return browser.execute_script("return document.querySelector('[data-testid=stMain] h2')?.innerText || ''")

    def body() -> str:
        return browser.execute_script("return document.body.innerText")

    def press(key: str) -> None:
        ActionChains(browser).send_keys(key).perform()

    browser.get(f"{url}/?{urllib.parse.urlencode({'reviewer': 'ana', 'view': 'Identity', 'identity': 'Hugh Laurie'})}")
    wait.until(lambda d: "Keys:" in body() and "N next identity" in body())  # the shortcut list is shown
    click = lambda css: wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, css))).click()  # noqa: E731
    click(".st-key-split_-1, [data-testid='stExpander'] summary")  # open the split expander: a text field
    field = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, ".st-key-split_name_-1 input")))
    field.click()
    press("n")  # typing in a text field types
    time.sleep(1.5)
    assert header() == "Hugh Laurie" and field.get_attribute("value").endswith("n")
    press(Keys.ESCAPE)  # leaves the field
    click(f".st-key-pick_{outlier} label")  # the checkbox has the focus: Streamlit's own shortcuts ignore keys now
    wait.until(lambda d: "1 selected" in body())
    press("x")
    wait.until(lambda d: "removed 1 photo(s)" in body())
    with LabelStore.open(work) as store:
        assert store.images(ids=[outlier]).removed.item() == 1
    press("n")
    wait.until(lambda d: header() not in ("", "Hugh Laurie"))
    second = header()
    press("p")
    wait.until(lambda d: header() == "Hugh Laurie")
    press("n")
    wait.until(lambda d: header() == second)
    press("a")  # accept every suggestion on this identity
    wait.until(lambda d: "accepted the suggestions" in body())
    with LabelStore.open(work) as store:
        assert store.flags(identity=second, status="open").image_id.dropna().empty
        assert store.history(limit=1)[0].batch is not None
